"""One ZIP to several destinations: an attempt per destination, then one honest verdict on where the ZIP goes.

Each destination has its own record of the ZIP (the ledger's zips table is keyed by hash and destination), its
own dedup and its own back-off. The ZIP is archived once every destination has everything meant for it; it stays
in the watch folder while one is pending; a refusal for good by one sends it to failed/ with a reason naming it.
The ZIP is extracted once, by the first attempt that reads it whole; the next destinations' attempts examine the
same files (each with its own dedup), and the work folder goes only when every one is done. A destination paused
for its credentials (pause.py) is not tried: the ZIP stays pending for it.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .delivery import Delivery
from .destinations import Destination
from .intake import ReadyZip
from .ledger import Counts, ZipRecord, ZipState
from .moves import write_reason
from .unzip import Extraction
from .zipstart import ClaimedZip, ZipStart

if TYPE_CHECKING:
    from .pipeline import Pipeline

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZipOutcome:
    name: str
    state: ZipState
    counts: Counts  # with several destinations, summed over them (an instance sent to two counts twice)
    seconds: float
    error: str = ""
    final_path: Path | None = None


@dataclass
class Leg:
    """One destination's part of an attempt at a ZIP, judged before the ZIP is moved anywhere."""

    destination: Destination
    start: ZipStart | None = None  # None: not tried this time (its retry not due, or delivered already)
    record: ZipRecord | None = None  # None: a duplicate, or no record yet
    state: ZipState = ZipState.PENDING
    counts: Counts = field(default_factory=Counts)
    filtered: int = 0  # instances its filter does not take (in counts.skipped, not in counts.found)
    why: str = ""
    entries: list[tuple[str, str]] = field(default_factory=list)
    retry_after: float = 0.0  # the destination asked us to wait this long (STOW-RS Retry-After)
    zip_level: bool = False  # the verdict is about the ZIP itself (corrupt, no DICOM): the same for every destination
    paused: bool = False  # the destination refused our credentials: pending, and the time is not counted (pause.py)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _total(legs: list[Leg]) -> Counts:
    """Return the legs' counts summed field by field (an instance sent to two destinations counts twice)."""
    return Counts(*(sum(getattr(leg.counts, f.name) for leg in legs) for f in fields(Counts)))


def summary(legs: list[Leg]) -> str:
    """Return the final line's counts: the ZIP's entries and instances once, then what each destination got.

    ``6 entries: 6 instances; local: sent 6; strict: sent 3, failed 3``; each destination's counts add up to the
    ZIP's instances.
    """
    examined = [leg for leg in legs if leg.start is not None and leg.state is not ZipState.DUPLICATE]
    if examined:  # an attempt cut short saw fewer entries: the fullest look counts
        c, filtered = max(((leg.counts, leg.filtered) for leg in examined), key=lambda cf: cf[0].found + cf[0].skipped)
        skipped = c.skipped - filtered
        whole = f"{c.found + c.skipped} entries: {c.found + filtered} instances" + (
            f", skipped {skipped}" if skipped else ""
        )
    else:
        whole = "not examined this time"
    return "; ".join([whole, *(f"{leg.destination.name}: {_got(leg)}" for leg in legs)])


def _got(leg: Leg) -> str:
    """Return what became of the ZIP's instances at one destination, naming only the counts that are not 0."""
    if leg.start is None and leg.state is not ZipState.DELIVERED:
        return "not tried this time"
    if leg.start is None or leg.state is ZipState.DUPLICATE:
        return "delivered before"
    c = leg.counts
    counted = (
        ("sent", c.sent),
        ("duplicates", c.duplicates),
        ("failed", c.failed),
        ("pending", c.pending),
        ("filtered out", leg.filtered),
    )
    text = ", ".join(f"{word} {n}" for word, n in counted if n) or "nothing to send"
    return text + (f" (changed {c.changed})" if c.changed else "")


def fan_out(p: Pipeline, z: ReadyZip, claim: ClaimedZip, work: Path, started: float, max_gap: float) -> ZipOutcome:
    """Run an attempt for each destination that has something to do, then move the ZIP as their verdicts say."""
    legs: list[Leg] = []
    sha = ""  # hashed once, by the first destination's start, and shared with the others
    extraction: Extraction | None = None  # extracted once, by the first attempt that read the ZIP whole
    for d in p.destinations:
        if p.stop.is_set() or (p.skip_not_due and not p._due_for(z, d)) or p.pauses.shut(d):
            legs.append(_untried(p, z, d))
            continue
        start = ZipStart(p.ledger, d.key, claim, max_gap, sha)
        if extraction is None:
            shutil.rmtree(work, ignore_errors=True)  # what a previous attempt left of an incomplete extraction
        tag, began = f"{z.path.name} [{d.name}]", time.monotonic()
        hash_first = p.hash_first and d.key == p.peer.key
        delivery = Delivery(
            p.config,
            p.ledger,
            start,
            z.path.name,
            p.stop,
            p.progress,
            hash_first,
            d,
            tag,
            learned=p.learned,
            extracted=extraction,
        )
        a = delivery.run(z.path, work)
        extraction = extraction or a.extraction
        paused = p.pauses.settle(d, z.path.name)
        p._bytes, p._associations = max(p._bytes, a.total_bytes or z.size), p._associations + a.associations
        leg = p.judge(z, Leg(d, start, paused=paused), a, began)
        sha = sha or start.sha256
        legs.append(leg)
        LOGGER.info("%s: %s: %s - %s%s", z.path.name, d.name, leg.state.value, leg.counts.summary(), _why(leg))
        if leg.zip_level:
            break  # corrupt or without DICOM: the same for every destination
    return _finish(p, z, legs, started)


def _why(leg: Leg) -> str:
    return f" ({leg.why})" if leg.why else ""


def _untried(p: Pipeline, z: ReadyZip, d: Destination) -> Leg:
    """Return the leg of a destination not tried this time (its retry not due, paused, a shutdown): as its record says.

    A failed record of a ZIP in the watch folder was sent back by --retry-failed: pending until it is tried.
    """
    record = p.ledger.zip_by_file(z.path.name, z.size, z.mtime, d.key)
    state = record.state if record is not None else ZipState.PENDING
    if state is ZipState.FAILED:
        state = ZipState.PENDING
    why = p.pauses.shut(d) or (record.last_error if record is not None else "not tried yet")
    return Leg(d, None, record, state, why=why)


def _finish(p: Pipeline, z: ReadyZip, legs: list[Leg], started: float) -> ZipOutcome:
    start = next(leg.start for leg in legs if leg.start is not None) if any(leg.start for leg in legs) else None
    failed = [leg for leg in legs if leg.start is not None and leg.state is ZipState.FAILED]
    if failed and start is not None:
        return _fail(p, z, legs, failed, start, started)
    if any(leg.state is ZipState.PENDING for leg in legs) or start is None:
        return _postpone(p, z, legs, started)
    return _archive(p, z, legs, start, started)


def _fail(p: Pipeline, z: ReadyZip, legs: list[Leg], failed: list[Leg], start: ZipStart, started: float) -> ZipOutcome:
    """Move the ZIP to failed/ with a reason naming each refusing destination; the others keep what they have."""
    target = p._move(z, start, p.config.failed_dir)
    spent = time.monotonic() - started
    names = ", ".join(leg.destination.name for leg in failed)
    why = failed[0].why if failed[0].zip_level else "; ".join(f"{leg.destination.name}: {leg.why}" for leg in failed)
    because = f"the ZIP went to failed/ because {names} refused it ({why})"
    for leg in legs:
        if leg.record is None:
            continue
        if leg in failed:
            p.ledger.zip_finish(leg.record.id, ZipState.FAILED, leg.counts, leg.why, None, str(target), spent)
        elif leg.state is ZipState.PENDING and leg.start is not None:
            p.ledger.zip_finish(leg.record.id, ZipState.FAILED, leg.counts, because, None, str(target), spent)
        elif leg.state is ZipState.PENDING:
            p.ledger.settle(leg.record.id, ZipState.FAILED, str(target), because)
        elif leg.state is ZipState.DELIVERED and leg.start is not None:
            p.ledger.zip_finish(leg.record.id, ZipState.DELIVERED, leg.counts, final_path=str(target), spent=spent)
    first = failed[0]
    assert first.record is not None
    write_reason(
        target,
        {
            "zip": z.path.name,
            "sha256": first.record.sha256,
            "destination": names,
            "peer": first.destination.key,
            "reason": why,
            "entries": [
                {"destination": leg.destination.name, "name": n, "problem": problem}
                for leg in failed
                for n, problem in leg.entries
            ],
            "destinations": [
                {
                    "destination": leg.destination.name,
                    "peer": leg.destination.key,
                    "state": _final(leg, failed),
                    **({"counts": asdict(leg.counts)} if leg.start is not None else {}),  # tried this time
                }
                for leg in legs
            ],
            "counts": asdict(first.counts),  # the first refusing destination's, like peer, attempts and history
            "attempts": first.record.attempts,
            "history": p.ledger.history(first.record.id),
            "first_seen": _utc(first.record.first_seen),
            "failed_at": _utc(time.time()),
        },
    )
    LOGGER.error("%s: moved to %s: %s", z.path.name, target, why)
    return p._report(z, ZipState.FAILED, _total(legs), started, why, target, summary(legs))


def _final(leg: Leg, failed: list[Leg]) -> str:
    """Return the state a destination's record ends in once the ZIP went to failed/."""
    if leg in failed or leg.state is ZipState.PENDING:
        return ZipState.FAILED.value
    return ZipState.DELIVERED.value if leg.state in (ZipState.DELIVERED, ZipState.DUPLICATE) else leg.state.value


def _postpone(p: Pipeline, z: ReadyZip, legs: list[Leg], started: float) -> ZipOutcome:
    """Keep the ZIP in the watch folder: record each tried destination's result, with its own next retry.

    A paused destination that has no record of the ZIP gets one, pending, so that --status shows what waits for it.
    """
    now, spent = time.time(), time.monotonic() - started
    hashed = next((leg.start for leg in legs if leg.start is not None and leg.start.sha256), None)
    for leg in legs:
        if leg.start is None and leg.record is None and hashed is not None and p.pauses.shut(leg.destination):
            claim = hashed.claim
            p.ledger.zip_waiting(hashed.sha256, leg.destination.key, z.path.name, claim.size, claim.mtime, leg.why)
        if leg.start is None or leg.record is None:
            continue
        if leg.state is ZipState.DELIVERED:
            p.ledger.zip_finish(leg.record.id, ZipState.DELIVERED, leg.counts, spent=spent)
            continue
        if leg.paused:  # its ERROR line is logged; it is tried once the pause ends, and the time is not counted
            p.ledger.zip_finish(leg.record.id, ZipState.PENDING, leg.counts, leg.why)
            continue
        delay = p.retry_delay(leg.record, leg.why, leg.retry_after)
        p.ledger.zip_finish(leg.record.id, ZipState.PENDING, leg.counts, leg.why, now + delay, spent=spent)
        LOGGER.warning(
            "%s: attempt %d incomplete for %s (%s); next try in %.0f s",
            z.path.name,
            leg.record.attempts,
            leg.destination.name,
            leg.why,
            delay,
        )
    waiting = [leg for leg in legs if leg.state is ZipState.PENDING]
    why = "; ".join(f"{leg.destination.name}: {leg.why}" for leg in waiting) or "nothing tried"
    return p._report(z, ZipState.PENDING, _total(legs), started, why, summary=summary(legs))


def _archive(p: Pipeline, z: ReadyZip, legs: list[Leg], start: ZipStart, started: float) -> ZipOutcome:
    """Archive the ZIP: every destination has everything meant for it."""
    spent = time.monotonic() - started
    if not p.config.move_zip_to_archive:
        for leg in legs:  # every destination remembers the file it need not look at again
            record = leg.record or (leg.start.duplicate_of if leg.start else None)
            p.ledger.keep_file(start.claim.identity, leg.destination.key, record.id if record else None)
        target = z.path
    else:
        target = p._move(z, start, p.config.archive_dir)
    duplicates = [leg for leg in legs if leg.state is ZipState.DUPLICATE]
    for leg in legs:
        if leg.state is ZipState.DELIVERED and leg.record is not None:
            if leg.start is not None:
                p.ledger.zip_finish(leg.record.id, ZipState.DELIVERED, leg.counts, final_path=str(target), spent=spent)
            else:
                p.ledger.settle(leg.record.id, ZipState.DELIVERED, str(target))
        known = leg.start.duplicate_of if leg.start is not None else None
        if leg.state is ZipState.DUPLICATE and known is not None:
            if known.name == z.path.name:  # this very ZIP, delivered to it in an earlier attempt
                p.ledger.settle(known.id, ZipState.DELIVERED, str(target))
            else:
                p.ledger.count_duplicate_copy(known.id)
    if len(duplicates) == len(legs):
        known = duplicates[0].start.duplicate_of if duplicates[0].start else None
        LOGGER.info(
            "%s: duplicate of %s, already delivered to every destination; archived as %s",
            z.path.name,
            known.name if known else "?",
            target.name,
        )
        return ZipOutcome(z.path.name, ZipState.DUPLICATE, Counts(), time.monotonic() - started, final_path=target)
    return p._report(z, ZipState.DELIVERED, _total(legs), started, final_path=target, summary=summary(legs))
