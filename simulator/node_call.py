"""Calling one node: its inputs (links resolved, hidden ones added), the interrupt flag, failure details."""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from simulator.cache import KeyedCache
from simulator.catalog import Catalog
from simulator.nodes.base import InterruptProcessingError
from simulator.nodes.registry import spec_for
from simulator.validation import full_type_name, is_link

log = logging.getLogger("simulator.prompt_executor")


class InterruptFlag:
    """comfy.model_management's interrupt_processing flag: set by POST /interrupt, cleared when checked."""

    def __init__(self, on_set: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._on_set = on_set

    def set(self, value: bool = True) -> None:
        with self._lock:
            self._set = value
        if value and self._on_set is not None:
            self._on_set()

    def is_set(self) -> bool:
        with self._lock:
            return self._set

    def raise_if_set(self) -> None:
        with self._lock:
            if self._set:
                self._set = False
                raise InterruptProcessingError()


class NodeFailure(Exception):
    """A node's failure, carrying what handle_execution_error reports."""

    def __init__(self, details: dict[str, Any], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.details = details
        self.cause = cause


def format_value(x: Any) -> Any:
    """How execution_error shows an input: plain JSON values as they are, anything else as str()."""
    if x is None or isinstance(x, int | float | bool | str):
        return x
    return str(x)


def input_data(
    catalog: Catalog, outputs: KeyedCache, prompt: dict[str, Any], node_id: str, extra_data: dict[str, Any]
) -> dict[str, Any]:
    """Resolve links from the output cache and add the hidden inputs the class declares.

    Undeclared constants are dropped, as ComfyUI's get_input_data drops inputs without a category;
    undeclared links are kept, as there.
    """
    class_type = prompt[node_id]["class_type"]
    declared = catalog.declared_inputs(class_type)
    accepts_all = spec_for(class_type).accepts_undeclared
    values: dict[str, Any] = {}
    for name, value in prompt[node_id]["inputs"].items():
        if is_link(value):
            produced = outputs.get(value[0])
            slot = int(value[1])
            values[name] = produced[slot] if produced is not None and slot < len(produced) else None
        elif name in declared or accepts_all:
            values[name] = value
    for name, kind in catalog.hidden_inputs(class_type).items():
        if kind == "PROMPT":
            values[name] = prompt
        elif kind == "EXTRA_PNGINFO":
            values[name] = extra_data.get("extra_pnginfo")
        elif kind == "UNIQUE_ID":
            values[name] = node_id
    return values


def error_details(node_id: str, inputs: dict[str, Any] | None, ex: Exception) -> dict[str, Any]:
    _, _, tb = sys.exc_info()
    log.error("!!! Exception during processing !!! %s", ex)
    log.error(traceback.format_exc())
    formatted = {} if inputs is None else {k: [format_value(v)] for k, v in inputs.items()}
    return {
        "node_id": node_id,
        "exception_message": str(ex),
        "exception_type": full_type_name(type(ex)),
        "traceback": traceback.format_tb(tb),
        "current_inputs": formatted,
    }
