"""Moving ZIPs out of the watch folder: atomic, never overwriting, never deleting."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO


def identity_of(st: os.stat_result) -> str:
    """Return ``device:inode:size:mtime_ns``: a file replaced under the same name has another identity."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def unique_target(folder: Path, name: str) -> Path:
    """Return ``folder/name``, or ``folder/stem-N.suffix`` for the first N that does not exist."""
    target = folder / name
    stem, suffix = os.path.splitext(name)
    n = 1
    while target.exists() or target.with_name(target.name + ".error.json").exists():
        target = folder / f"{stem}-{n}{suffix}"
        n += 1
    return target


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems (DrvFs) cannot open folders; the rename is still done
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move_unique(src: Path, folder: Path) -> Path:
    """Move ``src`` into ``folder`` under a name that exists nowhere there yet; return the new path.

    Same filesystem: one rename. Across filesystems: copy to a hidden name, fsync, rename, then
    delete the source, so a crash leaves at worst two copies, never none.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = unique_target(folder, src.name)
    try:
        os.rename(src, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with open(src, "rb") as fin:
            _copy_in(fin, target)
        shutil.copystat(src, target)
        os.unlink(src)
        return target
    _fsync_dir(folder)
    return target


def _copy_in(source: BinaryIO, target: Path) -> None:
    """Copy ``source`` from its start to ``target`` through a hidden name, fsynced, so no half file is seen."""
    temp = target.with_name(f".{target.name}.copying")
    source.seek(0)
    with open(temp, "wb") as out:
        shutil.copyfileobj(source, out, 1024 * 1024)
        out.flush()
        os.fsync(out.fileno())
    os.rename(temp, target)
    _fsync_dir(target.parent)


def move_claimed(src: Path, held: BinaryIO, identity: str, folder: Path) -> tuple[Path, bool]:
    """Move the file claimed as ``held`` (with ``identity``) from ``src`` into ``folder``; return (new path, moved).

    When another file now has the name ``src`` (replaced while it was delivered), that file is left where it
    is, a new ZIP for the watcher, and the claimed bytes are copied from ``held`` instead (moved is False).
    """
    try:
        current = identity_of(os.stat(src))
    except FileNotFoundError:
        current = ""
    if current == identity:
        try:
            target = move_unique(src, folder)
        except PermissionError:  # a file system that will not rename an open file (DrvFs can be one)
            held.close()
            target = move_unique(src, folder)
        try:
            device, inode = identity_of(os.stat(target)).split(":")[:2]
        except FileNotFoundError:
            device, inode = "", ""
        # A rename keeps device and inode; a copy across file systems lands on another device.
        if device != identity.split(":")[0] or inode == identity.split(":")[1]:
            return target, True
        # Replaced between the check and the rename: put the newcomer back, keep our bytes below.
        if target.exists() and not src.exists():
            os.rename(target, src)
    folder.mkdir(parents=True, exist_ok=True)
    target = unique_target(folder, src.name)
    _copy_in(held, target)
    return target, False


def write_reason(zip_target: Path, reason: dict[str, Any]) -> Path:
    """Write ``NAME.zip.error.json`` beside a quarantined ZIP and return its path."""
    path = zip_target.with_name(zip_target.name + ".error.json")
    temp = path.with_name("." + path.name + ".tmp")
    temp.write_text(json.dumps(reason, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp, path)
    return path
