"""Execution order and cache keys, as comfy_execution.graph and comfy_execution.caching compute them.

Order: the output nodes are added in ``outputs_to_execute`` order, each pulling in its uncached ancestors
depth-first; then, among the ready nodes, an output node runs first, then a node that feeds an output, then
one two steps from an output, else the first ready node (``ux_friendly_pick_node``). This is why output
nodes do not run in prompt order (04, 05, 12).

Cache keys: a node's key is its class, its IS_CHANGED value and its inputs, with links replaced by the
position of the linked ancestor, plus the same for every ancestor. Two prompts that share a sub-graph share
its cached outputs, whatever the node ids (03b, 03c).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from simulator.validation import is_link


class DependencyCycleError(Exception):
    pass


class ExecutionList:
    """Topological dissolve of the prompt graph, skipping nodes whose outputs are cached."""

    def __init__(
        self, prompt: Mapping[str, Any], is_cached: Callable[[str], bool], is_output: Callable[[str], bool]
    ) -> None:
        self._prompt = prompt
        self._is_cached = is_cached
        self._is_output = is_output
        self._pending: dict[str, bool] = {}
        self._block_count: dict[str, int] = {}
        self._blocking: dict[str, dict[str, dict[int, bool]]] = {}
        self.staged: str | None = None

    def add_strong_link(self, from_id: str, from_socket: int, to_id: str) -> None:
        if self._is_cached(from_id):
            return
        self.add_node(from_id)
        if to_id not in self._blocking[from_id]:
            self._blocking[from_id][to_id] = {}
            self._block_count[to_id] += 1
        self._blocking[from_id][to_id][from_socket] = True

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, int, str]] = []
        while stack:
            unique_id = stack.pop()
            if unique_id in self._pending:
                continue
            self._pending[unique_id] = True
            self._block_count[unique_id] = 0
            self._blocking[unique_id] = {}
            for value in self._prompt[unique_id]["inputs"].values():
                if is_link(value) and not self._is_cached(value[0]):
                    stack.append(value[0])
                    links.append((value[0], int(value[1]), unique_id))
        for link in links:
            self.add_strong_link(*link)

    def first_pending(self) -> str:
        return next(iter(self._pending))

    def is_empty(self) -> bool:
        return not self._pending

    def stage(self) -> str:
        ready = [node_id for node_id in self._pending if self._block_count[node_id] == 0]
        if not ready:
            raise DependencyCycleError("Dependency cycle detected")
        self.staged = self._pick(ready)
        return self.staged

    def _pick(self, ready: Sequence[str]) -> str:
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(blocked) for blocked in self._blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in self._blocking[node_id]:
                if any(self._is_output(second) for second in self._blocking[blocked]):
                    return node_id
        return ready[0]

    def complete(self) -> None:
        node_id = self.staged
        assert node_id is not None
        del self._pending[node_id]
        for blocked in self._blocking[node_id]:
            self._block_count[blocked] -= 1
        del self._blocking[node_id]
        self.staged = None


class Unhashable:
    """Stands for a value that cannot be part of a key; NaN makes it equal to nothing, itself included."""

    def __init__(self) -> None:
        self.value = float("NaN")


def to_hashable(obj: Any) -> Any:
    if isinstance(obj, int | float | str | bool | type(None)):
        return obj
    if isinstance(obj, Mapping):
        return frozenset((to_hashable(k), to_hashable(v)) for k, v in sorted(obj.items()))
    if isinstance(obj, Sequence):
        return frozenset(zip(itertools.count(), [to_hashable(i) for i in obj], strict=False))
    return Unhashable()


def node_signature(
    prompt: Mapping[str, Any],
    node_id: str,
    is_changed: Callable[[str], Any],
    keeps_identity: Callable[[str], bool],
) -> Any:
    """The cache key of ``node_id`` (CacheKeySetInputSignature.get_node_signature)."""
    ancestors: list[str] = []
    order: dict[str, int] = {}
    _ordered_ancestry(prompt, node_id, ancestors, order)
    signature = [_immediate_signature(prompt, node_id, order, is_changed, keeps_identity)]
    signature.extend(_immediate_signature(prompt, a, order, is_changed, keeps_identity) for a in ancestors)
    return to_hashable(signature)


def _immediate_signature(
    prompt: Mapping[str, Any],
    node_id: str,
    order: Mapping[str, int],
    is_changed: Callable[[str], Any],
    keeps_identity: Callable[[str], bool],
) -> list[Any]:
    if node_id not in prompt:
        return [float("NaN")]
    node = prompt[node_id]
    signature: list[Any] = [node["class_type"], is_changed(node_id)]
    if keeps_identity(node["class_type"]):
        signature.append(node_id)
    inputs = node["inputs"]
    for key in sorted(inputs):
        value = inputs[key]
        if is_link(value):
            signature.append((key, ("ANCESTOR", order[value[0]], value[1])))
        else:
            signature.append((key, value))
    return signature


def _ordered_ancestry(prompt: Mapping[str, Any], node_id: str, ancestors: list[str], order: dict[str, int]) -> None:
    if node_id not in prompt:
        return
    inputs = prompt[node_id]["inputs"]
    for key in sorted(inputs):
        value = inputs[key]
        if is_link(value) and value[0] not in order:
            ancestors.append(value[0])
            order[value[0]] = len(ancestors) - 1
            _ordered_ancestry(prompt, value[0], ancestors, order)
