"""Destinations paused because they refused our credentials (HTTP 401/403): a property of the destination, not of a ZIP.

While a STOW-RS destination is paused nothing is sent to it: its ZIPs stay pending for it, the time does not count
against behavior.give_up_after_hours (see Ledger.zip_begin), and the other destinations go on. The pause ends when
the credentials change (the token file's size or time, the token variable's value, the client certificate's files),
after PAUSE_SECONDS (then one request tries again), or when the watcher restarts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .destinations import Destination
    from .ledger import Ledger
    from .stowrs import StowSettings

LOGGER = logging.getLogger(__name__)

PAUSE_SECONDS = 15 * 60  # then one request tries the credentials again


def _stat(path: Path | None) -> tuple[int, int] | str | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return st.st_mtime_ns, st.st_size


def fingerprint(settings: StowSettings) -> tuple[object, ...]:
    """Return what changes when someone renews the credentials; a token is only ever kept as its digest."""
    env = None
    if settings.token_env is not None:
        env = hashlib.sha256(os.environ.get(settings.token_env, "").encode()).hexdigest()
    return _stat(settings.token_file), env, _stat(settings.cert_file), _stat(settings.key_file)


def ends_when(settings: StowSettings) -> str:
    """Say which change of the configured credentials ends the pause before its time."""
    if settings.token_file is not None:
        return "its token_file changes, or the watcher restarts"
    if settings.token_env is not None:
        return f"the watcher restarts with a new ${settings.token_env} (its token_env)"
    if settings.cert_file is not None:
        return "its cert_file or key_file changes, or the watcher restarts"
    return "the watcher restarts (with corrected username/password)"


@dataclass(frozen=True)
class Refusal:
    """Why a destination is paused: its server's words, since when (wall clock), and when one request tries again."""

    status: int | None
    words: str  # names the destination, the HTTP status and the configured credentials, never the secret
    since: float
    probe_at: float


class Gate:
    """One STOW-RS destination's gate, shared by its connections: shut by a refusal, open again after a change.

    Connections call admit() before a request, then refused() or answered() with what the server said.
    """

    def __init__(
        self, settings: StowSettings, seconds: float = PAUSE_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        self.settings, self.seconds, self.clock = settings, seconds, clock
        self.refusal: Refusal | None = None
        self._until = 0.0  # by ``clock``: a wall clock set back must not stretch a pause
        self._print: tuple[object, ...] = ()  # the credentials the refusal was about
        self._lock = threading.Lock()

    def shut(self) -> Refusal | None:
        """Return the refusal that keeps the gate shut, or None when a request may go (open, or a try is due)."""
        with self._lock:
            refusal = self.refusal
            if refusal is None or self.clock() >= self._until or fingerprint(self.settings) != self._print:
                return None
            return refusal

    def seconds_left(self) -> float | None:
        """Return the seconds until a shut gate lets one request try again, None when it is not shut."""
        return max(0.0, self._until - self.clock()) if self.shut() is not None else None

    def admit(self) -> tuple[object, ...] | None:
        """Return the credentials' fingerprint for the request about to go, or None when the gate is shut."""
        if self.shut() is not None:
            return None
        return fingerprint(self.settings)  # taken before the token is read: a change after it ends the next pause

    def refused(self, status: int | None, words: str, sent: tuple[object, ...]) -> None:
        """Shut the gate: the server refused the credentials ``sent`` (their fingerprint, from admit())."""
        with self._lock:
            now = time.time()
            since = self.refusal.since if self.refusal is not None else now
            self.refusal = Refusal(status, words, since, now + self.seconds)
            self._until = self.clock() + self.seconds
            self._print = sent

    def answered(self) -> None:
        """The server answered without refusing our credentials: the pause, if any, is over."""
        with self._lock:
            self.refusal = None


class Pauses:
    """The pipeline's gates, one per STOW-RS destination, and their record in the ledger and the log.

    A restart ends every pause: the ledger's open pauses are closed when the pipeline starts.
    """

    def __init__(
        self, ledger: Ledger, destinations: Sequence[Destination], clock: Callable[[], float] = time.monotonic
    ):
        self.ledger = ledger
        self.gates = {d.key: Gate(d.stow, clock=clock) for d in destinations if d.stow is not None}
        # Each STOW-RS destination carries its gate to the connections Delivery makes for it.
        self.destinations = tuple(
            replace(d, stow=replace(d.stow, gate=self.gates[d.key])) if d.stow is not None else d for d in destinations
        )
        self.recorded: dict[str, Refusal | None] = {}
        ledger.end_pauses()

    def shut(self, d: Destination) -> str:
        """Return why nothing may be sent to ``d`` now, or "" when it is not paused."""
        gate = self.gates.get(d.key)
        refusal = gate.shut() if gate is not None else None
        return f"{d.name} is paused: {refusal.words}" if refusal is not None else ""

    def probes_in(self) -> list[float]:
        """Return the seconds until each shut gate lets one request try again."""
        return [s for s in (g.seconds_left() for g in self.gates.values()) if s is not None]

    def settle(self, d: Destination, zip_name: str) -> bool:
        """Record what an attempt at ``zip_name`` learnt of ``d``'s credentials; return True when they were refused.

        The first refusal is one ERROR line naming the destination, the status and what to fix; a pause ends in
        the ledger once the server answers without refusing.
        """
        gate = self.gates.get(d.key)
        if gate is None:
            return False
        before, now = self.recorded.get(d.key), gate.refusal
        if now is before:
            return False  # no request, or answers as before
        self.recorded[d.key] = now
        if now is None:
            self.ledger.end_pauses(d.key)
            LOGGER.info("%s: %s takes our credentials again; its pause is over", zip_name, d.name)
            return False
        assert d.stow is not None
        self.ledger.pause(d.key, now.status, now.words, now.since, now.probe_at)
        minutes = gate.seconds / 60
        if before is None:
            LOGGER.error(
                "%s: %s paused: %s. Nothing is sent to %s for %.0f min, then one request tries again; sooner when "
                "%s. The other destinations go on",
                zip_name,
                d.name,
                now.words,
                d.name,
                minutes,
                ends_when(d.stow),
            )
        else:
            LOGGER.warning("%s: %s still refuses our credentials; paused %.0f min more", zip_name, d.name, minutes)
        return True
