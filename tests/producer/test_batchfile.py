"""Batch files and batch submission on a real broker, without workers: ids, reruns, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from producer import keys
from producer.batchfile import default_batch_id, read_batch_file, read_csv
from producer.client import DanceClient
from producer.errors import BATCH_INVALID, BATCH_MISMATCH, REQUEST_BAD_OPTION, REQUEST_MISSING_FIELD, DanceError
from tests.support.jobs import queued_messages

REQUEST = {"reference_image": "https://media.example/a.png", "dance_video": "https://media.example/b.mp4",
           "prompt": "dance"}


class Interrupted(Exception):
    """Stands for a producer killed in the middle of a batch."""


def test_a_csv_row_becomes_a_typed_request_and_its_control_options() -> None:
    # Given a CSV with numbers, an empty cell and control columns
    text = ("reference_image,dance_video,prompt,width,cfg,seed,job_id,priority,callback_url\n"
            "https://m/a.png,https://m/b.mp4,\"a, b\",512,2.5,,row-1,3,https://hooks.example/x\n")
    # When it is read
    [item] = read_csv(text)
    # Then the request has typed values and no control columns; the options are apart
    assert item.request == {"reference_image": "https://m/a.png", "dance_video": "https://m/b.mp4",
                            "prompt": "a, b", "width": 512, "cfg": 2.5}
    assert (item.job_id, item.priority, item.callback_url, item.line) == ("row-1", 3, "https://hooks.example/x", 1)


def test_every_bad_line_of_a_jsonl_file_is_reported_at_once(tmp_path: Path) -> None:
    # Given a file with a blank line, a line that is no JSON and one that is no object
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"prompt": "x"}\n\nnot json\n[1, 2]\n')
    # When it is read, one error names both bad lines by their number in the file
    with pytest.raises(DanceError) as raised:
        read_batch_file(path)
    assert raised.value.code == BATCH_INVALID
    assert [row["line"] for row in raised.value.details["rows"]] == [3, 4]


def test_the_same_file_always_maps_to_the_same_batch_id(tmp_path: Path) -> None:
    path = tmp_path / "my jobs.jsonl"
    path.write_text('{"prompt": "x"}\n')
    first = default_batch_id(path)
    assert first == default_batch_id(path) and first.startswith("my-jobs-")
    path.write_text('{"prompt": "y"}\n')
    assert default_batch_id(path) != first


def test_an_interrupted_batch_rerun_submits_only_the_missing_jobs(redis_db: str, tmp_path: Path) -> None:
    # Given a producer that dies after submitting two jobs of five
    client = _client(redis_db, tmp_path)
    items = [dict(REQUEST, prompt=f"job {n}") for n in range(5)]

    def die_after_two(done: int, total: int, new: bool) -> None:
        if done == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        client.submit_batch(items, batch_id="rerun", on_submitted=die_after_two)
    assert queued_messages(redis_db) == 2
    # When the same batch is submitted again
    handle = client.submit_batch(items, batch_id="rerun")
    # Then only the three missing jobs are published, under ids from the batch id and the line
    assert handle.report is not None and (handle.report.published, handle.report.already_submitted) == (3, 2)
    assert queued_messages(redis_db) == 5
    assert handle.job_ids() == [f"rerun-{n}" for n in range(1, 6)]
    summary = handle.summary()
    assert summary.counts["queued"] == 5 and summary.completed_at is None
    client.close()


def test_a_producer_killed_between_claim_and_publish_does_not_lose_the_job(redis_db: str, tmp_path: Path) -> None:
    # Given a job id claimed by a producer that died before publishing (its claim marker outlived it)
    client = _client(redis_db, tmp_path)
    broker = redis.Redis.from_url(redis_db)
    broker.set(keys.submitted("orphan-1"), "claiming:dance", ex=1)
    # When a rerun submits the batch that holds it
    handle = client.submit_batch([REQUEST], batch_id="orphan")
    # Then the claim expires and the rerun publishes the job itself, once
    assert handle.report is not None and handle.report.published == 1
    assert queued_messages(redis_db) == 1
    client.close()


@pytest.mark.parametrize(
    ("rows", "code"),
    [([{"prompt": "no media"}], REQUEST_MISSING_FIELD),
     ([dict(REQUEST, priority=12)], REQUEST_BAD_OPTION),
     ([dict(REQUEST, callback_url="ftp://hooks.example/x")], REQUEST_BAD_OPTION),
     ([dict(REQUEST, job_id="same"), dict(REQUEST, job_id="same")], BATCH_INVALID)],
    ids=["missing-field", "bad-priority", "bad-callback", "repeated-id"],
)
def test_a_batch_with_an_invalid_row_submits_nothing(
    redis_db: str, tmp_path: Path, rows: list[dict[str, Any]], code: str
) -> None:
    client = _client(redis_db, tmp_path)
    with pytest.raises(DanceError) as raised:
        client.submit_batch([REQUEST, *rows], batch_id="invalid")
    assert raised.value.code == BATCH_INVALID
    assert raised.value.details["rows"][0]["code"] == code
    assert queued_messages(redis_db) == 0
    client.close()


def test_a_batch_id_reused_for_other_jobs_is_refused(redis_db: str, tmp_path: Path) -> None:
    client = _client(redis_db, tmp_path)
    client.submit_batch([REQUEST], batch_id="taken")
    with pytest.raises(DanceError) as raised:
        client.submit_batch([REQUEST, REQUEST], batch_id="taken")
    assert raised.value.code == BATCH_MISMATCH
    assert queued_messages(redis_db) == 1
    client.close()


def _client(broker_url: str, tmp_path: Path) -> DanceClient:
    from producer.settings import ProducerSettings

    return DanceClient(ProducerSettings(broker_url=broker_url, result_backend=broker_url,
                                        storage_url=(tmp_path / "storage").as_uri()))
