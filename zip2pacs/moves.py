"""Moving ZIPs out of the watch folder: atomic, never overwriting, never deleting."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any


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
        temp = folder / f".{target.name}.copying"
        with open(src, "rb") as fin, open(temp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, temp)
        os.rename(temp, target)
        _fsync_dir(folder)
        os.unlink(src)
        return target
    _fsync_dir(folder)
    return target


def write_reason(zip_target: Path, reason: dict[str, Any]) -> Path:
    """Write ``NAME.zip.error.json`` beside a quarantined ZIP and return its path."""
    path = zip_target.with_name(zip_target.name + ".error.json")
    temp = path.with_name("." + path.name + ".tmp")
    temp.write_text(json.dumps(reason, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp, path)
    return path
