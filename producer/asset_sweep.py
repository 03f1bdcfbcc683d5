"""The sweep: blobs whose every record expired by TTL leave storage.

When the last live record over a blob is deleted, DELETE frees the blob (producer/assets.py ``delete``).
When records simply expire, their blob's index, owners and refs expire with them and nothing in Redis
names the blob any more, so only a walk of storage finds it. :func:`sweep` lists ``assets/blake3/`` and,
for a page of blobs at a time, asks one Redis script per blob (all in one round trip) whether anything
still holds it; a blob that nothing holds is marked as being deleted, deleted from storage, and the
mark released, exactly as DELETE does.

Why an upload of the same bytes is never left without its blob, whenever it runs beside a sweep:

* its record and the blob's index are written in one transaction (``_register``), and the sweep's
  decision is one script, so one of the two ran first;
* if the upload's transaction ran first, the script sees the index and keeps the blob;
* if the script ran first, it set the deleting marker before the upload's transaction, so the upload,
  which waits while that marker stands *after* its transaction and then asks storage once more
  (``store_spooled``), finds the blob gone and puts it again; the marker is released only once the
  blob has left storage;
* an upload that put its blob before the sweep listed it and registers only after the sweep deleted it
  is the second case: its post-register look at storage finds nothing and puts the bytes again.

A mint from a bare hash needs the blob's index, which the sweep never touches while it exists. The
sweep runs from ``dance assets sweep`` and, every ``DANCE_GATEWAY_SWEEP_INTERVAL_S``, from a gateway
(gateway/asset_sweeper.py); two sweeps at once are safe (the marker makes each blob's decision theirs
alone), only wasted work.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import redis as redis_lib

from producer.asset_blobs import BUSY, DELETING_TTL_S, KEPT, SWEEP, release_deleting, sweep_decisions
from producer.assets import BLOB_FOLDER, HEX_DIGEST
from worker.storage.base import ListedKey, Storage

log = logging.getLogger(__name__)

#: Blobs decided in one Redis round trip and then deleted before their markers are released.
SWEEP_BATCH_BLOBS = 100
#: How long after its decision a batch may still delete blobs from storage, in seconds: half the
#: marker's TTL, so that no marker can expire while its blob is still being deleted (an upload would
#: then see no marker, find the blob, and be left without it once the delete lands).
MARKER_BUDGET_S = DELETING_TTL_S / 2


@dataclass
class SweepReport:
    """What one sweep did."""

    #: Blobs the listing named.
    looked_at: int = 0
    #: Blobs a live record (or a blob index) still holds.
    kept: int = 0
    #: Blobs another delete or sweep was deleting at that moment, left to it.
    busy: int = 0
    #: Blobs nothing held that left storage.
    swept: int = 0
    #: Blobs nothing held that stay for the next sweep: their batch ran out of ``MARKER_BUDGET_S`` (or
    #: the sweep was asked to stop).
    deferred: int = 0
    #: Bytes of the swept blobs, as the listing gave their sizes.
    bytes_freed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _blobs(listing: Iterable[ListedKey]) -> Iterator[tuple[str, ListedKey]]:
    """(hex digest, listed key) of each blob in the listing; anything else under the folder is not a blob."""
    for listed in listing:
        digest = listed.key.removeprefix(BLOB_FOLDER + "/")
        if HEX_DIGEST.fullmatch(digest):
            yield digest, listed


def sweep(
    redis: redis_lib.Redis, storage: Storage, *, batch_blobs: int = SWEEP_BATCH_BLOBS,
    marker_budget_s: float = MARKER_BUDGET_S, should_stop: Callable[[], bool] = lambda: False,
) -> SweepReport:
    """Delete from storage every blob that no live record and no blob index names; the listing streams.

    A batch deletes blobs for at most ``marker_budget_s`` after its decision, and ``should_stop`` is
    asked before each delete (a gateway shutting down stops after at most one); the blobs left are
    deferred, their markers released. A storage failure while deleting releases the batch's markers and
    raises (``storage.*``): the blobs not yet deleted are simply found again by the next sweep.
    """

    def out_of_time(elapsed_s: float) -> bool:
        return should_stop() or elapsed_s > marker_budget_s

    report = SweepReport()
    blobs = _blobs(storage.list_keys(BLOB_FOLDER))
    while not should_stop() and (batch := list(itertools.islice(blobs, batch_blobs))):
        _sweep_batch(redis, storage, batch, report, out_of_time)
    log.info("asset sweep: %s", report.as_dict())
    return report


def _sweep_batch(
    redis: redis_lib.Redis, storage: Storage, batch: list[tuple[str, ListedKey]], report: SweepReport,
    out_of_time: Callable[[float], bool],
) -> None:
    decided_at = time.monotonic()
    answers = sweep_decisions(redis, [digest for digest, _ in batch])
    report.looked_at += len(batch)
    report.kept += sum(1 for outcome, _ in answers if outcome == KEPT)
    report.busy += sum(1 for outcome, _ in answers if outcome == BUSY)
    marked = [(digest, listed, token) for (digest, listed), (outcome, token) in zip(batch, answers, strict=True)
              if outcome == SWEEP]
    for position, (digest, listed, token) in enumerate(marked):
        if out_of_time(time.monotonic() - decided_at):
            report.deferred += len(marked) - position
            _release_all(redis, marked[position:])
            return
        try:
            storage.delete(listed.key)
        except BaseException:
            _release_all(redis, marked[position:])
            raise
        # Released right after its own delete, never before: an upload waiting on this marker looks at
        # storage once it goes, and must find the blob gone (then it puts it again).
        release_deleting(redis, digest, token)
        report.swept += 1
        report.bytes_freed += listed.size_bytes


def _release_all(redis: redis_lib.Redis, marked: list[tuple[str, ListedKey, str]]) -> None:
    """Release the markers of blobs this sweep will not delete after all (they stay for the next one)."""
    for digest, _listed, token in marked:
        release_deleting(redis, digest, token)
