"""Under ``--version 0.12.3`` the simulator behaves as the 0.12.3 transcripts record what the worker uses:
the targeted POST /interrupt (21_interrupt_by_prompt_id) and GET /api/jobs (22_api_jobs).

The recorded slow prompts are shrunk and held with the ``hold`` fault, as in test_conformance_queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.comfysim import ComfySim, launch_comfysim
from tests.simulator.replay import Normalizer, assert_equal, assert_same_response, exchange, recording
from tests.simulator.scenarios_basic import CORRUPT_PNG
from tests.simulator.scenarios_queue import shrink
from tests.simulator.session import UPLOAD_BODIES
from tests.support.processes import wait_until

#: Seconds to wait for a prompt to end or to start.
WAIT_S = 30.0


class Sim012:
    """A 0.12.3 simulator with the recordings' input files, and one socket for the submitting client."""

    def __init__(self, sim: ComfySim) -> None:
        self.sim = sim
        for name, body in (("probe.png", UPLOAD_BODIES[163]), ("corrupt_jobs.png", CORRUPT_PNG)):
            exchange(sim.url, "POST", "/upload/image", files={"image": (name, body, "image/png")},
                     data={"overwrite": "true"})

    def post(self, recorded: dict[str, Any]) -> str:
        body = shrink(recorded["request_json"])
        return str(exchange(self.sim.url, "POST", "/prompt", json=body)["json"]["prompt_id"])

    def held(self, recorded: dict[str, Any]) -> str:
        """Post a recorded slow prompt and return its id once it is held mid-upscale."""
        self.sim.faults({"hold": True, "hold_class": "ImageUpscaleWithModel"})
        prompt_id = self.post(recorded)
        wait_until(lambda: self.sim.state()["held"] and self.sim.state()["running"] == prompt_id, WAIT_S,
                   "the slow prompt to be held")
        return prompt_id

    def ended(self, prompt_id: str) -> dict[str, Any]:
        def entry() -> dict[str, Any] | None:
            return self.sim.request("GET", f"/history/{prompt_id}").get(prompt_id)

        found: dict[str, Any] = wait_until(entry, WAIT_S, f"prompt {prompt_id} to end")
        return found


@pytest.fixture(scope="module")
def sim012(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim012]:
    sim = launch_comfysim(tmp_path_factory.mktemp("v0123"), catalog="core", exec_s=0.1, version="0.12.3")
    try:
        yield Sim012(sim.wait_ready())
    finally:
        sim.process.kill()


def _outcome(entry: dict[str, Any]) -> tuple[str, str]:
    status = entry["status"]
    return status["status_str"], status["messages"][-1][0]


def test_system_stats_reports_the_version(sim012: Sim012) -> None:
    assert sim012.sim.request("GET", "/system_stats")["system"]["comfyui_version"] == "0.12.3"


def test_a_targeted_interrupt_of_a_prompt_not_running_does_nothing(sim012: Sim012) -> None:
    # Given a finished prompt, a held running prompt R1 and a pending P1, as recorded
    recorded = recording("21_interrupt_by_prompt_id.json")
    sim012.ended(sim012.post(recorded["finished_prompt"]["post"]))
    case = recorded["not_running_targets"]
    running = sim012.held(case["posts"][0])
    pending = sim012.post(case["posts"][1])
    # When each of the pending, an unknown and the finished prompt is interrupted by id
    mine, theirs = Normalizer(), Normalizer()
    for key, target in (("interrupt_pending", pending), ("interrupt_unknown", None), ("interrupt_finished", None)):
        body = {"prompt_id": target} if target else case[key]["request_json"]
        assert_same_response(exchange(sim012.sim.url, "POST", "/interrupt", json=body), case[key], mine, theirs)
    # Then the running prompt runs on and the pending one still waits, and both later succeed
    queue = sim012.sim.request("GET", "/queue")
    assert [item[1] for item in queue["queue_running"]] == [running]
    assert [item[1] for item in queue["queue_pending"]] == [pending]
    sim012.sim.release()
    for prompt_id, key in ((running, "history_R1"), (pending, "history_P1")):
        recorded_entry = next(iter(case[key]["response"]["json"].values()))
        assert _outcome(sim012.ended(prompt_id)) == _outcome(recorded_entry)


@pytest.mark.parametrize("case", ["running_target", "no_body", "empty_object_body", "empty_string_prompt_id"])
def test_an_interrupt_by_the_running_prompts_id_or_a_global_one_stops_it(sim012: Sim012, case: str) -> None:
    # Given a held running prompt
    recorded = recording("21_interrupt_by_prompt_id.json")[case]
    running = sim012.held(recorded["post"])
    # When POST /interrupt names it, or names nothing
    request = recorded["interrupt"].get("request_json")
    body = {"prompt_id": running} if request and request.get("prompt_id") else request
    response = exchange(sim012.sim.url, "POST", "/interrupt", **({} if body is None else {"json": body}))
    assert_same_response(response, recorded["interrupt"], Normalizer(), Normalizer())
    # Then it ends interrupted at the node it was in, as recorded
    entry = sim012.ended(running)
    recorded_entry = next(iter(recorded["history"]["response"]["json"].values()))
    assert _outcome(entry) == _outcome(recorded_entry) == ("error", "execution_interrupted")
    assert entry["status"]["messages"][-1][1]["node_type"] == recorded_entry["status"]["messages"][-1][1]["node_type"]


def test_an_interrupt_with_a_json_array_body_is_a_server_error(sim012: Sim012) -> None:
    response = exchange(sim012.sim.url, "POST", "/interrupt", json=[])
    assert response["status"] == 500 and response["content_type"].startswith("text/plain")


def _jobs_setup(sim012: Sim012, recorded: dict[str, Any]) -> dict[str, str]:
    """The recorded jobs in each state: completed, failed, cancelled, running (held), pending (two)."""
    completed, failed, cancelled, running, pending, front = recorded["setup"]
    ids = {"completed": sim012.post(completed), "failed": sim012.post(failed)}
    sim012.ended(ids["completed"]), sim012.ended(ids["failed"])
    ids["cancelled"] = sim012.held(cancelled)
    exchange(sim012.sim.url, "POST", "/interrupt", json={"prompt_id": ids["cancelled"]})
    sim012.ended(ids["cancelled"])
    ids["running"] = sim012.held(running)
    ids["pending"], ids["pending_front"] = sim012.post(pending), sim012.post(front)
    return ids


def _job_shape(job: dict[str, Any]) -> dict[str, Any]:
    """What must match the recording: keys, status, the sign of priority and the finished parts' shape."""
    status = job.get("execution_status") or {}
    return {
        "keys": sorted(job), "status": job["status"], "front": job["priority"] < 0,
        "outputs": job.get("outputs"), "preview_output": job.get("preview_output"),
        "workflow_id": job.get("workflow_id"), "outputs_count": job["outputs_count"],
        "execution_status": (status.get("status_str"), [m[0] for m in status.get("messages", [])]),
        "error_type": (job.get("execution_error") or {}).get("exception_type"),
    }


def test_api_jobs_reports_each_state_and_filters_as_recorded(sim012: Sim012) -> None:
    # Given a job in every state the recording made
    recorded = recording("22_api_jobs.json")
    ids = _jobs_setup(sim012, recorded)
    try:
        # When each is read by id, Then it has the recorded shape; an unknown id is a 404
        by_id = {e["path"].rsplit("/", 1)[1]: e for e in recorded["get"]}
        for state, recorded_id in recorded["ids"].items():
            ours = exchange(sim012.sim.url, "GET", f"/api/jobs/{ids[state]}")
            assert ours["status"] == 200
            assert_equal(_job_shape(ours["json"]), _job_shape(by_id[recorded_id]["response"]["json"]), state)
        unknown = next(e for e in recorded["get"] if e["note"] == "unknown id")
        assert_same_response(exchange(sim012.sim.url, "GET", unknown["path"]), unknown, Normalizer(), Normalizer())
        # and the list's bad parameters answer the recorded 400s, its status filter counts our jobs
        for entry in recorded["list"]:
            if entry["status"] == 400:
                assert_same_response(exchange(sim012.sim.url, "GET", entry["path"]), entry, Normalizer(), Normalizer())
        listed = exchange(sim012.sim.url, "GET", "/api/jobs?status=pending,in_progress")["json"]
        waiting = sorted([ids["running"], ids["pending"], ids["pending_front"]])
        assert sorted(job["id"] for job in listed["jobs"]) == waiting
        page = exchange(sim012.sim.url, "GET", "/api/jobs?limit=2&offset=1")["json"]["pagination"]
        assert page["limit"] == 2 and page["offset"] == 1 and page["has_more"] == (page["total"] > 3)
        alias = exchange(sim012.sim.url, "GET", "/api/api/jobs?limit=1")
        assert alias["status"] == 200 and len(alias["json"]["jobs"]) == 1
        assert exchange(sim012.sim.url, "GET", "/jobs")["status"] == 404
    finally:
        sim012.sim.release()
        for state in ("running", "pending", "pending_front"):
            sim012.ended(ids[state])
