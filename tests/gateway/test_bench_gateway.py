"""``make bench``'s gateway scenario measures what it names, against a real cluster and gateway."""

from __future__ import annotations

import math
from pathlib import Path

from harness.bench import TARGETS, plan
from harness.bench_gateway import gateway_latency


def test_the_gateway_scenario_times_both_submit_paths_and_matches_every_sse_event_to_a_worker_write(
    tmp_path: Path,
) -> None:
    # Given the scenario with a few submits and one followed job
    # When it runs against its own cluster and gateway
    figures = gateway_latency(tmp_path, jobs=4, sse_jobs=1)
    # Then it timed every submit on both paths, each a positive duration
    assert figures["submits"] == 4
    for name in ("producer_submit_p50_ms", "gateway_submit_p50_ms", "gateway_submit_p95_ms"):
        assert math.isfinite(figures[name]) and figures[name] > 0, (name, figures)
    # and every progress event the SSE client received reports a PROGRESS write it heard on the channel
    assert figures["sse_events"] >= 2, figures
    assert figures["sse_events_unmatched"] == 0, figures
    assert 0 <= figures["sse_delay_p50_ms"] <= figures["sse_delay_max_ms"]


def test_make_bench_runs_the_gateway_scenario_against_the_issues_two_goals(tmp_path: Path) -> None:
    # Given the benchmark's plan and targets, then the gateway scenario is in it with both goals of issue 11
    assert "gateway" in plan(tmp_path, quick=True)
    goals = {(figure, comparison, target) for scenario, figure, comparison, target, _ in TARGETS
             if scenario == "gateway"}
    assert goals == {("added_p50_ms", "<=", 10.0), ("sse_delay_p50_ms", "<=", 250.0)}
