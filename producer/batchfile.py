"""Batch files: one request per JSONL line or CSV row, read into :class:`BatchItem` s.

JSONL: each non-blank line is a request object in either accepted shape; the control options ``job_id``,
``queue``, ``priority``, ``timeout_s`` and ``callback_url`` may sit beside the request's fields and are
taken out of it. CSV: a header row names the columns, which are the flat request fields plus those
options; numbers are converted by column and empty cells are left out.

Every item keeps its line number (JSONL: the physical line; CSV: the data row, header excluded), from
which a job id is derived when the row names none, so a rerun of the same file yields the same ids.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.errors import BATCH_INVALID, DanceError, error

#: Control options a row may carry beside its request fields.
CONTROL_FIELDS = ("job_id", "queue", "priority", "timeout_s", "callback_url")
#: CSV columns holding whole numbers, and those holding numbers.
_INT_COLUMNS = frozenset({"width", "height", "steps", "seed", "priority"})
_FLOAT_COLUMNS = frozenset({"cfg", "timeout_s"})
#: Longest batch id: derived job ids ("<batch>-<line>") must stay within the 128 characters of a job id.
MAX_BATCH_ID_CHARS = 100
#: Bad rows listed in a batch.invalid error before the rest are only counted.
MAX_REPORTED_ROWS = 20
#: Hex digits of the file's hash in a default batch id.
DIGEST_CHARS = 12


@dataclass(frozen=True)
class BatchItem:
    """One job of a batch: its request, its line in the file, and its control options."""

    request: dict[str, Any]
    line: int
    job_id: str | None = None
    queue: str | None = None
    priority: int | None = None
    timeout_s: float | None = None
    callback_url: str | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], line: int) -> BatchItem:
        """Split a row into the request and the control options (see :data:`CONTROL_FIELDS`)."""
        body = dict(row)
        options = {name: body.pop(name) for name in CONTROL_FIELDS if body.get(name) is not None}
        for name in CONTROL_FIELDS:
            body.pop(name, None)
        return cls(request=body, line=line, options=options, **options)


def read_batch_file(path: Path) -> list[BatchItem]:
    """Read a ``.csv`` file or a JSONL file (any other name); raises ``batch.invalid``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(BATCH_INVALID, f"cannot read the batch file {path}: {exc}", file=str(path)) from None
    items = read_csv(text) if path.suffix.lower() == ".csv" else read_jsonl(text)
    if not items:
        raise error(BATCH_INVALID, f"the batch file {path} holds no requests", file=str(path))
    return items


def read_jsonl(text: str) -> list[BatchItem]:
    items: list[BatchItem] = []
    problems: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            problems.append({"line": number, "message": f"not JSON: {exc}"})
            continue
        if not isinstance(row, dict):
            problems.append({"line": number, "message": "not a JSON object"})
            continue
        items.append(BatchItem.from_row(row, number))
    raise_problems(problems)
    return items


def read_csv(text: str) -> list[BatchItem]:
    reader = csv.DictReader(io.StringIO(text))
    items: list[BatchItem] = []
    problems: list[dict[str, Any]] = []
    for number, row in enumerate(reader, start=1):
        if None in row:
            problems.append({"line": number, "message": "the row has more cells than the header has columns"})
            continue
        try:
            items.append(BatchItem.from_row(_typed(row), number))
        except ValueError as exc:
            problems.append({"line": number, "message": str(exc)})
    raise_problems(problems)
    return items


def _typed(row: Mapping[str, str | None]) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for name, raw in row.items():
        value = (raw or "").strip()
        if not value:
            continue
        converter: Callable[[str], Any] = int if name in _INT_COLUMNS else float if name in _FLOAT_COLUMNS else str
        try:
            typed[name] = converter(value)
        except ValueError:
            raise ValueError(f"column {name!r}: {value!r} is not a number") from None
    return typed


def raise_problems(problems: list[dict[str, Any]]) -> None:
    """Raise one ``batch.invalid`` error listing the bad rows, if there are any."""
    if not problems:
        return
    lines = ", ".join(str(p["line"]) for p in problems[:MAX_REPORTED_ROWS])
    more = f" and {len(problems) - MAX_REPORTED_ROWS} more" if len(problems) > MAX_REPORTED_ROWS else ""
    raise error(BATCH_INVALID, f"{len(problems)} row(s) of the batch are invalid (lines {lines}{more}); "
                f"first: {problems[0]['message']}", rows=problems[:MAX_REPORTED_ROWS], invalid=len(problems))


def problem(line: int, exc: DanceError) -> dict[str, Any]:
    return {"line": line, "code": exc.code, "message": exc.message}


def default_batch_id(path: Path) -> str:
    """``<file stem>-<hash of its bytes>``: the same file always maps to the same batch."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:DIGEST_CHARS]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "batch"
    return f"{stem[: MAX_BATCH_ID_CHARS - DIGEST_CHARS - 1]}-{digest}"


def content_batch_id(items: Iterable[BatchItem]) -> str:
    """A batch id from the items themselves, for the Python API when the caller names none."""
    canonical = json.dumps([[item.line, item.job_id, item.request] for item in items], sort_keys=True)
    return "batch-" + hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_CHARS]
