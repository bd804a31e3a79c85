"""The service loops: deliver what is there once, or keep watching until asked to stop."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from . import legacy
from .config import Config
from .intake import ReadyZip, StabilityTracker, list_zips, start_observer
from .ledger import Ledger, ZipState
from .pipeline import Pipeline, ZipOutcome
from .progress import Progress
from .retry import backoff_delay
from .unzip import LocalError
from .workdir import clean_leftovers

LOGGER = logging.getLogger(__name__)


class AlreadyRunning(Exception):
    """Another watcher holds the ledger's lock; two would send the same ZIPs twice."""


def prepare_folders(config: Config) -> None:
    """Create the configured folders that do not exist yet."""
    for folder in (config.watch_dir, config.work_dir, config.archive_dir, config.failed_dir, config.state_db.parent):
        folder.mkdir(parents=True, exist_ok=True)


_LENT: set[str] = set()  # lock files this process holds and lends to the single_instance() calls made inside


@contextmanager
def single_instance(config: Config, lend: bool = False) -> Iterator[None]:
    """Hold an exclusive lock beside the ledger for as long as the watcher runs; raise AlreadyRunning if taken.

    With ``lend`` the lock is only taken, and granted to the calls made inside, which then remove what an
    interrupted run left: the command takes it before it opens the log file that a running watcher writes.
    """
    path = config.state_db.with_name(config.state_db.name + ".lock")
    if str(path) in _LENT:
        for leftover in clean_leftovers(config.work_dir):
            LOGGER.info("Removed %s, left by an interrupted run", leftover)
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another watcher is running with the ledger {config.state_db}") from None
        except OSError as exc:  # some network filesystems have no locks: run, but say so
            LOGGER.warning("Cannot lock %s (%s); make sure only one watcher uses this ledger", path, exc.strerror)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        if lend:
            _LENT.add(str(path))
            try:
                yield
            finally:
                _LENT.discard(str(path))
            return
        for leftover in clean_leftovers(config.work_dir):
            LOGGER.info("Removed %s, left by an interrupted run", leftover)
        yield


@contextmanager
def open_ledger(config: Config) -> Iterator[Ledger]:
    """Open the ledger; the first time it is the original script's state file, back it up and import its history."""
    backup = legacy.backup_if_original(config.state_db)  # before the ledger adds its tables to that file
    with Ledger(config.state_db) as ledger:
        counts = legacy.import_original(ledger, config.peer.key)
        if counts is not None:
            LOGGER.info("%s", counts.message(backup))
        yield ledger


class Troubled:
    """ZIPs whose attempt ended before the ledger could record it (this machine failed, or a bug): back-off."""

    def __init__(self, config: Config):
        self.config = config
        self.failures: dict[str, tuple[int, float]] = {}  # identity -> (failures in a row, when to try again)

    def due(self, z: ReadyZip) -> bool:
        return self.failures.get(z.identity, (0, 0.0))[1] <= time.monotonic()

    def process(self, pipeline: Pipeline, z: ReadyZip) -> ZipOutcome | None:
        """Process one ZIP; on an error the ZIP stays put, the error is logged, and the next try backs off."""
        try:
            outcome = pipeline.process_zip(z)
        except LocalError as exc:  # expected on a full disk or a locked file: one line, no traceback
            delay = self._failed(z)
            LOGGER.warning("%s: %s; the ZIP stays in %s, next try in %.0f s", z.path.name, exc, z.path.parent, delay)
            return None
        except Exception:
            delay = self._failed(z)
            LOGGER.exception(
                "%s: unexpected error; the ZIP stays in %s, next try in %.0f s", z.path.name, z.path.parent, delay
            )
            return None
        self.failures.pop(z.identity, None)
        return outcome

    def _failed(self, z: ReadyZip) -> float:
        count = self.failures.get(z.identity, (0, 0.0))[0] + 1
        delay = backoff_delay(count, self.config.retry_base_seconds, self.config.retry_max_seconds)
        self.failures[z.identity] = (count, time.monotonic() + delay)
        return delay


def run_once(config: Config, stop: threading.Event | None = None, progress: Progress | None = None) -> bool:
    """Deliver every ZIP in the watch folder once it is completely written; return True if all were delivered."""
    stop = stop or threading.Event()
    prepare_folders(config)
    tracker = StabilityTracker(config.wait_zip_complete_seconds)
    all_delivered = True
    done: set[str] = set()
    with single_instance(config), open_ledger(config) as ledger:
        pipeline = Pipeline(config, ledger, stop, progress)
        troubled = Troubled(config)
        while not stop.is_set():
            present = [z for z in list_zips(config.watch_dir) if z.path.name not in done and not pipeline.kept(z)]
            if not present:
                break
            for z in tracker.stable(present):
                if stop.is_set():
                    break
                outcome = troubled.process(pipeline, z)
                done.add(z.path.name)
                if outcome is None or outcome.state not in (ZipState.DELIVERED, ZipState.DUPLICATE):
                    all_delivered = False
            wait = tracker.seconds_to_next()
            if wait:
                stop.wait(min(wait, 1.0))
    return all_delivered and not stop.is_set()


def run_forever(config: Config, stop: threading.Event, progress: Progress | None = None) -> None:
    """Deliver ZIPs as they arrive until ``stop`` is set; a rescan every poll interval is the source of truth."""
    prepare_folders(config)
    tracker = StabilityTracker(config.wait_zip_complete_seconds)
    wake = threading.Event()
    observer = start_observer(config.watch_dir, wake, config.observer, min(config.poll_interval_seconds, 2.0))
    try:
        with single_instance(config), open_ledger(config) as ledger:
            pipeline = Pipeline(config, ledger, stop, progress)
            pipeline.skip_not_due = True  # with several destinations, one whose retry is not due yet waits
            troubled = Troubled(config)
            while not stop.is_set():
                for z in tracker.stable(list_zips(config.watch_dir)):
                    if stop.is_set():
                        break
                    if not pipeline.kept(z) and pipeline.due(z) and troubled.due(z):
                        troubled.process(pipeline, z)
                waits = [config.poll_interval_seconds, tracker.seconds_to_next(), pipeline.next_retry_in()]
                timeout = min(w for w in waits if w is not None)
                # Wake early on a file event or a stop request; a short floor keeps a busy folder from spinning.
                deadline = time.monotonic() + max(timeout, 0.2)
                while not stop.is_set() and not wake.is_set() and time.monotonic() < deadline:
                    wake.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                wake.clear()
    finally:
        observer.stop()
        observer.join(timeout=5)
