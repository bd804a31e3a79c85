"""One ZIP from start to end: hash, extract, detect, dedup, send, then archive, quarantine or retry later."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from .config import Config
from .delivery import Delivery, ZipStart
from .intake import ReadyZip
from .ledger import Counts, Ledger, ZipRecord, ZipState
from .moves import move_unique, write_reason
from .progress import Progress
from .sender import Outcome, StoreResult
from .unzip import DiskSpaceLow

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZipOutcome:
    name: str
    state: ZipState
    counts: Counts
    seconds: float
    error: str = ""
    final_path: Path | None = None


WORK_FOLDER = re.compile(r".+-[0-9a-f]{12}")


def clean_leftovers(work_dir: Path) -> list[Path]:
    """Remove extraction folders a crashed run left in ``work_dir``; return them. Other files are left alone."""
    removed = []
    for entry in sorted(work_dir.iterdir()) if work_dir.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink() and WORK_FOLDER.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class Pipeline:
    """Deliver ZIPs to one peer, recording everything in the ledger."""

    def __init__(
        self, config: Config, ledger: Ledger, stop: threading.Event | None = None, progress: Progress | None = None
    ):
        self.config = config
        self.progress = progress or Progress()
        self.ledger = ledger
        self.peer = config.peer
        self.stop = stop or threading.Event()

    # --- scheduling ------------------------------------------------------------------------------

    def due(self, z: ReadyZip, now: float | None = None) -> bool:
        """Return False while a pending ZIP waits for its next retry (known by name, size and mtime)."""
        record = self.ledger.zip_by_file(z.path.name, z.size, z.mtime, self.peer.key)
        if record is None or record.state is not ZipState.PENDING or record.next_retry is None:
            return True
        return (now or time.time()) >= record.next_retry

    def next_retry_in(self, now: float | None = None) -> float | None:
        """Return seconds until the earliest pending retry, or None when nothing waits."""
        times = [p[3] for p in self.ledger.pending() if p[1] == self.peer.key and p[3] is not None]
        return max(0.0, min(times) - (now or time.time())) if times else None

    # --- one ZIP ---------------------------------------------------------------------------------

    def process_zip(self, z: ReadyZip) -> ZipOutcome:
        """Deliver one complete ZIP; never raises for bad input or an absent peer."""
        started = time.monotonic()
        name = z.path.name
        LOGGER.info("%s: start (%.1f MB)", name, z.size / 1e6)
        start = ZipStart(self.ledger, self.peer.key, z.path, z.size, z.mtime)  # hashing starts
        token = hashlib.sha256(f"{name}|{z.size}|{z.mtime}".encode()).hexdigest()[:12]
        work = self.config.work_dir / f"{Path(name).stem[:60]}-{token}"
        shutil.rmtree(work, ignore_errors=True)  # a crashed attempt's leftovers
        try:
            return self._attempt(z, start, work, started)
        finally:
            if self.config.delete_extracted_after_upload:
                shutil.rmtree(work, ignore_errors=True)

    def _attempt(self, z: ReadyZip, start: ZipStart, work: Path, started: float) -> ZipOutcome:
        a = Delivery(self.config, self.ledger, start, z.path.name, self.stop, self.progress).run(z.path, work)
        record = start.begin()
        if record is None:
            known = start.duplicate_of
            assert known is not None
            target = move_unique(z.path, self.config.archive_dir)
            LOGGER.info("%s: duplicate of %s, already delivered to %s; archived as %s", z.path.name, known.name, self.peer.key, target.name)
            return ZipOutcome(z.path.name, ZipState.DUPLICATE, Counts(), time.monotonic() - started, final_path=target)
        self.ledger.adopt_deliveries(record.id, self.peer.key, z.path.name)
        sent = a.count(Outcome.STORED) + a.count(Outcome.WARNING)
        permanent = [r for r in a.results if r.outcome is Outcome.PERMANENT]
        failed = len(permanent) + a.count(Outcome.TRANSIENT) + a.unsent
        counts = Counts(a.found, sent, a.duplicates, a.skipped, failed, a.changed)
        if a.interrupted:  # never judged on part of its entries: it goes on at the next start
            return self._postpone(z, record, counts, a.unsent_reason, started)
        if isinstance(a.archive_error, DiskSpaceLow):
            return self._postpone(z, record, counts, f"{a.archive_error} (the ZIP waits until space is freed)", started)
        if a.archive_error is not None:
            why = f"{type(a.archive_error).__name__}: {a.archive_error}"
            if sent:
                why += f" ({sent} instance(s) extracted before it were stored)"
            return self._fail(z, record, counts, why, started, entries=a.skipped_files)
        if a.found == 0:
            return self._fail(z, record, counts, "no DICOM instance in the ZIP", started, entries=a.skipped_files)
        if a.count(Outcome.TRANSIENT) or a.unsent:
            transient = [r.detail for r in a.results if r.outcome is Outcome.TRANSIENT]
            return self._postpone(z, record, counts, a.unsent_reason or transient[0], started)
        if permanent:
            entries = [(a.names.get(r.instance.path, r.instance.path.name), self._describe(r)) for r in permanent]
            return self._fail(z, record, counts, f"{len(permanent)} instance(s) refused by {self.peer.key}", started, entries)
        target = move_unique(z.path, self.config.archive_dir)
        self.ledger.zip_finish(record.id, ZipState.DELIVERED, counts, final_path=str(target))
        return self._report(z, ZipState.DELIVERED, counts, started, final_path=target)

    # --- endings ---------------------------------------------------------------------------------

    def _describe(self, r: StoreResult) -> str:
        status = f"0x{r.status:04X}" if r.status is not None else "no status"
        return f"SOP Instance UID {r.instance.sop_instance_uid}, SOP Class {r.instance.sop_class_uid}: {status} {r.detail}"

    def _postpone(self, z: ReadyZip, record: ZipRecord, counts: Counts, why: str, started: float) -> ZipOutcome:
        now = time.time()
        if now - record.first_seen > self.config.give_up_after_hours * 3600:
            return self._fail(z, record, counts, f"gave up after {record.attempts} attempt(s); last error: {why}", started, [])
        delay = min(self.config.retry_base_seconds * 2 ** max(record.attempts - 1, 0), self.config.retry_max_seconds)
        if self.stop.is_set():
            delay = 0.0  # interrupted by a shutdown, not by the peer: go on at the next start
        self.ledger.zip_finish(record.id, ZipState.PENDING, counts, error=why, next_retry=now + delay)
        LOGGER.warning("%s: attempt %d incomplete (%s); next try in %.0f s", z.path.name, record.attempts, why, delay)
        return self._report(z, ZipState.PENDING, counts, started, error=why)

    def _fail(
        self, z: ReadyZip, record: ZipRecord, counts: Counts, why: str, started: float, entries: list[tuple[str, str]]
    ) -> ZipOutcome:
        target = move_unique(z.path, self.config.failed_dir)
        self.ledger.zip_finish(record.id, ZipState.FAILED, counts, error=why, final_path=str(target))
        write_reason(
            target,
            {
                "zip": z.path.name,
                "sha256": record.sha256,
                "peer": self.peer.key,
                "reason": why,
                "entries": [{"name": n, "problem": p} for n, p in entries],
                "counts": asdict(counts),
                "attempts": record.attempts,
                "history": self.ledger.history(record.id),
                "first_seen": _utc(record.first_seen),
                "failed_at": _utc(time.time()),
            },
        )
        LOGGER.error("%s: moved to %s: %s", z.path.name, target, why)
        return self._report(z, ZipState.FAILED, counts, started, error=why, final_path=target)

    def _report(
        self,
        z: ReadyZip,
        state: ZipState,
        counts: Counts,
        started: float,
        error: str = "",
        final_path: Path | None = None,
    ) -> ZipOutcome:
        seconds = time.monotonic() - started
        rate = counts.sent / seconds if seconds > 0 else 0.0
        LOGGER.info(
            "%s: %s - %s, %.1f s (%.0f files/s, %.1f MB/s)",
            z.path.name,
            state.value,
            counts.summary(),
            seconds,
            rate,
            z.size / 1e6 / seconds if seconds > 0 else 0.0,
        )
        return ZipOutcome(z.path.name, state, counts, seconds, error, final_path)
