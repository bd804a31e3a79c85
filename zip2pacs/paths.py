"""Paths in the configuration: config-relative and Windows paths as WSL sees them, and folders that must not meet."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
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


def _kind_problem(key: str, path: Path, folder_keys: tuple[str, ...]) -> str | None:
    """Return a problem when a folder key names a file, or a file key a folder, or either lies under a file."""
    folder = key in folder_keys
    try:
        if path.exists() and path.is_dir() != folder:
            return f"At '{key}': expected a {'folder' if folder else 'file'}, got the {'file' if folder else 'folder'} {path}"
        above = next((p for p in path.parents if p.exists()), None)
    except OSError:  # unreadable: creating or opening it will say why
        return None
    if above is not None and not above.is_dir():
        return f"At '{key}': expected a {'folder' if folder else 'file'}, got {path}, under the file {above}"
    return None


def layout_problems(values: Mapping[str, Path], folder_keys: tuple[str, ...], file_keys: tuple[str, ...]) -> list[str]:
    """Return a problem for each path of the wrong kind and each folder that is or lies inside another one."""
    keys = folder_keys + file_keys  # folders first, so a folder is only ever compared with folders
    problems = [p for key in keys if (p := _kind_problem(key, values[key], folder_keys))]
    # Symlinks, '..' and Windows drive paths all resolve to what the program will really use.
    real = {key: Path(os.path.realpath(values[key])) for key in keys}
    for i, key in enumerate(keys):
        for other in keys[:i]:
            kind = "file" if key in file_keys else "folder"
            if real[key] == real[other]:
                same = f"the same {kind}" if (key in file_keys) == (other in file_keys) else "the same path"
                problems.append(f"At '{key}': expected a {kind} apart from {other}, got {values[key]}, {same}")
            elif key in folder_keys and real[key].is_relative_to(real[other]):
                problems.append(f"At '{key}': expected a folder apart from {other}, got {values[key]}, inside it")
            elif key in folder_keys and real[other].is_relative_to(real[key]):
                problems.append(f"At '{other}': expected a folder apart from {key}, got {values[other]}, inside it")
    return problems
