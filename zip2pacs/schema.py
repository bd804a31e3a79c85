"""The ledger's SQLite schema, as migrations: each takes the database from version N-1 to N in one transaction."""

from __future__ import annotations

SCHEMA_VERSION = 4

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE zips (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL,
        peer TEXT NOT NULL,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime REAL NOT NULL,
        state TEXT NOT NULL,
        first_seen REAL NOT NULL,
        updated REAL NOT NULL,
        found INTEGER NOT NULL DEFAULT 0,
        sent INTEGER NOT NULL DEFAULT 0,
        duplicates INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        changed INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_retry REAL,
        last_error TEXT NOT NULL DEFAULT '',
        final_path TEXT NOT NULL DEFAULT '',
        UNIQUE (sha256, peer)
    );
    CREATE INDEX zips_by_file ON zips (name, size, mtime, peer);
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        peer TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        transfer_syntax TEXT NOT NULL,
        zip_id INTEGER REFERENCES zips (id),
        zip_name TEXT NOT NULL,
        status INTEGER,
        outcome TEXT NOT NULL,
        stored_at REAL NOT NULL
    );
    CREATE INDEX instances_by_uid ON instances (peer, sop_instance_uid);
    CREATE INDEX instances_by_sha ON instances (peer, sha256);
    """,
    # Every attempt that did not deliver, as JSON: [{"attempt", "at", "state", "error"}, ...].
    2: "ALTER TABLE zips ADD COLUMN history TEXT NOT NULL DEFAULT '[]'",
    # claim: the identity (device:inode:size:mtime_ns) of the ZIP file whose attempt stored an instance before
    # the ZIP's hash was known, so that only that file's record adopts it. tried_seconds: time spent trying,
    # measured between looks with each gap capped, so a clock jump neither gives up at once nor stalls.
    # kept_files: delivered ZIPs left in the watch folder (behavior.move_zip_to_archive: false), by identity.
    # pending: instances not stored yet, to be tried again; duplicate_copies: copies of the ZIP archived since;
    # attempts_at_reset: its attempts when --retry-failed sent it round again (the back-off starts over).
    3: """
    ALTER TABLE instances ADD COLUMN claim TEXT;
    CREATE INDEX instances_by_claim ON instances (claim) WHERE zip_id IS NULL;
    ALTER TABLE zips ADD COLUMN tried_seconds REAL NOT NULL DEFAULT 0;
    ALTER TABLE zips ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE zips ADD COLUMN duplicate_copies INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE zips ADD COLUMN attempts_at_reset INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE kept_files (
        identity TEXT NOT NULL,
        peer TEXT NOT NULL,
        zip_id INTEGER REFERENCES zips (id),
        PRIMARY KEY (identity, peer)
    )
    """,
    # Destinations paused because they refused our credentials (see pause.py): one row per pause, ended NULL while
    # it lasts. Time inside a pause is not counted in a ZIP's tried_seconds for that destination.
    4: """
    CREATE TABLE pauses (
        id INTEGER PRIMARY KEY,
        peer TEXT NOT NULL,
        began REAL NOT NULL,
        ended REAL,
        status INTEGER,
        reason TEXT NOT NULL DEFAULT '',
        probe_at REAL
    );
    CREATE INDEX pauses_by_peer ON pauses (peer, began)
    """,
}
