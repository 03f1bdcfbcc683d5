"""The Python API services use to submit and follow dance jobs. The ``dance`` CLI calls only this.

Submitting needs the broker URL and nothing of the worker: the task is sent by name.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
from celery.result import AsyncResult
from kombu.exceptions import OperationalError

from producer import assets, capabilities, keys, ledger
from producer.batch import BatchHandle, SubmitCallback, submit_batch
from producer.batchfile import BatchItem
from producer.celeryconf import TASK_NAME, WORKFLOW_TASK_NAME, make_app, shared_config
from producer.errors import (
    BROKER_UNREACHABLE,
    CAPABILITY_MISSING,
    JOB_CANCELLED,
    JOB_ID_REUSED,
    JOB_MALFORMED_RESULT,
    JOB_UNKNOWN,
    JOB_WAIT_TIMEOUT,
    DanceError,
    error,
)
from producer.graph import check_graph, workflow_fingerprint
from producer.localmedia import stage_local_media
from producer.redact import redact_url
from producer.redisurl import redis_client
from producer.resultwatch import ResultWatch
from producer.schema import check_job_id, check_priority, check_queue, check_timeout_s, parse_request
from producer.settings import ProducerSettings
from producer.webhooks import check_callback_url

log = logging.getLogger(__name__)

#: Longest pause between two result-backend reads while waiting, in seconds (a state change announced on
#: the backend's channel ends the pause at once: producer/resultwatch.py).
POLL_INTERVAL_S = 0.2
#: How often a publish is retried when the broker does not answer.
PUBLISH_MAX_RETRIES = 2
#: How long a claim may stay unconfirmed by a publish before another submit may take over, in seconds.
CLAIM_TTL_S = 30
#: Value prefix of a submitted marker whose job is not published yet.
CLAIMING = "claiming:"
#: States in which a job has ended.
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

ProgressCallback = Callable[[str, dict[str, Any] | None], None]


class DanceClient:
    """Submit and follow jobs on one broker. Cheap to build; close it when done."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.settings = settings
        self.app = make_app("dance-producer", shared_config(settings.broker_url, settings.result_backend, 0,
                                                            settings.sentinel_master))
        timeout = settings.broker_connect_timeout_s
        self.redis = redis_client(settings.broker_url, settings.sentinel_master, socket_timeout=timeout,
                                  socket_connect_timeout=timeout)

    @classmethod
    def from_env(cls) -> DanceClient:
        return cls(ProducerSettings.from_env())

    def close(self) -> None:
        self.redis.close()
        self.app.close()

    def __enter__(self) -> DanceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        request: Mapping[str, Any],
        *,
        job_id: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        timeout_s: float | None = None,
        callback_url: str | None = None,
    ) -> JobHandle:
        """Enqueue a dance job; a ``job_id`` seen before returns that job's handle and sends nothing.

        ``callback_url`` gets a signed webhook when the job ends (see producer/webhooks.py).
        """
        return self._submit(request, job_id=job_id, queue=queue, priority=priority, timeout_s=timeout_s,
                            callback_url=callback_url)[0]

    def _submit(
        self, request: Mapping[str, Any], *, job_id: str | None, queue: str | None, priority: int | None,
        timeout_s: float | None, callback_url: str | None,
    ) -> tuple[JobHandle, bool]:
        """:meth:`submit`, also saying whether this call published the job (False: it existed)."""
        job_id = check_job_id(job_id) if job_id is not None else uuid.uuid4().hex
        queue = check_queue(queue or self.settings.default_queue)
        options: dict[str, Any] = {"task_id": job_id, "queue": queue, "routing_key": queue}
        if priority is not None:
            options["priority"] = check_priority(priority)
        deadline_s = check_timeout_s(timeout_s) if timeout_s is not None else None
        callback = check_callback_url(callback_url) if callback_url is not None else None
        staged = stage_local_media(dict(request), job_id, self.settings.storage_url)
        payload = parse_request(staged).to_payload()
        kwargs = {"request": payload, "deadline_s": deadline_s, "submitted_at": time.time()}
        return self._publish(TASK_NAME, kwargs, options, callback=callback, shown=_shown_kwargs(kwargs))

    def submit_workflow(
        self,
        workflow: dict[str, Any],
        *,
        job_id: str | None = None,
        queue: str | None = None,
        owner: str = "",
        deadline_s: float | None = None,
    ) -> JobHandle:
        """Enqueue a workflow job: an API-format graph whose inputs may be ``core/ASSET`` references.

        Before anything is queued: the graph's shape (``workflow.invalid``), that every referenced asset
        exists for ``owner`` (``asset.missing``), and that one live worker of the queue offers every node
        class and model file it names (``capability.missing``, details ``nodes``, ``models``, ``queue``).
        A queue none of whose workers is alive (all restarting, or not started yet) takes the job, as it
        takes dance jobs: it runs once a worker is ready. A ``job_id`` seen before returns that job's
        handle and sends nothing, if it was submitted with the same workflow and owner (else
        ``job.id_reused``).
        """
        job_id = check_job_id(job_id) if job_id is not None else uuid.uuid4().hex
        queue = check_queue(queue or self.settings.default_queue)
        deadline = check_timeout_s(deadline_s) if deadline_s is not None else None
        graph = check_graph(workflow)
        self._guard(lambda: assets.check_refs(self.redis, graph, owner=owner))
        self._check_capabilities(queue, graph)
        fingerprint = workflow_fingerprint(graph, owner)
        if not self._guard(lambda: self.redis.set(keys.job_fingerprint(job_id), fingerprint, nx=True,
                                                  ex=keys.JOB_KEY_TTL_S)):
            known = self._guard(lambda: self.redis.get(keys.job_fingerprint(job_id)))
            if known is not None and known.decode() != fingerprint:
                raise error(JOB_ID_REUSED, f"job id {job_id} was submitted with another workflow", job_id=job_id)
        kwargs = {"workflow": graph, "owner": owner, "deadline_s": deadline, "submitted_at": time.time()}
        options = {"task_id": job_id, "queue": queue, "routing_key": queue}
        shown = {"workflow": f"<{len(graph)} nodes>", "owner": owner, "deadline_s": deadline}
        return self._publish(WORKFLOW_TASK_NAME, kwargs, options, callback=None, shown=shown)[0]

    def _check_capabilities(self, queue: str, graph: dict[str, Any]) -> None:
        missing = self._guard(lambda: capabilities.missing_for(self.redis, queue, graph))
        if missing.blocks:
            raise error(CAPABILITY_MISSING, f"no live worker of queue {queue} can run this workflow "
                        f"(node classes {missing.nodes}, model files {missing.models})",
                        nodes=missing.nodes, models=missing.models, queue=queue)
        if missing.no_workers:
            log.warning("no live worker of queue %s published its capabilities; queueing unchecked", queue)

    def _publish(
        self, task_name: str, kwargs: dict[str, Any], options: dict[str, Any], *, callback: str | None,
        shown: dict[str, Any],
    ) -> tuple[JobHandle, bool]:
        """Claim the job id, then send the task: a claimed id publishes once; True if this call did."""
        job_id, queue = str(options["task_id"]), str(options["queue"])
        if not self._claim(job_id, queue):
            return JobHandle(self, job_id), False
        try:
            if callback is not None:
                self.redis.set(keys.job_callback(job_id), callback, ex=keys.JOB_KEY_TTL_S)
            self.app.send_task(
                task_name, kwargs=kwargs, retry=True,
                retry_policy={"max_retries": PUBLISH_MAX_RETRIES, "interval_start": 0.2, "interval_step": 0.5},
                # Flower and worker logs show these reprs, never the signed URLs themselves.
                argsrepr="()", kwargsrepr=repr(shown),
                **options,
            )
        except (OperationalError, redis.RedisError) as exc:
            self._guard(lambda: self.redis.delete(keys.submitted(job_id)))
            raise self._unreachable(exc) from exc
        self._guard(lambda: self.redis.set(keys.submitted(job_id), queue, ex=keys.JOB_KEY_TTL_S))
        return JobHandle(self, job_id), True

    def submit_batch(
        self,
        items: Iterable[BatchItem | Mapping[str, Any]],
        *,
        batch_id: str | None = None,
        callback_url: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        timeout_s: float | None = None,
        on_submitted: SubmitCallback | None = None,
    ) -> BatchHandle:
        """Submit a batch: plain requests (or :class:`BatchItem` s from :func:`read_batch_file`).

        Job ids are ``<batch_id>-<line>`` unless an item names its own; a batch id seen before submits
        only the jobs not yet submitted. ``callback_url`` gets one signed webhook when every job ended.
        ``queue``, ``priority`` and ``timeout_s`` apply to the items that do not set their own.
        """
        return submit_batch(self, items, batch_id=batch_id, callback_url=callback_url, queue=queue,
                            priority=priority, timeout_s=timeout_s, on_submitted=on_submitted)

    def batch(self, batch_id: str) -> BatchHandle:
        """Reattach to a batch by id, from any machine that reaches the broker."""
        return BatchHandle(self, batch_id)

    def job(self, job_id: str) -> JobHandle:
        return JobHandle(self, check_job_id(job_id))

    def _claim(self, job_id: str, queue: str) -> bool:
        """SET NX the submitted marker: only the first submit of a job id publishes it.

        The marker says ``claiming:<queue>`` until the publish is done and expires quickly meanwhile, so
        a producer that dies between claim and publish does not block the job id for good: a rerun
        waits for the claim to resolve (or expire) and then publishes the job itself.
        """
        marker = keys.submitted(job_id)
        deadline = time.monotonic() + CLAIM_TTL_S + 1
        while True:
            if self._guard(lambda: self.redis.set(marker, CLAIMING + queue, nx=True, ex=CLAIM_TTL_S)):
                return True
            value = self._guard(lambda: self.redis.get(marker))
            if value is not None and not value.startswith(CLAIMING.encode()):
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)

    def _guard(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except redis.RedisError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: Exception) -> DanceError:
        return error(
            BROKER_UNREACHABLE, f"cannot reach the broker: {type(exc).__name__}: {exc}",
            broker=redact_url(self.settings.broker_url),
        )


class JobHandle:
    """One job: its id, state, progress, result, and a way to cancel it."""

    def __init__(self, client: DanceClient, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def _async(self) -> AsyncResult:
        return AsyncResult(self.id, app=self.client.app)

    def status(self) -> str:
        """Celery's state, plus ``REQUEUED`` and ``PROGRESS``; ``UNKNOWN`` for an id never submitted."""
        state = str(self.client._guard(lambda: self._async().state))
        if state == "PENDING" and not self.client._guard(lambda: self.client.redis.exists(keys.submitted(self.id))):
            return "UNKNOWN"
        return state

    def progress(self) -> dict[str, Any] | None:
        """The latest progress meta (stage, node, value, max, percent) while the job runs."""
        state, info = self._snapshot()
        return info if state == "PROGRESS" and isinstance(info, dict) else None

    def result(self, timeout_s: float | None = None, on_progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Wait for the job; return its result dict or raise the job's :class:`DanceError`."""
        limit = self.client.settings.wait_timeout_s if timeout_s is None else timeout_s
        with ResultWatch(self.client.app.backend, self.id) as watch:
            return self._wait(watch, time.monotonic() + limit, limit, on_progress)

    def _wait(
        self, watch: ResultWatch, deadline: float, limit: float, on_progress: ProgressCallback | None
    ) -> dict[str, Any]:
        last: tuple[str, Any] | None = None
        state, info = self._snapshot()
        if state == "PENDING" and self.status() == "UNKNOWN":
            raise error(JOB_UNKNOWN, f"no job {self.id} was submitted to this broker", job_id=self.id)
        outage = False
        while True:
            if state in READY_STATES:
                return self._settled(state)
            if on_progress is not None and (state, info) != last:
                on_progress(state, info if isinstance(info, dict) else None)
                last = (state, info)
            if time.monotonic() >= deadline:
                raise error(JOB_WAIT_TIMEOUT, f"job {self.id} did not finish within {limit:g}s (state {state})",
                            job_id=self.id, state=state)
            # Woken by the backend's announcement of a new state, or after the interval at the latest.
            watch.wait(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
            try:
                state, info = self._snapshot()
                outage = False
            except DanceError as exc:
                # A broker restart (an AOF reload takes a while) must not end the wait: the job goes on
                # meanwhile, so keep the last state until the broker answers again or the wait times out.
                if exc.code != BROKER_UNREACHABLE or time.monotonic() >= deadline:
                    raise
                if not outage:
                    log.warning("job %s: %s; still waiting", self.id, exc)
                outage = True

    def _snapshot(self) -> tuple[str, Any]:
        """The job's state and, while it runs or waits for a retry, its progress meta."""
        result = self._async()
        state = str(self.client._guard(lambda: result.state))
        info = self.client._guard(lambda: result.info) if state in ("PROGRESS", "REQUEUED") else None
        return state, info

    def _settled(self, state: str) -> dict[str, Any]:
        result = self._async()
        value = self.client._guard(lambda: result.result)
        if state == "SUCCESS" and isinstance(value, dict):
            return value
        if state == "REVOKED":
            raise error(JOB_CANCELLED, f"job {self.id} was cancelled", job_id=self.id)
        if isinstance(value, DanceError):
            raise value
        raise error(JOB_MALFORMED_RESULT, f"job {self.id} ended {state} with {type(value).__name__}: {value}",
                    job_id=self.id, state=state)

    def cancel(self) -> str:
        """Cancel the job and return its state afterwards.

        A queued job is marked REVOKED at once and dropped by whichever worker meets it (the Redis
        marker covers workers that missed the revoke broadcast, e.g. started later). A running job
        interrupts its own ComfyUI prompt and ends REVOKED. A finished job is left as it is.
        """
        state = self.status()
        if state in READY_STATES:
            return state
        if state == "UNKNOWN":
            raise error(JOB_UNKNOWN, f"no job {self.id} was submitted to this broker", job_id=self.id)
        self.client._guard(lambda: self.client.redis.set(keys.cancelled(self.id), "1", ex=keys.JOB_KEY_TTL_S))
        try:
            self.client.app.control.revoke(self.id, terminate=True, signal="SIGTERM")
        except OperationalError as exc:
            raise self.client._unreachable(exc) from exc
        if state in ("PENDING", "REQUEUED"):
            self.client._guard(lambda: self.client.app.backend.mark_as_revoked(self.id, "cancelled"))
            # A queued job has ended now, not when some worker meets its message: its batch and its
            # webhook hear of it at once (the ledger counts it once, whoever settles it first).
            self._settle_cancelled()
        return self.status()

    def _settle_cancelled(self) -> None:
        settled = self.client._guard(
            lambda: ledger.settle(self.client.redis, self.id, ledger.Outcome(ledger.CANCELLED, JOB_CANCELLED)))
        ledger.publish(self.client.app, settled.followups)


def _shown_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The task's kwargs as Flower and logs may show them: media URLs without credentials or query."""
    request = dict(kwargs["request"])
    for name in ("reference_image", "dance_video"):
        if isinstance(request.get(name), str):
            request[name] = redact_url(request[name])
    return {**kwargs, "request": request}


def submit(
    request: Mapping[str, Any],
    *,
    job_id: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    timeout_s: float | None = None,
    callback_url: str | None = None,
    client: DanceClient | None = None,
) -> JobHandle:
    """Submit with a client built from the environment (or the one given)."""
    client = client or DanceClient.from_env()
    return client.submit(request, job_id=job_id, queue=queue, priority=priority, timeout_s=timeout_s,
                         callback_url=callback_url)


__all__ = ["BatchHandle", "BatchItem", "DanceClient", "JobHandle", "submit"]
