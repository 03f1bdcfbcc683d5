"""Simulator settings: one frozen dataclass, built once at the entry point from argv and the environment.

Every option has an environment fallback named ``COMFYSIM_<OPTION>`` so a compose file can configure the
stand-in without a command line; the command line wins.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Address the simulator binds; only loopback is ever used in tests.
DEFAULT_HOST = "127.0.0.1"
#: Port of a real ComfyUI, so clients need no special configuration.
DEFAULT_PORT = 8188
#: Seconds during which the port stays unbound after start (real ComfyUI: 8 to 10 s, see 01_startup).
DEFAULT_START_DELAY_S = 0.0
#: Simulated GPU seconds the heavy sampler node spends on one prompt.
DEFAULT_EXEC_S = 2.0
#: Simulated seconds the first use of each model file costs after start (a loader node reading weights
#: from disk onto the device, during which ComfyUI shows the node executing without progress); later
#: uses of the same file are free, as ComfyUI keeps the loaded model. 0: models load instantly.
DEFAULT_MODEL_LOAD_S = 0.0
#: Largest upload body, in bytes (ComfyUI's --max-upload-size default of 100 MiB).
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
#: Device kinds /system_stats can describe.
DEVICES = ("cpu", "cuda")
#: ComfyUI versions the simulator can stand in for: the recorded 0.3.39 (shared/comfyui-protocol) and the
#: GPU image's 0.12.3 (shared/comfyui-protocol-0.12.3: targeted /interrupt, GET /api/jobs).
VERSIONS = ("0.3.39", "0.12.3")
#: The version a simulator started without --version reports.
DEFAULT_VERSION = "0.3.39"
#: Node catalogues: the core nodes only, or core plus the dance workflow's custom nodes.
CATALOGS = ("core", "dance")


@dataclass(frozen=True)
class SimSettings:
    """Everything the simulator process needs, resolved once."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: Root of input/, output/ and temp/; None means a fresh temporary directory.
    data_dir: Path | None = None
    start_delay_s: float = DEFAULT_START_DELAY_S
    device: str = "cpu"
    exec_s: float = DEFAULT_EXEC_S
    model_load_s: float = DEFAULT_MODEL_LOAD_S
    missing_nodes: tuple[str, ...] = ()
    missing_models: tuple[str, ...] = ()
    catalog: str = "dance"
    #: A folder holding core_nodes.json/custom_nodes.json to use instead of the packaged catalogue.
    catalog_dir: Path | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    #: The ComfyUI version to behave as (one of VERSIONS).
    version: str = DEFAULT_VERSION

    @property
    def targeted_interrupt(self) -> bool:
        """0.12.3's POST /interrupt {"prompt_id": X} stops only X (21_interrupt_by_prompt_id)."""
        return self.version != "0.3.39"


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(name: str, default: str) -> str:
        return environ.get(f"COMFYSIM_{name}", default)

    parser = argparse.ArgumentParser(
        prog="dance-comfysim", description="A stand-in for ComfyUI 0.3.39 (or 0.12.3) that runs the dance workflow."
    )
    parser.add_argument("--host", default=env("HOST", DEFAULT_HOST))
    parser.add_argument("--port", type=int, default=int(env("PORT", str(DEFAULT_PORT))))
    parser.add_argument("--data-dir", type=Path, default=env("DATA_DIR", "") or None)
    parser.add_argument("--start-delay-s", type=float, default=float(env("START_DELAY_S", str(DEFAULT_START_DELAY_S))))
    parser.add_argument("--device", choices=DEVICES, default=env("DEVICE", "cpu"))
    parser.add_argument("--exec-s", type=float, default=float(env("EXEC_S", str(DEFAULT_EXEC_S))))
    parser.add_argument("--model-load-s", type=float,
                        default=float(env("MODEL_LOAD_S", str(DEFAULT_MODEL_LOAD_S))))
    parser.add_argument("--missing-node", action="append", default=[], metavar="CLASS")
    parser.add_argument("--missing-model", action="append", default=[], metavar="FILE")
    parser.add_argument("--catalog", choices=CATALOGS, default=env("CATALOG", "dance"))
    parser.add_argument("--version", choices=VERSIONS, default=env("VERSION", DEFAULT_VERSION))
    parser.add_argument("--catalog-dir", type=Path, default=env("CATALOG_DIR", "") or None)
    return parser


def settings_from_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> SimSettings:
    """Parse the command line, falling back to ``COMFYSIM_*`` variables of ``environ``."""
    environment = os.environ if environ is None else environ
    args = _parser(environment).parse_args(list(argv))
    return SimSettings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        start_delay_s=max(0.0, args.start_delay_s),
        device=args.device,
        exec_s=max(0.0, args.exec_s),
        model_load_s=max(0.0, args.model_load_s),
        missing_nodes=tuple(args.missing_node),
        missing_models=tuple(args.missing_model),
        catalog=args.catalog,
        catalog_dir=args.catalog_dir,
        version=args.version,
    )
