"""GET /system_stats bodies: the recorded CPU shape (01_startup), or a GPU entry like a real H100 worker's."""

from __future__ import annotations

import os
import sys
from typing import Any

#: Version strings the recorded server reported (the 0.12.3 server reports its own, see settings.VERSIONS).
COMFYUI_VERSION = "0.3.39"
PYTORCH_VERSION = "2.14.1+cu130"
#: What ComfyUI on an H100 calls its device (model_management.get_torch_device_name).
CUDA_DEVICE_NAME = "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync"
#: Total memory of an H100 80GB HBM3 as torch reports it, in bytes.
CUDA_VRAM_TOTAL_BYTES = 85_045_231_616
#: Memory the CUDA context itself holds on an idle card, in bytes.
CUDA_CONTEXT_BYTES = 536_870_912
#: Bytes per kB in /proc/meminfo.
MEMINFO_UNIT_BYTES = 1024


def memory_bytes() -> tuple[int, int]:
    """(total, available) RAM, from /proc/meminfo where it exists."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            fields = {line.split(":")[0]: int(line.split()[1]) * MEMINFO_UNIT_BYTES for line in handle}
        return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, pages


def system_stats(device: str, argv: list[str], version: str = COMFYUI_VERSION) -> dict[str, Any]:
    ram_total, ram_free = memory_bytes()
    if device == "cuda":
        entry: dict[str, Any] = {
            "name": CUDA_DEVICE_NAME,
            "type": "cuda",
            "index": 0,
            "vram_total": CUDA_VRAM_TOTAL_BYTES,
            "vram_free": CUDA_VRAM_TOTAL_BYTES - CUDA_CONTEXT_BYTES,
            "torch_vram_total": 0,
            "torch_vram_free": 0,
        }
    else:
        entry = {
            "name": "cpu",
            "type": "cpu",
            "index": None,
            "vram_total": ram_total,
            "vram_free": ram_free,
            "torch_vram_total": ram_total,
            "torch_vram_free": ram_free,
        }
    return {
        "system": {
            "os": os.name,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": version,
            "python_version": sys.version,
            "pytorch_version": PYTORCH_VERSION,
            "embedded_python": False,
            "argv": argv,
        },
        "devices": [entry],
    }
