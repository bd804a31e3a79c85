"""One ZIP from start to end: claim, hash, extract, detect, dedup, send, then archive, quarantine or retry later."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from . import legacy
from .config import Config
from .delivery import Attempt, Delivery
from .destinations import Destination
from .fanout import Leg, ZipOutcome, fan_out
from .intake import ReadyZip
from .ledger import Counts, Ledger, ZipRecord, ZipState
from .moves import move_claimed, write_reason
from .pause import Pauses
from .progress import Progress
from .ramp import Learned
from .retry import backoff_delay
from .sender import Outcome
from .unzip import DiskSpaceLow, LocalError, UnreadableZip
from .verdicts import describe
from .workdir import work_folder
from .zipstart import ClaimedZip, ZipChanged, ZipStart

LOGGER = logging.getLogger(__name__)

STILL_COPYING = "maybe still being copied"  # in the error of a pending ZIP that did not open as a ZIP


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class Pipeline:
    """Deliver ZIPs to each configured destination, recording everything in the ledger.

    With several destinations, each gets an attempt of its own over the ZIP (extracted once for all), with its
    own record, dedup and back-off; the ZIP is archived once every destination has everything meant for it.
    """

    def __init__(
        self, config: Config, ledger: Ledger, stop: threading.Event | None = None, progress: Progress | None = None
    ):
        self.config = config
        self.progress = progress or Progress()
        self.ledger = ledger
        self.peer = config.peer
        # The ledger key of the one destination (several: see fanout.py); the dicom: section's peer by default.
        self.key = config.destinations[0].key if config.destinations_given else config.peer.key
        # A STOW-RS destination that refuses our credentials is paused for every ZIP (see pause.py).
        self.pauses = Pauses(ledger, config.destinations)
        self.destinations = self.pauses.destinations
        self.several = len(self.destinations) > 1
        self.skip_not_due = False  # the service loop sets it: a destination whose retry is not due waits
        self.stop = stop or threading.Event()
        self._bytes = 0  # the attempt's uncompressed bytes, for the rates of its final line
        self._associations = 0  # ... and the associations it made
        # ZIPs imported from the original script are known by their hash alone: wait for it before sending.
        self.hash_first = legacy.has_zips_known_only_by_hash(ledger, config.peer.key)
        self.learned = Learned()  # how many associations each destination's last ZIP settled on (ramp.py)

    # --- scheduling ------------------------------------------------------------------------------

    def due(self, z: ReadyZip, now: float | None = None) -> bool:
        """Return False while a pending ZIP waits for its next retry (known by name, size and mtime).

        A retry further away than the longest delay can only come from a wall clock set back: it is due now.
        """
        if self.several:
            return any(self._due_for(z, d, now) for d in self.destinations)
        if self.pauses.shut(self.destinations[0]):
            return False
        record = self.ledger.zip_by_file(z.path.name, z.size, z.mtime, self.key)
        if record is None or record.state is not ZipState.PENDING or record.next_retry is None:
            return True
        wait = record.next_retry - (now or time.time())
        return wait <= 0 or wait > self._longest_wait()

    def _due_for(self, z: ReadyZip, d: Destination, now: float | None = None) -> bool:
        """Return True when this destination has something to do with the ZIP now (new, failed, or retry due).

        A paused destination has nothing to do.
        """
        if self.pauses.shut(d):
            return False
        record = self.ledger.zip_by_file(z.path.name, z.size, z.mtime, d.key)
        if record is None or record.state is ZipState.FAILED:
            return True
        if record.state is not ZipState.PENDING:
            return False  # delivered to it already
        if record.next_retry is None:
            return True
        wait = record.next_retry - (now or time.time())
        return wait <= 0 or wait > self._longest_wait()

    def next_retry_in(self, now: float | None = None) -> float | None:
        """Return seconds until the earliest pending retry, or None when nothing waits."""
        keys, now = {d.key for d in self.destinations}, now or time.time()
        waits = [max(0.0, p[3] - now) for p in self.ledger.pending() if p[1] in keys and p[3] is not None]
        waits += self.pauses.probes_in()  # a paused destination's next try
        if not waits:
            return None
        return min(min(waits), self._longest_wait())

    def _longest_wait(self) -> float:
        return max(self.config.retry_max_seconds, self.config.unreadable_zip_grace_seconds) + 1.0

    # --- one ZIP ---------------------------------------------------------------------------------

    def process_zip(self, z: ReadyZip) -> ZipOutcome:
        """Deliver one complete ZIP; never raises for bad input or an absent peer.

        Raise LocalError when this machine fails (the ZIP cannot be opened, a disk is full): no verdict.
        """
        started = time.monotonic()
        if not self.several and (paused := self.pauses.shut(self.destinations[0])):
            LOGGER.info("%s: not sent: %s", z.path.name, paused)  # nothing to claim, extract or count
            return ZipOutcome(z.path.name, ZipState.PENDING, Counts(), time.monotonic() - started, paused)
        try:
            claim = ClaimedZip(z)
        except ZipChanged as exc:  # written to again since it looked complete: the next scan looks again
            LOGGER.info("%s", exc)
            return ZipOutcome(z.path.name, ZipState.PENDING, Counts(), time.monotonic() - started, str(exc))
        except OSError as exc:
            raise LocalError(f"cannot open {z.path}: {exc.strerror or exc}") from exc
        LOGGER.info("%s: start (%.1f MB)", z.path.name, z.size / 1e6)
        max_gap = 2 * self._longest_wait()
        work = work_folder(self.config.work_dir, z)
        shutil.rmtree(work, ignore_errors=True)  # a crashed attempt's leftovers
        try:
            if self.several:
                return fan_out(self, z, claim, work, started, max_gap)
            start = ZipStart(self.ledger, self.key, claim, max_gap)  # hashing starts
            return self._attempt(z, start, work, started)
        finally:
            claim.close()
            if self.config.delete_extracted_after_upload:
                shutil.rmtree(work, ignore_errors=True)

    def _attempt(self, z: ReadyZip, start: ZipStart, work: Path, started: float) -> ZipOutcome:
        d = self.destinations[0] if self.config.destinations_given else None
        delivery = Delivery(
            self.config,
            self.ledger,
            start,
            z.path.name,
            self.stop,
            self.progress,
            self.hash_first,
            d,
            learned=self.learned,
        )
        a = delivery.run(z.path, work)
        paused = self.pauses.settle(delivery.destination, z.path.name)
        self._bytes, self._associations = a.total_bytes or z.size, a.associations
        leg = self.judge(z, Leg(delivery.destination, start, paused=paused), a, started, give_up=False)
        record = leg.record
        if record is None:
            known = start.duplicate_of
            assert known is not None
            target = self._move(z, start, self.config.archive_dir)
            self.ledger.count_duplicate_copy(known.id)
            LOGGER.info(
                "%s: duplicate of %s, already delivered to %s; archived as %s",
                z.path.name,
                known.name,
                self.key,
                target.name,
            )
            return ZipOutcome(z.path.name, ZipState.DUPLICATE, Counts(), time.monotonic() - started, final_path=target)
        if leg.state is ZipState.PENDING and paused:
            self.ledger.zip_finish(record.id, ZipState.PENDING, leg.counts, error=leg.why)  # no time counted
            return self._report(z, ZipState.PENDING, leg.counts, started, error=leg.why)
        if leg.state is ZipState.PENDING:
            return self._postpone(z, start, record, leg.counts, leg.why, started, leg.retry_after)
        if leg.state is ZipState.FAILED:
            return self._fail(z, start, record, leg.counts, leg.why, started, leg.entries)
        target = self._move(z, start, self.config.archive_dir)
        self.ledger.zip_finish(
            record.id, ZipState.DELIVERED, leg.counts, final_path=str(target), spent=time.monotonic() - started
        )
        return self._report(z, ZipState.DELIVERED, leg.counts, started, final_path=target)

    def judge(self, z: ReadyZip, leg: Leg, a: Attempt, started: float, give_up: bool = True) -> Leg:
        """Return the leg with its verdict on this attempt: duplicate, delivered, pending or failed (nothing moved).

        Raise LocalError when the ZIP could not be read for its hash.
        """
        assert leg.start is not None
        d, start = leg.destination, leg.start
        try:
            record = start.begin()
        except OSError as exc:
            raise LocalError(f"cannot read {z.path}: {exc.strerror or exc}") from exc
        if record is None:
            leg.state = ZipState.DUPLICATE
            return leg
        leg.record, leg.retry_after = record, a.retry_after
        self.ledger.adopt_deliveries(record.id, d.key, start.claim.identity)
        # Looks at the same name while its copy was under way made records of bytes that no longer exist.
        self.ledger.forget_partial_copies(z.path.name, d.key, record.id, STILL_COPYING)
        sent = a.count(Outcome.STORED) + a.count(Outcome.WARNING)
        permanent = [r for r in a.results if r.outcome is Outcome.PERMANENT]
        pending = a.count(Outcome.TRANSIENT) + a.unsent
        skipped = a.skipped + a.filtered  # an instance the destination does not take counts as skipped for it
        leg.counts = Counts(a.found - a.filtered, sent, a.duplicates, skipped, len(permanent), a.changed, pending)
        leg.filtered = a.filtered
        leg.why = self._no_verdict(z, a, record)
        if leg.why:
            return self._pending(leg, started, give_up)
        leg.state, leg.zip_level, leg.entries = ZipState.FAILED, True, a.skipped_files
        if a.archive_error is not None:
            leg.why = f"{type(a.archive_error).__name__}: {a.archive_error}"
            if sent:
                leg.why += f" ({sent} instance(s) extracted before it were stored)"
            return leg
        if a.found == 0:
            leg.why = "no DICOM instance in the ZIP"
            return leg
        leg.zip_level, leg.entries = False, []
        if a.count(Outcome.TRANSIENT) or a.unsent:
            transient = [r.detail for r in a.results if r.outcome is Outcome.TRANSIENT]
            leg.why = a.unsent_reason or (transient[0] if transient else f"{a.unsent} instance(s) not sent")
            return self._pending(leg, started, give_up)
        if permanent:
            leg.entries = [(a.names.get(r.instance.path, r.instance.path.name), describe(r)) for r in permanent]
            by = f"{d.name} ({d.key})" if self.several else d.key
            leg.why = f"{len(permanent)} instance(s) refused by {by}"
            return leg
        leg.state = ZipState.DELIVERED
        return leg

    def _pending(self, leg: Leg, started: float, give_up: bool) -> Leg:
        """Make the leg pending, or failed once its destination's retry budget is spent (when ``give_up``)."""
        leg.state = ZipState.PENDING
        record = leg.record
        assert record is not None
        if (
            give_up
            and not leg.paused
            and record.tried_seconds + time.monotonic() - started > self.config.give_up_after_hours * 3600
        ):
            leg.state = ZipState.FAILED
            leg.why = f"gave up after {record.attempts} attempt(s); last error: {leg.why}"
        return leg

    def retry_delay(self, record: ZipRecord, why: str, asked: float = 0.0) -> float:
        """Return the seconds to wait before the next attempt at a pending ZIP (0 after a shutdown).

        ``asked`` is the wait the destination asked for (STOW-RS Retry-After), kept to at most retry_max_seconds.
        """
        c = self.config
        delay = backoff_delay(record.attempts - record.attempts_at_reset, c.retry_base_seconds, c.retry_max_seconds)
        delay = max(delay, min(asked, c.retry_max_seconds))
        if STILL_COPYING in why:  # the marker the "still being copied" message carries
            delay = max(delay, record.first_seen + c.unreadable_zip_grace_seconds - time.time() + 1.0)
        if self.stop.is_set():
            delay = 0.0  # interrupted by a shutdown, not by the peer: go on at the next start
        return delay

    def _no_verdict(self, z: ReadyZip, a: Attempt, record: ZipRecord) -> str:
        """Return why this attempt says nothing about the ZIP itself (it stays pending), or "" when it does."""
        if a.unexpected is not None:
            # Logged once, here, where the ZIP's fate is decided: a bug is not a verdict on the ZIP.
            LOGGER.error("%s: unexpected error; the ZIP stays pending", z.path.name, exc_info=a.unexpected)
            return f"unexpected error: {type(a.unexpected).__name__}: {a.unexpected} (see the log)"
        if a.local_error is not None:
            return f"{a.local_error} (a problem of this machine, not of the ZIP)"
        if a.interrupted:  # never judged on part of its entries: it goes on at the next start
            return a.unsent_reason
        if isinstance(a.archive_error, DiskSpaceLow):
            return f"{a.archive_error} (the ZIP waits until space is freed)"
        if isinstance(a.archive_error, UnreadableZip) and not self._settled(record):
            grace = self.config.unreadable_zip_grace_seconds
            return (
                f"{a.archive_error}; {STILL_COPYING}: judged corrupt only once unchanged for {grace:.0f} s "
                "(behavior.unreadable_zip_grace_seconds)"
            )
        return ""

    def _settled(self, record: ZipRecord) -> bool:
        """Return True when these very bytes were looked at before, at least the grace period ago."""
        grace = self.config.unreadable_zip_grace_seconds
        return grace == 0 or (record.attempts >= 2 and time.time() - record.first_seen >= grace)

    def kept(self, z: ReadyZip) -> bool:
        """Return True for a delivered ZIP left in the watch folder (``move_zip_to_archive: false``): not taken again."""
        keys = [d.key for d in self.destinations] if self.several else [self.key]
        return not self.config.move_zip_to_archive and all(self.ledger.is_kept(z.identity, k) for k in keys)

    def _move(self, z: ReadyZip, start: ZipStart, folder: Path) -> Path:
        """Move the claimed ZIP into ``folder``; a file that replaced it under its name stays, as a new ZIP.

        With ``move_zip_to_archive: false`` a delivered ZIP stays where it is, remembered by its identity.
        """
        claim = start.claim
        if folder == self.config.archive_dir and not self.config.move_zip_to_archive:
            record = start.record or start.duplicate_of
            self.ledger.keep_file(claim.identity, self.key, record.id if record else None)
            return z.path
        target, moved = move_claimed(z.path, claim.file, claim.identity, folder)
        if not moved:
            LOGGER.warning(
                "%s: replaced by another file while it was handled; the bytes handled are kept as %s, "
                "and the new %s is a ZIP of its own",
                z.path.name,
                target,
                z.path.name,
            )
        return target

    # --- endings ---------------------------------------------------------------------------------

    def _postpone(
        self,
        z: ReadyZip,
        start: ZipStart,
        record: ZipRecord,
        counts: Counts,
        why: str,
        started: float,
        asked: float = 0.0,
    ) -> ZipOutcome:
        now, spent = time.time(), time.monotonic() - started
        if record.tried_seconds + spent > self.config.give_up_after_hours * 3600:
            why = f"gave up after {record.attempts} attempt(s); last error: {why}"
            return self._fail(z, start, record, counts, why, started, [])
        delay = self.retry_delay(record, why, asked)
        self.ledger.zip_finish(record.id, ZipState.PENDING, counts, error=why, next_retry=now + delay, spent=spent)
        LOGGER.warning("%s: attempt %d incomplete (%s); next try in %.0f s", z.path.name, record.attempts, why, delay)
        return self._report(z, ZipState.PENDING, counts, started, error=why)

    def _fail(
        self,
        z: ReadyZip,
        start: ZipStart,
        record: ZipRecord,
        counts: Counts,
        why: str,
        started: float,
        entries: list[tuple[str, str]],
    ) -> ZipOutcome:
        target = self._move(z, start, self.config.failed_dir)
        spent = time.monotonic() - started
        self.ledger.zip_finish(record.id, ZipState.FAILED, counts, error=why, final_path=str(target), spent=spent)
        write_reason(
            target,
            {
                "zip": z.path.name,
                "sha256": record.sha256,
                "destination": self.destinations[0].name,
                "peer": self.key,
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
        summary: str = "",
    ) -> ZipOutcome:
        """Log the ZIP's one final line and return its outcome; ``summary`` replaces the counts (several destinations)."""
        seconds = max(time.monotonic() - started, 1e-6)
        # The same rates as the live progress line: instances sent (to every destination), and uncompressed MB, per
        # second. With several destinations "; " ends the last destination's counts, which hold commas of their own.
        LOGGER.info(
            "%s: %s - %s%s%.1f s (%.0f files/s, %.1f MB/s, %d association(s))",
            z.path.name,
            state.value,
            summary or counts.summary(),
            "; " if summary else ", ",
            seconds,
            counts.sent / seconds,
            self._bytes / 1e6 / seconds,
            self._associations,
        )
        return ZipOutcome(z.path.name, state, counts, seconds, error, final_path)
