"""The warm-up before ready and the start-up timeline, with real workers, a real Redis and the simulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from producer import keys
from producer.errors import DanceError
from tests.fixtures.comfysim import ComfySim, launch_comfysim
from tests.fixtures.workers import Cluster
from tests.simulator.test_model_loading import workflow_models
from tests.support.jobs import dance_request, queued_messages, unacked_messages
from tests.support.processes import ManagedProcess, wait_until
from tests.worker.test_gate import READY_LINE, node_name, pings
from worker.gate import EXIT_WARMUP_FAILED
from worker.settings import WARMUP_OFF, WARMUP_ON, WorkerSettings
from worker.startup import MILESTONES, WARM
from worker.telemetry.flower import DanceCollector

#: Generous wait for anything a worker does on a loaded two-core machine, in seconds.
WAIT_S = 60.0
#: Simulated load time per model file where a warm-up must last (eight files: over a minute), in seconds.
LONG_LOAD_S = 10.0
#: Simulated load time per model file where the test waits for the warm-up to end, in seconds.
SHORT_LOAD_S = 0.5
CHECK_TIMEOUT_S = 30.0


def warm_worker(cluster: Cluster, sim: ComfySim, name: str = "w", **extra: str) -> ManagedProcess:
    """A worker that warms up and shares the simulator's folders, so its cleanup can be seen."""
    env = {"DANCE_WARMUP": "on", "COMFYUI_INPUT_DIR": str(sim.data_dir / "input"),
           "COMFYUI_OUTPUT_DIR": str(sim.data_dir / "output"), **extra}
    return cluster.start_worker(name, sim.url, **env)


def dance_check(cluster: Cluster, name: str = "w") -> tuple[int, dict[str, Any]]:
    """`dance check --json`, the Docker HEALTHCHECK, run as a real process."""
    env = {**os.environ, "CELERY_BROKER_URL": cluster.broker_url, "CELERY_RESULT_BACKEND": cluster.broker_url}
    done = subprocess.run([sys.executable, "-m", "producer.cli", "check", "-n", f"{name}@%h", "--json"],
                          capture_output=True, text=True, env=env, timeout=CHECK_TIMEOUT_S, check=False)
    return done.returncode, json.loads(done.stdout)


def cluster_readiness(cluster: Cluster, name: str = "w") -> str:
    """The readiness `dance cluster --json` shows for the worker, run as a real process."""
    env = {**os.environ, "CELERY_BROKER_URL": cluster.broker_url, "CELERY_RESULT_BACKEND": cluster.broker_url}
    done = subprocess.run([sys.executable, "-m", "producer.cli", "cluster", "--json"], env=env, capture_output=True,
                          text=True, timeout=WAIT_S, check=True)
    [worker] = [w for w in json.loads(done.stdout)["workers"] if w["hostname"].startswith(f"{name}@")]
    return str(worker["readiness"])


def flower_readiness(cluster: Cluster, name: str = "w") -> str:
    """The readiness text Flower shows under the worker's "Other" tab (its ``stats`` reply)."""
    with cluster.client() as client:
        replies = client.app.control.inspect(destination=[node_name(name)], timeout=2.0).stats() or {}
    return str(replies.get(node_name(name), {}).get("dance_readiness", ""))


def leftovers(sim: ComfySim) -> tuple[list[str], list[str], list[str]]:
    """What a warm-up could leave in ComfyUI: history entries, input files, output folders."""
    history = [prompt for prompt, entry in sim.request("GET", "/history").items()
               if str(entry["prompt"][3].get("dance_job_id", "")).startswith("warmup")]
    inputs = [path.name for path in (sim.data_dir / "input").iterdir() if "warmup" in path.name]
    output_root = sim.data_dir / "output" / "dance"
    outputs = [path.name for path in output_root.iterdir()] if output_root.exists() else []
    return history, inputs, [name for name in outputs if "warmup" in name]


def test_a_warming_worker_takes_no_job_and_no_view_sees_it_ready_until_its_warm_up_ends(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job in the queue and a ComfyUI whose sampler holds the next run until released
    sim = comfysim(exec_s=0.1)
    sim.faults({"hold": True})
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path))
        # When a worker with the warm-up on starts and its warm-up reaches the sampler
        worker = warm_worker(cluster, sim)
        wait_until(lambda: sim.state()["held"], WAIT_S, "the warm-up's sampler to be held")
        # Then the health check, Flower and the log all say it is warming up, and it still answers ping
        wait_until(lambda: dance_check(cluster)[1]["reason"].startswith("warming up"), WAIT_S,
                   "dance check to say the worker is warming up")
        assert dance_check(cluster)[0] == 1
        assert flower_readiness(cluster).startswith("not ready: warming up")
        assert "warming up" in cluster_readiness(cluster)
        assert "warming up: running the workflow once" in worker.log()
        assert pings(cluster, node_name("w"))
        # and the job stays in Redis, reserved by nobody, with no worker_ready and no "ready." line
        assert queued_messages(cluster.broker_url) == 1 and unacked_messages(cluster.broker_url) == 0
        assert not READY_LINE.search(worker.log())
        # When the warm-up's run goes on to its end
        sim.release()
        result = handle.result(timeout_s=WAIT_S)
    # Then the job ran after the warm-up, on the same ComfyUI, and the worker is healthy
    assert result["status"] == "succeeded"
    runs = sim.state()["runs"]
    assert [str(run[3]).startswith("warmup") for run in runs] == [True, False]
    assert runs[0][2] <= runs[1][1]
    wait_until(lambda: dance_check(cluster)[0] == 0, WAIT_S, "dance check to report the worker healthy")
    # and the warm-up left no history entry, input or output in ComfyUI
    wait_until(lambda: leftovers(sim) == ([], [], []), WAIT_S, "the warm-up's leftovers to be gone")


def test_the_first_job_after_a_warm_up_pays_for_no_model_load(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a fresh ComfyUI whose first use of each model file is slow, and a worker that warms up on it
    sim = comfysim(exec_s=0.1, model_load_s=SHORT_LOAD_S)
    worker = warm_worker(cluster, sim)
    with cluster.client() as client:
        # When the first job is submitted once the worker is ready
        worker.wait_for_log(" ready.", timeout_s=WAIT_S)
        loaded = sim.state()["model_loads"]
        result = client.submit(dance_request(media_server, tmp_path)).result(timeout_s=WAIT_S)
    # Then the warm-up loaded every model before ready, and the job loaded none: it ran in less time than
    # the loads alone take
    assert sorted(loaded) == sorted(workflow_models()) and sim.state()["model_loads"] == loaded
    assert result["timings"]["execute_s"] < SHORT_LOAD_S * len(loaded)
    # and the start-up timeline is logged, in order, and exported in the liveness record
    worker.wait_for_log("start-up timeline: comfyui_answering")
    wait_until(lambda: dance_check(cluster)[1]["record"]["startup"]["first_job_s"] is not None, WAIT_S,
               "the liveness record to carry the first job")
    timeline = dance_check(cluster)[1]["record"]["startup"]
    marks = [timeline[f"{name}_s"] for name in MILESTONES]
    assert all(mark is not None for mark in marks) and marks == sorted(marks)
    assert timeline["warm_s"] - timeline["nodes_models_ready_s"] >= SHORT_LOAD_S * len(loaded)
    # and Flower's /metrics serves it from the worker's metrics snapshot
    broker = redis.Redis.from_url(cluster.broker_url)
    snapshot_key = keys.worker_metrics(node_name("w"))
    wait_until(lambda: json.loads(broker.get(snapshot_key) or "{}").get("startup", {}).get("first_job_s"), WAIT_S,
               "the metrics snapshot to carry the first job")
    registry = CollectorRegistry()
    registry.register(DanceCollector(broker))
    samples = {(s.name, s.labels.get("milestone")): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples if s.labels.get("worker") == node_name("w")}
    assert samples[("dance_worker_startup_seconds", WARM)] == timeline["warm_s"]
    assert samples[("dance_worker_warming", None)] == 0.0


def test_a_worker_answers_ping_and_stops_cleanly_on_sigterm_during_a_long_warm_up(
    cluster: Cluster, comfysim: Any
) -> None:
    # Given a worker warming up on a ComfyUI whose model loads last over a minute in all
    sim = comfysim(exec_s=0.1, model_load_s=LONG_LOAD_S)
    worker = warm_worker(cluster, sim)
    worker.wait_for_log("warming up: running the workflow once", timeout_s=WAIT_S)
    wait_until(lambda: sim.state()["running"] is not None, WAIT_S, "the warm-up's prompt to run")
    # When it is pinged, it answers
    wait_until(lambda: pings(cluster, node_name("w")), WAIT_S, "the warming worker to answer ping")
    # When it is told to stop while a model still loads
    assert len(sim.state()["model_loads"]) < len(workflow_models())
    worker.signal(signal.SIGTERM)
    # Then it exits cleanly, without ever being ready, and its warm-up prompt was stopped and cleaned up
    assert worker.wait(timeout_s=WAIT_S + LONG_LOAD_S) == 0
    assert "warm-up stopped: the worker is shutting down" in worker.log()
    assert not READY_LINE.search(worker.log())
    assert sim.state()["running"] is None
    assert leftovers(sim) == ([], [], [])


def test_a_failed_warm_up_is_a_coded_error_and_the_worker_exits_without_taking_a_job(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job in the queue and a ComfyUI whose sampler runs out of memory on the next run
    sim = comfysim(exec_s=0.1)
    sim.faults({"fail_class": "WanVideoSamplerv2", "exception_type": "torch.OutOfMemoryError",
                "exception_message": "CUDA out of memory"})
    with cluster.client() as client:
        client.submit(dance_request(media_server, tmp_path))
    # When a worker that warms up starts
    worker = warm_worker(cluster, sim)
    # Then it exits with its own code, saying why, and never became ready
    assert worker.wait(timeout_s=WAIT_S) == EXIT_WARMUP_FAILED
    assert "[worker.warmup_failed] the warm-up run failed: [comfyui.execution_error]" in worker.log()
    assert not READY_LINE.search(worker.log())
    # and the job is still queued, reserved by nobody, for a worker that can run it
    assert queued_messages(cluster.broker_url) == 1 and unacked_messages(cluster.broker_url) == 0


def test_a_warm_up_request_file_runs_the_operators_media_and_a_bad_one_stops_the_worker_at_start(
    cluster: Cluster, comfysim: Any, tmp_path: Path
) -> None:
    # Given an operator's warm-up request file naming media on the worker's disk
    from demo.samples import make_character_png, make_dance_mp4

    image = make_character_png(tmp_path / "op" / "me.png", 96, 160)
    video = make_dance_mp4(tmp_path / "op" / "moves.mp4", frames=6, width_px=64, height_px=112)
    request = {"reference_image": image.as_uri(), "dance_video": video.as_uri(), "prompt": "warm", "steps": 2,
               "width": 96, "height": 160}
    request_file = tmp_path / "warmup.json"
    request_file.write_text(json.dumps(request))
    sim = comfysim(exec_s=0.1)
    # When a worker warms up with it
    worker = warm_worker(cluster, sim, DANCE_WARMUP=str(request_file))
    worker.wait_for_log(" ready.", timeout_s=WAIT_S)
    # Then its warm-up ran that request
    assert f"warming up: running the workflow once (request file {request_file}" in worker.log()
    assert [str(run[3]).startswith("warmup") for run in sim.state()["runs"]] == [True]
    assert any(name.endswith("reference.png") for name in sim.state()["uploads"])
    # When a worker is given a request file that is not a valid request
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps({"prompt": "no media"}))
    bad = warm_worker(cluster, sim, name="bad", DANCE_WARMUP=str(bad_file))
    # Then it stops at start with config.invalid
    assert bad.wait(timeout_s=WAIT_S) != 0
    assert "[config.invalid] DANCE_WARMUP=" in bad.log()


def test_a_comfyui_that_restarts_is_warmed_up_again_before_the_worker_takes_another_job(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a warm, ready worker
    sim = comfysim(exec_s=0.1, model_load_s=SHORT_LOAD_S)
    worker = warm_worker(cluster, sim)
    worker.wait_for_log(" ready.", timeout_s=WAIT_S)
    # When its ComfyUI dies and comes back on the same port with no model loaded
    sim.process.kill()
    worker.wait_for_log("ComfyUI no longer ready", timeout_s=WAIT_S)
    again = launch_comfysim(tmp_path / "again", port=sim.port, data_dir=sim.data_dir, exec_s=0.1,
                            model_load_s=SHORT_LOAD_S)
    try:
        again.wait_ready()
        worker.wait_for_log("ComfyUI ready again", timeout_s=WAIT_S)
        # Then the worker warmed the new ComfyUI up before resuming: it loaded every model before any job
        assert worker.log().count("warming up: running the workflow once") == 2
        assert sorted(again.state()["model_loads"]) == sorted(workflow_models())
        assert [str(run[3]).startswith("warmup") for run in again.state()["runs"]] == [True]
        # and the next job loads none
        with cluster.client() as client:
            result = client.submit(dance_request(media_server, tmp_path)).result(timeout_s=WAIT_S)
        assert result["status"] == "succeeded"
        assert len(again.state()["model_loads"]) == len(workflow_models())
    finally:
        again.process.kill()


@pytest.mark.parametrize(("value", "mode"), [
    (None, WARMUP_OFF), ("off", WARMUP_OFF), ("0", WARMUP_OFF), ("on", WARMUP_ON), ("TRUE", WARMUP_ON),
    ("1", WARMUP_ON), ("/etc/dance/warmup.json", "/etc/dance/warmup.json"),
])
def test_dance_warmup_is_off_unless_set_and_takes_on_off_or_a_request_file(value: str | None, mode: str) -> None:
    # Given DANCE_WARMUP unset or set to each spelling
    env = {} if value is None else {"DANCE_WARMUP": value}
    # When the worker's settings are built
    # Then the mode is off, on, or the request file's path
    assert WorkerSettings.from_env(env).warmup == mode


def test_a_warm_up_timeout_that_is_not_positive_is_refused_at_start() -> None:
    # Given DANCE_WARMUP_TIMEOUT_S=0; When the settings are built; Then they are config.invalid
    with pytest.raises(DanceError) as raised:
        WorkerSettings.from_env({"DANCE_WARMUP": "on", "DANCE_WARMUP_TIMEOUT_S": "0"})
    assert raised.value.code == "config.invalid"
