"""Instances waiting for a sender: the extractor adds them, each sender takes its share of what waits.

A sender used to take a whole batch. Over a link with latency a batch of 25 is a second of work for one
association, so the ZIP ended with one or two associations busy and the rest idle. A share is what waits
divided by the senders there are (and the ones the ramp may still add), at most a batch: the senders end
together, and one association alone still takes whole batches.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from .sniff import Instance


class Backlog:
    """A bounded queue of instances, taken in shares; thread-safe."""

    def __init__(self, limit: int, batch: int):
        self.limit, self.batch = max(limit, batch), batch  # limit: most instances waiting before put() waits
        self._items: deque[Instance] = deque()
        self._cond = threading.Condition()
        self._closed = False  # no more instances will come

    def __len__(self) -> int:
        return len(self._items)

    def put(self, instances: list[Instance], timeout: float) -> bool:
        """Add the instances once there is room; return False when there was none within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._items) >= self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._items.extend(instances)
            self._cond.notify_all()
        return True

    def close(self) -> None:
        """No more instances will come: take() returns None once the backlog is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def give_back(self, instances: list[Instance]) -> None:
        """Put back, first in line, instances a sender took and could not send (a STOW-RS request throttled)."""
        with self._cond:
            self._items.extendleft(reversed(instances))
            self._cond.notify_all()

    def waiting(self) -> bool:
        """Return True when at least a batch waits: less is not worth a further association's round trips."""
        return len(self._items) >= self.batch

    def take(self, senders: int, least: int = 1) -> list[Instance] | None:
        """Return this sender's share among ``senders``, once ``least`` wait; None once all was taken.

        ``least`` above 1 makes a sender wait for a whole batch while the extraction goes on (STOW-RS: one
        request carries many instances); once it is over, what is left is shared like any backlog.
        """
        with self._cond:
            while len(self._items) < least and not self._closed:
                self._cond.wait()
            if not self._items:
                return None
            floor = 1 if self._closed else least
            share = min(self.batch, max(floor, math.ceil(len(self._items) / max(senders, 1))))
            taken = [self._items.popleft() for _ in range(min(share, len(self._items)))]
            self._cond.notify_all()
            return taken
