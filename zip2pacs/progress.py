"""Progress of one ZIP: a live line on a terminal, periodic log lines otherwise.

The ZIP's central directory gives the number and sizes of its entries before extraction, so the percentage
and the ETA are those of the whole ZIP from the start. An entry is done once it is skipped, recognised as a
duplicate, or its instance has its C-STORE result; rates are over the attempt's time, as in the final line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TextIO

LOGGER = logging.getLogger(__name__)


class Progress:
    """Counts one ZIP's entries done and instances sent; subclasses decide how to show it. This one shows nothing."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()  # the extractor and several sender threads report
        self.name, self.total, self.total_bytes = "", 0, 0
        self.done, self.done_bytes, self.sent, self.started = 0, 0, 0, 0.0

    def start(self, name: str, total: int, total_bytes: int) -> None:
        """Begin a ZIP of ``total`` file entries holding ``total_bytes`` uncompressed (0 while unknown)."""
        with self.lock:
            self.name, self.total, self.total_bytes = name, total, total_bytes
            self.done, self.done_bytes, self.sent, self.started = 0, 0, 0, self.clock()

    def grow(self, entries: int, nbytes: int) -> None:
        """Add to the totals: the entries of a nested ZIP, listed once it is extracted."""
        with self.lock:
            self.total += entries
            self.total_bytes += nbytes

    def update(self, entries: int, nbytes: int, sent: int = 0) -> None:
        """Count ``entries`` done (``nbytes`` uncompressed), of which ``sent`` instances stored now."""
        with self.lock:
            self.done += entries
            self.done_bytes += nbytes
            self.sent += sent
            self.show(final=False)

    def finish(self) -> None:
        if self.total:
            self.show(final=True)

    def text(self) -> str:
        """Return ``NAME: done/total entries (pct), N sent, files/s, MB/s, ETA``; pct and ETA by bytes."""
        elapsed = max(self.clock() - self.started, 1e-6)
        byte_rate = self.done_bytes / elapsed
        share = min(self.done_bytes / self.total_bytes, 1.0) if self.total_bytes else (1.0 if self.done else 0.0)
        left = max(self.total_bytes - self.done_bytes, 0) / byte_rate if byte_rate else 0.0
        return (
            f"{self.name}: {min(self.done, self.total)}/{self.total} entries ({100 * share:.0f}%), "
            f"{self.sent} sent, {self.sent / elapsed:.0f} files/s, {byte_rate / 1e6:.1f} MB/s, ETA {left:.0f} s"
        )

    def show(self, final: bool) -> None:
        pass


class TerminalProgress(Progress):
    """Rewrites one line on a terminal, at most a few times a second."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        self.stream = stream
        self.last = 0.0

    def show(self, final: bool) -> None:
        now = self.clock()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        self.stream.write("\r\x1b[2K" + self.text() + ("\n" if final else ""))
        self.stream.flush()


class LogProgress(Progress):
    """Logs a progress line every ``interval`` seconds, for services and pipes."""

    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        self.interval = interval
        self.last = 0.0

    def start(self, name: str, total: int, total_bytes: int) -> None:
        super().start(name, total, total_bytes)
        self.last = self.started

    def show(self, final: bool) -> None:
        now = self.clock()
        if not final and now - self.last >= self.interval:
            self.last = now
            LOGGER.info("%s", self.text())
