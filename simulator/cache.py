"""ComfyUI's "classic" cache: outputs and UI results keyed by node signature, objects keyed by node id.

Each prompt replaces the key set and drops every entry the new prompt does not use, so only what the
previous prompt computed can be reused (a cached node is listed in ``execution_cached``). POST /free with
``free_memory`` empties everything (19_two_clients starts with nothing cached after 18's /free).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class KeyedCache:
    """Values stored under per-prompt keys; entries not keyed by the current prompt are dropped."""

    def __init__(self) -> None:
        self._entries: dict[Any, Any] = {}
        self._keys: dict[str, Any] = {}

    def set_prompt(self, keys: Mapping[str, Any]) -> None:
        self._keys = dict(keys)
        used = set(self._keys.values())
        self._entries = {key: value for key, value in self._entries.items() if key in used}

    def get(self, node_id: str) -> Any:
        key = self._keys.get(node_id)
        return self._entries.get(key) if node_id in self._keys else None

    def set(self, node_id: str, value: Any) -> None:
        self._entries.pop(self._keys[node_id], None)
        self._entries[self._keys[node_id]] = value

    def node_ids(self) -> list[str]:
        return list(self._keys)

    def stored_order(self, node_ids: list[str]) -> list[str]:
        """``node_ids`` that have an entry, in the order entries were stored (history ``outputs`` order)."""
        position = {key: index for index, key in enumerate(self._entries)}
        present = [n for n in node_ids if n in self._keys and self._keys[n] in position]
        return sorted(present, key=lambda n: position[self._keys[n]])


class CacheSet:
    def __init__(self) -> None:
        self.outputs = KeyedCache()
        self.ui = KeyedCache()
        self.objects = KeyedCache()

    def set_prompt(self, signatures: Mapping[str, Any], identities: Mapping[str, Any]) -> None:
        self.outputs.set_prompt(signatures)
        self.ui.set_prompt(signatures)
        self.objects.set_prompt(identities)

    def node_state(self, node_id: str) -> dict[str, Any]:
        state: dict[str, Any] | None = self.objects.get(node_id)
        if state is None:
            state = {}
            self.objects.set(node_id, state)
        return state
