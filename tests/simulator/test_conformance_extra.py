"""Replays of tests/simulator/recordings (a to g): behaviours the dance worker relies on.

Those probes ran after others on the same server, so prompt ``number``s are not compared (only that they
are ints); everything else is compared as in the 01 to 20 replays.
"""

from __future__ import annotations

import copy
import hashlib
import os
from typing import Any

import requests

from tests.fixtures.comfysim import ComfySim, WsRecorder
from tests.simulator.replay import (
    Normalizer,
    assert_equal,
    assert_same_frames,
    assert_same_response,
    exchange,
    recording,
    replay_request,
)
from tests.simulator.session import png_bytes
from tests.support.processes import wait_until

HTTP_TIMEOUT_S = 10.0
WAIT_S = 20.0


def without_numbers(value: Any) -> Any:
    """Zero every prompt ``number`` (responses, history entries, queue items)."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        if isinstance(value.get("number"), int | float):
            value["number"] = 0
        for key, entry in value.items():
            if isinstance(entry, dict) and isinstance(entry.get("prompt"), list):
                entry["prompt"][0] = 0
            value[key] = without_numbers(entry) if key != "prompt" else entry
    return value


def assert_same(actual: dict[str, Any], recorded: dict[str, Any], mine: Normalizer, theirs: Normalizer) -> None:
    if "json" in actual:
        actual = {**actual, "json": without_numbers(actual["json"])}
    expected = {**recorded, "response": dict(recorded["response"])}
    if "json" in expected["response"]:
        expected["response"]["json"] = without_numbers(expected["response"]["json"])
    assert_same_response(actual, expected, mine, theirs)


def upload(sim: ComfySim, name: str, body: bytes, form: dict[str, str] | None = None) -> dict[str, Any]:
    return exchange(sim.url, "POST", "/upload/image", files={"image": (name, body, "image/png")}, data=form)


def run_recorded_prompt(
    sim: ComfySim, socket: WsRecorder, run: dict[str, Any], mine: Normalizer, theirs: Normalizer
) -> dict[str, Any]:
    """POST a recorded prompt and compare the response, frames and history with the recording."""
    socket.take()
    post = replay_request(sim.url, run["post"])
    assert_same(post, run["post"], mine, theirs)
    if post["status"] != 200:
        assert run["ws_frames"] == []
        return post
    frames = socket.wait_done(post["json"]["prompt_id"])
    assert_same_frames(frames, run["ws_frames"], mine, theirs)
    history = exchange(sim.url, "GET", f"/history/{post['json']['prompt_id']}")
    assert_same(history, run["history"], mine, theirs)
    return post


def connect(sim: ComfySim, client_id: str) -> WsRecorder:
    socket = WsRecorder(sim.ws_url, client_id)
    socket.wait_for(lambda frames: frames, what="the first status frame")
    return socket


def disk_listing(sim: ComfySim, top: str) -> list[str]:
    root = sim.data_dir
    found = []
    for folder, _, files in os.walk(root / top):
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files]
    return sorted(found)


def test_subfolder_prefix_names_files_and_views_like_comfyui(comfysim: Any) -> None:
    # Given SaveImage and SaveVideo both saving under "dance/job-123/dance"
    recorded = recording("a_subfolder_prefix.json")
    sim = comfysim(catalog="core")
    mine, theirs = Normalizer(str(sim.data_dir / "input")), Normalizer()
    assert_same(
        upload(sim, "a_src.png", png_bytes((5, 6, 7)), {"overwrite": "true"}), recorded["exchanges"][0], mine, theirs
    )
    socket = connect(sim, recorded["client_id_sent"])
    for run in recorded["runs"].values():
        run_recorded_prompt(sim, socket, run, mine, theirs)
        # Then /view serves each output through the subfolder parameter, as recorded
        for view in run.get("views", []):
            assert_same_response(exchange(sim.url, "GET", view["path"]), view, mine, theirs)
    # And one counter runs across both node types in that folder
    assert disk_listing(sim, "output") == sorted(entry["path"] for entry in recorded["disk_after"])


def test_uploads_overwrite_subfolders_and_deleted_inputs_behave_as_recorded(comfysim: Any) -> None:
    recorded = recording("b_upload_overwrite_subfolder.json")
    sim = comfysim(catalog="core")
    mine, theirs = Normalizer(str(sim.data_dir / "input")), Normalizer()
    upload(sim, "a_src.png", png_bytes((5, 6, 7)))  # the file the recording server still had from probe a
    first, second, subfolder_file = png_bytes((1, 1, 1)), png_bytes((2, 2, 2)), png_bytes((3, 3, 3))
    bodies = iter([first, second, subfolder_file])
    socket = connect(sim, recorded["client_id_sent"])
    for step in recorded["steps"]:
        if "post" in step:
            if "deleted" in step["post"]["note"] and (sim.data_dir / recorded["deleted_from_disk"]).exists():
                os.remove(sim.data_dir / recorded["deleted_from_disk"])
            run_recorded_prompt(sim, socket, step, mine, theirs)
        elif step["method"] == "POST":
            name = step["request_files"]["image"][0]
            assert_same(upload(sim, name, next(bodies), step.get("request_form")), step, mine, theirs)
        elif step["path"].startswith("/view"):
            # The second overwrite=true upload replaced the first: /view serves its bytes
            served = requests.get(sim.url + step["path"], timeout=HTTP_TIMEOUT_S)
            assert served.status_code == step["status"]
            assert hashlib.sha256(served.content).hexdigest() == hashlib.sha256(second).hexdigest()
        else:
            assert_same(exchange(sim.url, "GET", step["path"]), step, mine, theirs)


def test_a_client_chosen_prompt_id_is_ignored(comfysim: Any) -> None:
    recorded = recording("c_client_prompt_id.json")
    sim = comfysim(catalog="core")
    socket = connect(sim, recorded["client_id_sent"])
    mine, theirs = Normalizer(), Normalizer()
    post = run_recorded_prompt(sim, socket, {**recorded, "history": recorded["history_by_returned_id"]}, mine, theirs)
    assert post["json"]["prompt_id"] != recorded["prompt_id_sent"]
    assert_same(
        exchange(sim.url, "GET", recorded["history_by_client_id"]["path"]),
        recorded["history_by_client_id"],
        mine,
        theirs,
    )


def test_interrupt_body_naming_another_prompt_still_interrupts_the_running_one(comfysim: Any) -> None:
    recorded = recording("d_interrupt_body_ignored.json")
    sim = comfysim(catalog="core")
    socket = connect(sim, recorded["client_id_sent"])
    for case in recorded["cases"]:
        socket.take()
        # Given A held in its second ImageScale (where the recording's interrupt arrived) and B pending
        sim.faults({"hold": True, "hold_node": "11"})
        a_id = replay_request(sim.url, shrink_empty(case["post_A"]))["json"]["prompt_id"]
        b_id = replay_request(sim.url, shrink_empty(case["post_B"]))["json"]["prompt_id"]
        wait_until(lambda: sim.state()["held"], WAIT_S, "A to be held")
        # When /interrupt names B (or an unknown id)
        named = b_id if case["case"] == 1 else case["interrupt"]["request_json"]["prompt_id"]
        assert exchange(sim.url, "POST", "/interrupt", json={"prompt_id": named})["status"] == 200
        frames = socket.wait_done(b_id)
        # Then A, the running prompt, is interrupted at its next node, and B runs to success
        kinds = [f.type for f in frames if f.type != "status"]
        assert kinds == [k for k in case["ws_types"] if k != "status"]
        status_a = requests.get(f"{sim.url}/history/{a_id}", timeout=HTTP_TIMEOUT_S).json()[a_id]["status"]
        status_b = requests.get(f"{sim.url}/history/{b_id}", timeout=HTTP_TIMEOUT_S).json()[b_id]["status"]
        assert (status_a["status_str"], status_a["completed"], status_b["status_str"]) == ("error", False, "success")


def shrink_empty(post: dict[str, Any]) -> dict[str, Any]:
    """The recorded slow chain, with small images: the hold fault makes it slow instead."""
    post = copy.deepcopy(post)
    for node in post["request_json"]["prompt"].values():
        for key in ("width", "height"):
            if node["inputs"].get(key, 0) > 64:
                node["inputs"][key] = 64
    return post


def test_identical_prompt_after_its_output_was_deleted_is_served_from_cache_until_freed(comfysim: Any) -> None:
    recorded = recording("e_cached_output_deleted.json")
    sim = comfysim(catalog="core")
    socket = connect(sim, recorded["client_id_sent"])
    mine, theirs = Normalizer(), Normalizer()
    for index, run in enumerate(recorded["runs"]):
        if index == 1:
            os.remove(sim.data_dir / recorded["deleted_between_runs"])
        if index == 2:
            assert_same(
                exchange(sim.url, "POST", "/free", json=recorded["free"]["request_json"]),
                recorded["free"],
                mine,
                theirs,
            )
            wait_until(lambda: sim.state()["memory_frees"] == 1, WAIT_S, "the cache reset")
        run_recorded_prompt(sim, socket, run, mine, theirs)
        assert_same_response(exchange(sim.url, "GET", run["view"]["path"]), run["view"], mine, theirs)
        assert disk_listing(sim, "output") == [entry["path"] for entry in run["disk"]]


def test_the_next_prompt_starts_right_after_the_previous_one_ends(comfysim: Any) -> None:
    recorded = recording("f_back_to_back.json")["pairs"][0]
    sim = comfysim(catalog="core")
    socket = connect(sim, recorded["post_A"]["request_json"]["client_id"])
    socket.take()
    # Given A held at its first ImageScale, When B is posted then
    sim.faults({"hold": True, "hold_class": "ImageScale"})
    replay_request(sim.url, shrink_empty(recorded["post_A"]))
    wait_until(lambda: sim.state()["held"], WAIT_S, "A to be held")
    b_id = replay_request(sim.url, shrink_empty(recorded["post_B_while_A_runs"]))["json"]["prompt_id"]
    socket.wait_for(lambda frames: len(frames) >= len(recorded["ws_types"][:7]), what="B's status")
    sim.release()
    frames = socket.wait_done(b_id)
    # Then the frames come in the recorded order: A success, status, A done, status, B start...
    assert [f.type for f in frames] == recorded["ws_types"]
    assert_equal(
        Normalizer().full([f.json for f in frames][-3:]),
        Normalizer().full([e["json"] for e in recorded["ws_frames"]][-3:]),
        "B's last frames",
    )


def test_view_serves_outputs_with_ranges_head_and_conditional_requests(comfysim: Any) -> None:
    recorded = recording("g_view_large_output.json")
    sim = comfysim(catalog="core")
    upload(sim, "g_noise.png", png_bytes((9, 8, 7), (300, 200)), {"overwrite": "true"})
    body = {
        "prompt": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "g_noise.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "dance/g-job/dance"}},
        }
    }
    prompt_id = requests.post(f"{sim.url}/prompt", json=body, timeout=HTTP_TIMEOUT_S).json()["prompt_id"]
    wait_until(
        lambda: requests.get(f"{sim.url}/history/{prompt_id}", timeout=HTTP_TIMEOUT_S).json(),
        WAIT_S,
        "the prompt to finish",
    )
    full = requests.get(sim.url + recorded["view_path"], timeout=HTTP_TIMEOUT_S)
    size, etag = len(full.content), full.headers["Etag"]
    recorded_size = int(recorded["streamed_get"]["response_headers"]["Content-Length"])
    assert full.headers["Content-Length"] == str(size) and "Transfer-Encoding" not in full.headers
    for request in recorded["requests"]:
        headers = {
            k: _retarget(v, recorded_size, size, recorded["streamed_get"]["response_headers"], etag, full.headers)
            for k, v in (request.get("request_headers") or {}).items()
        }
        actual = requests.request(request["method"], sim.url + request["path"], headers=headers, timeout=HTTP_TIMEOUT_S)
        assert actual.status_code == request["status"], request["note"]
        for header in ("Content-Range", "Accept-Ranges", "Etag", "Content-Disposition", "Content-Type"):
            expected = request["response_headers"].get(header)
            got = actual.headers.get(header)
            assert (got is None) == (expected is None), (request["note"], header)


def _retarget(
    value: str, recorded_size: int, size: int, recorded_headers: dict[str, str], etag: str, headers: Any
) -> str:
    """Move a recorded header value (byte offsets, validators) onto this run's file."""
    value = value.replace(recorded_headers["Etag"], etag)
    value = value.replace(recorded_headers["Last-Modified"], headers["Last-Modified"])
    for offset in (recorded_size - 16, recorded_size + 10):
        value = value.replace(str(offset), str(size - (recorded_size - offset)))
    return value
