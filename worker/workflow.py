"""Workflow templates: API-format ComfyUI graphs whose string values may hold ``{{name}}`` placeholders.

Binding works on the parsed JSON, never on its text, and substitutes in one pass over the template's
own strings: a prompt containing quotes, newlines or a literal ``{{seed}}`` reaches ComfyUI unchanged
(the original endpoint replaced placeholders in the JSON text and broke on all three). A value that is
exactly one placeholder takes the bound value's type (an int stays an int); a placeholder inside a
longer string is formatted into it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.errors import WORKFLOW_PLACEHOLDER, WORKFLOW_TEMPLATE, error
from producer.graph import ModelRef, names_model

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
#: Placeholders the dance task fills. A template may use any subset; any other name is refused at load.
KNOWN_PLACEHOLDERS = frozenset({
    "reference_image_filename", "dance_video_filename", "prompt", "negative_prompt", "width", "height",
    "steps", "cfg", "seed", "output_prefix", "job_id",
})


@dataclass(frozen=True)
class Workflow:
    """A validated template."""

    path: Path
    graph: dict[str, Any]
    placeholders: frozenset[str]

    @property
    def class_types(self) -> frozenset[str]:
        return frozenset(node["class_type"] for node in self.graph.values())

    def model_refs(self) -> list[ModelRef]:
        """Literal inputs that name model files (placeholders are per-job inputs, never models)."""
        refs = []
        for node_id, node in self.graph.items():
            for name, value in node["inputs"].items():
                if names_model(value) and not PLACEHOLDER.search(value):
                    refs.append(ModelRef(node_id, node["class_type"], name, value))
        return refs

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        missing = self.placeholders - set(values)
        if missing:
            raise error(
                WORKFLOW_PLACEHOLDER, f"no value for placeholders {sorted(missing)}",
                workflow=str(self.path), missing=sorted(missing),
            )
        graph = copy.deepcopy(self.graph)
        for node in graph.values():
            node["inputs"] = {name: _bind_value(value, values) for name, value in node["inputs"].items()}
        return graph


def load_workflow(path: Path) -> Workflow:
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(WORKFLOW_TEMPLATE, f"cannot read workflow {path}: {exc.strerror}", workflow=str(path)) from exc
    except ValueError as exc:
        raise error(WORKFLOW_TEMPLATE, f"workflow {path} is not valid JSON: {exc}", workflow=str(path)) from exc
    return parse_workflow(graph, path)


def parse_workflow(graph: object, path: Path) -> Workflow:
    _check_api_format(graph, path)
    assert isinstance(graph, dict)
    names = frozenset(match for text in _strings(graph) for match in PLACEHOLDER.findall(text))
    unknown = names - KNOWN_PLACEHOLDERS
    if unknown:
        raise error(
            WORKFLOW_PLACEHOLDER, f"workflow {path.name} uses unknown placeholders {sorted(unknown)}",
            workflow=str(path), unknown=sorted(unknown), known=sorted(KNOWN_PLACEHOLDERS),
        )
    return Workflow(path=path, graph=graph, placeholders=names)


def _check_api_format(graph: object, path: Path) -> None:
    if not isinstance(graph, dict) or not graph:
        raise error(WORKFLOW_TEMPLATE, f"workflow {path.name} must be a non-empty JSON object of nodes "
                    "(export it with 'Save (API Format)')", workflow=str(path))
    if "nodes" in graph and "links" in graph:
        raise error(WORKFLOW_TEMPLATE, f"workflow {path.name} is in the UI format; export it with "
                    "'Save (API Format)'", workflow=str(path))
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise error(WORKFLOW_TEMPLATE, f"node {node_id} of {path.name} has no class_type",
                        workflow=str(path), node_id=str(node_id))
        if not isinstance(node.get("inputs", {}), dict):
            raise error(WORKFLOW_TEMPLATE, f"node {node_id} of {path.name} has inputs that are not an object",
                        workflow=str(path), node_id=str(node_id))
        node.setdefault("inputs", {})


def _strings(graph: dict[str, Any]) -> Iterator[str]:
    for node in graph.values():
        for value in node["inputs"].values():
            if isinstance(value, str):
                yield value


def _bind_value(value: Any, values: Mapping[str, Any]) -> Any:
    if not isinstance(value, str):
        return value
    whole = PLACEHOLDER.fullmatch(value)
    if whole:
        return values[whole.group(1)]
    # re.sub scans the template string once; substituted text is never scanned again.
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
