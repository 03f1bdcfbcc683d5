"""The janitor deletes exactly what one run left in ComfyUI, and sweeps only its own worker's leftovers
(real simulator, real input and output folders, real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.jobs import sample_media
from tests.support.processes import wait_until
from worker.cleanup import InFlight, Janitor, Names, new_run_token
from worker.comfy_http import ComfyHttp
from worker.marks import JOB_MARK, WORKER_MARK, process_mark
from worker.settings import DEFAULT_WORKFLOW_PATH
from worker.workflow import load_workflow

#: Simulated GPU seconds per prompt: these tests are about files, not speed.
EXEC_S = 0.05
#: How long a prompt may take to reach the history, in seconds (generous for a loaded machine).
HISTORY_TIMEOUT_S = 30.0
#: Node names of the two workers that share one ComfyUI; Celery names look like this.
WORKER_A, WORKER_B = "a@gpu-host", "b@gpu-host"


@dataclass(frozen=True)
class Run:
    """What one run of a job left in ComfyUI: its prompt's history entry, its inputs, its output folder."""

    job_id: str
    run_token: str
    prompt_id: str
    inputs: tuple[Path, ...]
    outputs: Path


@dataclass
class Comfy:
    """One simulated ComfyUI whose folders the workers share, and runs of jobs on it."""

    http: ComfyHttp
    data_dir: Path
    media: Path

    @property
    def input_dir(self) -> Path:
        return self.data_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "output"

    def janitor(self, nodename: str, in_flight: InFlight | None = None) -> Janitor:
        return Janitor(self.http, self.input_dir, self.output_dir, lambda: in_flight or InFlight(), nodename)

    def run(self, nodename: str, job_id: str) -> Run:
        """Upload a job's inputs, run its prompt to the end and return what it left, as worker ``nodename``."""
        names, token = Names(nodename), new_run_token()
        image = self.http.upload_image(
            self.media / "character.png", names.input_name(job_id, token, "reference", ".png"))
        video = self.http.upload_image(self.media / "dance.mp4", names.input_name(job_id, token, "video", ".mp4"))
        graph = load_workflow(DEFAULT_WORKFLOW_PATH).bind({
            "reference_image_filename": image, "dance_video_filename": video, "prompt": job_id,
            "negative_prompt": "", "width": 128, "height": 224, "steps": 2, "cfg": 1.0, "seed": 7,
            "output_prefix": f"{names.output_subfolder(job_id, token)}/dance", "job_id": job_id,
        })
        extra = {JOB_MARK: job_id, WORKER_MARK: process_mark(nodename)}
        prompt_id = self.http.queue_prompt(graph, f"client-{token}", extra).prompt_id
        wait_until(lambda: self.http.history(prompt_id), HISTORY_TIMEOUT_S, f"prompt {prompt_id} in the history")
        outputs = self.output_dir / names.output_subfolder(job_id, token)
        return Run(job_id, token, prompt_id, (self.input_dir / image, self.input_dir / video), outputs)

    def left(self, run: Run) -> dict[str, bool]:
        """Which of a run's traces are still in ComfyUI."""
        return {
            "history": self.http.history(run.prompt_id) is not None,
            "inputs": all(path.is_file() for path in run.inputs),
            "outputs": any(run.outputs.glob("dance*")),
        }


ALL_LEFT = {"history": True, "inputs": True, "outputs": True}
NONE_LEFT = {"history": False, "inputs": False, "outputs": False}


@pytest.fixture
def comfy(comfysim: Any, tmp_path: Path) -> Iterator[Comfy]:
    sim = comfysim(exec_s=EXEC_S)
    media = tmp_path / "media"
    media.mkdir()
    sample_media(media)
    http = ComfyHttp(sim.url, timeout_s=10)
    try:
        yield Comfy(http, sim.data_dir, media)
    finally:
        http.close()


def test_jobs_whose_ids_prefix_each_other_never_delete_each_others_files(comfy: Comfy) -> None:
    # Given finished runs of jobs order-12 and order-12-retry on one worker
    short, long = comfy.run(WORKER_A, "order-12"), comfy.run(WORKER_A, "order-12-retry")
    assert comfy.left(short) == comfy.left(long) == ALL_LEFT
    janitor = comfy.janitor(WORKER_A)
    # When order-12 is cleaned up, Then all of order-12 is gone and all of order-12-retry stays
    janitor.clean_job(short.job_id, short.run_token, short.prompt_id)
    assert comfy.left(short) == NONE_LEFT and comfy.left(long) == ALL_LEFT
    # When a new run of order-12 is made and order-12-retry is cleaned up, Then order-12's new run stays
    again = comfy.run(WORKER_A, "order-12")
    janitor.clean_job(long.job_id, long.run_token, long.prompt_id)
    assert comfy.left(long) == NONE_LEFT and comfy.left(again) == ALL_LEFT


def test_the_late_cleanup_of_a_jobs_first_attempt_leaves_its_second_attempts_files(comfy: Comfy) -> None:
    # Given attempt 1 of a job, whose cleanup is still to come, and attempt 2 of it, running on the same worker
    first, second = comfy.run(WORKER_A, "order-7"), comfy.run(WORKER_A, "order-7")
    janitor = comfy.janitor(WORKER_A, InFlight(frozenset({second.prompt_id}), frozenset({"order-7"})))
    # When attempt 1's cleanup runs, on the janitor's thread as after a job (with the first sweep after it)
    janitor.job_done(first.job_id, first.run_token, first.prompt_id)
    janitor.close()
    # Then attempt 1 left nothing, and attempt 2's inputs, outputs and history are all there
    assert comfy.left(first) == NONE_LEFT
    assert comfy.left(second) == ALL_LEFT


def test_the_sweep_on_a_shared_comfyui_deletes_only_its_own_workers_leftovers(comfy: Comfy) -> None:
    # Given two workers on one ComfyUI, each with a run nobody cleaned up (a killed worker cleans nothing),
    # worker A with another job in flight, and an input whose name tells no worker
    mine, theirs = comfy.run(WORKER_A, "order-1"), comfy.run(WORKER_B, "order-2")
    running = comfy.run(WORKER_A, "order-3")
    untagged = comfy.input_dir / "dance-order-4-reference.png"
    untagged.write_bytes(b"an input of an older worker")
    in_flight = InFlight(frozenset({running.prompt_id}), frozenset({"order-3"}))
    # When worker A sweeps
    comfy.janitor(WORKER_A, in_flight).sweep()
    # Then A's leftovers are gone, and B's history entry, inputs and outputs stay, as do A's running job's
    assert comfy.left(mine) == NONE_LEFT
    assert comfy.left(theirs) == ALL_LEFT and comfy.left(running) == ALL_LEFT and untagged.is_file()
    # When worker B sweeps, Then B's leftovers go and A's running job still keeps everything
    comfy.janitor(WORKER_B).sweep()
    assert comfy.left(theirs) == NONE_LEFT and comfy.left(running) == ALL_LEFT


def test_a_janitor_that_does_not_know_its_node_name_sweeps_nothing(comfy: Comfy) -> None:
    # Given a run nobody cleaned up
    run = comfy.run(WORKER_A, "order-5")
    # When a janitor not yet told its worker's node name sweeps, Then everything stays: it cannot tell whose
    comfy.janitor("").sweep()
    assert comfy.left(run) == ALL_LEFT


def test_run_names_never_share_a_prefix_across_jobs_or_runs() -> None:
    # Given the names of two jobs whose ids prefix each other, and of two runs of one job
    names = Names(WORKER_A)
    prefixes = {
        (job, token): names.input_name(job, token, "", "")
        for job in ("order-12", "order-12-retry", "order-12.1") for token in (new_run_token(), new_run_token())
    }
    # Then no run's cleanup prefix starts any other run's input name
    for run, prefix in prefixes.items():
        for other in prefixes:
            if other != run:
                assert not names.input_name(*other, "video", ".mp4").startswith(prefix), (run, other)
