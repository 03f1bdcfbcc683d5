"""How the chaos run reads the simulators' run records: overlaps of one job, and the cause of each wasted run."""

from __future__ import annotations

from harness.chaos_runs import GpuRun, RunBook, overlaps, wasted_by_cause

#: Drain of the workers in these books, in seconds.
DRAIN_S = 40.0


def book_of(*runs: GpuRun) -> RunBook:
    book = RunBook({"sim0": 0, "sim1": 0})
    book.runs = {run.prompt_id: run for run in runs}
    return book


def test_two_runs_of_one_job_that_share_a_moment_are_reported_as_an_overlap_and_back_to_back_runs_are_not() -> None:
    # Given an orphan of a dead worker still running on sim0 while sim1 runs the redelivered copy,
    # and another job whose second run starts the instant its first ends
    book = book_of(
        GpuRun("p1", 100.0, 112.0, "job-a", "worker0@vm/old", "sim0"),
        GpuRun("p2", 108.0, 109.0, "job-a", "worker1@vm/t1", "sim1"),
        GpuRun("p3", 100.0, 101.0, "job-b", "worker1@vm/t1", "sim1"),
        GpuRun("p4", 101.0, 102.0, "job-b", "worker0@vm/new", "sim0"),
    )
    # When the book is searched for overlaps
    found = overlaps(book.by_job())
    # Then only job-a is reported, naming both prompts
    assert len(found) == 1
    assert found[0].startswith("job-a:") and "p1" in found[0] and "p2" in found[0]


def test_a_run_cut_by_its_workers_kill_during_a_drain_is_blamed_on_the_kill_not_the_sigterm() -> None:
    # Given worker0's process SIGTERM'd at 105 and kill -9'd at 110, its job then redone by worker1,
    # and a prompt a killed simulator was running
    book = book_of(
        GpuRun("p1", 100.0, 120.0, "job-a", "worker0@vm/old", "sim0"),
        GpuRun("p2", 130.0, 131.0, "job-a", "worker1@vm/t1", "sim1"),
        GpuRun("p3", 100.0, 101.0, "job-b", "worker1@vm/t1", "sim1", cut_by_kill=True),
        GpuRun("p4", 102.0, 103.0, "job-b", "worker1@vm/t1", "sim1"),
    )
    book.fault("term", "worker0", 105.0)
    book.fault("kill", "worker0", 110.0)
    # When the wasted runs of the two succeeded jobs are counted
    causes, lines = wasted_by_cause(book, {"job-a", "job-b"}, {}, DRAIN_S)
    # Then each job wasted one run, each with its own cause
    assert causes == {"worker killed while draining": 1, "simulator killed": 1}
    assert len(lines) == 2
