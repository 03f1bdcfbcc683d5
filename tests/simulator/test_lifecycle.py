"""Startup and SIGKILL behave as recorded (01_startup, 20_kill9_mid_run)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import websocket

from tests.fixtures.comfysim import WsRecorder
from tests.simulator.replay import Normalizer, assert_equal, recording
from tests.simulator.scenarios_queue import shrink
from tests.simulator.session import png_bytes

HTTP_TIMEOUT_S = 10.0
WAIT_S = 20.0
#: Long enough that the refused-connection checks surely run inside the window, in seconds.
START_DELAY_S = 2.0


def test_connections_are_refused_until_the_start_delay_passes_then_everything_answers(
    comfysim_unstarted: Any,
) -> None:
    # Given a simulator still "importing" (nothing bound yet)
    sim = comfysim_unstarted(start_delay_s=START_DELAY_S, catalog="core")
    sim.process.wait_for_log("Simulating startup")
    # Then HTTP and WebSocket connections are refused, like a ComfyUI that has not bound its port
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sim.url}/system_stats", timeout=HTTP_TIMEOUT_S)
    with pytest.raises(ConnectionRefusedError):
        websocket.create_connection(sim.ws_url, timeout=HTTP_TIMEOUT_S)
    # When it prints the line the real server prints once listening
    sim.process.wait_for_log(f"To see the GUI go to: http://127.0.0.1:{sim.port}")
    # Then /system_stats, / and /ws all answer at once
    stats = requests.get(f"{sim.url}/system_stats", timeout=HTTP_TIMEOUT_S)
    root = requests.get(f"{sim.url}/", timeout=HTTP_TIMEOUT_S)
    socket = WsRecorder(sim.ws_url)
    first = socket.wait_for(lambda frames: frames, what="the first frame")[0].json
    socket.close()
    assert (stats.status_code, root.status_code, root.headers["Content-Type"]) == (200, 200, "text/html")
    recorded = recording("01_startup.json")["runs"][0]["system_stats"]
    assert set(stats.json()) == set(recorded) and set(stats.json()["devices"][0]) == set(recorded["devices"][0])
    assert first["type"] == "status" and len(first["data"]["sid"]) == 32


def test_sigkill_mid_run_loses_the_prompt_and_a_restart_is_empty_but_keeps_file_counters(
    comfysim: Any,
) -> None:
    recorded = recording("20_kill9_mid_run.json")
    # Given a server that already wrote probe_basic_00001_.png and is running a slow prompt
    sim = comfysim(catalog="core")
    requests.post(
        f"{sim.url}/upload/image",
        files={"image": ("probe.png", png_bytes((9, 9, 9)), "image/png")},
        timeout=HTTP_TIMEOUT_S,
    )
    basic = {**recording("03_basic.json")["post"]["request_json"], "client_id": "probe-kill-A"}
    done = WsRecorder(sim.ws_url, "probe-kill-A")
    done.wait_done(requests.post(f"{sim.url}/prompt", json=basic, timeout=HTTP_TIMEOUT_S).json()["prompt_id"])
    sim.faults({"hold": True, "hold_class": "ImageUpscaleWithModel"})
    slow = requests.post(f"{sim.url}/prompt", json=shrink(recorded["post"]["request_json"]), timeout=HTTP_TIMEOUT_S)
    killed_id = slow.json()["prompt_id"]
    done.wait_for(lambda frames: any(f.type == "progress" for f in frames), what="progress")
    # When it is SIGKILLed
    sim.process.kill()
    # Then the websocket-client reader sees the connection lost, and HTTP is refused
    assert done.closed.wait(WAIT_S)
    assert isinstance(done.close_error, websocket.WebSocketConnectionClosedException)
    assert not sim.answers()
    # When it restarts on the same port and folders
    again = comfysim(catalog="core", port=sim.port, data_dir=sim.data_dir)
    # Then history and queue are empty, numbering restarts at 0, and file counters continue from disk
    for exchange in recorded["after_restart"][:3]:
        path = exchange["path"].replace("88cc918b-072a-482a-b8e8-8d1eb7ff1f28", killed_id)
        assert requests.get(again.url + path, timeout=HTTP_TIMEOUT_S).json() == exchange["response"]["json"]
    socket = WsRecorder(again.ws_url, "probe-kill-B")
    post = recorded["after_restart"][3]
    response = requests.post(f"{again.url}/prompt", json=post["request_json"], timeout=HTTP_TIMEOUT_S).json()
    assert response["number"] == 0
    frames = socket.wait_done(response["prompt_id"])
    assert [f.type for f in frames] == recorded["after_restart_ws_types"]
    history = requests.get(f"{again.url}/history/{response['prompt_id']}", timeout=HTTP_TIMEOUT_S).json()
    expected = recorded["after_restart"][4]["response"]["json"]
    (entry,) = expected.values()
    entry["outputs"]["2"]["images"][0]["filename"] = "probe_basic_00002_.png"
    assert_equal(Normalizer().full(history), Normalizer().full(expected), "history after restart")
