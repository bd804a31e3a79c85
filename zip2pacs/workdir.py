"""Extraction folders under work_dir: one per ZIP file, named so that leftovers of a crash are recognised."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

from .intake import ReadyZip

WORK_FOLDER = re.compile(r".+-[0-9a-f]{12}")


def work_folder(work_dir: Path, z: ReadyZip) -> Path:
    """Return the extraction folder of this ZIP file: its name's stem and a token of its identity."""
    token = hashlib.sha256(f"{z.path.name}|{z.identity}".encode()).hexdigest()[:12]
    return work_dir / f"{Path(z.path.name).stem[:60]}-{token}"


def clean_leftovers(work_dir: Path) -> list[Path]:
    """Remove extraction folders a crashed run left in ``work_dir``; return them. Other files are left alone."""
    removed = []
    for entry in sorted(work_dir.iterdir()) if work_dir.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink() and WORK_FOLDER.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
