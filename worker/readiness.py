"""What "ComfyUI is ready for this workflow" means, checked in one probe.

Ready means all of: GET /system_stats answers 200; when a GPU is required, a CUDA device is listed;
every class_type of the workflow is in /object_info; every model file the workflow names is in its
loader's option list. The probe reports everything still missing, so the gate can say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from producer.capabilities import combo_options, offered_by
from producer.errors import COMFY_NO_GPU, WORKFLOW_MISSING_MODELS, WORKFLOW_UNKNOWN_NODES, DanceError
from producer.graph import ModelRef
from worker.comfy_http import PROBE_TIMEOUT_S, ComfyHttp
from worker.workflow import Workflow

#: Timeout of the /object_info request, in seconds: the full dump of a large install is several MB.
OBJECT_INFO_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Readiness:
    ready: bool
    #: Human-readable reasons, e.g. "ComfyUI not answering (ConnectionError)", "node classes: X".
    missing: tuple[str, ...]
    #: Whether /system_stats answered at all.
    answering: bool = False
    #: The device that will run jobs, e.g. "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync" or "cpu".
    device: str | None = None
    #: The stable error code of each missing thing, in the same order as ``missing``.
    codes: tuple[str, ...] = ()
    #: The /system_stats body, when it answered: the gate learns ComfyUI's version from it.
    stats: dict[str, Any] | None = None
    #: What this ComfyUI offers (producer/capabilities.py), from the full check's one /object_info; the
    #: worker publishes it, so no beat ever fetches /object_info again.
    capabilities: dict[str, Any] | None = None


def probe(http: ComfyHttp, workflow: Workflow, require_gpu: bool, full: bool = True) -> Readiness:
    """Check readiness; ``full=False`` only checks that ComfyUI answers with the right device (a cheap
    liveness probe once the full check passed: /object_info of a large install is megabytes)."""
    try:
        stats = http.system_stats(timeout_s=PROBE_TIMEOUT_S)
    except DanceError as exc:
        reason = exc.details.get("reason") or exc.code
        text = f"ComfyUI at {http.base_url} not answering /system_stats ({reason})"
        return Readiness(False, (text,), codes=(exc.code,))
    missing: dict[str, str] = {}
    device = pick_device(stats, require_gpu)
    if device is None:
        missing["a CUDA device (COMFYUI_REQUIRE_GPU is on; /system_stats lists none)"] = COMFY_NO_GPU
    capabilities = None
    if full:
        try:
            info = http.object_info(timeout_s=OBJECT_INFO_TIMEOUT_S)
        except DanceError as exc:
            missing[f"/object_info ({exc.code})"] = exc.code
        else:
            missing.update(_workflow_gaps(info, workflow))
            capabilities = offered_by(info)
    return Readiness(not missing, tuple(missing), answering=True, device=device, codes=tuple(missing.values()),
                     stats=stats, capabilities=capabilities)


def _workflow_gaps(info: dict[str, Any], workflow: Workflow) -> dict[str, str]:
    """What the workflow needs that /object_info does not offer, each with its code."""
    gaps: dict[str, str] = {}
    absent = sorted(workflow.class_types - set(info))
    if absent:
        gaps[f"node classes {', '.join(absent)}"] = WORKFLOW_UNKNOWN_NODES
    models = [ref for ref in workflow.model_refs() if ref.class_type in info and not _offered(info, ref)]
    if models:
        listed = ", ".join(f"{m.filename} ({m.class_type}.{m.input_name})" for m in models)
        gaps[f"model files {listed}"] = WORKFLOW_MISSING_MODELS
    return gaps


def pick_device(stats: dict[str, Any], require_gpu: bool) -> str | None:
    devices = [d for d in stats.get("devices") or [] if isinstance(d, dict)]
    cuda = [d for d in devices if str(d.get("type")) == "cuda" or str(d.get("name", "")).startswith("cuda")]
    if cuda:
        return str(cuda[0].get("name"))
    if require_gpu:
        return None
    return str(devices[0].get("name")) if devices else "unknown"


def _offered(info: dict[str, Any], ref: ModelRef) -> bool:
    inputs = info[ref.class_type].get("input") or {}
    for section in ("required", "optional"):
        spec = (inputs.get(section) or {}).get(ref.input_name)
        options = combo_options(spec)
        if options is not None:
            return ref.filename in options
    # Not a combo (e.g. a free-text path or URL): ComfyUI cannot tell us, so we do not block on it.
    return True
