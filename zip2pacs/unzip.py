"""Safe, streamed ZIP extraction into one work folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ArchiveError(Exception):
    """A ZIP that cannot be delivered as it is; ``str(exc)`` is the reason for the operator."""


class UnsafeArchive(ArchiveError):
    """The ZIP tries something dangerous (zip bomb, limits exceeded)."""


class CorruptArchive(ArchiveError):
    """The ZIP cannot be read (no central directory, bad CRC, truncated, encrypted)."""


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int = 50 * 1024**3
    max_entries: int = 200_000
    max_ratio: int = 1000
    min_free_bytes: int = 1024**3
    nested_zip_depth: int = 1


@dataclass(frozen=True)
class ExtractedFile:
    path: Path  # where the bytes are now, inside the extraction folder
    arcname: str  # the entry's name in the ZIP, decoded
    size: int
    sha256: str  # hex digest, computed while streaming


@dataclass(frozen=True)
class Extraction:
    root: Path
    files: tuple[ExtractedFile, ...]
    skipped: tuple[tuple[str, str], ...]  # (arcname, reason)


def extract_zip(
    zip_path: Path,
    dest: Path,
    limits: Limits = Limits(),
    on_file: Callable[[ExtractedFile], None] | None = None,
) -> Extraction:
    """Extract ``zip_path`` into ``dest``; raise UnsafeArchive / CorruptArchive (TO BE WRITTEN)."""
    raise NotImplementedError
