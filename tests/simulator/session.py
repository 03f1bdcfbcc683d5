"""One simulator that replays the recorded probe session in its recorded order.

The transcripts come from one server that ran every scenario in sequence, and later scenarios depend on
earlier ones: the prompt ``number`` counts every POST, output counters continue from files on disk and the
cache holds the previous prompt's nodes. :meth:`ProtocolSession.result` therefore runs every earlier
scenario first (once), so each test can be run alone and still compares against the same state.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any, cast

from PIL import Image

from tests.fixtures.comfysim import ComfySim, Frame, WsRecorder
from tests.simulator.replay import exchange
from tests.support.processes import wait_until

#: Scenario names in the order the recording server saw them.
ORDER = (
    "02_upload",
    "03_basic",
    "03b_basic_resubmit_identical",
    "03c_basic_partial_cache",
    "04_animated_webp_png",
    "05_video_savevideo_webm",
    "06_preview_and_websocket_image",
    "07_progress_upscale_model",
    "08_no_client_id",
    "09_misc_endpoints",
    "10_validation_errors",
    "11_exec_error_corrupt_image",
    "12_exec_error_mid_graph",
    "13_after_error_good_prompt",
    "14_interrupt_and_queue_delete",
    "15_interrupt_non_progress_node",
    "16_interrupt_idle",
    "17_queue_clear",
    "18_history_delete_clear_free",
    "19_two_clients",
)
#: Client ids the recording probes used.
MAIN_CLIENT = "probe-main-0001"
ERRORS_CLIENT = "probe-errors-0001"
INTERRUPT_CLIENT = "probe-intr-A"
PASSIVE_CLIENT = "probe-intr-B"
#: probe.png is 64x48 (the size of 06's binary preview frame).
PROBE_SIZE = (64, 48)
#: Seconds to wait for a prompt's history entry.
HISTORY_TIMEOUT_S = 30.0

Runner = Callable[["ProtocolSession"], dict[str, Any]]
RUNNERS: dict[str, Runner] = {}


def runner(name: str) -> Callable[[Runner], Runner]:
    def register(function: Runner) -> Runner:
        RUNNERS[name] = function
        return function

    return register


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = PROBE_SIZE) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


#: Stand-ins for the recorded upload bodies, by recorded size: probe.png, and "different bytes".
UPLOAD_BODIES = {163: png_bytes((200, 40, 40)), 171: png_bytes((40, 200, 40))}


class ProtocolSession:
    def __init__(self, sim: ComfySim) -> None:
        self.sim = sim
        self.results: dict[str, dict[str, Any]] = {}
        self.sockets: dict[str, WsRecorder] = {}

    @property
    def input_dir(self) -> str:
        return str(self.sim.data_dir / "input")

    def result(self, name: str) -> dict[str, Any]:
        for scenario in ORDER[: ORDER.index(name) + 1]:
            if scenario not in self.results:
                self.results[scenario] = RUNNERS[scenario](self)
        return self.results[name]

    def socket(self, client_id: str) -> WsRecorder:
        if client_id not in self.sockets:
            recorder = WsRecorder(self.sim.ws_url, client_id)
            recorder.wait_for(lambda frames: frames, what="the first status frame")
            recorder.take()
            self.sockets[client_id] = recorder
        return self.sockets[client_id]

    def close_socket(self, client_id: str) -> None:
        recorder = self.sockets.pop(client_id)
        recorder.close()

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        return exchange(self.sim.url, "POST", "/prompt", json=copy.deepcopy(body))

    def get(self, path: str) -> dict[str, Any]:
        return exchange(self.sim.url, "GET", path)

    def history(self, prompt_id: str) -> dict[str, Any]:
        def present() -> dict[str, Any] | None:
            response = self.get(f"/history/{prompt_id}")
            return response if response["json"] else None

        return cast(dict[str, Any], wait_until(present, HISTORY_TIMEOUT_S, f"history of {prompt_id}"))

    def run_prompt(self, client_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """POST a prompt, wait for its end, and capture response, frames, history and output views."""
        socket = self.socket(client_id or MAIN_CLIENT)
        socket.take()
        post = self.post(body)
        prompt_id = post["json"]["prompt_id"]
        if client_id is None:
            history = self.history(prompt_id)
            frames = socket.wait_for(lambda f: len(f) >= 3 and f, what="three status frames")
        else:
            frames = socket.wait_done(prompt_id)
            history = self.history(prompt_id)
        socket.take()
        return {"post": post, "frames": frames, "history": history, "views": self.views(history, prompt_id)}

    def views(self, history: dict[str, Any], prompt_id: str) -> list[dict[str, Any]]:
        views = []
        for output in history["json"][prompt_id]["outputs"].values():
            for item in output.get("images", []):
                path = f"/view?filename={item['filename']}&subfolder={item['subfolder']}&type={item['type']}"
                views.append(self.get(path))
        return views

    def close(self) -> None:
        for recorder in self.sockets.values():
            recorder.close()


def frames_of(observed: dict[str, Any]) -> list[Frame]:
    frames: list[Frame] = observed["frames"]
    return frames
