"""``dance models``: put the dance workflow's model files on the models volume, or check that they are.

The list (``docker/models.json``) gives each file's folder under ComfyUI's ``models/``, its URL, and its sha256
and size in bytes where published. A null sha256 or size means "not pinned": the file is checked for presence
and against the length the server announces, never for content, and every run says so.

A download streams into ``<file>.part``, resumes with an HTTP Range request after an interruption (in this run
or an earlier one), and is renamed into place only once its size and sha256 match, so ComfyUI never lists a
partial or wrong model. Transient failures (5xx, 429, timeouts, resets) are retried with worker.backoff; client
errors and mismatches are not. ``requests`` is imported lazily: producers load this module but lack it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from producer.errors import (
    MODELS_BUSY,
    MODELS_CHECKSUM,
    MODELS_HTTP_ERROR,
    MODELS_LIST_INVALID,
    MODELS_SIZE,
    MODELS_UNAVAILABLE,
    DanceError,
    error,
)
from worker.backoff import backoff_delay_s

if TYPE_CHECKING:
    import requests

#: Models folder when neither --models-dir nor COMFYUI_MODELS_DIR names one (ComfyUI's own, in the image).
DEFAULT_MODELS_DIR = Path("/opt/ComfyUI/models")
#: The list in a source checkout; the image copies it and points DANCE_MODELS_LIST at the copy.
DEFAULT_LIST_PATH = Path(__file__).resolve().parents[1] / "docker" / "models.json"
#: Bytes read, written and hashed per step.
CHUNK_BYTES = 1 << 20
#: Attempts per file while failures are transient.
DEFAULT_ATTEMPTS = 6
#: First pause between attempts, in seconds (it doubles, with jitter, up to the cap).
DEFAULT_RETRY_BASE_S = 2.0
#: Longest pause between attempts, in seconds.
DEFAULT_RETRY_CAP_S = 60.0
#: TCP connect timeout of one request, in seconds.
DEFAULT_CONNECT_TIMEOUT_S = 15.0
#: Longest silence while a body streams, in seconds.
DEFAULT_READ_TIMEOUT_S = 120.0
#: Suffix of a download in progress, beside its target.
PART_SUFFIX = ".part"
#: Lock file in the models folder that keeps two downloaders apart.
LOCK_NAME = ".dance-models.lock"
#: Statuses another attempt may cure.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The whole file from byte 0 (no Range asked, or the server ignored it).
HTTP_OK = 200
#: The rest of the file from the offset asked for.
HTTP_PARTIAL_CONTENT = 206
#: The offset asked for is at or past the end: the part already holds every byte.
HTTP_RANGE_NOT_SATISFIABLE = 416

EXIT_OK = 0  #: every file is present and verified (or was just downloaded and verified)
EXIT_GAPS = 1  #: a file is missing or wrong, or a download failed
EXIT_USAGE = 2  #: the model list is invalid

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

# What ``check_model`` finds; the first three are gaps.
MISSING, WRONG_SIZE, WRONG_HASH, UNPINNED, OK = "MISSING", "WRONG-SIZE", "WRONG-HASH", "UNPINNED", "OK"
GAP_STATES = frozenset({MISSING, WRONG_SIZE, WRONG_HASH})


@dataclass(frozen=True)
class ModelFile:
    """One entry of the list: where a file goes, where it comes from and what it must hash to."""

    folder: str
    file: str
    url: str
    sha256: str | None = None
    size_bytes: int | None = None

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.file}"

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None and self.size_bytes is not None

    def path(self, models_dir: Path) -> Path:
        return models_dir.joinpath(*PurePosixPath(self.folder).parts, self.file)


@dataclass(frozen=True)
class Finding:
    """What ``check_model`` saw for one file: a state above and a line for people."""

    model: ModelFile
    state: str
    detail: str

    @property
    def is_gap(self) -> bool:
        return self.state in GAP_STATES


@dataclass(frozen=True)
class DownloadSettings:
    """How hard and how long one file is tried; the command builds it from its options."""

    attempts: int = DEFAULT_ATTEMPTS
    retry_base_s: float = DEFAULT_RETRY_BASE_S
    retry_cap_s: float = DEFAULT_RETRY_CAP_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S


# The list ------------------------------------------------------------------------------------------------
def load_model_list(path: Path) -> list[ModelFile]:
    """Read and validate the list; every problem is a ``models.list_invalid`` error."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(MODELS_LIST_INVALID, f"cannot read the model list {path}: {exc}", path=str(path)) from None
    entries = body.get("models") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not entries:
        raise error(MODELS_LIST_INVALID, f"{path} must hold an object with a non-empty 'models' list")
    models = [_parse_entry(entry, index) for index, entry in enumerate(entries)]
    seen: set[str] = set()
    for model in models:
        if model.relpath in seen:
            raise error(MODELS_LIST_INVALID, f"{model.relpath} is listed twice", file=model.relpath)
        seen.add(model.relpath)
    return models


def _parse_entry(entry: Any, index: int) -> ModelFile:
    if not isinstance(entry, dict):
        raise error(MODELS_LIST_INVALID, f"model list entry {index} is not an object", index=index)
    problems = _place_problems(entry) + _pin_problems(entry)
    if problems:
        raise error(MODELS_LIST_INVALID, f"model list entry {index}: " + "; ".join(problems), index=index)
    return ModelFile(entry["folder"], entry["file"], entry["url"], entry.get("sha256"), entry.get("size_bytes"))


def _place_problems(entry: dict[str, Any]) -> list[str]:
    missing = [f"'{name}' must be a non-empty string" for name in ("folder", "file", "url")
               if not (isinstance(entry.get(name), str) and entry[name].strip())]
    if missing:
        return missing
    problems = []
    folder = PurePosixPath(entry["folder"])
    if folder.is_absolute() or ".." in folder.parts or "/" in entry["file"] or entry["file"] in {".", ".."}:
        problems.append("folder and file must stay inside the models folder")
    url = urlsplit(entry["url"])
    if url.scheme not in {"http", "https"} or not url.hostname:
        problems.append("url must be an http(s) URL")
    elif url.hostname.endswith("huggingface.co") and "/blob/" in url.path:
        # A /blob/ URL answers 200 with an HTML page, which the old endpoint saved as a "model".
        problems.append("a Hugging Face /blob/ URL serves an HTML page; use /resolve/")
    return problems


def _pin_problems(entry: dict[str, Any]) -> list[str]:
    problems = []
    sha256, size = entry.get("sha256"), entry.get("size_bytes")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256_HEX.fullmatch(sha256)):
        problems.append("'sha256' must be 64 lowercase hex digits or null")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        problems.append("'size_bytes' must be a whole number of bytes or null")
    return problems


# Checking ------------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def check_model(model: ModelFile, models_dir: Path, *, hash_files: bool = True) -> Finding:
    """Compare the file on disk with the list; never changes anything."""
    path = model.path(models_dir)
    if not path.is_file():
        part = path.with_name(path.name + PART_SUFFIX)
        so_far = f" ({part.stat().st_size} bytes of a download in {part.name})" if part.is_file() else ""
        return Finding(model, MISSING, f"not found at {path}{so_far}")
    size = path.stat().st_size
    if model.size_bytes is not None and size != model.size_bytes:
        return Finding(model, WRONG_SIZE, f"{size} bytes, the list says {model.size_bytes}")
    digest = file_sha256(path) if hash_files else None
    if model.sha256 is not None and digest is not None and digest != model.sha256:
        return Finding(model, WRONG_HASH, f"sha256 {digest}, the list says {model.sha256}")
    if not model.pinned:
        seen = f", sha256 {digest}" if digest else ""
        return Finding(model, UNPINNED, f"present ({size} bytes{seen}), but the list pins no sha256/size: "
                                        "its content is NOT verified")
    return Finding(model, OK, f"{size} bytes, " + ("sha256 verified" if hash_files else "size verified, hash skipped"))


# Downloading ---------------------------------------------------------------------------------------------
def fetch_model(
    model: ModelFile,
    models_dir: Path,
    http: requests.Session,
    settings: DownloadSettings,
    *,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = lambda line: None,
) -> Path:
    """Download ``model`` into place, resuming any ``.part`` left behind, and verify it before the rename."""
    target = model.path(models_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + PART_SUFFIX)
    last: DanceError | None = None
    for attempt in range(settings.attempts):
        if last is not None:
            delay_s = backoff_delay_s(attempt - 1, settings.retry_base_s, settings.retry_cap_s)
            say(f"  {model.relpath}: {last.message}; retrying in {delay_s:.1f}s")
            sleep(delay_s)
        try:
            _verify_part(model, part, _transfer(model, part, http, settings))
        except DanceError as exc:
            if not exc.retryable:
                raise
            last = exc
            continue
        os.replace(part, target)
        return target
    assert last is not None  # the loop ran at least once and every pass ended in a retryable error
    raise error(MODELS_UNAVAILABLE, f"{model.relpath}: gave up after {settings.attempts} attempts: {last.message}",
                url=model.url, attempts=settings.attempts)


def _transfer(model: ModelFile, part: Path, http: requests.Session, settings: DownloadSettings) -> int | None:
    """One request: append to (or restart) the part; returns the whole file's size if the server said it."""
    import requests

    offset = part.stat().st_size if part.is_file() else 0
    if model.size_bytes is not None and offset >= model.size_bytes:
        return model.size_bytes  # a complete part from an earlier run; verification decides
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    timeout = (settings.connect_timeout_s, settings.read_timeout_s)
    try:
        with http.get(model.url, headers=headers, stream=True, timeout=timeout) as response:
            mode, expected_bytes = _open_mode(model, response, offset)
            if mode is None:
                return expected_bytes
            with part.open(mode) as out:
                for chunk in response.iter_content(CHUNK_BYTES):
                    out.write(chunk)
            return expected_bytes
    except requests.RequestException as exc:
        # A reset, a timeout or a body cut short (urllib3 enforces Content-Length): resume later.
        raise error(MODELS_UNAVAILABLE, f"transfer broke off ({type(exc).__name__})", url=model.url) from exc


def _open_mode(model: ModelFile, response: requests.Response, offset: int) -> tuple[str | None, int | None]:
    status = response.status_code
    if status == HTTP_PARTIAL_CONTENT:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != offset:
            raise error(MODELS_UNAVAILABLE, f"the server resumed at the wrong offset (asked for {offset})",
                        url=model.url)
        return "ab", None if match.group(3) == "*" else int(match.group(3))
    if status == HTTP_OK:
        # No Range asked, or the server ignored it: the body is the whole file from byte 0.
        length = response.headers.get("Content-Length")
        return "wb", int(length) if length and length.isdigit() else None
    if status == HTTP_RANGE_NOT_SATISFIABLE and offset:
        return None, model.size_bytes  # the part already holds every byte
    if status in RETRY_STATUSES:
        raise error(MODELS_UNAVAILABLE, f"HTTP {status} from {model.url}", url=model.url, status=status)
    raise error(MODELS_HTTP_ERROR, f"{model.relpath}: {model.url} answered HTTP {status}", url=model.url,
                status=status)


def _verify_part(model: ModelFile, part: Path, announced_bytes: int | None) -> None:
    """A short part is retryable (the next attempt resumes it); a long or wrong one is dropped for good."""
    size = part.stat().st_size if part.is_file() else 0
    if model.size_bytes is not None and announced_bytes not in (None, model.size_bytes):
        part.unlink(missing_ok=True)
        raise error(MODELS_SIZE, f"{model.relpath}: the server offers {announced_bytes} bytes, the list says "
                                 f"{model.size_bytes}", url=model.url)
    wanted = model.size_bytes if model.size_bytes is not None else announced_bytes
    if wanted is not None and size < wanted:
        raise error(MODELS_UNAVAILABLE, f"stream ended at {size} of {wanted} bytes", url=model.url)
    if wanted is not None and size > wanted:
        part.unlink()
        raise error(MODELS_SIZE, f"{model.relpath}: got {size} bytes, expected {wanted}", url=model.url)
    if model.sha256 is not None and (digest := file_sha256(part)) != model.sha256:
        part.unlink()
        raise error(MODELS_CHECKSUM, f"{model.relpath}: downloaded sha256 {digest}, the list says {model.sha256}",
                    url=model.url)


@contextmanager
def folder_lock(models_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the models folder, or fail at once with ``models.busy``."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / LOCK_NAME).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(MODELS_BUSY, f"another `dance models` is writing to {models_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# The command ---------------------------------------------------------------------------------------------
def _report(finding: Finding) -> Finding:
    click.echo(f"{finding.state:<10} {finding.model.relpath}  {finding.detail}")
    return finding


def _summarise(findings: list[Finding], strict: bool) -> int:
    gaps = [finding for finding in findings if finding.is_gap]
    unpinned = [finding for finding in findings if not finding.model.pinned]
    if unpinned:
        names = ", ".join(finding.model.relpath for finding in unpinned)
        click.echo(f"WARNING: {len(unpinned)} file(s) have no pinned sha256/size in the list, so their content is "
                   f"not verified: {names}", err=True)
    if gaps:
        click.echo(f"{len(gaps)} of {len(findings)} model files are missing or wrong.", err=True)
    else:
        click.echo(f"All {len(findings)} model files are present" + (" (some unverified)." if unpinned else "."))
    return EXIT_GAPS if gaps or (strict and unpinned) else EXIT_OK


def _install(model: ModelFile, models_dir: Path, http: requests.Session, settings: DownloadSettings,
             replace: bool) -> Finding:
    found = check_model(model, models_dir)
    if not found.is_gap:
        return found
    if found.state != MISSING:
        if not replace:
            return Finding(model, found.state, found.detail + "; run with --replace to download it again")
        model.path(models_dir).unlink()
    click.echo(f"FETCH      {model.relpath}  from {model.url}")
    started = time.monotonic()
    try:
        path = fetch_model(model, models_dir, http, settings, say=click.echo)
    except DanceError as exc:
        return Finding(model, MISSING, f"download failed: {exc}")
    return Finding(model, OK, f"{path.stat().st_size} bytes in {time.monotonic() - started:.0f}s, "
                              + ("sha256 verified" if model.sha256 else "NOT verified (no sha256 in the list)"))


@click.command("models")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), envvar="COMFYUI_MODELS_DIR",
              default=DEFAULT_MODELS_DIR, show_default=True,
              help="ComfyUI's models folder (env COMFYUI_MODELS_DIR).")
@click.option("--list", "list_path", type=click.Path(dir_okay=False, path_type=Path), envvar="DANCE_MODELS_LIST",
              default=DEFAULT_LIST_PATH, help="The model list (env DANCE_MODELS_LIST; default docker/models.json).")
@click.option("--check", "check_only", is_flag=True, help="Verify presence, size and sha256; download nothing.")
@click.option("--quick", is_flag=True, help="With --check: compare sizes only and skip hashing.")
@click.option("--strict", is_flag=True, help="Count files with no pinned sha256/size as gaps.")
@click.option("--replace", is_flag=True, help="Download again files that are present but wrong.")
@click.option("--attempts", type=click.IntRange(min=1), default=DEFAULT_ATTEMPTS, show_default=True,
              help="Attempts per file while failures are transient.")
def models(models_dir: Path, list_path: Path, check_only: bool, quick: bool, strict: bool, replace: bool,
           attempts: int) -> None:
    """Download the workflow's model files into the models folder, or --check that they are there.

    Exits 0 when every file is present and verified, 1 on any gap, 2 when the list is invalid.
    """
    try:
        model_list = load_model_list(list_path)
    except DanceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    findings: list[Finding] = []
    try:
        if check_only:
            findings = [_report(check_model(model, models_dir, hash_files=not quick)) for model in model_list]
        else:
            import requests

            with folder_lock(models_dir), requests.Session() as http:
                settings = DownloadSettings(attempts=attempts)
                findings = [_report(_install(model, models_dir, http, settings, replace)) for model in model_list]
    except (DanceError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_GAPS)
    sys.exit(_summarise(findings, strict))
