"""One attempt at a ZIP, overlapped: an extractor thread detects and dedups while sender threads send batches.

The network stays busy while the next files come out of the ZIP. Each sender keeps its association for the
next batch while it has the presentation contexts that batch needs (see sender.Connection). Every stored
instance is recorded in the ledger the moment its C-STORE response arrives.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import logcontext, sender
from .backlog import Backlog
from .config import Config
from .contexts import MAX_CONTEXTS, Context, Group, plan_groups
from .dedup import Seen, decide
from .destinations import DEFAULT_NAME, Destination, dimse
from .ledger import Ledger
from .progress import Progress
from .ramp import Learned, Ramp
from .sender import Outcome, PeerUnavailable, StoreResult
from .sniff import Instance, Kind, detect
from .stowrs import DestinationUnavailable, StowConnection, Throttled
from .unzip import ArchiveError, ExtractedFile, Extraction, LocalError, extract_zip
from .zipstart import ZipStart

LOGGER = logging.getLogger(__name__)

RAMP_EVERY = 4  # results between two looks of the senders at the ramp
UNAVAILABLE = (PeerUnavailable, DestinationUnavailable)  # the destination cannot be used now: retried later
WARM_TIMEOUT = 3.0  # seconds a further association may take to be accepted before the ramp stops
LEFT, GAVE_WAY = "left", "gave way"  # why a sender ended before the backlog did: the ramp went back; throttled


@dataclass
class Attempt:
    """What one attempt at a ZIP found and did."""

    found: int = 0
    duplicates: int = 0
    skipped: int = 0
    changed: int = 0
    filtered: int = 0  # instances the destination's filter does not take: neither sent nor pending
    retry_after: float = 0.0  # seconds a STOW-RS server asked us to wait (Retry-After), 0 when it did not
    queued: int = 0  # instances that had to be sent
    results: list[StoreResult] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    names: dict[Path, str] = field(default_factory=dict)  # extracted path -> name in the ZIP
    unsent_reason: str = ""
    interrupted: bool = False  # a shutdown stopped the extraction: the ZIP was not seen whole
    archive_error: ArchiveError | None = None
    total_bytes: int = 0  # uncompressed size of the ZIP's entries, from its central directories
    associations: int = 0  # associations made to send it
    local_error: LocalError | None = None  # this machine failed: no verdict on the ZIP
    unexpected: BaseException | None = None  # a bug or an unforeseen condition: no verdict either
    extraction: Extraction | None = None  # the ZIP extracted whole, for another destination to read again

    def count(self, outcome: Outcome) -> int:
        return sum(r.outcome is outcome for r in self.results)

    @property
    def unsent(self) -> int:
        return self.queued - len(self.results)


class _Interrupted(Exception):
    """Raised from the extraction callback when a shutdown was asked for."""


class _Duplicate(Exception):
    """Raised from the extraction callback once the ZIP's hash shows its bytes were delivered before."""


class Delivery:
    """Extract, detect, dedup and send one ZIP to one destination (the first configured by default), with the ledger."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        start: ZipStart,
        zip_name: str,
        stop: threading.Event,
        progress: Progress,
        hash_first: bool = False,
        destination: Destination | None = None,
        tag: str = "",
        learned: Learned | None = None,
        extracted: Extraction | None = None,
    ):
        self.config, self.ledger, self.start, self.zip_name = config, ledger, start, zip_name
        self.stop, self.progress = stop, progress
        self.hash_first = hash_first  # send nothing before the ZIP's hash says it is not a delivered one
        # None: the `dicom:` section's peer, exactly as before destinations existed
        self.destination = destination or dimse(DEFAULT_NAME, config.peer, config.max_associations)
        self.key = self.destination.key
        self.peer = self.destination.peer or config.peer  # a stowrs destination uses it for batch planning only
        self.tag = tag or zip_name  # what log lines call the ZIP (with the destination's name when several)
        self.given = extracted  # the ZIP extracted whole by another destination's attempt: read, not extracted
        self.attempt = Attempt()
        self.seen = Seen()
        self.spares: dict[str, list[Instance]] = {}  # SOP Instance UID -> other files of this ZIP holding it
        # The extractor stays at most two batches per association ahead: bounded memory and disk lead.
        lead = 2 * self.destination.max_associations * config.send_batch_size
        self.backlog = Backlog(lead, config.send_batch_size)
        self.halt = threading.Event()  # stop sending: peer unavailable, struggling, or the ZIP is bad
        self.lock = threading.Lock()
        self.learned = learned  # what earlier ZIPs to this destination taught the ramp, kept by the caller
        cap, stow = self.destination.max_associations, self.destination.stow is not None
        first = cap if stow else 1  # STOW-RS: every request in flight at once (see ramp.py)
        self.ramp = Ramp(
            cap,
            start=learned.start(self.key, first) if learned else first,
            unit="request(s) in flight" if stow else "association(s)",
            cap_key=f"max_requests of {self.destination.name}" if stow else "dicom.max_associations",
        )
        self.sending = 0  # STOW-RS senders that have not given way (see _give_way)
        self.senders: list[threading.Thread] = []
        self.completed = 0  # C-STORE results so far, for the ramp's rates
        self.known: dict[Context, None] = {}  # the contexts the ZIP's instances need so far
        self.contexts: Group | None = None  # the same, as a further association proposes them

    def run(self, zip_path: Path, work: Path) -> Attempt:
        """Run the attempt to its end and return what happened."""
        with logcontext.about_zip(self.zip_name, self.attempt.names):  # what the libraries log names this ZIP
            return self._run(zip_path, work)

    def _run(self, zip_path: Path, work: Path) -> Attempt:
        self.progress.start(self.zip_name, 0, 0)
        self._start_sender(None)
        try:
            extraction = self._extract(zip_path, work)
            for arcname, reason in extraction.skipped:
                self._skip(arcname, reason, logging.WARNING)
            self.attempt.extraction = extraction
        except _Interrupted:
            self.attempt.interrupted = True
            self._halt("stopped before the whole ZIP was read")
        except _Duplicate:
            self._halt("the ZIP was delivered before")
        except ArchiveError as exc:
            self.attempt.archive_error = exc
            self.halt.set()
        except LocalError as exc:
            self.attempt.local_error = exc
            self._halt(str(exc))
        except OSError as exc:  # reading an extracted file back (detection): a file locked or removed under us
            self.attempt.local_error = LocalError(f"cannot read an extracted file: {exc}")
            self._halt(str(self.attempt.local_error))
        except Exception as exc:
            self.attempt.unexpected = exc
            self._halt(f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            self.backlog.close()
            while alive := [thread for thread in self.senders if thread.is_alive()]:
                for thread in alive:  # the ramp may start one more until the last batch is taken
                    thread.join()
        self._send_spares()
        if self.learned is not None:
            self.learned.settle(self.key, self.ramp)
        self.progress.finish()
        return self.attempt

    def _extract(self, zip_path: Path, work: Path) -> Extraction:
        """Extract the ZIP, examining each file as it comes out; or examine the files another attempt extracted."""
        if self.given is None:
            return extract_zip(
                zip_path,
                work,
                self.config.limits,
                on_file=self._examine,
                file=self.start.claim.file,
                on_listing=self._listed,
            )
        files = self.given.files
        self._listed(len(files) + len(self.given.skipped), sum(f.size for f in files))
        for f in files:
            self._examine(f)
        return self.given

    def _send_spares(self) -> None:
        """Send another copy of each instance the peer refused, while this ZIP holds one."""
        while not self.halt.is_set() and not self.stop.is_set():
            refused = [
                (n, r)
                for n, r in enumerate(self.attempt.results)
                if r.outcome is Outcome.PERMANENT and self.spares.get(r.instance.sop_instance_uid)
            ]
            if not refused:
                return
            spares = [self.spares[r.instance.sop_instance_uid].pop(0) for _, r in refused]
            try:
                with self._connect() as connection:
                    results = connection.store(spares, on_result=self._record)
            except UNAVAILABLE as exc:
                self._halt(f"peer unavailable: {exc}")
                return
            except Exception as exc:
                self.attempt.unexpected = self.attempt.unexpected or exc
                self._halt(f"unexpected error while sending: {type(exc).__name__}: {exc}")
                return
            for (n, first), second in zip(refused, results, strict=True):
                if second.outcome is Outcome.PERMANENT:
                    self.attempt.results[n] = second
                    continue
                name = self.attempt.names.get(first.instance.path, first.instance.path.name)
                spare = self.attempt.names.get(second.instance.path, second.instance.path.name)
                # Counted once: the instance is sent (from the spare), the refused copy stays a duplicate.
                LOGGER.warning(
                    "%s: entry %s could not be sent (%s); the same instance went from %s",
                    self.tag,
                    name,
                    first.detail,
                    spare,
                )
                self.attempt.results[n] = second

    # --- the extractor's side ----------------------------------------------------------------------

    def _listed(self, files: int, nbytes: int) -> None:
        """Take a (nested) ZIP's entries into the progress totals; a nested ZIP replaces its own entry."""
        first = self.attempt.total_bytes == 0 and self.progress.total == 0
        self.attempt.total_bytes += nbytes
        self.progress.grow(files, nbytes)
        if not first:
            self.progress.update(1, 0)  # the nested ZIP's own entry: done, its entries are counted instead

    def _skip(self, arcname: str, reason: str, level: int, size: int = 0) -> None:
        self.progress.update(1, size)
        self.attempt.skipped += 1
        self.attempt.skipped_files.append((arcname, reason))
        LOGGER.log(level, "%s: entry %s not sent: %s", self.tag, arcname, reason)

    def _examine(self, f: ExtractedFile) -> None:
        """Detect one extracted file and queue it when the dedup policy says it must be sent."""
        if self.stop.is_set():
            raise _Interrupted  # a large ZIP must not hold up a shutdown
        if self.start.known_duplicate():
            raise _Duplicate
        with logcontext.about(f.arcname):  # pydicom's warnings while it reads the file name this entry
            detection = detect(f.path, f.sha256, f.size)
        self.attempt.names[f.path] = f.arcname
        inst = detection.instance
        if detection.kind is not Kind.INSTANCE or inst is None:
            level = logging.WARNING if detection.kind in (Kind.NO_UID, Kind.DAMAGED) else logging.DEBUG
            self._skip(f.arcname, detection.reason or detection.kind.value, level, f.size)
            return
        self.attempt.found += 1
        if not self.destination.takes(inst):
            self.progress.update(1, f.size)
            self.attempt.filtered += 1
            LOGGER.debug("%s: entry %s: not for %s (sop_classes)", self.tag, f.arcname, self.destination.name)
            return
        decision = decide(self.ledger, self.key, self.config.dedup_policy, inst, self.seen)
        if decision.changed_from is not None:
            self.attempt.changed += 1
            LOGGER.warning(
                "%s: entry %s: SOP Instance UID %s was delivered before from %s with different bytes (%s)",
                self.tag,
                f.arcname,
                inst.sop_instance_uid,
                decision.changed_from.zip_name,
                "sent again" if decision.send else "not sent",
            )
        if not decision.send:
            self.progress.update(1, f.size)
            self.attempt.duplicates += 1
            if decision.in_this_zip:
                # Kept in case the first copy cannot be sent (real exports hold broken twins).
                self.spares.setdefault(inst.sop_instance_uid, []).append(inst)
            why = "another file of this ZIP is the same instance" if decision.in_this_zip else "already delivered"
            LOGGER.debug("%s: entry %s: %s not sent: %s", self.tag, f.arcname, inst.sop_instance_uid, why)
            return
        self.seen.add(inst)
        self.attempt.queued += 1
        self._put(inst)

    def _put(self, inst: Instance) -> None:
        """Queue an instance; while instances wait for a sender, the ramp may start one more (see ramp.py)."""
        needs = plan_groups([inst], policy=self.peer.decompress)[0].contexts
        if any(c not in self.known for c in needs):
            self.known.update(dict.fromkeys(needs))
            self.contexts = Group((), tuple(self.known)[:MAX_CONTEXTS])
        self._consider_ramp()
        while not self.backlog.put([inst], timeout=0.5):  # waits while the senders are behind
            if not any(thread.is_alive() for thread in self.senders):
                self._halt("no sender is left")  # never wait for ever; these stay unsent
                return

    def _consider_ramp(self) -> None:
        """Start more senders when the ramp says so: instances wait, and the last step raised the rate."""
        if self.halt.is_set() or self.contexts is None:
            return
        with self.lock:  # the extractor and the senders ask
            was_closed = self.ramp.closed
            for _ in range(self.ramp.more(self.completed, backlog=self.backlog.waiting())):
                self._start_sender(self.contexts)
            if self.ramp.closed and not was_closed:
                LOGGER.debug("%s: going on with %d %s: %s", self.tag, self.ramp.size, self.ramp.unit, self.ramp.why)

    def _start_sender(self, warm: Group | None) -> None:
        thread = threading.Thread(target=self._send_loop, args=(warm,), name=f"sender-{len(self.senders)}")
        self.senders.append(thread)
        thread.start()

    # --- the senders' side -------------------------------------------------------------------------

    def _next_batch(self, connection: sender.Connection | StowConnection) -> list[Instance] | None:
        """Return this sender's share of what waits, or None once the extraction is over and all was taken."""
        if isinstance(connection, StowConnection):  # one request, many instances
            return self.backlog.take(self.ramp.senders(), least=self.config.send_batch_size)
        batch = self.backlog.take(self.ramp.senders())
        connection.wider = self.contexts.contexts if self.contexts else ()
        return batch

    def _send_loop(self, warm: Group | None) -> None:
        # One association for the ZIP's batches, mostly; what the libraries log in this thread names the ZIP.
        with logcontext.about_zip(self.zip_name, self.attempt.names), self._connect() as connection:
            with self.lock:
                self.sending += 1
            counted = True  # in self.sending, which a throttled STOW-RS sender reads before it gives way
            try:
                while counted:
                    ended = self._send_batches(connection, warm)
                    warm = None
                    with self.lock:  # the same lock as _give_way's: what is given back always has a sender
                        if ended == GAVE_WAY:
                            counted = False  # _give_way took it out
                        elif ended or not (isinstance(connection, StowConnection) and len(self.backlog)):
                            self.sending -= 1
                            counted = False
            finally:
                with self.lock:
                    self.attempt.associations += getattr(connection, "associations", 0)
                    if counted:
                        self.sending -= 1

    def _connect(self) -> sender.Connection | StowConnection:
        """Return a new connection to the destination: associations with a DIMSE peer, or one HTTP session."""
        if self.destination.stow is not None:
            connection = StowConnection(self.destination.stow)
            connection.may_yield = lambda: self.sending > 1  # a hint; _give_way decides under the lock
            return connection
        return sender.Connection(self.peer)

    def _send_batches(self, connection: sender.Connection | StowConnection, warm: Group | None) -> str:
        """Send shares of the backlog until none is left and return ""; or LEFT (the ramp went back), or GAVE_WAY."""
        if warm is not None and isinstance(connection, StowConnection):
            self.ramp.opened(self.completed)  # an HTTP session opens with its first request: nothing to wait for
        if warm is not None and isinstance(connection, sender.Connection):
            # A further association is made before it takes a batch: a peer that refuses it, or serves one
            # association at a time and keeps it waiting, must not hold a batch up.
            why = connection.warm(warm, min(self.peer.acse_timeout, WARM_TIMEOUT))
            if why:
                self.ramp.refused(f"the peer took no further association ({why})")
                LOGGER.info("%s: going on with %d association(s): %s", self.tag, self.ramp.size, why)
                return LEFT
            self.ramp.opened(self.completed)
            LOGGER.debug("%s: association %d opened", self.tag, self.ramp.size)
        while True:
            # The last step did not raise the rate: the associations it added leave before their next share (never
            # after taking one: the senders that stay might already have found the backlog empty and gone).
            if self.ramp.leave():
                return LEFT
            batch = self._next_batch(connection)
            if batch is None:
                return ""
            if self.stop.is_set():
                self._halt("stopped before sending everything")
            if self.hash_first and not self.halt.is_set() and self._delivered_before():
                self._halt("the ZIP was delivered before")
            if self.halt.is_set():
                continue  # drain, so the extractor never blocks; these stay unsent
            try:
                results = connection.store(batch, on_result=self._record)
            except Throttled as exc:
                if self._give_way(exc):
                    return GAVE_WAY
                results = exc.results + [self._unsent(i, str(exc)) for i in exc.rest]  # the last sender: as before
            except UNAVAILABLE as exc:
                self._wait_asked(getattr(exc, "retry_after", None))
                LOGGER.warning("%s: %s is unavailable: %s", self.tag, self.key, exc)
                self._halt(f"{'destination' if isinstance(exc, DestinationUnavailable) else 'peer'} unavailable: {exc}")
                continue
            except Exception as exc:
                if isinstance(exc, OSError) and isinstance(connection, StowConnection):
                    # STOW-RS reads each file while it sends: one locked or removed under us is this machine's fault
                    with self.lock:
                        self.attempt.local_error = self.attempt.local_error or LocalError(f"cannot read a file: {exc}")
                    self._halt(f"cannot read a file: {exc}")
                    continue
                with self.lock:
                    self.attempt.unexpected = self.attempt.unexpected or exc
                self._halt(f"unexpected error while sending: {type(exc).__name__}: {exc}")
                continue
            with self.lock:
                self.attempt.results.extend(results)
            self._wait_asked(getattr(connection, "retry_after", None))
            transient = [r.detail for r in results if r.outcome is Outcome.TRANSIENT]
            if transient:
                # One line for the batch: a CD of 500 images must not give 500 warnings.
                LOGGER.warning("%s: %d instance(s) not stored this time: %s", self.tag, len(transient), transient[0])
                self._halt(transient[0])  # keep the rest for the retry

    def _give_way(self, exc: Throttled) -> bool:
        """Leave the instances a throttled request did not store to the other senders; False when there are none.

        Decided under the lock a sender that found the backlog empty takes before it ends: what is given back
        always has a sender.
        """
        self._wait_asked(exc.retry_after)
        with self.lock:
            if self.sending <= 1:
                return False
            self.sending -= 1
            self.attempt.results.extend(exc.results)
            self.backlog.give_back(exc.rest)
        self.ramp.refused(f"the server throttled a further request ({exc})")
        LOGGER.info("%s: going on with %d %s: %s", self.tag, self.ramp.size, self.ramp.unit, self.ramp.why)
        return True

    def _unsent(self, instance: Instance, words: str) -> StoreResult:
        """Return (and record) a TRANSIENT result for an instance a throttled request left, as a busy answer does."""
        result = StoreResult(instance, Outcome.TRANSIENT, None, words)
        self._record(result)
        return result

    def _wait_asked(self, seconds: float | None) -> None:
        """Remember the longest wait a server asked for (STOW-RS Retry-After): the next retry is not sooner."""
        if seconds:
            with self.lock:
                self.attempt.retry_after = max(self.attempt.retry_after, seconds)

    def _delivered_before(self) -> bool:
        """Wait for the ZIP's hash; return True when it shows a ZIP delivered before (unreadable: let it go on)."""
        try:
            return self.start.begin() is None
        except OSError:
            return False

    def _halt(self, reason: str) -> None:
        with self.lock:
            if not self.attempt.unsent_reason:
                self.attempt.unsent_reason = reason
        self.halt.set()

    def _record(self, r: StoreResult) -> None:
        self.completed += 1  # read by the ramp only: an approximate count is enough
        if self.completed % RAMP_EVERY == 0:
            self._consider_ramp()  # also once the extraction is over and batches still wait
        i = r.instance
        if r.outcome in (Outcome.STORED, Outcome.WARNING):
            record = self.start.record  # None until the hash is known: adopted at the end
            self.ledger.record_delivery(
                self.key,
                record.id if record is not None else None,
                self.zip_name,
                sop_instance_uid=i.sop_instance_uid,
                sha256=i.sha256,
                sop_class_uid=i.sop_class_uid,
                study_uid=i.study_uid,
                series_uid=i.series_uid,
                transfer_syntax=i.transfer_syntax,
                status=r.status,
                outcome=r.outcome.value,
                claim=self.start.claim.identity,
            )
        self.progress.update(1, i.size, sent=int(r.outcome in (Outcome.STORED, Outcome.WARNING)))
        level = logging.DEBUG if r.outcome in (Outcome.STORED, Outcome.TRANSIENT) else logging.WARNING
        LOGGER.log(level, "%s: %s %s: %s", self.tag, i.sop_instance_uid, r.outcome.value, r.detail)
