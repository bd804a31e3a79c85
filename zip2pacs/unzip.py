"""Safe, streamed ZIP extraction into one work folder.

Every entry name is rebuilt from sanitized components, so nothing can land outside the destination: ``..``,
absolute paths, drive letters and backslashes are neutralised, characters invalid on Windows are replaced, and
names that collide (case-insensitively, as on WSL/Windows file systems) get a ``~N`` suffix. Symbolic links,
devices and FIFOs are skipped. Limits are checked twice: first against the sizes the ZIP declares (to refuse
early, before writing anything), then against the bytes actually written, in case a header lies.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import lzma
import os
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .entrynames import decode_name, safe_parts, shown, suffixed

LOGGER = logging.getLogger(__name__)

CHUNK = 1024 * 1024
RATIO_FLOOR = 1024 * 1024  # small entries compress well legitimately; judge the ratio only beyond this
DISK_CHECK_EVERY = 64 * 1024 * 1024
MAX_PATH_BYTES = 3000  # below PATH_MAX (4096) once dest itself is prepended
SUPPORTED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
METHOD_NAMES = {1: "Shrink", 6: "Implode", 9: "Deflate64", 10: "PKWARE DCL Implode", 93: "Zstandard", 95: "XZ",
                96: "JPEG", 97: "WavPack", 98: "PPMd", 99: "AES encryption"}  # fmt: skip
# Whatever zipfile or a decompressor raises while reading means the ZIP cannot be read as it is; an OSError
# is this machine's (EIO, a file locked or removed) unless it is a seek the ZIP's own offsets made invalid.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, ValueError,
                NotImplementedError, RuntimeError, OverflowError, struct.error)  # fmt: skip
# A name the local file system refuses: the entry is written under a name the watcher makes.
_NAME_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ}


class ArchiveError(Exception):
    """A ZIP that cannot be delivered as it is; ``str(exc)`` is the reason for the operator."""


class UnsafeArchive(ArchiveError):
    """The ZIP tries something dangerous (zip bomb, limits exceeded)."""


class DiskSpaceLow(UnsafeArchive):
    """Extracting the ZIP would leave less free space than allowed; retrying later may succeed."""


class CorruptArchive(ArchiveError):
    """The ZIP cannot be read (no central directory, bad CRC, truncated, encrypted)."""


class UnreadableZip(CorruptArchive):
    """The ZIP does not open or its data do not read back: corrupt, or a copy still under way."""


class LocalError(Exception):
    """This machine failed (disk full, no inodes, I/O error, file locked): no verdict on the ZIP, retried later."""


def local_error(exc: OSError, where: Path, doing: str) -> LocalError:
    """Return a LocalError saying what failed where; a full disk names its free space and inodes."""
    why = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            vfs = os.statvfs(where if where.is_dir() else where.parent)
            why += f"; {vfs.f_bavail * vfs.f_frsize / 1e6:.1f} MB and {vfs.f_favail} inodes free there"
        except OSError:
            pass
    return LocalError(f"cannot {doing} in {where}: {why}")


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
    file: BinaryIO | None = None,
    on_listing: Callable[[int, int], None] | None = None,
) -> Extraction:
    """Extract ``zip_path`` (read from ``file`` when given) into ``dest``, calling ``on_file`` as each file is closed.

    Nested ZIPs are unpacked into ``<name>.contents/`` up to ``limits.nested_zip_depth`` levels; a nested file's
    arcname is ``outer.zip/inner/entry``. Raise UnsafeArchive (or its DiskSpaceLow) when a limit is exceeded
    and CorruptArchive when the ZIP cannot be read; ``dest`` is then removed. Raise LocalError when this
    machine fails (disk full, I/O error): that is no verdict on the ZIP, and what was extracted stays.
    ``on_listing(files, bytes)`` is told each (nested) ZIP's file entries and uncompressed size before extraction.
    """
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise local_error(exc, dest.parent, "create the extraction folder") from exc
    run = _Run(zip_path.name, dest, limits, on_file, on_listing)
    try:
        run.archive(file or zip_path, prefix=(), label="", depth=0)
    except ArchiveError:
        shutil.rmtree(dest, ignore_errors=True)  # a verdict on the ZIP: nothing of it is kept
        raise
    return Extraction(dest, tuple(run.files), tuple(run.skipped))


class _Run:
    """The state of one extraction, shared across nested ZIPs so that limits apply to the total."""

    def __init__(
        self,
        zip_name: str,
        dest: Path,
        limits: Limits,
        on_file: Callable[[ExtractedFile], None] | None,
        on_listing: Callable[[int, int], None] | None = None,
    ):
        self.zip_name, self.dest, self.limits, self.on_file = zip_name, dest, limits, on_file
        self.on_listing = on_listing
        self.real_dest = dest.resolve()
        self.inside: set[Path] = set()  # folders found to resolve inside dest: resolve() walks every component
        self.files: list[ExtractedFile] = []
        self.skipped: list[tuple[str, str]] = []
        self.entries = 0
        self.written = 0
        self.next_disk_check = DISK_CHECK_EVERY
        self.taken: dict[str, tuple[bool, str]] = {}  # casefolded relative path -> (is_dir, name on disk)
        self.renamed = 0

    def archive(self, path: Path | BinaryIO, prefix: tuple[str, ...], label: str, depth: int) -> None:
        subject = f"nested ZIP {shown(label[:-1])}" if label else "the ZIP"
        try:
            zf = zipfile.ZipFile(path)
        except _READ_ERRORS as exc:
            raise UnreadableZip(f"{subject} is not a readable ZIP: {exc}") from exc
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a seek to an offset the ZIP's own records made invalid
                raise UnreadableZip(f"{subject} is not a readable ZIP: {exc}") from exc
            raise local_error(exc, self.dest, f"read {subject} (for {self.zip_name})") from exc
        with zf:
            infos = zf.infolist()
            self.check_declared(infos, label, subject)
            if self.on_listing is not None:
                files = [i for i in infos if not (i.filename.endswith("/") or stat.S_ISDIR(i.external_attr >> 16))]
                self.on_listing(len(files), sum(i.file_size for i in files))
            for info in infos:
                self.entry(zf, info, prefix, label + decode_name(info), depth)

    def check_declared(self, infos: list[zipfile.ZipInfo], label: str, subject: str) -> None:
        self.entries += len(infos)
        if self.entries > self.limits.max_entries:
            raise UnsafeArchive(f"{self.entries} entries, more than the limit of {self.limits.max_entries}")
        for info in infos:
            name = label + decode_name(info)
            if info.flag_bits & 0x1:
                raise CorruptArchive(f"entry {shown(name)} is encrypted (password-protected ZIPs are not supported)")
            if info.compress_type not in SUPPORTED_METHODS:
                method = METHOD_NAMES.get(info.compress_type, "unknown")
                raise CorruptArchive(
                    f"entry {shown(name)} uses compression method {info.compress_type} ({method}), which is not supported"
                )
            self.check_sizes(f"entry {shown(name)}", self.written, info.file_size, info.compress_size, "declares")
        declared = sum(info.file_size for info in infos)
        self.check_sizes(subject, self.written + declared, 0, 0, "declares")
        self.check_disk(declared)

    def check_sizes(self, subject: str, total: int, size: int, compressed: int, verb: str) -> None:
        if total + size > self.limits.max_total_bytes:
            raise UnsafeArchive(
                f"{subject} {verb} more than the limit of {self.limits.max_total_bytes} bytes in total (zip bomb?)"
            )
        if size > RATIO_FLOOR and size > self.limits.max_ratio * max(compressed, 1):
            raise UnsafeArchive(
                f"{subject} {verb} {size} bytes from {compressed} compressed, a ratio above "
                f"{self.limits.max_ratio} (zip bomb?)"
            )

    def check_disk(self, coming: int) -> None:
        try:
            free = shutil.disk_usage(self.dest).free
        except OSError as exc:
            raise local_error(exc, self.dest, "read the free space") from exc
        if free - coming < self.limits.min_free_bytes:
            raise DiskSpaceLow(
                f"{free} bytes free at {self.dest}, {coming} more needed, "
                f"but {self.limits.min_free_bytes} must stay free"
            )

    def resolves_inside(self, folder: Path) -> bool:
        """Return True when ``folder`` resolves inside dest (not so only if dest already held a symlink)."""
        if folder in self.inside:
            return True  # a CD's 500 slices share a folder: an lstat per component each was 8% of the CPU
        if not folder.resolve().is_relative_to(self.real_dest):
            return False
        self.inside.add(folder)
        return True

    def skip(self, arcname: str, reason: str) -> None:
        LOGGER.debug("%s: entry %s skipped: %s", self.zip_name, shown(arcname), reason)  # the pipeline warns
        self.skipped.append((arcname, reason))

    def entry(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, prefix: tuple[str, ...], arc: str, depth: int) -> None:
        mode = info.external_attr >> 16
        if info.filename.endswith("/") or stat.S_ISDIR(mode):  # is_dir() fails on an empty name
            return  # folders are created as the files inside them need them
        if stat.S_ISLNK(mode):
            return self.skip(arc, "symbolic link (links are never extracted)")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            return self.skip(arc, "special file (device, FIFO or socket)")
        parts = safe_parts(decode_name(info))
        rel = self.place(prefix + parts) if parts else self.made_name(prefix)
        path = self.dest.joinpath(*rel)
        if len(str(path).encode()) > MAX_PATH_BYTES:
            rel = self.made_name(prefix)  # detection is by content: no instance is lost to its name
            path = self.dest.joinpath(*rel)
        if not self.resolves_inside(path.parent):
            return self.skip(arc, "folder resolves outside the extraction folder")
        try:
            out = self.create(path)
        except OSError as exc:
            if exc.errno not in _NAME_ERRNOS:
                raise local_error(exc, path.parent, f"create {shown(arc)}") from exc
            LOGGER.debug("%s: entry %s: name refused (%s); written under a made name", self.zip_name, shown(arc), exc)
            rel = self.made_name(prefix)
            path = self.dest.joinpath(*rel)
            try:
                out = self.create(path)
            except OSError as again:
                raise local_error(again, path.parent, f"create {shown(arc)}") from again
        size, digest = self.copy(zf, info, out, path, arc)
        extracted = ExtractedFile(path, arc, size, digest)
        if info.filename.casefold().endswith(".zip") and depth < self.limits.nested_zip_depth:
            contents = self.place(rel[:-1] + (rel[-1] + ".contents",), as_dir=True)
            try:
                self.archive(path, contents, arc + "/", depth + 1)
            except CorruptArchive as exc:  # kept as a file: detection, by content, has the last word on it
                LOGGER.debug("%s: nested ZIP %s could not be read, kept as a file: %s", self.zip_name, shown(arc), exc)
            else:
                path.unlink()
                return None
        self.files.append(extracted)
        if self.on_file is not None:
            self.on_file(extracted)
        return None

    def create(self, path: Path) -> BinaryIO:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "xb")  # noqa: SIM115 - "x" never overwrites; copy() closes it

    def made_name(self, prefix: tuple[str, ...]) -> tuple[str, ...]:
        """Return a short name of the watcher's own for an entry whose name the file system cannot hold."""
        self.renamed += 1
        return self.place(prefix + (f"~entry{self.renamed:06d}",))

    def copy(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: BinaryIO, path: Path, arc: str) -> tuple[int, str]:
        digest, size, subject = hashlib.sha256(), 0, f"entry {shown(arc)}"
        try:
            with out:
                try:
                    src = zf.open(info)
                except _READ_ERRORS as exc:
                    raise CorruptArchive(f"{subject} cannot be read: {exc}") from exc
                with src:
                    while True:
                        try:
                            chunk = src.read(CHUNK)
                        except _READ_ERRORS as exc:
                            raise CorruptArchive(f"{subject} cannot be read: {exc}") from exc
                        if not chunk:
                            break
                        size += len(chunk)
                        self.written += len(chunk)
                        self.check_sizes(subject, self.written - size, size, info.compress_size, "expands to")
                        if self.written >= self.next_disk_check:
                            self.next_disk_check += DISK_CHECK_EVERY
                            self.check_disk(0)
                        try:
                            out.write(chunk)
                        except OSError as exc:
                            raise local_error(exc, path.parent, f"write {subject}") from exc
                        digest.update(chunk)
        except OSError as exc:  # closing (flushing) the file failed
            path.unlink(missing_ok=True)
            raise local_error(exc, path.parent, f"write {subject}") from exc
        except BaseException:
            path.unlink(missing_ok=True)  # a nested ZIP may fail alone; leave no partial file behind
            raise
        return size, digest.hexdigest()

    def place(self, parts: tuple[str, ...], as_dir: bool = False) -> tuple[str, ...]:
        """Return ``parts`` made unique, case-insensitively, among everything placed so far."""
        placed: list[str] = []
        for i, part in enumerate(parts):
            want_dir = as_dir or i < len(parts) - 1
            n = 0
            while True:
                name = part if n == 0 else suffixed(part, n)
                key = "/".join([*placed, name]).casefold()
                held = self.taken.get(key)
                if held is None:
                    self.taken[key] = (want_dir, name)
                    break
                if want_dir and held[0]:
                    name = held[1]  # reuse the folder under the spelling it already has on disk
                    break
                n += 1
            placed.append(name)
        return tuple(placed)
