"""Runners for the recorded scenarios 14 to 19: interrupts, queue edits, history edits, two clients.

The recordings made jobs slow with 2048-pixel images; here the images are shrunk (so CI stays small) and
the ``hold`` fault stops the slow node at a known point instead, so every step happens deterministically
mid-run. POST /interrupt ends a hold by itself, as it ends a long step. ``shrink`` is applied to both the
request and the recorded expectations.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.simulator.replay import exchange, recording, replay_request
from tests.simulator.session import INTERRUPT_CLIENT, PASSIVE_CLIENT, ProtocolSession, runner
from tests.support.processes import wait_until

#: Edge of the images the slow recorded jobs used, shrunk to this many pixels.
SHRUNK_EDGE_PX = 600
#: Seconds to wait for the simulator to notice a closed socket.
SOCKET_DROP_TIMEOUT_S = 10.0


def shrink(body: Any) -> Any:
    """The recorded slow prompt with every ImageScale above SHRUNK_EDGE_PX scaled down to it."""
    body = copy.deepcopy(body)
    prompt = body.get("prompt", body) if isinstance(body, dict) else body
    for node in prompt.values():
        inputs = node.get("inputs", {})
        if node.get("class_type") == "ImageScale" and inputs.get("width", 0) > SHRUNK_EDGE_PX:
            inputs["width"] = SHRUNK_EDGE_PX
            inputs["height"] = min(inputs["height"], SHRUNK_EDGE_PX)
    return body


def _hold(session: ProtocolSession, node_class: str) -> None:
    session.sim.faults({"hold": True, "hold_class": node_class})


def _first_progress(frames: list[Any]) -> bool:
    return any(f.type == "progress" for f in frames)


@runner("14_interrupt_and_queue_delete")
def run_interrupt_and_delete(session: ProtocolSession) -> dict[str, Any]:
    recorded = recording("14_interrupt_and_queue_delete.json")
    client_a, client_b = session.socket(INTERRUPT_CLIENT), session.socket(PASSIVE_CLIENT)
    client_a.take(), client_b.take()
    _hold(session, "ImageUpscaleWithModel")
    posts = [session.post(shrink(post["request_json"])) for post in recorded["posts"]]
    client_a.wait_for(_first_progress, what="A's first progress")
    observed: dict[str, Any] = {"posts": posts, "queue_while_running": session.get("/queue")}
    ids = [post["json"]["prompt_id"] for post in posts]
    observed["delete_B"] = exchange(session.sim.url, "POST", "/queue", json={"delete": [ids[1]]})
    observed["delete_unknown"] = exchange(session.sim.url, "POST", "/queue", json={"delete": ["no-such-id"]})
    observed["queue_after_delete"] = session.get("/queue")
    observed["interrupt"] = exchange(session.sim.url, "POST", "/interrupt")
    observed["clientA"] = client_a.wait_done(ids[2])
    observed["clientB"] = client_b.wait_for(
        lambda f: len(f) >= len(recorded["clientB_types"]) and f, what="B's status frames"
    )
    for label, prompt_id in zip(("history_A", "history_B", "history_C"), ids, strict=True):
        observed[label] = session.get(f"/history/{prompt_id}")
    observed["queue_idle"] = session.get("/queue")
    client_a.take(), client_b.take()
    return observed


@runner("15_interrupt_non_progress_node")
def run_interrupt_non_progress(session: ProtocolSession) -> dict[str, Any]:
    recorded = recording("15_interrupt_non_progress_node.json")
    client = session.socket(INTERRUPT_CLIENT)
    client.take()
    _hold(session, "ImageScale")
    post = session.post(shrink(recorded["post"]["request_json"]))
    prompt_id = post["json"]["prompt_id"]
    client.wait_for(
        lambda frames: any(f.type == "executing" and f.json["data"]["node"] == "2" for f in frames),
        what="node 2 executing",
    )
    interrupt = exchange(session.sim.url, "POST", "/interrupt")
    frames = client.wait_done(prompt_id)
    client.take()
    return {"post": post, "interrupt": interrupt, "frames": frames, "history": session.history(prompt_id)}


@runner("16_interrupt_idle")
def run_interrupt_idle(session: ProtocolSession) -> dict[str, Any]:
    recorded = recording("16_interrupt_idle.json")
    client = session.socket(INTERRUPT_CLIENT)
    client.take()
    observed: dict[str, Any] = {"interrupt_idle": exchange(session.sim.url, "POST", "/interrupt")}
    observed["post_after"] = session.post(recorded["post_after"]["request_json"])
    observed["frames"] = client.wait_done(observed["post_after"]["json"]["prompt_id"])
    client.take()
    observed["interrupt_with_body"] = replay_request(session.sim.url, recorded["interrupt_with_body"])
    return observed


@runner("17_queue_clear")
def run_queue_clear(session: ProtocolSession) -> dict[str, Any]:
    recorded = recording("17_queue_clear.json")
    client = session.socket(INTERRUPT_CLIENT)
    client.take()
    _hold(session, "ImageUpscaleWithModel")
    posts = [session.post(shrink(post["request_json"])) for post in recorded["posts"]]
    client.wait_for(_first_progress, what="the running job's first progress")
    observed: dict[str, Any] = {"posts": posts, "queue_before": session.get("/queue")}
    observed["clear"] = exchange(session.sim.url, "POST", "/queue", json={"clear": True})
    observed["queue_after"] = session.get("/queue")
    observed["interrupt"] = exchange(session.sim.url, "POST", "/interrupt")
    observed["frames"] = client.wait_done(posts[0]["json"]["prompt_id"])
    client.take()
    return observed


@runner("18_history_delete_clear_free")
def run_history_edits(session: ProtocolSession) -> dict[str, Any]:
    exchanges = recording("18_history_delete_clear_free.json")
    history_before = session.get("/history")["json"]
    ids = list(history_before)
    pairs = []
    for original in exchanges:
        if "method" not in original:
            continue
        recorded = copy.deepcopy(original)
        # The recording deleted its own oldest prompt id; this run deletes this run's oldest.
        if recorded.get("note") == "delete oldest":
            recorded["request_json"] = {"delete": [ids[0]]}
        if recorded.get("note") == "deleted id":
            recorded["path"] = f"/history/{ids[0]}"
        pairs.append((recorded, replay_request(session.sim.url, recorded)))
    return {"history_ids_before": ids, "pairs": pairs}


@runner("19_two_clients")
def run_two_clients(session: ProtocolSession) -> dict[str, Any]:
    recorded = recording("19_two_clients.json")
    for client_id in list(session.sockets):
        session.close_socket(client_id)
    client_a, client_b = session.socket(INTERRUPT_CLIENT), session.socket(PASSIVE_CLIENT)
    anon = session.socket("")
    _hold(session, "ImageUpscaleWithModel")
    post = session.post(shrink(recorded["post"]["request_json"]))
    prompt_id = post["json"]["prompt_id"]
    client_a.wait_for(_first_progress, what="A's first progress")
    observed: dict[str, Any] = {"post": post, "A_before": list(client_a.frames)}
    client_a2 = _reconnect(session, INTERRUPT_CLIENT)
    observed["A2_first"] = client_a2.wait_for(lambda f: len(f) >= 2 and f, what="A2's first frames")
    session.sim.release()
    observed["A2"] = client_a2.wait_done(prompt_id)
    observed["B"] = client_b.wait_for(lambda f: len(f) >= 3 and f, what="B's status frames")
    observed["anon"] = anon.wait_for(lambda f: len(f) >= 3 and f, what="anon's status frames")
    observed["A_after"] = list(client_a.frames)
    for recorder in (client_a2, client_b, anon):
        recorder.take()
    observed.update(_after_reconnect(session, recorded, client_a, client_a2))
    return observed


def _reconnect(session: ProtocolSession, client_id: str) -> Any:
    from tests.fixtures.comfysim import WsRecorder

    return WsRecorder(session.sim.ws_url, client_id)


def _after_reconnect(
    session: ProtocolSession, recorded: dict[str, Any], client_a: Any, client_a2: Any
) -> dict[str, Any]:
    observed: dict[str, Any] = {}
    post = session.post(recorded["after_reconnect_prompt"]["post"]["request_json"])
    observed["after_reconnect_A2"] = client_a2.wait_done(post["json"]["prompt_id"])
    client_a2.take()
    # Closing the OLD socket removes the clientId's entry, which now belongs to A2 (the quirk of 19).
    client_a.close()
    session.sockets.pop(INTERRUPT_CLIENT)
    wait_until(
        lambda: INTERRUPT_CLIENT not in session.sim.state()["sockets"],
        SOCKET_DROP_TIMEOUT_S,
        "the server to drop the clientId",
    )
    client_b = session.sockets[PASSIVE_CLIENT]
    client_b.take()
    late = session.post(recorded["after_old_socket_closed"]["post"]["request_json"])
    session.history(late["json"]["prompt_id"])
    client_b.wait_for(lambda f: len(f) >= 3, what="B's status frames")
    observed["after_old_close_A2"] = client_a2.take()
    client_b.take()
    anonymous = session.post(recorded["no_client_id_prompt"]["post"]["request_json"])
    observed["no_client_history"] = session.history(anonymous["json"]["prompt_id"])
    observed["no_client_B"] = client_b.wait_for(lambda f: len(f) >= 3 and f, what="B's status frames")
    observed["no_client_A2"] = client_a2.take()
    client_a2.close()
    return observed
