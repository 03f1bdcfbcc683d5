"""What each queue's workers can run, and what a workflow would lack there.

A queue is an environment: every ready worker publishes what its ComfyUI offers (worker/capabilities.py),
one record per worker under :func:`producer.keys.worker_capabilities` with a TTL, and its name in the sorted
set :func:`producer.keys.queue_capabilities` of every queue it consumes, scored by when that record expires.
A worker that dies, or whose ComfyUI stops being ready, stops refreshing both and drops out within
:data:`CAPABILITIES_TTL_S`.

A record holds the node classes of ComfyUI's ``/object_info`` and, per loader, the options of every combo
input that lists model files (``{class_type: {input_name: [files]}}``): exactly what the readiness probe
checks the bundled template against, read from the one ``/object_info`` the probe fetches anyway.

:func:`missing_for` answers for one workflow and one queue. A workflow runs where ONE live worker offers
all it needs, so the answer is the gaps of the worker that lacks least. When no live worker of the queue
has published anything, ``no_workers`` is set and nothing is named missing: the caller decides (the
producer queues the job, as it queues a dance job while the queue's workers start or restart).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from producer import keys
from producer.graph import names_model

#: Lifetime of a worker's capability record and queue membership, in seconds: three missed refreshes of
#: the worker's liveness beat (worker/liveness.py, every 5 s) and it drops out.
CAPABILITIES_TTL_S = 15


@dataclass(frozen=True)
class Missing:
    """What no single live worker of the queue offers; empty lists where one worker offers everything."""

    #: Node classes the workflow uses that the best-fitting worker lacks, sorted.
    nodes: list[str] = field(default_factory=list)
    #: Model files the workflow names that the best-fitting worker's loaders do not list, sorted.
    models: list[str] = field(default_factory=list)
    #: No live worker of the queue published its capabilities: nothing could be checked.
    no_workers: bool = False

    @property
    def blocks(self) -> bool:
        """Whether a live worker was found and none of them can run the workflow."""
        return bool(self.nodes or self.models)


def offered_by(object_info: dict[str, Any]) -> dict[str, Any]:
    """The capability record of one ComfyUI, from its ``/object_info``."""
    models: dict[str, dict[str, list[str]]] = {}
    for class_type, spec in object_info.items():
        inputs = spec.get("input") if isinstance(spec, dict) else None
        for section in ("required", "optional"):
            for name, input_spec in ((inputs or {}).get(section) or {}).items():
                options = combo_options(input_spec)
                # An empty combo is a loader whose folder is empty: every file named there is missing.
                if options is not None and (not options or any(names_model(option) for option in options)):
                    models.setdefault(str(class_type), {})[str(name)] = options
    return {"nodes": sorted(str(name) for name in object_info), "models": models}


def combo_options(spec: Any) -> list[str] | None:
    """Options of a COMBO input spec: ``[[opts...], {...}]`` (0.3.39) or ``["COMBO", {"options": [...]}]``."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return [str(option) for option in spec[0]]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return [str(option) for option in spec[1].get("options", [])]
    return None


def live_records(client: redis.Redis, queue: str, now: float | None = None) -> list[dict[str, Any]]:
    """The capability records of the workers that consume ``queue`` and refreshed them in time."""
    now = time.time() if now is None else now
    members: list[Any] = list(client.zrangebyscore(keys.queue_capabilities(queue), now, "+inf"))
    if not members:
        return []
    hostnames = [name.decode() if isinstance(name, bytes) else str(name) for name in members]
    raw: list[Any] = list(client.mget([keys.worker_capabilities(name) for name in hostnames]))
    return [json.loads(body) for body in raw if body is not None]


def missing_for(client: redis.Redis, queue: str, workflow: dict[str, Any]) -> Missing:
    """What ``workflow`` needs that no single live worker of ``queue`` offers.

    Raises nothing about the workflow itself (a malformed node counts for nothing; the shape check is
    :func:`producer.graph.check_graph`'s); a broker that does not answer raises ``redis.RedisError``.
    """
    records = live_records(client, queue)
    if not records:
        return Missing(no_workers=True)
    gaps = [_gaps(record, workflow) for record in records]
    return min(gaps, key=lambda gap: len(gap.nodes) + len(gap.models))


def _gaps(record: dict[str, Any], workflow: dict[str, Any]) -> Missing:
    offered_nodes = set(record.get("nodes") or [])
    loaders: dict[str, dict[str, list[str]]] = record.get("models") or {}
    nodes: set[str] = set()
    models: set[str] = set()
    for node in workflow.values():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(class_type, str):
            continue
        if class_type not in offered_nodes:
            nodes.add(class_type)
            continue
        inputs = node.get("inputs")
        for name, value in (inputs if isinstance(inputs, dict) else {}).items():
            options = loaders.get(class_type, {}).get(name)
            # Not a listed loader input (a free-text path, a URL): ComfyUI cannot tell, so neither can we.
            if options is not None and names_model(value) and value not in options:
                models.add(str(value))
    return Missing(nodes=sorted(nodes), models=sorted(models))
