"""Trying again: the back-off between attempts, and sending failed ZIPs round again."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .intake import is_candidate
from .moves import move_unique

MAX_DOUBLINGS = 40  # 2**40 times any base is past every sensible retry_max_seconds; no float overflow after

# Reasons a ZIP's own bytes give (see unzip.py and pipeline.py): the same ZIP would fail again for them.
FINAL_REASONS = ("CorruptArchive:", "UnreadableZip:", "UnsafeArchive:", "no DICOM instance in the ZIP")
RETRIED_DIR = "retried"  # under failed_dir: the reason files of ZIPs sent back, kept for their history


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Return the wait after the ``attempts``-th attempt failed: ``base`` doubled each time, at most ``cap``."""
    doublings = min(max(attempts - 1, 0), MAX_DOUBLINGS)
    return min(base * 2.0**doublings, cap)


@dataclass(frozen=True)
class FailedZip:
    """A ZIP in failed_dir: ``name`` is the one it came under, ``reason`` what its reason file says."""

    path: Path
    name: str
    reason: str

    @property
    def reason_file(self) -> Path:
        return self.path.with_name(self.path.name + ".error.json")

    @property
    def final(self) -> bool:
        """True when it failed for what its bytes are (not a ZIP, unsafe, encrypted, no DICOM): it would again."""
        return self.reason.startswith(FINAL_REASONS)


@dataclass(frozen=True)
class RetryPlan:
    move: list[FailedZip]
    keep: list[FailedZip]  # failed for a reason that cannot change, and not asked for by name


def failed_zip(path: Path) -> FailedZip:
    """Return what the ZIP's reason file says about it; without one, its name and no reason."""
    try:
        reason = json.loads(path.with_name(path.name + ".error.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return FailedZip(path, path.name, "")
    if not isinstance(reason, dict):
        return FailedZip(path, path.name, "")
    came_as = Path(str(reason.get("zip") or path.name)).name
    return FailedZip(path, came_as if is_candidate(came_as) else path.name, str(reason.get("reason") or ""))


def plan_retry(config: Config, names: Sequence[str] = ()) -> RetryPlan:
    """Return the ZIPs to move back: those named, or all but those whose failure cannot change.

    Raise FileNotFoundError for a name that is no ZIP in failed_dir.
    """
    folder = config.failed_dir
    present = sorted(p for p in folder.iterdir() if p.is_file() and is_candidate(p.name)) if folder.is_dir() else []
    # Those that bear the name they came with go first: they keep it, and a renamed twin stays renamed.
    items = sorted((failed_zip(p) for p in present), key=lambda i: (i.path.name != i.name, i.path.name))
    if names:
        by_name = {item.path.name: item for item in items}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise FileNotFoundError(f"no such ZIP in {config.failed_dir}: {', '.join(missing)}")
        return RetryPlan([by_name[n] for n in dict.fromkeys(names)], [])
    return RetryPlan([i for i in items if not i.final], [i for i in items if i.final])


def move_back(config: Config, item: FailedZip) -> Path:
    """Move a failed ZIP to the watch folder, under the name it came with when that is free; return its path.

    Its reason file goes to ``failed_dir/retried/`` (named after the ZIP and the time it failed), so the
    watch folder holds only ZIPs and no reason is lost; the ledger keeps the ZIP's attempts and history.
    """
    target = move_unique(item.path, config.watch_dir)
    wanted = config.watch_dir / item.name
    if target != wanted and not wanted.exists():  # a -N that move_unique added when it went to failed_dir
        os.rename(target, wanted)  # same folder: atomic
        target = wanted
    if item.reason_file.exists():
        _keep_reason(config, item)
    return target


def _keep_reason(config: Config, item: FailedZip) -> Path:
    folder = config.failed_dir / RETRIED_DIR
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(item.reason_file.stat().st_mtime))
    target, n = folder / f"{item.name}.{stamp}.error.json", 1
    while target.exists():
        n += 1
        target = folder / f"{item.name}.{stamp}-{n}.error.json"
    os.rename(item.reason_file, target)
    return target


def retry_failed(config: Config, names: Sequence[str] = ()) -> list[Path]:
    """Move failed ZIPs back to the watch folder as plan_retry() says; return their new paths."""
    return [move_back(config, item) for item in plan_retry(config, names).move]
