"""The worker's Celery app: ``celery -A worker.app worker`` and ``dance worker`` both start it.

Settings are read from the environment when Celery first configures the app (at worker start), not
at import. The readiness gate and the cooperative pool are part of the app itself, so the gate holds
however the worker is started.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app import trace
from kombu.entity import Queue

from producer.celeryconf import LazyConfig, shared_config
from worker.gate import ComfyGate
from worker.liveness import Liveness
from worker.peers import without_gossip_and_mingle
from worker.pipeline import concurrency_for
from worker.result_backend import OVERRIDE_BACKENDS
from worker.runtime import RuntimeStep
from worker.settings import WorkerSettings

#: How long a worker retries writing a result or progress while the backend is away, in seconds, and how
#: many times Celery retries a failed write (backing off from 0.1 s to 4 s: about 30 s in all).
BACKEND_RETRY_TIMEOUT_S = 30.0
BACKEND_MAX_RETRIES = 12
#: The thread pool that can cancel its job (worker/pool.py), chosen by config so a plain
#: ``celery -A worker.app worker`` uses it too (the CLI's -P accepts no module paths).
POOL = "worker.pool:TaskPool"


def worker_config(settings: WorkerSettings) -> dict[str, Any]:
    config = shared_config(settings.broker_url, settings.result_backend, settings.result_expires_s,
                           settings.sentinel_master)
    config["broker_transport_options"] = {
        **config["broker_transport_options"],
        # celery#5935: a job still running at the visibility timeout is redelivered to another worker
        # (docs/celery-on-redis.md#visibility-timeout). The heartbeat keeps live jobs' entries fresh
        # (worker/ownership/heartbeat.py, docs/celery-on-redis.md#lease-refresh), so the timeout can be short
        # and only bounds the redelivery of a dead worker's job; with a throttle of 1 every sweep scans, so
        # that job returns within timeout + interval, not up to ~100 s later.
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": settings.restore_interval_s,
        "unacked_restore_throttle": 1,
    }
    config.update({
        "dance_settings": settings,
        # result_extended stores the task's kwargs; these backends store them with URLs redacted.
        "override_backends": OVERRIDE_BACKENDS,
        "task_queues": [Queue(name, routing_key=name) for name in settings.queues],  # type: ignore[no-untyped-call]
        "task_default_queue": settings.queues[0],
        # Ack only after the job ended, so a worker that dies mid-job leaves its message to be redelivered;
        # celery#1628: without reject_on_worker_lost, a pool child killed (OOM) mid-job is acked and lost
        # (docs/celery-on-redis.md#reject-on-worker-lost).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": concurrency_for(settings.pipeline_depth),
        "worker_pool": POOL,
        "worker_send_task_events": True,
        # A redelivered job whose result already says SUCCESS is not run again.
        "worker_deduplicate_successful_tasks": True,
        # On a broker connection loss kombu restores the running job's message, so a second copy may
        # start elsewhere. Celery's remedy cancels the local run, then acks or marks the job on a dead
        # connection (a stale ack deletes the live copy's entry: docs/celery-on-redis.md#stale-acks). Instead
        # the local run goes on, and a copy that sees the execution lease renewed is dropped
        # (worker/ownership/leases.py, worker/job.py _claim): no job lost, no GPU run wasted.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Celery would write STARTED when any copy of a job starts, even one that then finds the job ended
        # or owned by a live run and drops itself: it would overwrite a finished job's state for good. The
        # run that owns the job writes STARTED itself (worker/job.py, after _claim).
        "task_track_started": False,
        # Progress and results must outlive a broker restart (AOF reload) rather than fail the job: the
        # STARTED write at the very start of a job fails it "outside the body" unless Celery retries it.
        "result_backend_transport_options": {**config["result_backend_transport_options"],
                                             "retry_policy": {"timeout": BACKEND_RETRY_TIMEOUT_S}},
        "result_backend_always_retry": True,
        "result_backend_max_retries": BACKEND_MAX_RETRIES,
        "result_backend_base_sleep_between_retries_ms": 100,
        "result_backend_max_sleep_between_retries_ms": 4000,
    })
    return config

# A result carries presigned output URLs, whose query strings are signed tokens; Celery's success line
# would print the whole result into the worker's log. The result itself stays in the result backend.
trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"
# A handback (Reject with requeue) is expected, and worker/task.py logs its code and reason at WARNING.
# Celery would add the whole exception chain: a hundred lines per job each time a ComfyUI restarts.
trace.log_policy_reject = trace.log_policy_reject._replace(traceback=0)

app = Celery("dance", include=["worker.task", "worker.telemetry.install"], set_as_current=False)
app.config_from_object(LazyConfig(lambda: worker_config(WorkerSettings.from_env())))
app.steps["worker"].add(RuntimeStep)
app.steps["consumer"].add(ComfyGate)
app.steps["consumer"].add(Liveness)
without_gossip_and_mingle(app)
