"""The simulator answers the recorded upload, prompt and misc-endpoint exchanges as ComfyUI 0.3.39 did."""

from __future__ import annotations

from typing import Any

import pytest

from tests.simulator.replay import Normalizer, assert_same_frames, assert_same_response, recording
from tests.simulator.session import ProtocolSession


def test_uploads_dedup_rename_and_reject_like_comfyui(protocol: ProtocolSession) -> None:
    # Given the recorded upload session (overwrite, dedup, rename, subfolder, temp, bad requests, views)
    observed = protocol.result("02_upload")
    # Then every response has the recorded status, content type and body
    for recorded, actual in observed["pairs"]:
        assert_same_response(actual, recorded, Normalizer(protocol.input_dir), Normalizer())
        disposition = recorded.get("response_headers", {}).get("Content-Disposition")
        if disposition:
            assert actual["headers"]["Content-Disposition"] == disposition
            assert int(actual["headers"]["Content-Length"]) == actual["content_length"]


@pytest.mark.parametrize(
    "scenario",
    [
        "03_basic",
        "03b_basic_resubmit_identical",
        "03c_basic_partial_cache",
        "04_animated_webp_png",
        "05_video_savevideo_webm",
        "06_preview_and_websocket_image",
        "07_progress_upscale_model",
    ],
)
def test_prompt_sends_the_recorded_frames_history_and_files(protocol: ProtocolSession, scenario: str) -> None:
    # Given the recorded server state before this scenario, When the recorded prompt is posted
    recorded = recording(f"{scenario}.json")
    observed = protocol.result(scenario)
    mine, theirs = Normalizer(protocol.input_dir), Normalizer()
    # Then the response, every websocket frame, the history entry and the output files match
    assert_same_response(observed["post"], recorded["post"], mine, theirs)
    assert_same_frames(observed["frames"], recorded["ws_frames"], mine, theirs)
    assert_same_response(observed["history"], recorded["history"], mine, theirs)
    assert len(observed["views"]) == len(recorded["views"])
    for actual, view in zip(observed["views"], recorded["views"], strict=True):
        assert_same_response(actual, view, mine, theirs)
        disposition = view["response_headers"]["Content-Disposition"]
        assert mine(actual["headers"]["Content-Disposition"]) == theirs(disposition)


def test_prompt_without_client_id_sends_only_status_frames(protocol: ProtocolSession) -> None:
    # Given a socket connected with a clientId, When a prompt is posted without client_id
    recorded = recording("08_no_client_id.json")
    observed = protocol.result("08_no_client_id")
    mine, theirs = Normalizer(protocol.input_dir), Normalizer()
    # Then the socket sees the three status broadcasts only, and the prompt still ran
    assert_same_response(observed["post"], recorded["post"], mine, theirs)
    assert_same_frames(observed["frames"], recorded["ws_frames"], mine, theirs)
    assert_same_response(observed["history"], recorded["history"], mine, theirs)


def test_misc_endpoints_answer_as_recorded(protocol: ProtocolSession) -> None:
    # Given the recorded requests to /queue, /prompt, /object_info, /history, /view, /models, /api/*...
    observed = protocol.result("09_misc_endpoints")
    for recorded, actual in observed["pairs"]:
        where = f"{recorded['method']} {recorded['path']}"
        # Then status and content type always match
        assert actual["status"] == recorded["status"], where
        assert actual["content_type"] == recorded["response"]["content_type"], where
        expected = recorded["response"].get("json")
        if recorded["path"] == "/api/system_stats":
            # Machine-dependent numbers: same keys and value types
            assert _shape(actual["json"]) == _shape(expected), where
        elif expected is not None:
            assert Normalizer(protocol.input_dir).full(actual["json"]) == Normalizer().full(expected), where
        elif recorded["response"].get("content_length") == 0:
            assert actual["content_length"] == 0, where


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k not in ("argv", "python_version")}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__
