"""The start of an attempt at a ZIP: the file claimed (held open), its SHA256 hashed beside extraction, its record."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import BinaryIO

from .intake import ReadyZip
from .ledger import Ledger, ZipRecord, ZipState
from .moves import identity_of

HASH_CHUNK = 1024 * 1024


class ZipChanged(Exception):
    """The file under the ZIP's name is no longer the one that was found stable; it is looked at again later."""


def sha256_fd(fd: int) -> str:
    """Return the hex SHA256 of an open file, read with pread (the file's offset is left to its other reader)."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


class ClaimedZip:
    """A ZIP file held open for its attempt: its bytes stay readable, whatever happens to its name.

    A copy tool may replace ``study.zip`` while it is delivered; extraction and hashing read the held file,
    and ``identity`` says at the end whether the name still holds these bytes (see moves.move_claimed).
    """

    def __init__(self, z: ReadyZip):
        self.path = z.path
        self.file: BinaryIO = open(z.path, "rb")  # noqa: SIM115 - closed by close()
        st = os.fstat(self.file.fileno())
        self.identity = identity_of(st)
        self.size, self.mtime = st.st_size, st.st_mtime
        if z.inode and self.identity != z.identity:
            self.close()
            raise ZipChanged(f"{z.path.name} changed since it was found complete")

    def close(self) -> None:
        self.file.close()


class ZipStart:
    """The ZIP's SHA256, computed in a thread while extraction and sending begin, and its ledger record.

    Deliveries made before the hash is known are recorded with the claim's identity and adopted by the
    ZIP's record at the end. A ZIP whose bytes were delivered before gets no record (``duplicate_of`` names
    the earlier one) and its attempt stops as soon as the hash says so; until then instance dedup holds
    back every one of its instances, as all of them were delivered.
    """

    def __init__(self, ledger: Ledger, peer_key: str, claim: ClaimedZip, max_gap: float = 3600.0, sha256: str = ""):
        self.ledger, self.peer_key, self.claim, self.max_gap = ledger, peer_key, claim, max_gap
        self.record: ZipRecord | None = None
        self.duplicate_of: ZipRecord | None = None
        self._sha = sha256  # known already: another destination's start hashed these bytes
        self._error: OSError | None = None
        self._lock = threading.Lock()
        self._done = False
        self._thread = threading.Thread(target=self._hash, name="zip-sha256", daemon=True)
        if not sha256:
            self._thread.start()

    @property
    def path(self) -> Path:
        return self.claim.path

    @property
    def sha256(self) -> str:
        """Return the ZIP's hex SHA256 once begin() has waited for it ("" before, or when it could not be read)."""
        return self._sha if self._done and self._error is None else ""

    def _hash(self) -> None:
        try:
            self._sha = sha256_fd(self.claim.file.fileno())  # hashlib releases the GIL: beside the extraction
        except OSError as exc:
            self._error = exc

    def known_duplicate(self) -> bool:
        """Return True once the hash is known and shows a delivered ZIP; never waits, never raises."""
        if self._thread.is_alive() or (not self._sha and not self._done):
            return False
        try:
            return self.begin() is None
        except OSError:
            return False  # process_zip() meets the error when it asks for the record

    def begin(self) -> ZipRecord | None:
        """Wait for the hash; return the ZIP's record (created, one more attempt counted), None for a duplicate.

        Raise OSError when the ZIP could not be read.
        """
        with self._lock:
            if not self._done:
                if self._thread.is_alive() or self._thread.ident is not None:
                    self._thread.join()
                self._done = True
                if self._error is None:
                    self._open_record()
            if self._error is not None:
                raise self._error
            return self.record

    def _open_record(self) -> None:
        known = self.ledger.zip_by_sha(self._sha, self.peer_key)
        if known is not None and known.state in (ZipState.DELIVERED, ZipState.DUPLICATE):
            self.duplicate_of = known
            return
        if known is not None and known.state is ZipState.FAILED:
            self.ledger.reset_failed(self._sha, self.peer_key)  # it came back: the operator wants another try
        claim = self.claim
        self.record = self.ledger.zip_begin(
            self._sha, self.peer_key, claim.path.name, claim.size, claim.mtime, self.max_gap
        )
