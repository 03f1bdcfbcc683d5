"""Batches end to end: real workers, a real hooks worker, webhooks over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from producer import keys
from producer.batchfile import BatchItem
from producer.errors import INPUT_NOT_FOUND
from producer.webhooks import verify
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, queued_messages, unacked_messages
from tests.support.ops import WEBHOOK_SECRET, WebhookReceiver, start_gpu_worker, start_hooks_worker
from tests.support.processes import wait_until


def test_a_batch_with_a_failed_and_a_cancelled_job_completes_exactly_once(
    cluster: Cluster, comfysim: Any, media_server: Any, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    # Given a batch of four jobs, the second of which fails on its input, with callbacks for the batch
    # and for three of its jobs
    good = dance_request(media_server, tmp_path)
    missing = {**good, "reference_image": media_server.serve("/gone.png", b"", status=404)}
    job_hook = receiver.url("/jobs")
    items = [BatchItem(good, 1, callback_url=job_hook), BatchItem(missing, 2, callback_url=job_hook),
             BatchItem(good, 3, callback_url=job_hook), BatchItem(good, 4)]
    with cluster.client() as client:
        # When it is submitted, its third job is cancelled while queued (the producer settles it), and
        # then a worker starts and meets that job's message (the worker settles it again)
        batch = client.submit_batch(items, batch_id="b-once", callback_url=receiver.url("/batch"))
        assert client.job("b-once-3").cancel() == "REVOKED"
        sim = comfysim(exec_s=0.1)
        start_gpu_worker(cluster, "w", sim.url)
        start_hooks_worker(cluster)
        # Then the batch's webhook arrives, with the summary
        receiver.wait_for(lambda got: [d for d in got if d.path == "/batch"], "the batch webhook")
        summary = batch.wait(timeout_s=30)
        assert (summary.counts["succeeded"], summary.counts["failed"], summary.counts["cancelled"]) == (2, 1, 1)
        assert dict(summary.failed_by_code) == {INPUT_NOT_FOUND: 1}
        # and once every message is gone (so every settler has spoken), it was completed exactly once
        wait_until(lambda: queued_messages(cluster.broker_url) + unacked_messages(cluster.broker_url) == 0, 30,
                   "every message of the batch to be acknowledged")
        completions = redis.Redis.from_url(cluster.broker_url).hget(keys.batch_meta("b-once"), "completions")
        assert completions == b"1"
        [delivery] = receiver.to("/batch")
        verify(WEBHOOK_SECRET, delivery.headers, delivery.body)
        assert delivery.payload["type"] == "batch.completed"
        assert delivery.payload["data"]["failed_by_code"] == {INPUT_NOT_FOUND: 1}
        # and each job with a callback got exactly one signed webhook, with its outcome
        receiver.wait_for(lambda got: len([d for d in got if d.path == "/jobs"]) >= 3, "three job webhooks")
        by_job = {d.payload["data"]["job_id"]: d for d in receiver.to("/jobs")}
        assert {job: d.payload["type"] for job, d in by_job.items()} == {
            "b-once-1": "job.succeeded", "b-once-2": "job.failed", "b-once-3": "job.cancelled"}
        assert len(receiver.to("/jobs")) == 3
        assert by_job["b-once-2"].payload["data"]["error"]["code"] == INPUT_NOT_FOUND
        assert by_job["b-once-1"].payload["data"]["result"]["status"] == "succeeded"
        # and rerunning the batch submits nothing and completes nothing again
        again = client.submit_batch(items, batch_id="b-once", callback_url=receiver.url("/batch"))
        assert again.report is not None and again.report.published == 0
    assert sim.state()["prompts_received"] == 2


def test_batch_results_land_in_a_jsonl_file_with_one_line_per_job(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    from tests.producer.test_cli import broker_env, dance

    # Given a worker and a CSV batch of two jobs, one of which fails
    sim = comfysim(exec_s=0.1)
    start_gpu_worker(cluster, "w", sim.url)
    good = dance_request(media_server, tmp_path)
    gone = media_server.serve("/gone.mp4", b"", status=404)
    csv = tmp_path / "jobs.csv"
    csv.write_text("job_id,reference_image,dance_video,prompt,width,height,steps\n"
                   f"csv-ok,{good['reference_image']},{good['dance_video']},a dancer,128,224,2\n"
                   f",{good['reference_image']},{gone},a dancer,128,224,2\n")
    # When `dance batch --wait --out` runs it
    done = dance("batch", str(csv), "--batch-id", "csv-b", "--wait", "--out", str(tmp_path / "out.jsonl"),
                 "--json", env=broker_env(cluster))
    # Then it exits 1 (a job failed) and prints the summary; the file holds one line per job, in file order
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["failed_by_code"] == {INPUT_NOT_FOUND: 1}
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(line["job_id"], line["status"]) for line in lines] == [("csv-ok", "succeeded"), ("csv-b-2", "failed")]
    assert lines[0]["result"]["params"]["steps"] == 2 and lines[1]["error"]["code"] == INPUT_NOT_FOUND
    # and `dance batch-status` shows the same from a second process
    status = dance("batch-status", "csv-b", env=broker_env(cluster))
    assert status.returncode == 0 and "succeeded" in status.stdout and INPUT_NOT_FOUND in status.stdout
    assert dance("batch-status", "no-such-batch", env=broker_env(cluster)).returncode == 6
