"""``python -m simulator`` / ``dance-comfysim``: run the ComfyUI stand-in until killed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from simulator.server import build_app, build_services
from simulator.settings import SimSettings, settings_from_args

log = logging.getLogger("simulator")


async def serve(settings: SimSettings, data_dir: Path) -> None:
    stop = asyncio.Event()
    # SIGTERM ends the run cleanly, so a temporary data directory is removed; SIGKILL just kills.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # Like the real server while it imports torch and custom nodes: nothing listens yet, so every
    # connection is refused until the delay is over, then everything answers at once (01_startup).
    if settings.start_delay_s > 0:
        log.info("Simulating startup: the port stays closed for %.1f s", settings.start_delay_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.start_delay_s)
        if stop.is_set():
            return
    services, web_root = build_services(settings, data_dir, asyncio.get_running_loop())
    runner = web.AppRunner(build_app(services, web_root), access_log=None)
    await runner.setup()
    log.info("Starting server\n")
    await web.TCPSite(runner, settings.host, settings.port).start()
    print(f"To see the GUI go to: http://{settings.host}:{settings.port}", flush=True)
    publisher = asyncio.create_task(services.messenger.publish_loop())
    await stop.wait()
    publisher.cancel()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    settings = settings_from_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    log.info(
        "ComfyUI version: %s (simulator, catalog %s, device %s, %.1f s per first model load)",
        settings.version,
        settings.catalog,
        settings.device,
        settings.model_load_s,
    )
    if settings.data_dir is None:
        with tempfile.TemporaryDirectory(prefix="comfysim-") as tmp:
            _run(settings, Path(tmp))
    else:
        _run(settings, settings.data_dir)


def _run(settings: SimSettings, data_dir: Path) -> None:
    log.info("Data directory: %s", data_dir)
    try:
        asyncio.run(serve(settings, data_dir))
    except KeyboardInterrupt:
        log.info("Stopped")


if __name__ == "__main__":
    main()
