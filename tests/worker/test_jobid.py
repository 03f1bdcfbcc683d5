"""The worker re-checks a job id before the id names a folder or a storage key: a message may reach the
queue without our producer, whose own check it then never met."""

from __future__ import annotations

import pytest

from producer import errors
from tests.fixtures.media_server import MediaServer
from worker.comfy_http import ComfyHttp, OutputFile
from worker.jobid import checked_job_id
from worker.outputs import store_outputs
from worker.storage import LocalStorage


def test_a_job_id_with_a_trailing_newline_fails_permanently_with_the_options_code() -> None:
    with pytest.raises(errors.InvalidRequest) as raised:
        checked_job_id("job-1\n")
    assert (raised.value.code, raised.value.retryable) == (errors.REQUEST_BAD_OPTION, False)
    # and the details show the stray character, which a plain str() would hide at the end of a line
    assert raised.value.details["job_id"] == repr("job-1\n")


def test_a_plain_job_id_passes_unchanged() -> None:
    assert checked_job_id("Job-1.a_b") == "Job-1.a_b"


def test_outputs_of_a_job_whose_id_fails_the_check_are_neither_fetched_nor_stored(
    media_server: MediaServer, storage: LocalStorage
) -> None:
    # Given a ComfyUI stand-in that would serve the output, and an id that slipped past the producer
    media_server.serve("/view", b"frame")
    http = ComfyHttp(media_server.base_url, timeout_s=5.0)
    output = OutputFile(node_id="9", key="videos", filename="dance.mp4", subfolder="", type="output")
    # When its outputs are stored, Then nothing is read from ComfyUI and nothing lands in storage
    with pytest.raises(errors.InvalidRequest) as raised:
        store_outputs(http, storage, "job-1\n", [output])
    assert raised.value.code == errors.REQUEST_BAD_OPTION
    assert media_server.hits("/view") == 0
    assert not storage.root.exists() or list(storage.root.iterdir()) == []
