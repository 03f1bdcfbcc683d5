"""Celery's thread pool, taught to cancel the job it runs.

Why threads: the task is an I/O-bound client of ComfyUI (ComfyUI does the GPU work), and running it
in the worker's own process lets it talk to the readiness gate. The solo pool is deaf to ping and
loses its job on cold shutdown; prefork cannot share the gate
(docs/celery-on-redis.md#thread-pool-cannot-terminate-a-job).

Why a subclass: the stock thread pool cannot terminate a job (celery#10490) and answers
``revoke(terminate=True)`` with NotImplementedError. Here ``terminate_job`` asks the running job to stop
itself: the job polls its cancel flag, interrupts *its own* ComfyUI prompt and ends.
"""

from __future__ import annotations

from typing import Any

from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.worker import state as worker_state


class TaskPool(ThreadTaskPool):
    def terminate_job(self, pid: int, signal: Any = None) -> None:
        # Every thread shares the process pid, so the pid cannot say which job to stop; the revoked
        # set can, matched against every request this worker accepted (a job accepted but not yet
        # registered as a run learns of its revoke when it registers). A terminate that matches none
        # comes from a cold or soft shutdown: every running job then stops and hands its message back.
        runtime = getattr(self.app, "dance_runtime", None)
        if runtime is not None:
            held = {request.id for request in [*worker_state.reserved_requests, *worker_state.active_requests]}
            runtime.registry.terminate(revoked=set(worker_state.revoked), held_job_ids=held)
