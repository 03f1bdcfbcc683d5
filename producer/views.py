"""What the batch and cluster commands print: summary tables and a live batch progress line."""

from __future__ import annotations

from typing import TextIO

from producer.batch import BatchSummary
from producer.clusterview import ClusterView
from producer.progressbar import BAR_CHARS

#: Column width of labels in the batch summary.
LABEL_CHARS = 28


def summary_table(summary: BatchSummary) -> str:
    """The batch's summary: succeeded, failed by code, cancelled, running, queued (and never submitted)."""
    rows = [f"batch {summary.batch_id}: {summary.total} jobs"]
    rows.append(f"  {'succeeded':<{LABEL_CHARS}}{summary.counts['succeeded']:>7}")
    rows.append(f"  {'failed':<{LABEL_CHARS}}{summary.counts['failed']:>7}")
    for code, count in sorted(summary.failed_by_code.items(), key=lambda item: (-item[1], item[0])):
        rows.append(f"    {code:<{LABEL_CHARS - 2}}{count:>7}")
    for status in ("cancelled", "running", "queued"):
        rows.append(f"  {status:<{LABEL_CHARS}}{summary.counts[status]:>7}")
    if summary.counts["not_submitted"]:
        rows.append(f"  {'not submitted (rerun it)':<{LABEL_CHARS}}{summary.counts['not_submitted']:>7}")
    if summary.completed_at:
        rows.append("  complete: every job ended and the completion was recorded")
    elif summary.total and summary.ended == summary.total:
        rows.append("  every job ended; the completion is not recorded yet (is a `dance hooks-worker` running?)")
    else:
        rows.append("  not complete yet")
    return "\n".join(rows)


class BatchProgress:
    """One status line, redrawn in place on a terminal and written as plain lines elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""

    def submitted(self, done: int, total: int, new: bool) -> None:
        if self.tty or done == total:
            self._show(done, total, f"submitted {done}/{total}")

    def summary(self, summary: BatchSummary) -> None:
        counts = summary.counts
        label = (f"{summary.ended}/{summary.total} ended · {counts['running']} running · {counts['queued']} queued"
                 f" · {counts['failed']} failed · {counts['cancelled']} cancelled")
        self._show(summary.ended, summary.total, label)

    def _show(self, done: int, total: int, label: str) -> None:
        filled = BAR_CHARS * done // total if total else BAR_CHARS
        text = f"[{'#' * filled}{'.' * (BAR_CHARS - filled)}] {label}"
        if text == self._last:
            return
        self._last = text
        self.stream.write(("\r\033[K" + text) if self.tty else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()
        self._last = ""


def cluster_table(view: ClusterView) -> str:
    rows = [f"{'WORKER':<28} {'READY':<6} {'BUSY':<5} {'DEVICE':<34} {'JOB':<24} QUEUES / STATE"]
    for w in view.workers:
        ready = "-" if w.ready is None else "yes" if w.ready else "no"
        job = ",".join(w.current_jobs) or "-"
        state = ",".join(w.queues) or w.readiness
        if w.ready is False:
            state = w.readiness
        rows.append(f"{w.hostname:<28} {ready:<6} {'yes' if w.busy else 'no':<5} {(w.device or '-')[:34]:<34} "
                    f"{job[:24]:<24} {state}")
    if not view.workers:
        rows.append("(no worker is alive)")
    rows.append("")
    steps = sorted(view.queues[0].by_priority) if view.queues else []
    rows.append(f"{'QUEUE':<20}" + "".join(f"{'P' + str(s):>6}" for s in steps) + f"{'TOTAL':>8}")
    for q in view.queues:
        rows.append(f"{q.queue:<20}" + "".join(f"{q.by_priority[s]:>6}" for s in steps) + f"{q.total:>8}")
    rows.append("")
    rows.append(f"jobs ended in the last {view.window_min} min: {view.ended_in_window} "
                f"({view.jobs_per_min:.1f}/min)")
    return "\n".join(rows)
