"""Runners for the recorded scenarios 02 to 13: uploads, prompts, misc endpoints and errors."""

from __future__ import annotations

from typing import Any

from tests.simulator.replay import exchange, recording, replay_request
from tests.simulator.session import (
    ERRORS_CLIENT,
    MAIN_CLIENT,
    UPLOAD_BODIES,
    ProtocolSession,
    runner,
)

#: Bytes uploaded as corrupt.png in 11 (24 bytes that are not an image).
CORRUPT_PNG = b"this is not a png at all"
PROMPT_SCENARIOS = (
    "03_basic",
    "03b_basic_resubmit_identical",
    "03c_basic_partial_cache",
    "04_animated_webp_png",
    "05_video_savevideo_webm",
    "06_preview_and_websocket_image",
    "07_progress_upscale_model",
    "08_no_client_id",
    "12_exec_error_mid_graph",
    "13_after_error_good_prompt",
)


def upload(session: ProtocolSession, recorded: dict[str, Any]) -> dict[str, Any]:
    files = {
        field: (name, UPLOAD_BODIES.get(size, UPLOAD_BODIES[163]), kind)
        for field, (name, size, kind) in recorded.get("request_files", {}).items()
    }
    return exchange(session.sim.url, "POST", "/upload/image", files=files, data=recorded.get("request_form"))


@runner("02_upload")
def run_upload(session: ProtocolSession) -> dict[str, Any]:
    session.socket(MAIN_CLIENT)
    pairs = []
    for recorded in recording("02_upload.json"):
        if recorded["method"] == "POST":
            pairs.append((recorded, upload(session, recorded)))
        else:
            pairs.append((recorded, exchange(session.sim.url, "GET", recorded["path"])))
    return {"pairs": pairs}


def _prompt_runner(name: str) -> None:
    def run(session: ProtocolSession) -> dict[str, Any]:
        recorded = recording(f"{name}.json")
        client = recorded.get("client_id_sent")
        socket_client = ERRORS_CLIENT if client == ERRORS_CLIENT else MAIN_CLIENT
        session.socket(socket_client)
        body = recorded["post"]["request_json"]
        observed = session.run_prompt(client, body) if client else session.run_prompt(None, body)
        return observed

    runner(name)(run)


for _name in PROMPT_SCENARIOS:
    _prompt_runner(_name)


@runner("09_misc_endpoints")
def run_misc(session: ProtocolSession) -> dict[str, Any]:
    return {
        "pairs": [
            (recorded, replay_request(session.sim.url, recorded)) for recorded in recording("09_misc_endpoints.json")
        ]
    }


@runner("10_validation_errors")
def run_validation_errors(session: ProtocolSession) -> dict[str, Any]:
    socket = session.socket(ERRORS_CLIENT)
    cases = []
    for case in recording("10_validation_errors.json"):
        socket.take()
        response = replay_request(session.sim.url, case["post"])
        frames = []
        if response["status"] == 200:
            frames = socket.wait_done(response["json"]["prompt_id"])
        cases.append((case, response, frames, socket.take()))
    return {"cases": cases}


@runner("11_exec_error_corrupt_image")
def run_corrupt_image(session: ProtocolSession) -> dict[str, Any]:
    recorded = recording("11_exec_error_corrupt_image.json")
    upload_body = {"image": ("corrupt.png", CORRUPT_PNG, "image/png")}
    uploaded = exchange(
        session.sim.url, "POST", "/upload/image", files=upload_body, data=recorded["upload"]["request_form"]
    )
    session.socket(ERRORS_CLIENT)
    observed = session.run_prompt(ERRORS_CLIENT, recorded["post"]["request_json"])
    return {**observed, "upload": uploaded}
