"""Interrupts, queue and history edits and client targeting behave as recorded (14 to 19).

The slow jobs use smaller images than the recordings and are paused with the ``hold`` fault, so the
number of ``progress`` ticks before an interrupt differs; runs of progress frames are collapsed and their
values left out, everything else is compared as recorded.
"""

from __future__ import annotations

from typing import Any

from tests.fixtures.comfysim import Frame
from tests.simulator.replay import (
    Normalizer,
    assert_equal,
    assert_same_response,
    collapse_progress,
    frame_record,
    frame_types,
    recording,
)
from tests.simulator.scenarios_queue import shrink
from tests.simulator.session import ProtocolSession


def _without_progress_values(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for frame in frames:
        if frame.get("json", {}).get("type") != "progress":
            out.append(frame)
        elif not (out and out[-1].get("json", {}).get("type") == "progress"):
            out.append({"json": {"type": "progress", "data": {**frame["json"]["data"], "value": "*", "max": "*"}}})
    return out


def assert_same_collapsed(
    actual: list[Frame], recorded: list[dict[str, Any]], mine: Normalizer, theirs: Normalizer
) -> None:
    got = _without_progress_values([mine.full(frame_record(f)) for f in actual])
    want = _without_progress_values([theirs.full({"json": e["json"]}) for e in recorded])
    # Where a status broadcast falls among another prompt's frames is timing (when the POST came in),
    # so the status frames and the other frames are compared as two sequences.
    for label, keep in (("status", True), ("targeted", False)):
        assert_equal(
            [f for f in got if _is_status(f) == keep],
            [f for f in want if _is_status(f) == keep],
            f"{label} websocket frames (progress runs collapsed)",
        )


def _is_status(frame: dict[str, Any]) -> bool:
    return bool(frame.get("json", {}).get("type") == "status")


def _targeted(types: list[str]) -> list[str]:
    return [kind for kind in types if kind != "status"]


def _shrunk_exchange(recorded: dict[str, Any]) -> dict[str, Any]:
    recorded = dict(recorded)
    recorded["response"] = {**recorded["response"], "json": shrink_queue(recorded["response"]["json"])}
    return recorded


def shrink_queue(body: Any) -> Any:
    """Apply the test's image shrinking to the prompts a recorded /queue or /history body holds."""
    if isinstance(body, dict) and set(body) == {"queue_running", "queue_pending"}:
        return {key: [[*item[:2], shrink(item[2]), *item[3:]] for item in items] for key, items in body.items()}
    if isinstance(body, dict):
        return {
            key: {**entry, "prompt": [*entry["prompt"][:2], shrink(entry["prompt"][2]), *entry["prompt"][3:]]}
            for key, entry in body.items()
        }
    return body


def test_interrupt_stops_the_running_prompt_and_deleted_prompts_never_run(protocol: ProtocolSession) -> None:
    # Given A running (held mid-progress), B and C pending
    recorded = recording("14_interrupt_and_queue_delete.json")
    observed = protocol.result("14_interrupt_and_queue_delete")
    mine, theirs = Normalizer(protocol.input_dir), Normalizer()
    for actual, post in zip(observed["posts"], recorded["posts"], strict=True):
        assert_same_response(actual, post, mine, theirs)
    # When B is deleted, an unknown id is deleted and A is interrupted
    for key in ("queue_while_running", "delete_B", "delete_unknown", "queue_after_delete", "interrupt"):
        assert_same_response(
            observed[key], _shrunk_exchange(recorded[key]) if "queue_" in key else recorded[key], mine, theirs
        )
    # Then A reports execution_interrupted at the upscale node, B never runs, C runs normally
    clientA = recording("14_interrupt_and_queue_delete.clientA.ws.jsonl")
    assert_same_collapsed(observed["clientA"], clientA, mine, theirs)
    for key in ("history_A", "history_B", "history_C", "queue_idle"):
        assert_same_response(observed[key], _shrunk_exchange(recorded[key]), mine, theirs)
    # And a passive client sees only the status broadcasts
    assert frame_types(observed["clientB"]) == recorded["clientB_types"]


def test_interrupt_during_a_node_without_progress_takes_effect_at_the_next_node(
    protocol: ProtocolSession,
) -> None:
    recorded = recording("15_interrupt_non_progress_node.json")
    observed = protocol.result("15_interrupt_non_progress_node")
    mine, theirs = Normalizer(protocol.input_dir), Normalizer()
    assert_same_response(observed["post"], recorded["post"], mine, theirs)
    assert_same_response(observed["interrupt"], recorded["interrupt"], mine, theirs)
    assert frame_types(observed["frames"]) == recorded["types"]
    assert_same_response(observed["history"], _shrunk_exchange(recorded["history"]), mine, theirs)


def test_interrupt_while_idle_does_not_affect_the_next_prompt(protocol: ProtocolSession) -> None:
    recorded = recording("16_interrupt_idle.json")
    observed = protocol.result("16_interrupt_idle")
    mine, theirs = Normalizer(protocol.input_dir), Normalizer()
    assert_same_response(observed["interrupt_idle"], recorded["interrupt_idle"], mine, theirs)
    assert_same_response(observed["post_after"], recorded["post_after"], mine, theirs)
    assert_same_collapsed(observed["frames"], recorded["frames"], mine, theirs)
    assert_same_response(observed["interrupt_with_body"], recorded["interrupt_with_body"], mine, theirs)


def test_queue_clear_removes_pending_prompts_only_and_front_jumps_the_queue(
    protocol: ProtocolSession,
) -> None:
    recorded = recording("17_queue_clear.json")
    observed = protocol.result("17_queue_clear")
    mine, theirs = Normalizer(protocol.input_dir), Normalizer()
    for actual, post in zip(observed["posts"], recorded["posts"], strict=True):
        assert_same_response(actual, post, mine, theirs)
    # Pending prompts are listed in raw heap order: the front=true prompt first, then 39, then 38
    assert_same_response(observed["queue_before"], _shrunk_exchange(recorded["queue_before"]), mine, theirs)
    assert_same_response(observed["clear"], recorded["clear"], mine, theirs)
    assert_same_response(observed["queue_after"], _shrunk_exchange(recorded["queue_after"]), mine, theirs)
    assert _targeted(collapse_progress(frame_types(observed["frames"]))) == _targeted(
        collapse_progress(recorded["types"])
    )


def test_history_delete_clear_and_free_answer_as_recorded(protocol: ProtocolSession) -> None:
    recorded = recording("18_history_delete_clear_free.json")
    observed = protocol.result("18_history_delete_clear_free")
    # Every prompt the recording server had finished is in history, in the same order of numbers
    assert len(observed["history_ids_before"]) == len(recorded[1]["history_ids_before"])
    for exchange_recorded, actual in observed["pairs"]:
        mine, theirs = Normalizer(protocol.input_dir), Normalizer()
        expected = (
            _shrunk_exchange(exchange_recorded) if exchange_recorded["response"].get("json") else exchange_recorded
        )
        assert_same_response(actual, expected, mine, theirs)


def test_messages_target_the_submitting_client_and_a_reconnect_takes_over_its_id(
    protocol: ProtocolSession,
) -> None:
    # Given A submitted a slow prompt, B and an anonymous socket are connected
    recorded = recording("19_two_clients.json")
    observed = protocol.result("19_two_clients")
    mine, theirs = Normalizer(protocol.input_dir), Normalizer()
    assert_same_response(observed["post"], recorded["post"], mine, theirs)
    assert frame_types(observed["A_before"]) == recorded["A_types"]
    # When A2 connects with A's clientId mid-run
    # Then A2 first gets status (with sid) and executing{node} without prompt_id, then the rest of the run
    first = [mine.full(frame_record(f)) for f in observed["A2_first"][:2]]
    assert_equal(
        first,
        [theirs.full({"json": e["json"]}) for e in recorded["A2_first_frames"][:2]],
        "A2's first frames",
    )
    assert collapse_progress(frame_types(observed["A2"])) == collapse_progress(recorded["A2_types"])
    # And the old socket gets nothing more; the others get status broadcasts only
    assert frame_types(observed["A_after"]) == recorded["A_types"]
    assert frame_types(observed["B"]) == recorded["B_types"]
    assert frame_types(observed["anon"]) == recorded["anon_types"]
    after = recorded["after_reconnect_prompt"]["A2_types"]
    assert frame_types(observed["after_reconnect_A2"]) == after[len(recorded["A2_types"]) :]
    # And once the OLD socket closes, the server forgets the clientId: A2 receives nothing at all
    assert frame_types(observed["after_old_close_A2"]) == recorded["after_old_socket_closed"]["A2_types"]
    assert observed["no_client_A2"] == []
    no_client = recorded["no_client_id_prompt"]
    assert frame_types(observed["no_client_B"]) == no_client["B_types"]
    assert_same_response(
        observed["no_client_history"], no_client["history"], Normalizer(protocol.input_dir), Normalizer()
    )
