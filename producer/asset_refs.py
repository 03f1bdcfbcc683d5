"""``core/ASSET`` references inside API-format workflows (the v2 contract's AssetReference).

A reference is ``{"__type": "core/ASSET", "info": {"id": "<uuid>", "hash": ..., "file_path": ...}}``
where a filename would go; ``info.id`` is authoritative, ``hash`` and ``file_path`` are only hints.
Anything tagged ``core/ASSET`` is an attempted reference: a malformed one is refused with
``asset.missing`` rather than forwarded to ComfyUI as a literal dict.
"""

from __future__ import annotations

import uuid
from typing import Any

from producer.errors import ASSET_MISSING, error

#: The ``__type`` tag of an asset reference inside an API-format workflow.
ASSET_REF_TYPE = "core/ASSET"


def canonical_id(asset_id: object) -> str | None:
    """``asset_id`` if it is a UUID in canonical form; other strings never become Redis keys."""
    if not isinstance(asset_id, str):
        return None
    try:
        parsed = uuid.UUID(asset_id)
    except ValueError:
        return None
    return asset_id if str(parsed) == asset_id else None


def _is_tagged_ref(value: object) -> bool:
    return isinstance(value, dict) and value.get("__type") == ASSET_REF_TYPE


def asset_ref_id(value: object) -> str | None:
    """The asset id of a ``{"__type": "core/ASSET", "info": {"id": ...}}`` reference, None for any other value.

    A value tagged ``core/ASSET`` whose ``info.id`` is not a UUID string is an attempted reference that
    cannot be resolved: it raises ``asset.missing`` rather than reach ComfyUI as a literal dict.
    """
    if not isinstance(value, dict) or value.get("__type") != ASSET_REF_TYPE:
        return None
    info = value.get("info")
    asset_id = info.get("id") if isinstance(info, dict) else None
    canonical = canonical_id(asset_id)
    if canonical is None:
        shown = asset_id if isinstance(asset_id, str) else None
        raise error(ASSET_MISSING, "a core/ASSET reference has no usable info.id", asset_id=shown)
    return canonical


def _nested_ref(value: object) -> bool:
    if _is_tagged_ref(value):
        return True
    if isinstance(value, dict):
        return any(_nested_ref(item) for item in value.values())
    if isinstance(value, list):
        return any(_nested_ref(item) for item in value)
    return False


def refs_in(workflow: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(node_id, input_name, asset_id) of every asset reference in an API-format graph, in graph order.

    A reference must be a node input's whole value, since that is what is replaced by an uploaded
    file's name; one buried inside a list or object raises ``asset.missing``, as does a malformed one.
    Nodes that are not objects are skipped: checking the graph's shape is not this function's job.
    """
    found: list[tuple[str, str, str]] = []
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name, value in inputs.items():
            asset_id = asset_ref_id(value)
            if asset_id is not None:
                found.append((str(node_id), str(name), asset_id))
            elif _nested_ref(value):
                raise error(
                    ASSET_MISSING, "a core/ASSET reference must be a node input's whole value",
                    node_id=str(node_id), input=str(name),
                )
    return found
