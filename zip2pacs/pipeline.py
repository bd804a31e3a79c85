"""One ZIP from start to end: hash, extract, detect, dedup, send, then archive, quarantine or retry later."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import sender
from .config import Config
from .intake import ReadyZip
from .ledger import Counts, Ledger, ZipRecord, ZipState
from .moves import move_unique, write_reason
from .progress import Progress
from .sender import Outcome, PeerUnavailable, StoreResult
from .sniff import Instance, Kind, detect
from .unzip import ArchiveError, DiskSpaceLow, ExtractedFile, extract_zip

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZipOutcome:
    name: str
    state: ZipState
    counts: Counts
    seconds: float
    error: str = ""
    final_path: Path | None = None


@dataclass
class _Tally:
    """What one attempt at a ZIP found; mutable while the attempt runs."""

    found: int = 0
    duplicates: int = 0
    skipped: int = 0
    changed: int = 0
    to_send: list[Instance] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    names: dict[Path, str] = field(default_factory=dict)  # extracted path -> name in the ZIP


def sha256_file(path: Path) -> str:
    """Return the hex SHA256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


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
        zip_sha = sha256_file(z.path)
        known = self.ledger.zip_by_sha(zip_sha, self.peer.key)
        if known is not None and known.state in (ZipState.DELIVERED, ZipState.DUPLICATE):
            target = move_unique(z.path, self.config.archive_dir)
            LOGGER.info("%s: duplicate of %s, already delivered to %s; archived as %s", name, known.name, self.peer.key, target.name)
            return ZipOutcome(name, ZipState.DUPLICATE, Counts(), time.monotonic() - started, final_path=target)
        if known is not None and known.state is ZipState.FAILED:
            self.ledger.reset_failed(zip_sha, self.peer.key)  # it came back: the operator wants another try
        record = self.ledger.zip_begin(zip_sha, self.peer.key, name, z.size, z.mtime)
        work = self.config.work_dir / f"{Path(name).stem[:60]}-{zip_sha[:12]}"
        shutil.rmtree(work, ignore_errors=True)  # a crashed attempt's leftovers
        try:
            return self._attempt(z, record, work, started)
        finally:
            if self.config.delete_extracted_after_upload:
                shutil.rmtree(work, ignore_errors=True)

    def _attempt(self, z: ReadyZip, record: ZipRecord, work: Path, started: float) -> ZipOutcome:
        tally = _Tally()
        try:
            extraction = extract_zip(z.path, work, self.config.limits, on_file=lambda f: self._examine(f, tally))
        except DiskSpaceLow as exc:
            return self._postpone(z, record, Counts(), f"{exc} (the ZIP waits until space is freed)", started)
        except ArchiveError as exc:
            return self._fail(z, record, Counts(), f"{type(exc).__name__}: {exc}", started, entries=[])
        for arcname, reason in extraction.skipped:
            tally.skipped += 1
            tally.skipped_files.append((arcname, reason))
            LOGGER.warning("%s: entry %s skipped: %s", z.path.name, arcname, reason)
        if tally.found == 0:
            counts = Counts(skipped=tally.skipped)
            return self._fail(z, record, counts, "no DICOM instance in the ZIP", started, entries=tally.skipped_files)

        results, unsent_reason = self._send(z, record, tally.to_send)
        sent = sum(r.outcome in (Outcome.STORED, Outcome.WARNING) for r in results)
        permanent = [r for r in results if r.outcome is Outcome.PERMANENT]
        transient = [r for r in results if r.outcome is Outcome.TRANSIENT]
        unsent = len(tally.to_send) - len(results)  # stopped, or the peer was unreachable
        counts = Counts(tally.found, sent, tally.duplicates, tally.skipped, len(permanent) + len(transient) + unsent, tally.changed)

        if transient or unsent:
            why = transient[0].detail if transient else unsent_reason
            return self._postpone(z, record, counts, why, started)
        if permanent:
            entries = [(tally.names.get(r.instance.path, r.instance.path.name), self._describe(r)) for r in permanent]
            return self._fail(z, record, counts, f"{len(permanent)} instance(s) refused by {self.peer.key}", started, entries)
        target = move_unique(z.path, self.config.archive_dir)
        self.ledger.zip_finish(record.id, ZipState.DELIVERED, counts, final_path=str(target))
        return self._report(z, ZipState.DELIVERED, counts, started, final_path=target)

    def _examine(self, f: ExtractedFile, tally: _Tally) -> None:
        """Detect one extracted file and decide by the dedup policy whether it must be sent."""
        detection = detect(f.path, f.sha256, f.size)
        tally.names[f.path] = f.arcname
        if detection.kind is not Kind.INSTANCE or detection.instance is None:
            tally.skipped += 1
            level = logging.WARNING if detection.kind is Kind.NO_UID else logging.DEBUG
            LOGGER.log(level, "entry %s not sent: %s", f.arcname, detection.reason or detection.kind.value)
            tally.skipped_files.append((f.arcname, detection.reason or detection.kind.value))
            return
        inst = detection.instance
        tally.found += 1
        policy = self.config.dedup_policy
        by_uid = self.ledger.delivered_by_uid(self.peer.key, inst.sop_instance_uid)
        if by_uid is not None and by_uid.sha256 != inst.sha256:
            tally.changed += 1
            LOGGER.warning(
                "entry %s: SOP Instance UID %s was delivered before from %s with different bytes (%s)",
                f.arcname,
                inst.sop_instance_uid,
                by_uid.zip_name,
                "sent again" if policy == "sha256_only" else "not sent",
            )
        duplicate = False
        if policy in ("uid_then_sha256", "uid_only"):
            duplicate = by_uid is not None or any(i.sop_instance_uid == inst.sop_instance_uid for i in tally.to_send)
        if not duplicate and policy in ("uid_then_sha256", "sha256_only"):
            duplicate = self.ledger.delivered_by_sha(self.peer.key, inst.sha256) is not None or any(
                i.sha256 == inst.sha256 for i in tally.to_send
            )
        if duplicate:
            tally.duplicates += 1
            LOGGER.debug("entry %s: %s already delivered, not sent", f.arcname, inst.sop_instance_uid)
        else:
            tally.to_send.append(inst)

    def _send(self, z: ReadyZip, record: ZipRecord, instances: list[Instance]) -> tuple[list[StoreResult], str]:
        """Send in batches, one association each; record every stored instance the moment it is stored.

        Return the results and, when some instances were not tried, why.
        """
        results: list[StoreResult] = []
        unsent_reason = ""
        size = self.config.send_batch_size

        def on_result(r: StoreResult) -> None:
            i = r.instance
            if r.outcome in (Outcome.STORED, Outcome.WARNING):
                self.ledger.record_delivery(
                    self.peer.key,
                    record.id,
                    z.path.name,
                    sop_instance_uid=i.sop_instance_uid,
                    sha256=i.sha256,
                    sop_class_uid=i.sop_class_uid,
                    study_uid=i.study_uid,
                    series_uid=i.series_uid,
                    transfer_syntax=i.transfer_syntax,
                    status=r.status,
                    outcome=r.outcome.value,
                )
            self.progress.update(1, i.size)
            level = logging.DEBUG if r.outcome is Outcome.STORED else logging.WARNING
            LOGGER.log(level, "%s: %s %s: %s", z.path.name, i.sop_instance_uid, r.outcome.value, r.detail)

        self.progress.start(z.path.name, len(instances), sum(i.size for i in instances))
        for start in range(0, len(instances), size):
            if self.stop.is_set():
                unsent_reason = "stopped before sending everything"
                break
            try:
                results.extend(sender.store(self.peer, instances[start : start + size], on_result=on_result))
            except PeerUnavailable as exc:
                unsent_reason = f"peer unavailable: {exc}"
                LOGGER.warning("%s: %s is unavailable: %s", z.path.name, self.peer.key, exc)
                break
            if any(r.outcome is Outcome.TRANSIENT for r in results):
                unsent_reason = "the peer could not store everything"
                break  # the peer is struggling: keep the rest for the retry
        self.progress.finish()
        return results, unsent_reason

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
        write_reason(
            target,
            {
                "zip": z.path.name,
                "sha256": record.sha256,
                "peer": self.peer.key,
                "reason": why,
                "entries": [{"name": n, "problem": p} for n, p in entries],
                "counts": counts.__dict__,
                "attempts": record.attempts,
                "first_seen": _utc(record.first_seen),
                "failed_at": _utc(time.time()),
            },
        )
        self.ledger.zip_finish(record.id, ZipState.FAILED, counts, error=why, final_path=str(target))
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
            "%s: %s - found %d, sent %d, duplicates %d, skipped %d, failed %d, changed %d, %.1f s (%.0f files/s, %.1f MB/s)",
            z.path.name,
            state.value,
            counts.found,
            counts.sent,
            counts.duplicates,
            counts.skipped,
            counts.failed,
            counts.changed,
            seconds,
            rate,
            z.size / 1e6 / seconds if seconds > 0 else 0.0,
        )
        return ZipOutcome(z.path.name, state, counts, seconds, error, final_path)
