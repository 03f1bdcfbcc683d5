"""API-format ComfyUI graphs as callers submit them: the shape check, and what a graph needs of a ComfyUI.

The producer checks the shape before it queues a workflow job, and the worker checks it again before it
runs one (never trusting the producer's validation). What a graph needs (node classes, model files) is
read from its literal inputs, the same way the readiness probe reads the bundled template's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from producer.errors import WORKFLOW_INVALID, error

#: File extensions that mark a string input as a model file a loader must offer.
MODEL_EXTENSIONS = (
    ".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf", ".torchscript", ".sft",
)
#: Most nodes a submitted graph may hold: far beyond any real workflow, small enough to check quickly.
MAX_NODES = 10_000


@dataclass(frozen=True)
class ModelRef:
    node_id: str
    class_type: str
    input_name: str
    filename: str


def names_model(value: object) -> bool:
    return isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS)


def check_graph(workflow: object) -> dict[str, Any]:
    """The graph itself if it has the API format's shape: a non-empty object of nodes, each with a string
    ``class_type`` and an object of ``inputs``; raises ``workflow.invalid`` naming the first fault."""
    if not isinstance(workflow, dict) or not workflow:
        raise error(WORKFLOW_INVALID, "the workflow must be a non-empty JSON object of nodes "
                    "(export it with 'Save (API Format)')")
    if "nodes" in workflow and "links" in workflow:
        raise error(WORKFLOW_INVALID, "the workflow is in the UI format; export it with 'Save (API Format)'")
    if len(workflow) > MAX_NODES:
        raise error(WORKFLOW_INVALID, f"the workflow has {len(workflow)} nodes, more than {MAX_NODES}",
                    nodes=len(workflow), max_nodes=MAX_NODES)
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise error(WORKFLOW_INVALID, f"node {node_id} has no class_type", node_id=str(node_id))
        if not isinstance(node.get("inputs", {}), dict):
            raise error(WORKFLOW_INVALID, f"node {node_id} has inputs that are not an object", node_id=str(node_id))
    return workflow


def class_types(graph: dict[str, Any]) -> frozenset[str]:
    return frozenset(str(node["class_type"]) for node in graph.values())


def model_refs(graph: dict[str, Any]) -> list[ModelRef]:
    """Literal string inputs that name model files (links are lists and never count)."""
    return [ModelRef(str(node_id), str(node["class_type"]), name, value)
            for node_id, node in graph.items()
            for name, value in (node.get("inputs") or {}).items() if names_model(value)]


def workflow_fingerprint(graph: dict[str, Any], owner: str) -> str:
    """A stable digest of what a workflow job runs and for whom: key order and spacing do not count."""
    canonical = json.dumps({"owner": owner, "workflow": graph}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
