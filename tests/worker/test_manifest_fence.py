"""A run that finds the job's manifest already written keeps it: the first run to finish decides the result
(real worker, Redis, simulator and storage folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from producer import keys
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, job_counter
from tests.support.processes import wait_until
from worker.outputs import MANIFEST_NAME
from worker.storage import open_storage

#: Read cap for the manifest, in bytes.
READ_CAP_BYTES = 1 << 20


def test_a_run_whose_manifest_another_run_wrote_first_returns_that_result_and_counts_no_write(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job held in ComfyUI's sampler on a worker
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    worker = cluster.start_worker("w", sim.url)
    storage = open_storage(cluster.storage_url)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="fenced")
        wait_until(lambda: sim.state()["held"], 30, "the prompt to be held")
        # When another run of the job completes meanwhile, so its manifest is in storage first
        winner = {"job_id": "fenced", "status": "succeeded", "outputs": [], "seed": 99,
                  "worker": {"hostname": "other@host", "device": "cuda:0"}}
        storage.put_bytes(f"fenced/{MANIFEST_NAME}", json.dumps(winner).encode(), "application/json")
        sim.release()
        result = handle.result(timeout_s=60)
    # Then the producer gets the winner's result, the stored manifest is still the winner's,
    # and this run counted no manifest write, though it ran on the GPU
    assert result == winner
    assert json.loads(storage.read_bytes(f"fenced/{MANIFEST_NAME}", READ_CAP_BYTES)) == winner
    assert job_counter(cluster.broker_url, keys.manifest_writes("fenced")) == 0
    assert job_counter(cluster.broker_url, keys.executions("fenced")) == 1
    worker.wait_for_log("another run already wrote the manifest")
