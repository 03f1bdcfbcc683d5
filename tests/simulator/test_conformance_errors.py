"""The simulator rejects and fails prompts with ComfyUI 0.3.39's recorded error shapes (10 to 13)."""

from __future__ import annotations

from tests.simulator.replay import (
    Normalizer,
    assert_same_frames,
    assert_same_response,
    frame_types,
    recording,
)
from tests.simulator.session import ProtocolSession


def test_invalid_prompts_get_the_recorded_status_and_error_bodies(protocol: ProtocolSession) -> None:
    # Given the 23 recorded POST /prompt failures (unknown class, missing input, bad types, bad links...)
    observed = protocol.result("10_validation_errors")
    assert len(observed["cases"]) == len(recording("10_validation_errors.json"))
    for case, response, frames, _ in observed["cases"]:
        mine, theirs = Normalizer(protocol.input_dir), Normalizer()
        # Then each answer matches: 400 JSON errors, 500 plain text, or 200 with node_errors
        assert_same_response(response, case["post"], mine, theirs)
        # And only the accepted ones produce websocket frames, the recorded ones
        assert_same_frames(frames, case["ws_frames_within_0.7s"], mine, theirs)


def test_accepted_prompt_with_a_failing_output_reports_node_errors_with_http_200(
    protocol: ProtocolSession,
) -> None:
    # Given output 3 valid and output 4 depending on a node with a missing input
    cases = {
        case["name"]: (response, frames)
        for case, response, frames, _ in protocol.result("10_validation_errors")["cases"]
    }
    response, frames = cases["partial_valid_outputs"]
    # Then the prompt is accepted, node 5's error is listed, and only output 3 runs
    assert response["status"] == 200
    assert response["json"]["node_errors"]["5"]["dependent_outputs"] == ["4"]
    executing = [f.json["data"]["node"] for f in frames if f.type == "executing"]
    assert executing == ["2", "3", None]


def test_corrupt_input_image_fails_in_the_first_node_with_pil_error(protocol: ProtocolSession) -> None:
    # Given a non-image uploaded as corrupt.png, When a prompt loads it
    recorded = recording("11_exec_error_corrupt_image.json")
    observed = protocol.result("11_exec_error_corrupt_image")
    mine, theirs = Normalizer(protocol.input_dir), Normalizer()
    # Then validation passes, and execution fails in LoadImage with the recorded execution_error
    assert_same_response(observed["upload"], recorded["upload"], mine, theirs)
    assert_same_response(observed["post"], recorded["post"], mine, theirs)
    assert_same_frames(observed["frames"], recorded["ws_frames"], mine, theirs)
    assert_same_response(observed["history"], recorded["history"], mine, theirs)


def test_error_mid_graph_keeps_the_sibling_output_that_finished(protocol: ProtocolSession) -> None:
    # Given SaveImage and an h264 SaveVideo of odd-sized frames in one prompt
    recorded = recording("12_exec_error_mid_graph.json")
    observed = protocol.result("12_exec_error_mid_graph")
    mine, theirs = Normalizer(protocol.input_dir), Normalizer()
    # Then SaveImage runs first and succeeds, SaveVideo fails with av's error, history keeps SaveImage's file
    assert_same_response(observed["post"], recorded["post"], mine, theirs)
    assert_same_frames(observed["frames"], recorded["ws_frames"], mine, theirs)
    assert_same_response(observed["history"], recorded["history"], mine, theirs)
    assert frame_types(observed["frames"]) == recorded["ws_types"]


def test_queue_goes_on_normally_after_an_error(protocol: ProtocolSession) -> None:
    recorded = recording("13_after_error_good_prompt.json")
    observed = protocol.result("13_after_error_good_prompt")
    mine, theirs = Normalizer(protocol.input_dir), Normalizer()
    assert_same_response(observed["post"], recorded["post"], mine, theirs)
    assert_same_frames(observed["frames"], recorded["ws_frames"], mine, theirs)
    assert_same_response(observed["history"], recorded["history"], mine, theirs)
    for actual, view in zip(observed["views"], recorded["views"], strict=True):
        assert_same_response(actual, view, mine, theirs)
