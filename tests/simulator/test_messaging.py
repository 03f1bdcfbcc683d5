"""Who receives what: behaviour read from ComfyUI 0.3.39's source where no transcript covers it."""

from __future__ import annotations

from typing import Any

import requests

from tests.fixtures.comfysim import WsRecorder
from tests.simulator.replay import recording
from tests.simulator.session import png_bytes
from tests.support.processes import wait_until

HTTP_TIMEOUT_S = 10.0
WAIT_S = 20.0


def test_progress_of_a_prompt_without_client_id_reaches_every_socket(comfysim: Any) -> None:
    # main.py's progress hook sends with sid=server.client_id, which is None for a prompt posted
    # without client_id, and a None sid means "every socket". 08 recorded no progress node, so this
    # follows the source: progress is broadcast, executing/executed are not sent at all.
    sim = comfysim(catalog="core")
    requests.post(
        f"{sim.url}/upload/image",
        files={"image": ("probe.png", png_bytes((1, 2, 3)), "image/png")},
        timeout=HTTP_TIMEOUT_S,
    )
    named, anonymous = WsRecorder(sim.ws_url, "someone-else"), WsRecorder(sim.ws_url)
    body = recording("07_progress_upscale_model.json")["post"]["request_json"]
    body = {"prompt": body["prompt"]}
    prompt_id = requests.post(f"{sim.url}/prompt", json=body, timeout=HTTP_TIMEOUT_S).json()["prompt_id"]
    wait_until(
        lambda: requests.get(f"{sim.url}/history/{prompt_id}", timeout=HTTP_TIMEOUT_S).json(),
        WAIT_S,
        "the prompt to finish",
    )
    for socket in (named, anonymous):
        socket.wait_for(lambda fs: sum(f.type == "status" for f in fs) >= 4, what="the final status")
        frames = socket.take()
        kinds = {f.type for f in frames}
        assert kinds == {"status", "progress"}
        progress = [f.json["data"] for f in frames if f.type == "progress"]
        assert [p["value"] for p in progress] == [1, 2, 3, 4, 5, 6]
        assert {(p["prompt_id"], p["node"]) for p in progress} == {(prompt_id, None)}
        socket.close()
