"""The original script's state file (processed_zip, uploaded_objects): backed up, then imported into the ledger once.

The daemon calls ``backup_if_original(path)`` before it opens the Ledger on ``path``, then
``import_original(ledger, peer_key)``, and logs ``counts.message(backup)``. The original tables are only read.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PureWindowsPath

from .ledger import Ledger, ZipState

ORIGINAL_TABLES = {"processed_zip", "uploaded_objects"}
DONE_TABLE = """CREATE TABLE IF NOT EXISTS imported_original (
    done_at REAL NOT NULL, peer TEXT NOT NULL, zips INTEGER NOT NULL, instances INTEGER NOT NULL,
    fail_rows INTEGER NOT NULL, skipped INTEGER NOT NULL, zips_hash_only INTEGER NOT NULL)"""
EARLIEST = datetime(1990, 1, 1, tzinfo=UTC).timestamp()  # before any plausible upload


@dataclass(frozen=True)
class ImportCounts:
    zips: int = 0
    instances: int = 0
    fail_rows: int = 0  # uploads the original script recorded as failed: not deliveries
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    odd_times: int = 0  # timestamps unreadable, replaced by the time of the import
    zips_hash_only: int = 0  # ZIPs imported without any delivered instance: known only by their hash

    def message(self, backup: Path | None) -> str:
        """Return the one log line that says what was imported and where the backup is."""
        notes = [f"{_plural(self.fail_rows, 'FAIL row')} not counted as delivered"] if self.fail_rows else []
        if self.skipped:
            reasons = list(self.skipped.items())
            why = reasons[0][0] if len(reasons) == 1 else ", ".join(f"{n} {r}" for r, n in reasons)
            notes.append(f"{_plural(sum(self.skipped.values()), 'row')} skipped: {why}")
        if self.odd_times:
            notes.append(f"{_plural(self.odd_times, 'unreadable timestamp')} set to the time of the import")
        what = f"{_plural(self.zips, 'ZIP')} and {_plural(self.instances, 'delivered instance')}"
        why = f" ({'; '.join(notes)})" if notes else ""
        where = f"backup at {backup}" if backup else "no backup made"
        return f"Imported the original state file: {what}{why}; {where}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _imported(db: sqlite3.Connection, tables: set[str]) -> bool:
    return "imported_original" in tables and db.execute("SELECT 1 FROM imported_original").fetchone() is not None


def awaiting_import(path: Path) -> bool:
    """Return True for the original script's state file whose history was not imported yet; read only."""
    if not path.is_file():
        return False
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = _tables(db)
            return ORIGINAL_TABLES.issubset(tables) and not _imported(db, tables)
        finally:
            db.close()
    except sqlite3.Error:
        return False


def backup_if_original(path: Path, busy_timeout: float = 10.0) -> Path | None:
    """Copy an original state file not imported yet to ``NAME.before-upgrade`` (or ``-1``, ``-2``...); return it.

    Return None when ``path`` is absent, not SQLite, not the original script's file, or already imported; raise
    sqlite3.OperationalError when a writer holds it longer than ``busy_timeout``, and OSError when the copy fails.
    """
    if not path.is_file():
        return None
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        try:
            tables = _tables(db)
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError:  # "file is not a database": the Ledger will say so
                return None
            raise  # locked, I/O error: no import may go on without its backup
        if not ORIGINAL_TABLES.issubset(tables) or _imported(db, tables):
            return None
        if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # so that the file alone holds every commit
        db.execute("BEGIN IMMEDIATE")  # no writer may change the file while its bytes are copied
        try:
            return _copy_new(path)
        finally:
            db.execute("ROLLBACK")
    finally:
        db.close()


def _copy_new(path: Path) -> Path:
    n = 0
    while True:
        target = path.with_name(path.name + ".before-upgrade" + (f"-{n}" if n else ""))
        try:
            with open(target, "xb") as out, open(path, "rb") as source:  # "x": never overwrite a backup
                shutil.copyfileobj(source, out)
                out.flush()
                os.fsync(out.fileno())
            return target
        except FileExistsError:
            n += 1


def when(value: object) -> float | None:
    """Return a timestamp of the original file (``YYYY-MM-DD HH:MM:SS`` UTC, ISO, unix seconds) as unix time."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)  # 3.11: T, Z and offsets too
            except ValueError:
                return None
            value = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) / (1000.0 if value > 1e11 else 1.0)  # milliseconds from some clients
        return seconds if EARLIEST <= seconds <= time.time() + 86400 else None
    return None


def import_original(ledger: Ledger, peer_key: str) -> ImportCounts | None:
    """Import the original tables as delivered to ``peer_key``, in one transaction; None if absent or done before."""
    with ledger._lock:  # the Ledger has no method for this; its lock keeps its threads out meanwhile
        db = ledger.db
        if not ORIGINAL_TABLES.issubset(_tables(db)):
            return None
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(DONE_TABLE)
            if _imported(db, {"imported_original"}):
                db.execute("ROLLBACK")
                return None
            counts = _Import(db, peer_key).run()  # and records that it was done
            db.execute("COMMIT")
            return counts
        except BaseException:
            db.execute("ROLLBACK")
            raise


def has_zips_known_only_by_hash(ledger: Ledger, peer_key: str) -> bool:
    """Return True when ZIPs were imported for ``peer_key`` with no delivered instance: wait for a ZIP's hash."""
    with ledger._lock:
        if "imported_original" not in _tables(ledger.db):
            return False
        sql = "SELECT 1 FROM imported_original WHERE peer=? AND zips_hash_only > 0"
        return ledger.db.execute(sql, (peer_key,)).fetchone() is not None


def _text(value: object, lower: bool = False) -> str:
    text = str(value or "").strip()
    return text.lower() if lower else text  # hexdigest() is lower case; some tools write hashes in upper case


class _Import:
    """One import's reading and writing, inside the caller's transaction."""

    def __init__(self, db: sqlite3.Connection, peer: str):
        self.db, self.peer, self.now = db, peer, time.time()
        self.skipped: Counter[str] = Counter()
        self.odd_times = self.instances = self.fail_rows = 0
        self.zip_ids: dict[str, int] = {}  # sha -> id of the ZIPs imported now
        self.names: dict[str, str] = {}  # sha -> name of every ZIP in processed_zip
        self.zips_with_instances: set[int] = set()
        self.times: dict[object, float | None] = {}

    def run(self) -> ImportCounts:
        self._zips()
        self._instances()
        hash_only = len(set(self.zip_ids.values()) - self.zips_with_instances)
        done = (len(self.zip_ids), self.instances, self.fail_rows, self.skipped.total(), hash_only)
        self.db.execute("INSERT INTO imported_original VALUES (?,?,?,?,?,?,?)", (self.now, self.peer, *done))
        return ImportCounts(*done[:3], dict(self.skipped), self.odd_times, hash_only)

    def _time(self, value: object) -> float:
        if value not in self.times:  # CURRENT_TIMESTAMP has whole seconds: many rows share one
            self.times[value] = when(value)
        moment = self.times[value]
        self.odd_times += moment is None
        return self.now if moment is None else moment

    def _zips(self) -> None:
        rows = self.db.execute("SELECT zip_sha256, zip_name, processed_at FROM processed_zip ORDER BY rowid")
        for sha, name, processed_at in [(_text(r[0], lower=True), _text(r[1]), r[2]) for r in rows]:
            if not sha:
                self.skipped["ZIP without hash"] += 1
                continue
            self.names.setdefault(sha, name)
            if self.db.execute("SELECT 1 FROM zips WHERE sha256=? AND peer=?", (sha, self.peer)).fetchone():
                self.skipped["ZIP already in the ledger"] += 1
                continue
            at = self._time(processed_at)
            cursor = self.db.execute(
                "INSERT INTO zips (sha256, peer, name, size, mtime, state, first_seen, updated, final_path) "
                "VALUES (?,?,?,0,0,?,?,?,'')",
                (sha, self.peer, name, ZipState.DELIVERED.value, at, at),
            )
            self.zip_ids[sha] = int(cursor.lastrowid or 0)

    def _instances(self) -> None:
        known = self.db.execute("SELECT sop_instance_uid FROM instances WHERE peer=?", (self.peer,))
        uids = {row[0] for row in known}  # one look-up per row in memory, not in SQLite: 200,000 rows in seconds
        batch: list[tuple[object, ...]] = []
        rows = self.db.execute(  # a cursor of its own, read while the inserts go on: memory stays flat
            "SELECT sop_instance_uid, file_sha256, zip_sha256, file_path, status, uploaded_at "
            "FROM uploaded_objects ORDER BY rowid"
        )
        for uid_value, sha_value, zip_value, file_path, status, uploaded_at in rows:
            uid, sha, state = _text(uid_value), _text(sha_value, lower=True), _text(status).upper()
            if state == "FAIL":  # the original script could not store it: not a delivery
                self.fail_rows += 1
                continue
            reason = _not_imported(uid, sha, state, uids)
            if reason:
                self.skipped[reason] += 1
                continue
            uids.add(uid)
            zip_sha = _text(zip_value, lower=True)
            zip_id = self.zip_ids.get(zip_sha)
            zip_name = self.names.get(zip_sha) or (PureWindowsPath(str(file_path)).name if file_path else "")
            batch.append((self.peer, uid, sha, zip_id, zip_name, self._time(uploaded_at)))
            if zip_id is not None:
                self.zips_with_instances.add(zip_id)
            if len(batch) >= 5000:
                self._insert(batch)
        self._insert(batch)

    def _insert(self, batch: list[tuple[object, ...]]) -> None:
        self.db.executemany(
            "INSERT INTO instances (peer, sop_instance_uid, sha256, sop_class_uid, study_uid, series_uid, "
            "transfer_syntax, zip_id, zip_name, status, outcome, stored_at) VALUES (?,?,?,'','','','',?,?,0,'stored',?)",
            batch,
        )
        self.instances += len(batch)
        batch.clear()


def _not_imported(uid: str, sha: str, state: str, uids: set[str]) -> str:
    """Return why an OK row of uploaded_objects is not imported, or ''."""
    if state != "OK":
        return "status neither OK nor FAIL"
    if not uid or not sha:
        return "no UID" if not uid else "no file hash"
    return "duplicate UID" if uid in uids else ""
