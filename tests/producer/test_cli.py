"""The `dance` CLI as a user runs it: a real process, a real broker, documented exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from producer.cli import (
    EXIT_BROKER,
    EXIT_CANCELLED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNKNOWN_JOB,
    EXIT_USAGE,
)
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request
from tests.support.processes import free_port, wait_until


def dance(*args: str, env: dict[str, str], timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "producer.cli", *args], capture_output=True, text=True, timeout=timeout_s, check=False,
        env={**os.environ, **env},
    )


def broker_env(cluster: Cluster) -> dict[str, str]:
    return {"CELERY_BROKER_URL": cluster.broker_url, "DANCE_STORAGE_URL": cluster.storage_url}


def test_submit_with_wait_and_json_prints_the_result_and_exits_zero(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    sim = comfysim(exec_s=0.2)
    cluster.start_worker("w", sim.url)
    request = dance_request(media_server, tmp_path)
    (tmp_path / "request.json").write_text(json.dumps({"images": {"reference_image": request["reference_image"]},
                                                       "videos": {"dance_video": request["dance_video"]},
                                                       "prompt": "from a file", "width": 128, "height": 224}))
    # When a user submits the original endpoint's body from a file, overriding steps, and waits
    done = dance("submit", "--request", str(tmp_path / "request.json"), "--steps", "2", "--wait", "--json",
                 env=broker_env(cluster))
    # Then the result is on stdout as JSON and the exit code says success
    assert done.returncode == EXIT_OK, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and result["params"]["steps"] == 2
    assert result["params"]["prompt"] == "from a file"


def test_status_and_result_follow_a_job_by_id(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    sim = comfysim(exec_s=0.2)
    cluster.start_worker("w", sim.url)
    request = dance_request(media_server, tmp_path)
    submitted = dance("submit", "--reference-image", request["reference_image"], "--dance-video",
                      request["dance_video"], "--prompt", "flags", "--width", "128", "--height", "224",
                      "--job-id", "cli-job-1", env=broker_env(cluster))
    assert submitted.returncode == EXIT_OK and submitted.stdout.strip() == "cli-job-1"
    done = dance("result", "cli-job-1", "--timeout", "60", "--json", env=broker_env(cluster))
    assert done.returncode == EXIT_OK, done.stderr
    assert json.loads(done.stdout)["job_id"] == "cli-job-1"
    status = dance("status", "cli-job-1", "--json", env=broker_env(cluster))
    assert json.loads(status.stdout)["state"] == "SUCCESS"


def test_a_failed_job_exits_with_the_failure_code_and_prints_the_error_code(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    sim = comfysim(exec_s=0.2)
    cluster.start_worker("w", sim.url)
    request = dance_request(media_server, tmp_path)
    missing = media_server.serve("/gone.png", b"", status=404)
    done = dance("submit", "--reference-image", missing, "--dance-video", request["dance_video"],
                 "--prompt", "p", "--wait", "--json", env=broker_env(cluster))
    assert done.returncode == EXIT_JOB_FAILED
    assert json.loads(done.stdout)["error"]["code"] == "input.not_found"
    assert "[input.not_found]" in done.stderr


def test_an_invalid_request_exits_with_the_usage_code_and_sends_nothing(cluster: Cluster) -> None:
    done = dance("submit", "--reference-image", "ftp://host/a.png", "--dance-video", "https://h/v.mp4",
                 "--prompt", "p", "--json", env=broker_env(cluster))
    assert done.returncode == EXIT_USAGE
    assert json.loads(done.stdout)["error"]["code"] == "request.bad_media_reference"


def test_the_worker_commands_refuse_an_invalid_setting_with_its_code_before_celery_starts() -> None:
    # Given a setting each worker reads that is not a number
    for command, setting in (("worker", "DANCE_VISIBILITY_TIMEOUT_S"), ("hooks-worker", "DANCE_WEBHOOK_TIMEOUT_S")):
        # When the command starts, Then it exits with the usage code and names the setting, with no Celery output
        done = dance(command, env={setting: "abc"}, timeout_s=30)
        assert done.returncode == EXIT_USAGE, (command, done.stderr)
        assert done.stderr.strip() == f"error: [config.invalid] {setting}='abc' is not a number"


def test_an_unreachable_broker_has_its_own_exit_code() -> None:
    done = dance("submit", "--reference-image", "https://h/a.png", "--dance-video", "https://h/v.mp4",
                 "--prompt", "p", env={"CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert done.returncode == EXIT_BROKER
    assert "[broker.unreachable]" in done.stderr


def test_waiting_past_the_wait_timeout_exits_with_the_timeout_code(cluster: Cluster) -> None:
    # Given no worker at all, so the job stays queued
    done = dance("submit", "--reference-image", "https://h/a.png", "--dance-video", "https://h/v.mp4",
                 "--prompt", "p", "--wait", "--wait-timeout", "1", env=broker_env(cluster))
    assert done.returncode == EXIT_TIMEOUT
    assert "[job.wait_timeout]" in done.stderr


def test_cancel_of_a_queued_job_and_result_of_an_unknown_id_have_their_codes(cluster: Cluster) -> None:
    env = broker_env(cluster)
    submitted = dance("submit", "--reference-image", "https://h/a.png", "--dance-video", "https://h/v.mp4",
                      "--prompt", "p", "--job-id", "to-cancel", env=env)
    assert submitted.returncode == EXIT_OK
    cancelled = dance("cancel", "to-cancel", env=env)
    assert cancelled.returncode == EXIT_OK and "REVOKED" in cancelled.stdout
    assert dance("result", "to-cancel", env=env).returncode == EXIT_CANCELLED
    assert dance("result", "never-submitted", env=env).returncode == EXIT_UNKNOWN_JOB
    assert dance("status", "never-submitted", env=env).returncode == EXIT_UNKNOWN_JOB


def test_dance_check_is_unhealthy_while_the_gate_waits_and_healthy_once_consuming(
    cluster: Cluster, comfysim_unstarted: Any
) -> None:
    # Given a worker whose ComfyUI comes up 6 s after it
    sim = comfysim_unstarted(start_delay_s=6.0, exec_s=0.1)
    worker = cluster.start_worker("hc", sim.url)
    env = {**broker_env(cluster), "DANCE_WORKER_NAME": "hc@%h"}
    worker.wait_for_log("detached until ComfyUI is ready")
    # Then while it waits, the health check fails and says why
    waiting = wait_until(lambda: _checked(env, "waiting for ComfyUI"), 10, "the record of a waiting worker")
    assert waiting.returncode == 1
    # and once ComfyUI is up, it passes
    wait_until(lambda: dance("check", env=env).returncode == 0, 30, "the health check to pass")
    assert "consuming dance" in dance("check", env=env).stdout


def _checked(env: dict[str, str], needle: str) -> subprocess.CompletedProcess[str] | None:
    done = dance("check", env=env)
    return done if needle in done.stdout else None
