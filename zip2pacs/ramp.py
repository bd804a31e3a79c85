"""How many associations send one ZIP: one to start, more while that raised the rate, fewer when it did not.

A C-STORE waits at least one round trip for its response, so to a PACS far away one association leaves the
link idle most of the time; several associations keep several C-STOREs in flight. The ramp doubles the
associations (1, 2, 4, 8 ...) while each step raised the rate by ``GAIN``, and quadruples them after a step
that nearly doubled it (``STRONG``: the link, not the peer, is what limits). The first step that did not
raise the rate is undone: the associations it added leave after their current share. The ramp also stops at
the cap, or when the peer refuses or queues a further association. It only ramps while instances wait for a
sender, so a ZIP of a few files never opens more than one association.

A STOW-RS destination uses the same ramp for its requests in flight, but starts at its cap (``max_requests``)
as soon as batches wait: an HTTP server is built to serve several requests at once, and one request's results
come in a burst that a rate measured over a few requests would misjudge. A request the server throttles takes
one sender away for the rest of the ZIP; the next ZIP starts at what was left (Learned), and goes up from
there as associations do, while a step raises the rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

GAIN = 1.15  # a step must raise the rate by 15% to be kept
STRONG = 1.6  # a doubling that raised the rate this much: the next step quadruples
SETTLE_SECONDS = 0.15  # the rate is judged over at least this long after a step ...
SETTLE_RESULTS = 8  # ... and this many C-STORE results (2 per association when there are more)
FIRST_RESULTS = 4  # the first step only needs a rate to compare the next with


class Ramp:
    """Decide when more associations should send; thread-safe."""

    def __init__(
        self,
        cap: int,
        clock: Callable[[], float] = time.monotonic,
        start: int = 1,
        unit: str = "associations",
        cap_key: str = "dicom.max_associations",
    ):
        self.cap, self.clock = cap, clock
        self.unit, self.cap_key = unit, cap_key  # for messages: what is counted, and the key that caps it
        self.size = 1
        self._start = min(max(start, 1), cap)  # what the last ZIP to this destination settled on (Learned)
        self.closed = cap <= 1
        self.why = "" if cap > 1 else f"{cap_key} is 1"
        self._lock = threading.Lock()
        self._since = clock()
        self._done_at_change = 0
        self._rate_before: float | None = None  # instances per second before the last step
        self._size_before = 1
        self._opening = 0  # associations started and not accepted yet: nothing to judge meanwhile
        self._leaving = 0  # associations asked to leave after their current share

    def more(self, done: int, backlog: bool) -> int:
        """Return how many associations to start now (counted as started); ``done``: results so far."""
        with self._lock:
            if self.closed or self._opening or not backlog:
                return 0
            if self._start > self.size:  # straight to what served the last ZIP; judged from there
                step, self._start = self._start - self.size, 0
                self.size += step
                self._opening = step
                return step
            elapsed, got = self.clock() - self._since, done - self._done_at_change
            needed = FIRST_RESULTS if self._rate_before is None else max(SETTLE_RESULTS, 2 * self.size)
            if elapsed < SETTLE_SECONDS or got < needed:
                return 0
            rate = got / elapsed
            if self._rate_before is not None and rate < self._rate_before * GAIN:
                self._undo(rate)
                return 0
            if self.size >= self.cap:
                self.closed, self.why = True, f"at {self.cap_key} ({self.cap})"
                return 0
            strong = self._rate_before is not None and rate >= self._rate_before * STRONG
            step = min(self.size * (3 if strong else 1), self.cap - self.size)
            self._rate_before, self._size_before = rate, self.size
            self._since, self._done_at_change = self.clock(), done
            self.size += step
            self._opening = step
            return step

    def _undo(self, rate: float) -> None:
        """The last step did not raise the rate: back to the size before it, for good."""
        added = self.size - self._size_before
        self._leaving += added
        self.closed = True
        self.why = f"going from {self._size_before} to {self.size} {self.unit} did not raise the rate"
        self.size = self._size_before
        if added:
            self.why += f"; back to {self.size}"

    def leave(self) -> bool:
        """Return True when the calling sender should release its association: the ramp went back."""
        with self._lock:
            if not self._leaving:
                return False
            self._leaving -= 1
            return True

    def senders(self) -> int:
        """Return how many senders share the backlog: those there are, and those the next step may add."""
        with self._lock:
            return self.size if self.closed else min(2 * self.size, self.cap)

    def opened(self, done: int) -> None:
        """One association started by the last step is accepted; once all are, the rate is measured from then."""
        with self._lock:
            self._opening = max(self._opening - 1, 0)
            if not self._opening:
                self._since, self._done_at_change = self.clock(), done

    def refused(self, why: str) -> None:
        """One sender fewer, and no further step: the peer refused, or kept waiting, an association the last step
        started; or a STOW-RS server throttled (429/503) one of several requests in flight."""
        with self._lock:
            self.size -= 1
            self._opening = max(self._opening - 1, 0)
            self.closed, self.why = True, why
            if not self._opening:
                self._since = self.clock()


class Learned:
    """What this process learnt of each destination: how many associations its last ZIP settled on.

    The next ZIP to it starts there instead of at one; the ramp still goes up from there, and undoes a step
    that did not help, but never goes below it. A ZIP whose ramp never had to decide teaches nothing.
    """

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, key: str, first: int = 1) -> int:
        """Return how many senders a ZIP to ``key`` starts with once instances wait; ``first`` when nothing was learnt."""
        with self._lock:
            return self._sizes.get(key, first)

    def settle(self, key: str, ramp: Ramp) -> None:
        """Remember where the ramp of a ZIP to ``key`` settled, when it settled."""
        if ramp.closed and ramp.cap > 1:
            with self._lock:
                self._sizes[key] = ramp.size
