"""Find ZIPs in the watch folder, wake early on file events, and decide when a ZIP is completely written."""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

LOGGER = logging.getLogger(__name__)

# Names that copy tools give files still on their way in.
TEMPORARY_NAMES = ("*.partial", "*.tmp", "~$*", "*.crdownload", "*.part", ".*")
# Filesystems where inotify does not see writes made by another machine or by Windows (WSL's /mnt/c).
BLIND_FILESYSTEMS = {"9p", "drvfs", "cifs", "smb3", "smbfs", "nfs", "nfs4", "fuse.sshfs", "virtiofs", "vboxsf"}


@dataclass(frozen=True)
class ReadyZip:
    path: Path
    size: int
    mtime: float
    device: int = 0
    inode: int = 0
    mtime_ns: int = 0

    @property
    def identity(self) -> str:
        """Return ``device:inode:size:mtime_ns``: a file replaced under the same name has another identity."""
        return f"{self.device}:{self.inode}:{self.size}:{self.mtime_ns or round(self.mtime * 1e9)}"


def is_candidate(name: str) -> bool:
    """Return True for a ``*.zip`` name (any case) that is not a copy tool's temporary name."""
    lower = name.lower()
    return lower.endswith(".zip") and not any(fnmatch.fnmatch(lower, p) for p in TEMPORARY_NAMES)


def list_zips(watch_dir: Path) -> list[ReadyZip]:
    """Return the ZIP files directly in ``watch_dir``, oldest first."""
    found = []
    try:
        entries = list(os.scandir(watch_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not is_candidate(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # vanished between listing and stat
        found.append(ReadyZip(Path(entry.path), st.st_size, st.st_mtime, st.st_dev, st.st_ino, st.st_mtime_ns))
    return sorted(found, key=lambda z: (z.mtime, z.path.name))


class StabilityTracker:
    """Say a ZIP is complete once its size and mtime have not changed for ``wait_seconds``.

    Windows Explorer sets the final size before the bytes arrive, so size alone proves nothing.
    """

    def __init__(self, wait_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.wait_seconds = wait_seconds
        self.clock = clock
        self._seen: dict[Path, tuple[str, float]] = {}  # path -> (identity, unchanged since)

    def stable(self, zips: Iterable[ReadyZip]) -> list[ReadyZip]:
        """Observe ``zips`` now and return those unchanged for long enough."""
        now = self.clock()
        ready, present = [], set()
        for z in zips:
            present.add(z.path)
            previous = self._seen.get(z.path)
            if previous is None or previous[0] != z.identity:
                self._seen[z.path] = (z.identity, now)
                if self.wait_seconds > 0:
                    continue
            if now - self._seen[z.path][1] >= self.wait_seconds:
                ready.append(z)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return ready

    def seconds_to_next(self) -> float | None:
        """Return how long until the next ZIP still settling could be stable, or None when none is settling."""
        now = self.clock()
        left = [since + self.wait_seconds - now for _, since in self._seen.values()]
        left = [s for s in left if s > 0]
        return min(left) if left else None


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """Return (mount point, filesystem type) pairs from /proc/self/mountinfo text."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        mounts.append((point, right.split()[0]))
    return mounts


def filesystem_type(path: Path, mountinfo: str) -> str:
    """Return the filesystem type of the mount holding ``path`` (the longest matching mount point)."""
    target = str(path.resolve())
    best, fstype = "", "unknown"
    for point, kind in parse_mountinfo(mountinfo):
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, kind
    return fstype


def choose_observer(path: Path, mode: str, mountinfo: str | None = None) -> tuple[str, str]:
    """Return ("native" | "polling", why) for watching ``path`` with ``mode`` auto | native | polling."""
    if mode in ("native", "polling"):
        return mode, f"behavior.observer is {mode}"
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return "polling", "cannot read /proc/self/mountinfo"
    fstype = filesystem_type(path, mountinfo)
    if fstype in BLIND_FILESYSTEMS:
        return "polling", f"{path} is on {fstype}, where inotify misses writes from Windows or other hosts"
    return "native", f"{path} is on {fstype}"


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event):
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        names = [getattr(event, "dest_path", ""), event.src_path]
        if any(is_candidate(os.path.basename(os.fsdecode(n))) for n in names if n):
            self.event.set()


def start_observer(
    watch_dir: Path, wake: threading.Event, mode: str = "auto", poll_seconds: float = 2.0
) -> BaseObserver:
    """Start a watchdog observer that sets ``wake`` when a ZIP appears or changes; the rescan stays the truth."""
    kind, why = choose_observer(watch_dir, mode)
    observer: BaseObserver = PollingObserver(timeout=poll_seconds) if kind == "polling" else Observer()
    observer.schedule(_Wake(wake), str(watch_dir), recursive=False)
    observer.daemon = True
    observer.start()
    LOGGER.info("Watching %s with the %s observer (%s)", watch_dir, kind, why)
    return observer
