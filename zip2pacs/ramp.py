"""How many associations send one ZIP: one to start, twice as many while that raised the rate, up to a cap.

A C-STORE waits at least one round trip for its response, so to a PACS far away one association leaves the
link idle most of the time; several associations keep several C-STOREs in flight. The ramp doubles the
associations (1, 2, 4, 8 ...) while each step raised the rate by ``GAIN``; it stops at the first step that did
not, at the cap, or when the peer refuses or queues a further association. It only ramps while batches wait
for a sender, so a ZIP of a few files never opens more than one association.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

GAIN = 1.15  # a step must raise the rate by 15% to be worth the next one
SETTLE_SECONDS = 0.25  # the rate is judged over at least this long after a step ...
SETTLE_RESULTS = 8  # ... and this many C-STORE results


class Ramp:
    """Decide when more associations should send; thread-safe."""

    def __init__(self, cap: int, clock: Callable[[], float] = time.monotonic):
        self.cap, self.clock = cap, clock
        self.size = 1
        self.closed = cap <= 1
        self.why = "" if cap > 1 else "dicom.max_associations is 1"
        self._lock = threading.Lock()
        self._since = clock()
        self._done_at_change = 0
        self._rate_before: float | None = None  # instances per second before the last step
        self._opening = 0  # associations started and not accepted yet: nothing to judge meanwhile

    def more(self, done: int, backlog: bool) -> int:
        """Return how many associations to start now (counted as started); ``done``: results so far."""
        with self._lock:
            if self.closed or self._opening or not backlog:
                return 0
            elapsed, got = self.clock() - self._since, done - self._done_at_change
            if elapsed < SETTLE_SECONDS or got < SETTLE_RESULTS:
                return 0
            rate = got / elapsed
            if self._rate_before is not None and rate < self._rate_before * GAIN:
                self.closed, self.why = True, f"going to {self.size} associations did not raise the rate"
                return 0
            step = min(self.size, self.cap - self.size)
            self._rate_before, self._since, self._done_at_change = rate, self.clock(), done
            self.size += step
            self._opening = step
            if self.size >= self.cap:
                self.closed, self.why = True, f"at dicom.max_associations ({self.cap})"
            return step

    def opened(self, done: int) -> None:
        """One association started by the last step is accepted; once all are, the rate is measured from then."""
        with self._lock:
            self._opening = max(self._opening - 1, 0)
            if not self._opening:
                self._since, self._done_at_change = self.clock(), done

    def refused(self, why: str) -> None:
        """The peer refused, or kept waiting, one association started by the last step: no further step."""
        with self._lock:
            self.size -= 1
            self._opening = max(self._opening - 1, 0)
            self.closed, self.why = True, why
            if not self._opening:
                self._since = self.clock()
