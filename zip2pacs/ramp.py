"""How many associations send one ZIP: one to start, one more while each addition raised the rate, up to a cap.

A C-STORE waits at least one round trip for its response, so to a PACS far away one association leaves the
link idle most of the time; several associations keep several C-STOREs in flight. Each addition is judged by
the rate it brought: the ramp stops at the first one that did not raise the rate by ``GAIN``, at the cap, or
when the peer refuses or queues a further association. It only ramps while batches wait for a sender, so a ZIP
of a few files never opens more than one association.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

GAIN = 1.15  # an addition must raise the rate by 15% to be worth the next one
SETTLE_SECONDS = 1.0  # the rate is judged over at least this long after a change ...
SETTLE_RESULTS = 8  # ... and this many C-STORE results


class Ramp:
    """Decide when one more association should send; thread-safe."""

    def __init__(self, cap: int, clock: Callable[[], float] = time.monotonic):
        self.cap, self.clock = cap, clock
        self.size = 1
        self.closed = cap <= 1
        self.why = "" if cap > 1 else "dicom.max_associations is 1"
        self._lock = threading.Lock()
        self._since = clock()
        self._done_at_change = 0
        self._rate_before: float | None = None  # instances per second with one association fewer
        self._opening = False  # the association last started is not accepted yet: nothing to judge

    def want_more(self, done: int, backlog: bool) -> bool:
        """Return True when one more association should start (count it as started); ``done``: results so far."""
        with self._lock:
            if self.closed or self._opening or not backlog:
                return False
            elapsed, got = self.clock() - self._since, done - self._done_at_change
            if elapsed < SETTLE_SECONDS or got < SETTLE_RESULTS:
                return False
            rate = got / elapsed
            if self._rate_before is not None and rate < self._rate_before * GAIN:
                self.closed, self.why = True, f"association {self.size} did not raise the rate"
                return False
            self._rate_before, self._since, self._done_at_change = rate, self.clock(), done
            self.size += 1
            self._opening = True
            if self.size >= self.cap:
                self.closed, self.why = True, f"at dicom.max_associations ({self.cap})"
            return True

    def opened(self, done: int) -> None:
        """The association last started is accepted: its rate is measured from now."""
        with self._lock:
            self._opening, self._since, self._done_at_change = False, self.clock(), done

    def refused(self, why: str) -> None:
        """The peer refused, or kept waiting, the association last started: stay at one fewer."""
        with self._lock:
            self.size -= 1
            self._opening = False
            self.closed, self.why = True, why
