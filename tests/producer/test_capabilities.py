"""What a queue's workers can run, as producer/capabilities.py reads it from real Redis, written by the worker's
own publisher (worker/capabilities.py), and the refusal and reuse rules of submit_workflow."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from producer import capabilities, keys
from producer.capabilities import missing_for, offered_by
from producer.client import DanceClient
from producer.errors import DanceError
from producer.settings import ProducerSettings
from tests.support.jobs import queued_messages
from worker.capabilities import CapabilityPublisher

#: An /object_info in ComfyUI 0.3.39's shape: a loader with one model file, a loader with none, a plain node.
OBJECT_INFO: dict[str, Any] = {
    "UpscaleModelLoader": {"input": {"required": {"model_name": [["tiny_x2.safetensors"]]}}},
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": ["COMBO", {"options": []}]}}},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}}},
}


def _graph(*nodes: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {str(index): {"class_type": cls, "inputs": inputs} for index, (cls, inputs) in enumerate(nodes, 1)}


@pytest.fixture
def broker(redis_db: str) -> redis.Redis:
    return redis.Redis.from_url(redis_db)


def test_a_record_lists_every_node_class_and_the_files_of_loader_combos_only() -> None:
    # Given an /object_info with loaders and a plain node
    # When it becomes a capability record
    record = offered_by(OBJECT_INFO)
    # Then every class is listed, and only the combos that list model files (or nothing) are kept
    assert record["nodes"] == ["CheckpointLoaderSimple", "SaveImage", "UpscaleModelLoader"]
    assert record["models"] == {"UpscaleModelLoader": {"model_name": ["tiny_x2.safetensors"]},
                                "CheckpointLoaderSimple": {"ckpt_name": []}}


def test_a_workflow_is_checked_against_the_one_live_worker_that_lacks_least(broker: redis.Redis) -> None:
    # Given two live workers of queue q: one without SaveImage, one without the checkpoint file
    lacking_node = {name: spec for name, spec in OBJECT_INFO.items() if name != "SaveImage"}
    CapabilityPublisher(broker).beat("a@h", ["q"], offered_by(lacking_node))
    CapabilityPublisher(broker).beat("b@h", ["q", "other"], offered_by(OBJECT_INFO))
    workflow = _graph(("CheckpointLoaderSimple", {"ckpt_name": "sd.ckpt"}), ("SaveImage", {"images": ["1", 0]}),
                      ("UpscaleModelLoader", {"model_name": "tiny_x2.safetensors"}))
    # When the workflow is checked against q
    missing = missing_for(broker, "q", workflow)
    # Then the gaps named are worker b's (one model file), never a mix of both workers'
    assert (missing.nodes, missing.models, missing.no_workers, missing.blocks) == ([], ["sd.ckpt"], False, True)
    # and a workflow b can run is not blocked, while an unknown queue has no workers at all
    assert not missing_for(broker, "q", _graph(("SaveImage", {"images": ["x", 0]}))).blocks
    assert missing_for(broker, "nobody", workflow).no_workers


def test_a_worker_whose_refresh_has_expired_counts_for_nothing(broker: redis.Redis) -> None:
    # Given a worker that published with a 30-second TTL and then stopped refreshing
    CapabilityPublisher(broker, ttl_s=30).beat("gone@h", ["q"], offered_by(OBJECT_INFO))
    expires_at = broker.zscore(keys.queue_capabilities("q"), "gone@h")
    assert expires_at is not None
    # When the queue is read at an instant past its membership's expiry (named, not slept for)
    records_then = capabilities.live_records(broker, "q", now=expires_at + 0.001)
    # Then no live worker is left, while just before that instant it still counted
    assert records_then == []
    assert [record["hostname"] for record in capabilities.live_records(broker, "q", now=expires_at - 1)] == ["gone@h"]


def test_a_renewed_record_is_rewritten_only_when_it_changed_or_vanished(broker: redis.Redis) -> None:
    # Given a worker that published once
    publisher = CapabilityPublisher(broker)
    publisher.beat("w@h", ["q"], offered_by(OBJECT_INFO))
    # When its record vanishes (a Redis restart without persistence) and it beats again
    broker.delete(keys.worker_capabilities("w@h"))
    publisher.beat("w@h", ["q"], offered_by(OBJECT_INFO))
    # Then the record is back, with a TTL
    record = json.loads(broker.get(keys.worker_capabilities("w@h")) or b"{}")
    assert record["hostname"] == "w@h" and 0 < broker.ttl(keys.worker_capabilities("w@h")) <= 15
    # and a clean shutdown withdraws it from every queue at once
    publisher.withdraw("w@h", ["q"])
    assert capabilities.live_records(broker, "q") == []


def _client(broker_url: str, tmp_path: Any) -> DanceClient:
    return DanceClient(ProducerSettings(broker_url=broker_url, result_backend=broker_url,
                                        storage_url=tmp_path.as_uri(), wait_timeout_s=5.0))


def test_a_workflow_job_id_reused_with_another_workflow_is_refused_and_with_the_same_one_is_the_same_job(
    redis_db: str, tmp_path: Any
) -> None:
    # Given a workflow job submitted to a queue whose workers are not up yet (it queues, unchecked)
    first = _graph(("SaveImage", {"images": ["1", 0], "filename_prefix": "a"}))
    with _client(redis_db, tmp_path) as client:
        handle = client.submit_workflow(first, job_id="wf-key", owner="k1")
        # When the same id comes again with the same workflow (keys in another order), then with another
        again = client.submit_workflow({"1": {"inputs": first["1"]["inputs"], "class_type": "SaveImage"}},
                                       job_id="wf-key", owner="k1")
        with pytest.raises(DanceError) as reused:
            client.submit_workflow(_graph(("SaveImage", {"images": ["1", 0], "filename_prefix": "b"})),
                                   job_id="wf-key", owner="k1")
    # Then the same workflow is the same job, published once, and another one is refused for good
    assert again.id == handle.id == "wf-key" and queued_messages(redis_db) == 1
    assert reused.value.code == "job.id_reused" and not reused.value.retryable


def test_a_malformed_workflow_is_refused_before_anything_is_written(redis_db: str, tmp_path: Any) -> None:
    # Given workflows of the wrong shape
    broken: list[Any] = [[], {}, {"1": {"inputs": {}}}, {"nodes": [], "links": []}, {"1": {"class_type": "X",
                                                                                          "inputs": []}}]
    with _client(redis_db, tmp_path) as client:
        for workflow in broken:
            # When each is submitted
            with pytest.raises(DanceError) as refused:
                client.submit_workflow(workflow, job_id="wf-bad")
            # Then it is refused as invalid, and nothing reached Redis
            assert refused.value.code == "workflow.invalid"
    assert redis.Redis.from_url(redis_db).dbsize() == 0
