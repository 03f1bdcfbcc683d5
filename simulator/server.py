"""The HTTP and WebSocket server: ComfyUI's routes (each also under /api) plus the /__sim__ test hooks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

from simulator.catalog import Catalog
from simulator.faults import Faults, FaultSpecError
from simulator.files import FileRoutes
from simulator.jobs import JobRoutes
from simulator.messages import Messenger
from simulator.model_loads import ModelLoads
from simulator.node_call import InterruptFlag
from simulator.paths import Dirs
from simulator.prompt_executor import PromptExecutor
from simulator.prompt_queue import PromptQueue
from simulator.settings import SimSettings
from simulator.stats import system_stats
from simulator.validation import PromptValidator
from simulator.worker import PromptWorker

log = logging.getLogger("simulator.server")

#: The page GET / serves (the real one is the frontend's index.html).
INDEX_HTML = (
    '<!doctype html><html lang="en"><head><meta charset="UTF-8"><title>ComfyUI</title></head>'
    '<body class="litegraph grid"><div id="vue-app"></div></body></html>'
)
#: Size and colour of the example.png a fresh input folder gets.
EXAMPLE_IMAGE_PX = 64
EXAMPLE_IMAGE_RGB = (120, 120, 120)
#: Milliseconds per second: ComfyUI's timestamps are epoch milliseconds.
MS_PER_S = 1000
NO_PROMPT_ERROR = {
    "type": "no_prompt",
    "message": "No prompt provided",
    "details": "No prompt provided",
    "extra_info": {},
}


@dataclass
class Services:
    catalog: Catalog
    queue: PromptQueue
    messenger: Messenger
    executor: PromptExecutor
    faults: Faults
    interrupt: InterruptFlag
    settings: SimSettings


class ComfyRoutes:
    """ComfyUI's JSON endpoints; bodies and status codes as recorded in 09, 10, 14, 17 and 18."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.validator = PromptValidator(services.catalog)
        self.number = 0

    async def post_prompt(self, request: web.Request) -> web.Response:
        text = await request.text()
        json_data: Any = None
        try:
            json_data = json.loads(text)  # what request.json() does; a bad body becomes aiohttp's 500
        finally:
            # Counted even when the body is not JSON; kept as sent, before validation coerces it.
            self.s.faults.received_prompt(json_data)
        if "number" in json_data:
            number: Any = float(json_data["number"])
        else:
            number = self.number
            if _truthy_member(json_data, "front"):
                number = -number
            self.number += 1
        if "prompt" not in json_data:
            return web.json_response({"error": NO_PROMPT_ERROR, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        valid, error, outputs, node_errors = self.validator.validate_prompt(prompt)
        extra_data = json_data.get("extra_data", {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if self.s.settings.version != "0.3.39":
            extra_data["create_time"] = int(time.time() * MS_PER_S)  # 0.12.3's prompt[3] has it (22)
        if not valid:
            log.warning("invalid prompt: %s", error)
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        prompt_id = str(uuid.uuid4())
        self.s.queue.put((number, prompt_id, prompt, extra_data, outputs))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(queue_info(self.s.queue))

    async def get_queue(self, request: web.Request) -> web.Response:
        running, pending = self.s.queue.current()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def post_queue(self, request: web.Request) -> web.Response:
        json_data: Any = await request.json()
        if _truthy_member(json_data, "clear"):
            self.s.queue.wipe_queue()
        if "delete" in json_data:
            for prompt_id in json_data["delete"]:
                self.s.queue.delete_queue_item(prompt_id)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        # The body is ignored in 0.3.39, even one that is not JSON (16, 18). 0.12.3 reads a JSON object's
        # prompt_id: one that is not running is skipped, none (no body, {}, "") interrupts globally, and a
        # JSON array is a 500 (21, 18).
        target = _interrupt_target(await request.text()) if self.s.settings.targeted_interrupt else None
        self.s.faults.record(interrupt=True)
        if target:
            if self.s.queue.running_prompt_id() != target:
                log.info("Prompt %s is not currently running, skipping interrupt", target)
                return web.Response(status=200)
            log.info("Interrupting prompt %s", target)
        self.s.interrupt.set()
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.Response:
        json_data: Any = await request.json()
        for flag in ("unload_models", "free_memory"):
            if json_data.get(flag, False):
                self.s.queue.set_flag(flag, json_data[flag])
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        max_items = request.rel_url.query.get("max_items")
        limit = int(max_items) if max_items is not None else None
        return web.json_response(self.s.queue.get_history(max_items=limit))

    async def get_history_item(self, request: web.Request) -> web.Response:
        return web.json_response(self.s.queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.Response:
        json_data: Any = await request.json()
        if _truthy_member(json_data, "clear"):
            self.s.queue.wipe_history()
        if "delete" in json_data:
            for prompt_id in json_data["delete"]:
                self.s.queue.delete_history_item(prompt_id)
        return web.Response(status=200)

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.s.catalog.all_info())

    async def object_info_node(self, request: web.Request) -> web.Response:
        node_class = request.match_info["node_class"]
        out = {node_class: self.s.catalog.info(node_class)} if self.s.catalog.has(node_class) else {}
        return web.json_response(out)

    async def system_stats(self, request: web.Request) -> web.Response:
        settings = self.s.settings
        return web.json_response(system_stats(settings.device, _comfy_argv(settings), settings.version))

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(self.s.catalog.model_folders())

    async def model_files(self, request: web.Request) -> web.Response:
        files = self.s.catalog.model_files(request.match_info["folder"])
        return web.Response(status=404) if files is None else web.json_response(files)

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])


class SimRoutes:
    """/__sim__/: fault injection and introspection for tests; never part of ComfyUI."""

    def __init__(self, services: Services) -> None:
        self.s = services

    async def faults(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.s.faults.arm(await request.json()))
        except (FaultSpecError, json.JSONDecodeError, TypeError, ValueError) as ex:
            return web.json_response({"error": str(ex)}, status=400)

    async def release(self, request: web.Request) -> web.Response:
        self.s.faults.release()
        return web.json_response({"released": True})

    async def models(self, request: web.Request) -> web.Response:
        """``{"missing": [file, ...]}``: those model files are gone from their folders from now on, every other
        one is back (an operator's copy or delete, a models volume unmounted)."""
        try:
            body = await request.json()
            names = body["missing"]
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise TypeError("missing must be a list of file names")
        except (json.JSONDecodeError, KeyError, TypeError) as ex:
            return web.json_response({"error": str(ex)}, status=400)
        self.s.catalog.set_missing_models(names)
        return web.json_response({"missing": sorted(self.s.catalog.missing_models)})

    async def last_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"body": self.s.faults.last_prompt_body()})

    async def state(self, request: web.Request) -> web.Response:
        snapshot = self.s.faults.snapshot(self.s.queue.running_prompt_id())
        snapshot["sockets"] = sorted(self.s.messenger.sockets)
        snapshot["model_loads"] = self.s.executor.model_loads.snapshot()
        return web.json_response(snapshot)


def _interrupt_target(text: str) -> str | None:
    """The prompt_id a 0.12.3 POST /interrupt body names, or None for a global interrupt."""
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        return None
    if isinstance(body, list):
        raise web.HTTPInternalServerError()
    target = body.get("prompt_id") if isinstance(body, dict) else None
    return str(target) if target else None


def _truthy_member(body: Any, key: str) -> bool:
    """``key in body and body[key]``: ComfyUI tests membership first, so a JSON list body is not an error."""
    if key not in body:
        return False
    return bool(body[key])


def queue_info(queue: PromptQueue) -> dict[str, Any]:
    return {"exec_info": {"queue_remaining": queue.tasks_remaining()}}


def _comfy_argv(settings: SimSettings) -> list[str]:
    """The argv a real ComfyUI started for this role would report."""
    argv = ["main.py", "--listen", settings.host, "--port", str(settings.port), "--disable-auto-launch"]
    return ["main.py", "--cpu", *argv[1:]] if settings.device == "cpu" else argv


def build_app(services: Services, web_root: Path) -> web.Application:
    comfy = ComfyRoutes(services)
    files = FileRoutes(services.catalog.dirs, services.faults)
    routes = [
        ("GET", "/ws", services.messenger.handle_ws),
        ("GET", "/prompt", comfy.get_prompt),
        ("POST", "/prompt", comfy.post_prompt),
        ("GET", "/queue", comfy.get_queue),
        ("POST", "/queue", comfy.post_queue),
        ("POST", "/interrupt", comfy.post_interrupt),
        ("POST", "/free", comfy.post_free),
        ("GET", "/history", comfy.get_history),
        ("GET", "/history/{prompt_id}", comfy.get_history_item),
        ("POST", "/history", comfy.post_history),
        ("GET", "/object_info", comfy.object_info),
        ("GET", "/object_info/{node_class}", comfy.object_info_node),
        ("GET", "/system_stats", comfy.system_stats),
        ("GET", "/models", comfy.models),
        ("GET", "/models/{folder}", comfy.model_files),
        ("GET", "/embeddings", comfy.embeddings),
        ("POST", "/upload/image", files.upload_image),
        ("GET", "/view", files.view),
    ]
    if services.settings.version != "0.3.39":
        jobs = JobRoutes(services.queue)
        # Registered as /api/jobs: with the /api alias below that gives /api/jobs and /api/api/jobs, and
        # no /jobs (22).
        routes += [("GET", "/api/jobs", jobs.list_jobs), ("GET", "/api/jobs/{job_id}", jobs.get_job)]
    app = web.Application(client_max_size=services.settings.max_upload_bytes,
                          middlewares=[_late_answers(services.faults)])
    sim = SimRoutes(services)
    app.router.add_post("/__sim__/faults", sim.faults)
    app.router.add_post("/__sim__/release", sim.release)
    app.router.add_get("/__sim__/state", sim.state)
    app.router.add_get("/__sim__/last_prompt", sim.last_prompt)
    app.router.add_post("/__sim__/models", sim.models)
    # ComfyUI registers every route under /api too; its GET routes (RouteTableDef.get -> add_get) also
    # answer HEAD, which recordings/g shows for /view.
    for prefix in ("/api", ""):
        for method, path, handler in routes:
            if method == "GET":
                app.router.add_get(prefix + path, handler)
            else:
                app.router.add_route(method, prefix + path, handler)
    index = web_root / "index.html"

    async def root(request: web.Request) -> web.FileResponse:
        return web.FileResponse(index, headers={"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})

    app.router.add_get("/", root)
    # Unknown GET paths fall through to the static web root, which answers 404 with an empty
    # application/octet-stream body, exactly as the recorded /features request shows (09).
    app.router.add_static("/", web_root)
    return app


def _late_answers(faults: Faults) -> Any:
    """The ``slow_route`` fault: the request is handled, its answer leaves late."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        delay_s = faults.answer_delay_s(request.path)
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        return response

    return middleware


def ensure_example_image(dirs: Dirs) -> None:
    """A fresh ComfyUI checkout ships input/example.png; LoadImage lists it (02_upload)."""
    path = os.path.join(dirs.input_dir, "example.png")
    if not os.path.exists(path):
        Image.new("RGB", (EXAMPLE_IMAGE_PX, EXAMPLE_IMAGE_PX), EXAMPLE_IMAGE_RGB).save(path)


def build_services(settings: SimSettings, data_dir: Path, loop: asyncio.AbstractEventLoop) -> tuple[Services, Path]:
    # main.cleanup_temp(): every start empties temp/, so previews and save_output=false videos of a
    # previous run are gone after a restart; input/ and output/ are kept.
    shutil.rmtree(os.path.join(os.path.abspath(data_dir), "temp"), ignore_errors=True)
    dirs = Dirs.under(data_dir)
    ensure_example_image(dirs)
    web_root = data_dir / "web"
    os.makedirs(web_root, exist_ok=True)
    (web_root / "index.html").write_text(INDEX_HTML, encoding="utf-8")
    catalog = Catalog.load(
        settings.catalog, dirs, settings.missing_nodes, settings.missing_models, settings.catalog_dir
    )
    # The messenger reports the queue's size and the queue announces changes through the messenger;
    # the closure reads ``queue`` only once both exist.
    messenger = Messenger(loop, lambda: queue_info(queue))
    queue = PromptQueue(messenger.queue_updated)
    faults = Faults(settings.exec_s)
    interrupt = InterruptFlag(on_set=faults.interrupt_arrived)
    executor = PromptExecutor(catalog, messenger, faults, interrupt, ModelLoads(settings.model_load_s))
    services = Services(catalog, queue, messenger, executor, faults, interrupt, settings)
    PromptWorker(queue, executor, messenger, faults).start()
    return services, web_root
