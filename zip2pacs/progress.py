"""Progress of one ZIP's sending: a live line on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import threading
import time
from typing import TextIO

LOGGER = logging.getLogger(__name__)


class Progress:
    """Counts instances sent for one ZIP; subclasses decide how to show it. This base shows nothing."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()  # several sender threads report
        self.name, self.total, self.total_bytes = "", 0, 0
        self.done, self.done_bytes, self.started = 0, 0, 0.0

    def start(self, name: str, total: int, total_bytes: int) -> None:
        self.name, self.total, self.total_bytes = name, total, total_bytes
        self.done, self.done_bytes, self.started = 0, 0, self.clock()

    def grow(self, files: int, nbytes: int) -> None:
        """Add to the total: instances are found while the ZIP is still being extracted."""
        with self.lock:
            self.total += files
            self.total_bytes += nbytes

    def update(self, files: int, nbytes: int) -> None:
        with self.lock:
            self.done += files
            self.done_bytes += nbytes
            self.show(final=False)

    def finish(self) -> None:
        if self.total:
            self.show(final=True)

    def text(self) -> str:
        """Return ``NAME: sent/total (pct) MB/s ETA``."""
        elapsed = max(self.clock() - self.started, 1e-6)
        rate = self.done_bytes / elapsed / 1e6
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = (self.total - self.done) * elapsed / self.done if self.done else 0.0
        return f"{self.name}: {self.done}/{self.total} instances ({pct:.0f}%), {rate:.1f} MB/s, ETA {left:.0f} s"

    def show(self, final: bool) -> None:
        pass


class TerminalProgress(Progress):
    """Rewrites one line on a terminal, at most a few times a second."""

    def __init__(self, stream: TextIO, clock=time.monotonic):
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

    def __init__(self, interval: float = 30.0, clock=time.monotonic):
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
