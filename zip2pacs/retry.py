"""Trying again: the back-off between attempts, and sending failed ZIPs round again."""

from __future__ import annotations

from pathlib import Path

from .config import Config
from .intake import is_candidate
from .moves import move_unique

MAX_DOUBLINGS = 40  # 2**40 times any base is past every sensible retry_max_seconds; no float overflow after


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Return the wait after the ``attempts``-th attempt failed: ``base`` doubled each time, at most ``cap``."""
    doublings = min(max(attempts - 1, 0), MAX_DOUBLINGS)
    return min(base * 2.0**doublings, cap)


def retry_failed(config: Config) -> list[Path]:
    """Move every ZIP in failed_dir back to the watch folder; return their new paths."""
    moved = []
    for path in sorted(config.failed_dir.iterdir()):
        if path.is_file() and is_candidate(path.name):
            moved.append(move_unique(path, config.watch_dir))
    return moved
