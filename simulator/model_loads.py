"""Model loading, as a cold ComfyUI pays for it: the first use of each model file after start is slow.

A loader node (WanVideoModelLoader, CLIPVisionLoader, UpscaleModelLoader...) reads its weights from disk
onto the device when it runs; ComfyUI shows it meanwhile as the node ``executing`` with no ``progress``
frame (07_progress_upscale_model: UpscaleModelLoader sends only ``executing``, then the next node starts).
Once loaded, ComfyUI keeps the model, so later uses of the same file cost nothing. Only POST /free with
``free_memory`` drops the cached loader outputs, after which the file is read again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("simulator.model_loads")

#: Endings of an input value that names a model file (the dance workflow's loaders, the core upscaler,
#: and DownloadAndLoadNLFModel's TorchScript URL).
MODEL_EXTENSIONS = (
    ".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf", ".torchscript", ".sft",
)


def model_files(inputs: Mapping[str, Any]) -> list[str]:
    """The model files a node's constant inputs name, in input order."""
    return [value for value in inputs.values() if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS)]


class ModelLoads:
    """Which model files this process has loaded; the first use of each costs ``load_s`` seconds."""

    def __init__(self, load_s: float) -> None:
        self.load_s = load_s
        self._lock = threading.Lock()
        self._loaded: set[str] = set()
        #: Every load paid, in order: what GET /__sim__/state reports as ``model_loads``.
        self.history: list[str] = []

    def use(self, inputs: Mapping[str, Any]) -> None:
        """Called as a node starts: pay for every file it names that is not loaded yet.

        A plain sleep, like the real read: ComfyUI checks the interrupt flag only between nodes and at
        progress ticks, so an interrupt lands once the load is over (15_interrupt_non_progress_node).
        """
        for filename in model_files(inputs):
            with self._lock:
                if filename in self._loaded:
                    continue
                self._loaded.add(filename)
                self.history.append(filename)
            if self.load_s > 0:
                log.info("loading model %s (%.1f s)", filename, self.load_s)
                time.sleep(self.load_s)

    def forget(self) -> None:
        """POST /free {"free_memory": true}: the loader outputs are gone, so the next use reads the file again."""
        with self._lock:
            self._loaded.clear()

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.history)
