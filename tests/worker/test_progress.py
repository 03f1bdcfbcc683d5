"""A run's STARTED and PROGRESS writes leave its thread, keep their order, and have all landed once it closes."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from celery import Celery

from producer.celeryconf import make_app, shared_config
from worker.progress import PROGRESS_STATE, ProgressReporter, state_write_thread


def _app_and_task(redis_db: str) -> tuple[Celery, Any]:
    app = make_app("progress-test", shared_config(redis_db, redis_db, 3600))

    @app.task(name="progress.test", bind=True)
    def job(self: Any) -> None:
        return None

    return app, job


def test_a_runs_state_writes_land_in_order_by_the_time_its_reporter_closes(redis_db: str) -> None:
    # Given a run of job j1 (its request on the task's stack, as Celery puts it there) and its reporter
    app, task = _app_and_task(redis_db)
    task.push_request(id="j1", hostname="gpu@test")
    try:
        reporter = ProgressReporter(task, "j1", state_write_thread())
        # When it is marked STARTED and then passes three stages, and the run closes its reporter
        reporter.started("gpu@test")
        for stage in ("downloading", "uploading_inputs", "executing"):
            reporter.stage_changed(stage)
        reporter.close()
    finally:
        task.pop_request()
    # Then the last write made is the state stored: every write landed, none overtook a later one
    meta = app.backend.get_task_meta("j1")
    assert meta["status"] == PROGRESS_STATE
    assert meta["result"]["stage"] == "executing" and meta["result"]["job_id"] == "j1"


def test_state_writes_are_made_on_a_thread_other_than_the_runs(
    redis_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a reporter whose result backend records the thread each state write is made on (Celery gives
    # every thread a backend of its own, so the class records it)
    app, task = _app_and_task(redis_db)
    writers: list[str] = []
    backend_class = type(app.backend)
    store = backend_class.store_result

    def recording_store(self: Any, *args: Any, **kwargs: Any) -> Any:
        writers.append(threading.current_thread().name)
        return store(self, *args, **kwargs)

    monkeypatch.setattr(backend_class, "store_result", recording_store)
    task.push_request(id="j2", hostname="gpu@test")
    try:
        reporter = ProgressReporter(task, "j2", state_write_thread())
        # When the run reports a stage and closes
        reporter.stage_changed("downloading")
        reporter.close()
    finally:
        task.pop_request()
    # Then the write was made, and not by the run's own thread
    assert writers and threading.current_thread().name not in writers
    assert app.backend.get_task_meta("j2")["result"]["stage"] == "downloading"
