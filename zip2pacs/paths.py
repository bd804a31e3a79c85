"""Path resolution: config-relative paths and Windows paths as WSL sees them."""

from __future__ import annotations

import re
from pathlib import Path

_DRIVE = re.compile(r"^([A-Za-z]):(?:[\\/](.*))?$")


def windows_to_wsl(text: str) -> str | None:
    r"""Return ``/mnt/<drive>/...`` for a Windows path like ``E:\exams\in`` or ``E:/exams/in``; None otherwise."""
    match = _DRIVE.match(text.strip())
    if not match:
        return None
    rest = (match.group(2) or "").replace("\\", "/").strip("/")
    drive = f"/mnt/{match.group(1).lower()}"
    return f"{drive}/{rest}" if rest else drive


def resolve_path(text: str, base: Path) -> Path:
    """Return an absolute path: Windows drive paths map to /mnt/<drive>, relative ones to ``base``."""
    mapped = windows_to_wsl(text)
    if mapped is not None:
        return Path(mapped)
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path)
