"""ZIPs seen, instances delivered per peer, and their outcomes, in SQLite.

The only module that touches SQLite, with legacy.py (the one-time import of the original script's file).
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from .schema import MIGRATIONS, SCHEMA_VERSION

HISTORY_KEPT = 50  # a ZIP retried every 30 min for days keeps its latest attempts only


class ZipState(enum.Enum):
    PENDING = "pending"  # not (fully) delivered yet; retried
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # the same ZIP bytes were delivered before
    FAILED = "failed"  # moved to failed_dir


@dataclass(frozen=True)
class ZipRecord:
    id: int
    sha256: str
    name: str
    state: ZipState
    first_seen: float
    attempts: int
    next_retry: float | None
    last_error: str
    tried_seconds: float = 0.0  # time spent trying to deliver it, clock jumps excluded
    attempts_at_reset: int = 0  # attempts before --retry-failed sent it round again


@dataclass(frozen=True)
class Pause:
    """A destination paused because it refused our credentials: since when, the refusal, when it is tried again."""

    peer: str
    began: float
    status: int | None
    reason: str
    probe_at: float | None


@dataclass(frozen=True)
class Delivered:
    sha256: str
    zip_name: str


@dataclass(frozen=True)
class Counts:
    """What became of a ZIP's entries: each file entry is either ``skipped`` or ``found`` (a DICOM instance),
    and each instance found is ``sent``, a ``duplicate``, ``failed`` (refused for good) or ``pending`` (not
    stored yet, tried again). ``changed`` counts, among them, instances delivered before with other bytes.
    """

    found: int = 0
    sent: int = 0
    duplicates: int = 0
    skipped: int = 0
    failed: int = 0
    changed: int = 0
    pending: int = 0

    def summary(self) -> str:
        """Return ``12 entries: 10 instances (sent 8, duplicates 1, failed 0, pending 1), skipped 2 ...`` for the log."""
        text = (
            f"{self.found + self.skipped} entries: {self.found} instances (sent {self.sent}, duplicates "
            f"{self.duplicates}, failed {self.failed}, pending {self.pending}), skipped {self.skipped}"
        )
        return text + (f"; changed {self.changed}" if self.changed else "")


_ZIP_COLUMNS = "id, sha256, name, state, first_seen, attempts, next_retry, last_error, tried_seconds, attempts_at_reset"


def _zip(row: tuple) -> ZipRecord:
    return ZipRecord(row[0], row[1], row[2], ZipState(row[3]), *row[4:])


class Ledger:
    """SQLite state in WAL mode; every write commits at once so a crash loses at most the write under way."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=10000")
        self._lock = threading.Lock()  # the sender's threads record results while the extractor reads
        self._migrate()

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    def _row(self, sql: str, params: tuple = ()) -> tuple | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: ledger schema {version} is newer than this program ({SCHEMA_VERSION})")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={target}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    # --- ZIPs ---------------------------------------------------------------------------------

    def zip_by_file(self, name: str, size: int, mtime: float, peer: str) -> ZipRecord | None:
        """Return the newest record of a ZIP with this name, size and mtime for ``peer``, without hashing it."""
        row = self._row(
            f"SELECT {_ZIP_COLUMNS} FROM zips WHERE name=? AND size=? AND mtime=? AND peer=? ORDER BY updated DESC",
            (name, size, mtime, peer),
        )
        return _zip(row) if row else None

    def zip_by_sha(self, sha256: str, peer: str) -> ZipRecord | None:
        """Return the record of the ZIP with these bytes for ``peer``, or None."""
        row = self._row(f"SELECT {_ZIP_COLUMNS} FROM zips WHERE sha256=? AND peer=?", (sha256, peer))
        return _zip(row) if row else None

    def zip_begin(
        self, sha256: str, peer: str, name: str, size: int, mtime: float, max_gap: float = 3600.0
    ) -> ZipRecord:
        """Return the ZIP's record, created as pending if new; count one more attempt.

        The time since the previous attempt of a pending ZIP is added to its ``tried_seconds``, at most
        ``max_gap``: a wall clock set forward, or a machine switched off, does not use up the retry budget;
        nor does the time ``peer`` was paused for its credentials.
        """
        now = time.time()
        paused = (
            "COALESCE((SELECT SUM(MAX(MIN(COALESCE(p.ended, ?), ?) - MAX(p.began, zips.updated), 0)) "
            "FROM pauses p WHERE p.peer = zips.peer), 0)"
        )
        self._rows(
            f"UPDATE zips SET tried_seconds = tried_seconds + MIN(MAX(? - updated - {paused}, 0), ?) "
            "WHERE sha256=? AND peer=? AND state=? AND attempts > 0",
            (now, now, now, max_gap, sha256, peer, ZipState.PENDING.value),
        )
        self._rows(
            "INSERT INTO zips (sha256, peer, name, size, mtime, state, first_seen, updated) VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT (sha256, peer) DO UPDATE SET name=excluded.name, size=excluded.size, mtime=excluded.mtime",
            (sha256, peer, name, size, mtime, ZipState.PENDING.value, now, now),
        )
        self._rows("UPDATE zips SET attempts=attempts+1, updated=? WHERE sha256=? AND peer=?", (now, sha256, peer))
        record = self.zip_by_sha(sha256, peer)
        assert record is not None
        return record

    def zip_waiting(self, sha256: str, peer: str, name: str, size: int, mtime: float, error: str) -> None:
        """Record a ZIP as pending for ``peer`` without an attempt (its destination is paused), unless it has a record."""
        now = time.time()
        self._rows(
            "INSERT INTO zips (sha256, peer, name, size, mtime, state, first_seen, updated, last_error) "
            "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (sha256, peer) DO NOTHING",
            (sha256, peer, name, size, mtime, ZipState.PENDING.value, now, now, error),
        )

    def zip_finish(
        self,
        zip_id: int,
        state: ZipState,
        counts: Counts,
        error: str = "",
        next_retry: float | None = None,
        final_path: str = "",
        spent: float = 0.0,
    ) -> None:
        """Record the outcome of one attempt at a ZIP (``spent`` seconds long, by the monotonic clock).

        An attempt with an error joins the ZIP's history.
        """
        if error:
            history, attempts = self._row("SELECT history, attempts FROM zips WHERE id=?", (zip_id,)) or ("[]", 0)
            entries = json.loads(history)
            at = datetime.now(UTC).isoformat(timespec="seconds")
            entries.append({"attempt": attempts, "at": at, "state": state.value, "error": error})
            self._rows("UPDATE zips SET history=? WHERE id=?", (json.dumps(entries[-HISTORY_KEPT:]), zip_id))
        self._rows(
            "UPDATE zips SET state=?, found=?, sent=?, duplicates=?, skipped=?, failed=?, changed=?, pending=?, "
            "last_error=?, next_retry=?, final_path=?, updated=?, tried_seconds=tried_seconds+? WHERE id=?",
            (
                state.value,
                *astuple(counts),  # found, sent, duplicates, skipped, failed, changed, pending
                error,
                next_retry,
                final_path,
                time.time(),
                max(spent, 0.0),
                zip_id,
            ),
        )

    def settle(self, zip_id: int, state: ZipState, final_path: str, error: str = "") -> None:
        """Set a ZIP's state and final path, keeping its counts (another destination decided where the ZIP went)."""
        if error:
            history, attempts = self._row("SELECT history, attempts FROM zips WHERE id=?", (zip_id,)) or ("[]", 0)
            entries = json.loads(history)
            at = datetime.now(UTC).isoformat(timespec="seconds")
            entries.append({"attempt": attempts, "at": at, "state": state.value, "error": error})
            self._rows(
                "UPDATE zips SET history=?, last_error=? WHERE id=?",
                (json.dumps(entries[-HISTORY_KEPT:]), error, zip_id),
            )
        self._rows(
            "UPDATE zips SET state=?, final_path=?, next_retry=NULL, updated=? WHERE id=?",
            (state.value, final_path, time.time(), zip_id),
        )

    def reset_failed(self, sha256: str, peer: str) -> None:
        """Make a failed ZIP pending again with a fresh retry budget (operator's --retry-failed).

        Its attempts, first-seen time and history carry over: they say how long it has been a problem.
        """
        self._rows(
            "UPDATE zips SET state=?, next_retry=NULL, updated=?, tried_seconds=0, attempts_at_reset=attempts "
            "WHERE sha256=? AND peer=? AND state=?",
            (ZipState.PENDING.value, time.time(), sha256, peer, ZipState.FAILED.value),
        )

    def forget_partial_copies(self, name: str, peer: str, keep_id: int, marker: str) -> int:
        """Delete pending records of earlier bytes under this name that did not open as a ZIP (``marker`` in
        their error) and delivered nothing: looks at a copy still under way. Return how many."""
        with self._lock:
            cursor = self.db.execute(
                "DELETE FROM zips WHERE name=? AND peer=? AND id<>? AND state=? AND instr(last_error, ?) > 0 "
                "AND NOT EXISTS (SELECT 1 FROM instances WHERE instances.zip_id = zips.id)",
                (name, peer, keep_id, ZipState.PENDING.value, marker),
            )
            return cursor.rowcount

    def history(self, zip_id: int) -> list[dict[str, object]]:
        """Return the ZIP's attempts that did not deliver, oldest first."""
        row = self._row("SELECT history FROM zips WHERE id=?", (zip_id,))
        return json.loads(row[0]) if row else []

    def keep_file(self, identity: str, peer: str, zip_id: int | None) -> None:
        """Remember a delivered ZIP file left in the watch folder, so that it is never taken again."""
        self._rows(
            "INSERT OR REPLACE INTO kept_files (identity, peer, zip_id) VALUES (?,?,?)", (identity, peer, zip_id)
        )

    def is_kept(self, identity: str, peer: str) -> bool:
        """Return True for a delivered ZIP file left in the watch folder (known by its identity, not hashed)."""
        return self._row("SELECT 1 FROM kept_files WHERE identity=? AND peer=?", (identity, peer)) is not None

    # --- paused destinations --------------------------------------------------------------------

    def pause(self, peer: str, status: int | None, reason: str, since: float, probe_at: float) -> None:
        """Record that ``peer`` refuses our credentials: a new pause, or the one under way with a later probe."""
        with self._lock:
            cursor = self.db.execute(
                "UPDATE pauses SET status=?, reason=?, probe_at=? WHERE peer=? AND ended IS NULL",
                (status, reason, probe_at, peer),
            )
            if cursor.rowcount == 0:
                self.db.execute(
                    "INSERT INTO pauses (peer, began, status, reason, probe_at) VALUES (?,?,?,?,?)",
                    (peer, min(since, time.time()), status, reason, probe_at),
                )

    def end_pauses(self, peer: str | None = None) -> None:
        """End the pause of ``peer``, or every pause (the watcher starts: it tries the credentials again)."""
        where = "ended IS NULL" + (" AND peer=?" if peer is not None else "")
        self._rows(f"UPDATE pauses SET ended=? WHERE {where}", (time.time(), *([peer] if peer is not None else [])))

    def pauses(self) -> list[Pause]:
        """Return the pauses under way, oldest first."""
        rows = self._rows("SELECT peer, began, status, reason, probe_at FROM pauses WHERE ended IS NULL ORDER BY began")
        return [Pause(*row) for row in rows]

    # --- instances ------------------------------------------------------------------------------

    def delivered_by_uid(self, peer: str, sop_instance_uid: str) -> Delivered | None:
        """Return the first delivery of this SOP Instance UID to ``peer``, or None."""
        row = self._row(
            "SELECT sha256, zip_name FROM instances WHERE peer=? AND sop_instance_uid=? ORDER BY id LIMIT 1",
            (peer, sop_instance_uid),
        )
        return Delivered(row[0], row[1]) if row else None

    def delivered_by_sha(self, peer: str, sha256: str) -> Delivered | None:
        """Return the first delivery of a file with these bytes to ``peer``, or None."""
        row = self._row(
            "SELECT sha256, zip_name FROM instances WHERE peer=? AND sha256=? ORDER BY id LIMIT 1", (peer, sha256)
        )
        return Delivered(row[0], row[1]) if row else None

    def record_delivery(
        self,
        peer: str,
        zip_id: int | None,
        zip_name: str,
        *,
        sop_instance_uid: str,
        sha256: str,
        sop_class_uid: str,
        study_uid: str,
        series_uid: str,
        transfer_syntax: str,
        status: int | None,
        outcome: str,
        claim: str = "",
    ) -> None:
        """Record one instance stored on ``peer``, committed at once so that it is not sent again.

        ``zip_id`` is None while the ZIP's hash, hence its record, is not known yet: ``claim`` (the ZIP file's
        identity) then says which ZIP adopts it; see adopt_deliveries().
        """
        self._rows(
            "INSERT INTO instances (peer, sop_instance_uid, sha256, sop_class_uid, study_uid, series_uid, "
            "transfer_syntax, zip_id, zip_name, status, outcome, stored_at, claim) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                peer,
                sop_instance_uid,
                sha256,
                sop_class_uid,
                study_uid,
                series_uid,
                transfer_syntax,
                zip_id,
                zip_name,
                status,
                outcome,
                time.time(),
                claim or None,
            ),
        )

    def adopt_deliveries(self, zip_id: int, peer: str, claim: str) -> int:
        """Give the ZIP's record to the deliveries its file (``claim``) made before the record existed."""
        with self._lock:
            cursor = self.db.execute(
                "UPDATE instances SET zip_id=? WHERE zip_id IS NULL AND peer=? AND claim=?", (zip_id, peer, claim)
            )
            return cursor.rowcount

    # --- reports --------------------------------------------------------------------------------

    def count_duplicate_copy(self, zip_id: int) -> None:
        """Count one more copy of a delivered ZIP archived as a duplicate."""
        self._rows("UPDATE zips SET duplicate_copies = duplicate_copies + 1 WHERE id=?", (zip_id,))

    def zips_by_state(self) -> dict[str, int]:
        """Return how many ZIPs are in each state; copies archived as duplicates count as ``duplicate``."""
        states = dict(self._rows("SELECT state, COUNT(*) FROM zips GROUP BY state"))
        copies = self._rows("SELECT COALESCE(SUM(duplicate_copies), 0) FROM zips")[0][0]
        if copies:
            states["duplicate"] = states.get("duplicate", 0) + copies
        return states

    def zips_overall(self) -> dict[str, int]:
        """Return how many ZIPs (one per SHA256, whatever the destinations) are in each state, judged over them all.

        Failed when one destination's record failed, pending when one waits, delivered when every one has it;
        copies archived as duplicates count as ``duplicate``.
        """
        order = (ZipState.FAILED, ZipState.PENDING, ZipState.DELIVERED)
        cases = " ".join("WHEN SUM(state=?) > 0 THEN ?" for _ in order)
        rows = self._rows(
            f"SELECT CASE {cases} ELSE MIN(state) END, MAX(duplicate_copies) FROM zips GROUP BY sha256",
            tuple(v for state in order for v in (state.value, state.value)),
        )
        states: dict[str, int] = {}
        for state, copies in rows:
            states[state] = states.get(state, 0) + 1
            if copies:
                states[ZipState.DUPLICATE.value] = states.get(ZipState.DUPLICATE.value, 0) + copies
        return states

    def zips_by_peer(self) -> dict[str, dict[str, int]]:
        """Return, for each destination (peer), how many ZIPs are in each state for it, as zips_by_state() counts."""
        found: dict[str, dict[str, int]] = {}
        for peer, state, count, copies in self._rows(
            "SELECT peer, state, COUNT(*), SUM(duplicate_copies) FROM zips GROUP BY peer, state"
        ):
            states = found.setdefault(peer, {})
            states[state] = states.get(state, 0) + count
            if copies:
                states[ZipState.DUPLICATE.value] = states.get(ZipState.DUPLICATE.value, 0) + copies
        return found

    def instance_count(self) -> int:
        """Return how many instance deliveries are recorded."""
        return self._rows("SELECT COUNT(*) FROM instances")[0][0]

    def pending(self) -> list[tuple[str, str, int, float | None, str]]:
        """Return (name, peer, attempts, next_retry, last_error) of every pending ZIP."""
        return self._rows(
            "SELECT name, peer, attempts, next_retry, last_error FROM zips WHERE state=? ORDER BY first_seen",
            (ZipState.PENDING.value,),
        )

    def recent_failures(self, limit: int = 10) -> list[tuple[str, float, str, str]]:
        """Return (name, updated, last_error, final_path) of the latest failed ZIPs."""
        return [row[:1] + row[2:] for row in self.recent_failures_by_peer(limit)]  # type: ignore[misc]

    def recent_failures_by_peer(self, limit: int = 10) -> list[tuple[str, str, float, str, str]]:
        """Return (name, peer, updated, last_error, final_path) of the latest failed ZIPs."""
        return self._rows(
            "SELECT name, peer, updated, last_error, final_path FROM zips WHERE state=? ORDER BY updated DESC LIMIT ?",
            (ZipState.FAILED.value, limit),
        )
