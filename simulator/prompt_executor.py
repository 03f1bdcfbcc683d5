"""Runs one prompt the way execution.PromptExecutor does, message for message.

Messages a prompt produces, in order (03_basic): ``execution_start``, ``execution_cached``, then per node
``executing`` (omitted for cached nodes) with ``progress`` ticks and ``executed`` for nodes with UI output;
a cached output node replays only ``executed``; the prompt ends with ``execution_success``,
``execution_error`` or ``execution_interrupted``. All go to the submitting client only; a prompt without
client_id sends none of them, except ``progress`` (and binary previews) and ``execution_interrupted``,
which ComfyUI then sends with no sid, that is to every socket.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from simulator.cache import CacheSet
from simulator.catalog import Catalog
from simulator.faults import CRASH_EXIT_STATUS, Faults
from simulator.graph import DependencyCycleError, ExecutionList, node_signature
from simulator.messages import UNENCODED_PREVIEW_IMAGE, Messenger
from simulator.model_loads import ModelLoads
from simulator.node_call import InterruptFlag, NodeFailure, error_details, input_data
from simulator.nodes.base import InterruptProcessingError, NodeContext
from simulator.nodes.registry import spec_for
from simulator.validation import is_link

log = logging.getLogger("simulator.prompt_executor")

#: Message timestamps are epoch milliseconds.
MS_PER_S = 1000


class PromptExecutor:
    def __init__(
        self, catalog: Catalog, messenger: Messenger, faults: Faults, interrupt: InterruptFlag,
        model_loads: ModelLoads | None = None,
    ) -> None:
        self.catalog = catalog
        self.messenger = messenger
        self.faults = faults
        self.interrupt = interrupt
        self.caches = CacheSet()
        self.status_messages: list[tuple[str, dict[str, Any]]] = []
        self.success = True
        self.history_result: dict[str, Any] = {}
        self.last_prompt_id: str | None = None
        #: Models a node has "loaded onto the GPU"; the sampler's first run loads (and ticks) once.
        self.loaded_models: set[str] = set()
        #: Model files read from disk so far: the first use of each costs COMFYSIM_MODEL_LOAD_S.
        self.model_loads = model_loads or ModelLoads(0.0)

    def reset(self) -> None:
        """POST /free {"free_memory": true}: drop every cached output, the loaders' models with them."""
        self.caches = CacheSet()
        self.model_loads.forget()

    def unload_models(self) -> None:
        self.loaded_models.clear()

    def emit(self, event: Any, data: Any, sid: str | None, deliver: bool = True, class_type: str | None = None) -> None:
        """The single exit of executor messages, where crash and socket-drop faults fire."""
        drop, crash = self.faults.at_event(str(event), class_type)
        if crash:
            print(f"simulator: crash fault at {event}: exiting with {CRASH_EXIT_STATUS}", flush=True)
            os._exit(CRASH_EXIT_STATUS)
        if drop:
            self.messenger.drop_all_sockets_sync()
        if deliver:
            self.messenger.send_sync(event, data, sid)

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": int(time.time() * MS_PER_S)}
        self.status_messages.append((event, data))
        client_id = self.messenger.client_id
        self.emit(event, data, client_id, deliver=client_id is not None or broadcast)

    def execute(
        self, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any], execute_outputs: list[str]
    ) -> None:
        self.interrupt.set(False)
        self.last_prompt_id = prompt_id
        self.messenger.client_id = extra_data.get("client_id")
        self.status_messages = []
        self.add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
        self._set_prompt(prompt)
        cached = [node_id for node_id in prompt if self.caches.outputs.get(node_id) is not None]
        self.add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id}, broadcast=False)
        executed: list[str] = []
        current_outputs = self.caches.outputs.node_ids()
        execution_list = ExecutionList(
            prompt,
            lambda n: self.caches.outputs.get(n) is not None,
            lambda n: self.catalog.is_output(prompt[n]["class_type"]),
        )
        for node_id in execute_outputs:
            execution_list.add_node(node_id)
        self.success = True
        while not execution_list.is_empty():
            try:
                node_id = self._stage(execution_list)
                self.execute_node(prompt, prompt_id, node_id, extra_data, executed)
            except NodeFailure as failure:
                self.success = False
                self._handle_error(prompt, prompt_id, current_outputs, executed, failure)
                break
            execution_list.complete()
        else:
            self.add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)
        self._collect_history(list(prompt))
        self.messenger.last_node_id = None

    @staticmethod
    def _stage(execution_list: ExecutionList) -> str:
        try:
            return execution_list.stage()
        except DependencyCycleError as ex:
            details = {
                "node_id": execution_list.first_pending(),
                "exception_message": str(ex),
                "exception_type": "graph.DependencyCycleError",
                "traceback": [],
                "current_inputs": [],
            }
            raise NodeFailure(details, ex) from ex

    def _set_prompt(self, prompt: dict[str, Any]) -> None:
        is_changed_values: dict[str, Any] = {}

        def is_changed(node_id: str) -> Any:
            if node_id not in is_changed_values:
                is_changed_values[node_id] = self._is_changed(prompt[node_id])
            return is_changed_values[node_id]

        def keeps_identity(class_type: str) -> bool:
            return "UNIQUE_ID" in self.catalog.hidden_inputs(class_type).values()

        signatures = {n: node_signature(prompt, n, is_changed, keeps_identity) for n in prompt}
        identities = {n: (n, prompt[n]["class_type"]) for n in prompt}
        self.caches.set_prompt(signatures, identities)

    def _is_changed(self, node: dict[str, Any]) -> Any:
        spec = spec_for(node["class_type"])
        if spec.is_changed is None:
            return False
        constants = {k: (None if is_link(v) else v) for k, v in node["inputs"].items()}
        try:
            # Stored on the executing copy of the prompt, as ComfyUI does: it shows in error reports.
            node["is_changed"] = [spec.is_changed(self.catalog.dirs, constants)]
        except Exception as ex:
            log.warning("WARNING: %s", ex)
            node["is_changed"] = float("NaN")
        return node["is_changed"]

    def execute_node(
        self,
        prompt: dict[str, Any],
        prompt_id: str,
        node_id: str,
        extra_data: dict[str, Any],
        executed: list[str],
    ) -> None:
        class_type = prompt[node_id]["class_type"]
        client_id = self.messenger.client_id
        if self.caches.outputs.get(node_id) is not None:
            self._replay_cached(node_id, prompt_id)
            return
        inputs: dict[str, Any] | None = None
        try:
            inputs = input_data(self.catalog, self.caches.outputs, prompt, node_id, extra_data)
            if client_id is not None:
                self.messenger.last_node_id = node_id
                event = {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}
                self.emit("executing", event, client_id, class_type=class_type)
            output = self._run(class_type, node_id, inputs)
        except InterruptProcessingError as iex:
            log.info("Processing interrupted")
            raise NodeFailure({"node_id": node_id}, iex) from iex
        except Exception as ex:
            raise NodeFailure(error_details(node_id, inputs, ex), ex) from ex
        if output.ui:
            meta = {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
            self.caches.ui.set(node_id, {"meta": meta, "output": output.ui})
            if client_id is not None:
                event = {
                    "node": node_id,
                    "display_node": node_id,
                    "output": output.ui,
                    "prompt_id": prompt_id,
                }
                self.emit("executed", event, client_id, class_type=class_type)
        self.caches.outputs.set(node_id, output.result)
        executed.append(node_id)

    def _replay_cached(self, node_id: str, prompt_id: str) -> None:
        """A cached output node only replays ``executed`` (03b); ``output`` is null if it had no UI."""
        client_id = self.messenger.client_id
        if client_id is not None:
            cached_ui = self.caches.ui.get(node_id) or {}
            event = {
                "node": node_id,
                "display_node": node_id,
                "output": cached_ui.get("output"),
                "prompt_id": prompt_id,
            }
            self.emit("executed", event, client_id)

    def _run(self, class_type: str, node_id: str, inputs: dict[str, Any]) -> Any:
        spec = spec_for(class_type)
        hidden_names = self.catalog.hidden_inputs(class_type)
        args = {k: v for k, v in inputs.items() if k not in hidden_names}
        context = NodeContext(
            node_id,
            class_type,
            self.catalog.dirs,
            inputs,
            self.caches.node_state(node_id),
            self._progress_hook(class_type, node_id),
            self._preview_hook(),
            self.faults.exec_s,
            {"return_types": self.catalog.return_types(class_type), "loaded_models": self.loaded_models,
             "pad_output_bytes": self.faults.pad_output_bytes},
        )
        # nodes.before_node_execution: a pending interrupt stops the node before it starts (15).
        self.interrupt.raise_if_set()
        failure = self.faults.failure_for(class_type)
        if failure is not None:
            raise failure
        if not spec.reports_progress and self.faults.wants_hold(class_type, node_id):
            self.faults.hold(self.interrupt.is_set)
        self.model_loads.use(args)
        return spec.run(context, **args)

    def _progress_hook(self, class_type: str, node_id: str) -> Callable[[float, int], None]:
        held = False

        def progress(value: float, total: int) -> None:
            nonlocal held
            # comfy.utils' hook checks the interrupt flag before sending, so an interrupt lands here (14).
            self.interrupt.raise_if_set()
            data = {
                "value": min(value, total),
                "max": total,
                "prompt_id": self.last_prompt_id,
                "node": self.messenger.last_node_id,
            }
            self.emit("progress", data, self.messenger.client_id, class_type=class_type)
            if not held and self.faults.wants_hold(class_type, node_id, f"{data['value']:g}/{total}"):
                held = True
                self.faults.hold(self.interrupt.is_set)

        return progress

    def _preview_hook(self) -> Callable[[Image.Image], None]:
        def preview(image: Image.Image) -> None:
            self.messenger.send_sync(UNENCODED_PREVIEW_IMAGE, ("PNG", image, None), self.messenger.client_id)

        return preview

    def _handle_error(
        self,
        prompt: dict[str, Any],
        prompt_id: str,
        current_outputs: list[str],
        executed: list[str],
        failure: NodeFailure,
    ) -> None:
        node_id = failure.details["node_id"]
        base = {
            "prompt_id": prompt_id,
            "node_id": node_id,
            "node_type": prompt[node_id]["class_type"],
            "executed": list(executed),
        }
        if isinstance(failure.cause, InterruptProcessingError):
            self.add_message("execution_interrupted", base, broadcast=True)
            return
        details = failure.details
        self.add_message(
            "execution_error",
            {
                **base,
                "exception_message": details["exception_message"],
                "exception_type": details["exception_type"],
                "traceback": details["traceback"],
                "current_inputs": details["current_inputs"],
                "current_outputs": list(current_outputs),
            },
            broadcast=False,
        )

    def _collect_history(self, node_ids: list[str]) -> None:
        outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for node_id in self.caches.ui.stored_order(node_ids):
            entry = self.caches.ui.get(node_id)
            outputs[node_id] = copy.deepcopy(entry["output"])
            meta[node_id] = copy.deepcopy(entry["meta"])
        self.history_result = {"outputs": outputs, "meta": meta}
