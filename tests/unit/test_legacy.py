"""The original script's state file: backed up byte for byte, imported into the ledger once, left as it was."""

import sqlite3
import time
from datetime import UTC, datetime

import pytest

from zip2pacs.ledger import Ledger, ZipState
from zip2pacs.legacy import backup_if_original, has_zips_known_only_by_hash, import_original, when

PEER = "ORTHANC@127.0.0.1:4242"
OTHER = "PACS2@127.0.0.1:104"
SCHEMA = """
CREATE TABLE processed_zip(zip_sha256 TEXT PRIMARY KEY, zip_name TEXT, processed_at TIMESTAMP);
CREATE TABLE uploaded_objects(sop_instance_uid TEXT, file_sha256 TEXT, zip_sha256 TEXT, file_path TEXT,
    status TEXT, uploaded_at TIMESTAMP, PRIMARY KEY (sop_instance_uid, file_sha256));
"""
ZIP_A, ZIP_B, ZIP_C = "a" * 64, "b" * 64, "c" * 64


def original(path, zips=(), objects=()):
    """Write an original state file; a timestamp of None in the arguments means CURRENT_TIMESTAMP."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    for sha, name, at in zips:
        db.execute("INSERT INTO processed_zip VALUES (?, ?, COALESCE(?, CURRENT_TIMESTAMP))", (sha, name, at))
    for uid, sha, zip_sha, status, at in objects:
        db.execute(
            "INSERT INTO uploaded_objects VALUES (?, ?, ?, ?, ?, COALESCE(?, CURRENT_TIMESTAMP))",
            (uid, sha, zip_sha, f"/tmp/work/{uid}.dcm", status, at),
        )
    db.commit()
    db.close()
    return path


def typical(tmp_path):
    """Two ZIPs with deliveries, one known only by its hash, and the rows the original script could leave."""
    return original(
        tmp_path / "processed.sqlite3",
        zips=[(ZIP_A, "cd_0412.zip", None), (ZIP_B, "portal.zip", "2024-03-01 10:00:00"), (ZIP_C, "old.zip", None)],
        objects=[
            ("1.2.1", "f1", ZIP_A, "OK", None),
            ("1.2.2", "f2", ZIP_A, "OK", "2024-03-01 10:00:05"),
            ("1.2.3", "f3", ZIP_B, "OK", None),
            ("1.2.3", "f3-other", ZIP_B, "OK", None),  # the same UID with other bytes
            ("1.2.9", "f9", ZIP_B, "FAIL", None),  # never delivered
            (None, "f4", ZIP_A, "OK", None),
            ("1.2.5", None, ZIP_A, "OK", None),
        ],
    )


def snapshot(path):
    db = sqlite3.connect(path)
    try:
        return [
            db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in ("processed_zip", "uploaded_objects")
        ]
    finally:
        db.close()


def upgrade(path, peer=PEER):
    backup = backup_if_original(path)
    with Ledger(path) as ledger:
        return backup, import_original(ledger, peer)


def test_the_backup_is_a_byte_identical_copy_taken_before_the_ledger_opens_the_file(tmp_path):
    path = typical(tmp_path)
    before = path.read_bytes()
    backup, _ = upgrade(path)
    assert backup == tmp_path / "processed.sqlite3.before-upgrade"
    assert backup.read_bytes() == before
    assert path.read_bytes() != before  # the ledger's tables were added to the file itself


def test_an_existing_backup_is_never_overwritten(tmp_path):
    path = typical(tmp_path)
    (tmp_path / "processed.sqlite3.before-upgrade").write_bytes(b"older")
    (tmp_path / "processed.sqlite3.before-upgrade-1").write_bytes(b"old")
    assert backup_if_original(path) == tmp_path / "processed.sqlite3.before-upgrade-2"
    assert (tmp_path / "processed.sqlite3.before-upgrade").read_bytes() == b"older"
    assert (tmp_path / "processed.sqlite3.before-upgrade-1").read_bytes() == b"old"


def test_a_wal_mode_original_is_backed_up_with_its_last_commits(tmp_path):
    path = original(tmp_path / "processed.sqlite3")
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("INSERT INTO processed_zip VALUES (?, 'late.zip', CURRENT_TIMESTAMP)", (ZIP_A,))
    writer.commit()  # in the -wal file, not yet in the database file
    backup = backup_if_original(path)
    writer.close()
    assert backup is not None
    assert snapshot(backup)[0][0][:2] == (ZIP_A, "late.zip")


def test_nothing_is_backed_up_or_imported_from_a_file_that_is_not_the_original(tmp_path):
    assert backup_if_original(tmp_path / "absent.sqlite3") is None
    assert not (tmp_path / "absent.sqlite3").exists()
    (tmp_path / "text.sqlite3").write_text("not a database, just text that is long enough to be read")
    assert backup_if_original(tmp_path / "text.sqlite3") is None
    with Ledger(tmp_path / "uploader.sqlite3") as ledger:
        assert backup_if_original(tmp_path / "uploader.sqlite3") is None
        assert import_original(ledger, PEER) is None
        assert not has_zips_known_only_by_hash(ledger, PEER)
    assert sorted(p.name for p in tmp_path.iterdir() if "before-upgrade" in p.name) == []


def test_every_ok_uid_is_delivered_to_the_peer_and_fail_only_uids_are_not(tmp_path):
    _, counts = upgrade(typical(tmp_path))
    with Ledger(tmp_path / "processed.sqlite3") as ledger:
        for uid, sha, zip_name in (
            ("1.2.1", "f1", "cd_0412.zip"),
            ("1.2.2", "f2", "cd_0412.zip"),
            ("1.2.3", "f3", "portal.zip"),
        ):
            delivered = ledger.delivered_by_uid(PEER, uid)
            assert delivered is not None and (delivered.sha256, delivered.zip_name) == (sha, zip_name)
            assert ledger.delivered_by_sha(PEER, sha) is not None
            assert ledger.delivered_by_uid(OTHER, uid) is None
        assert ledger.delivered_by_uid(PEER, "1.2.9") is None
        assert ledger.delivered_by_sha(PEER, "f9") is None
        assert ledger.instance_count() == 3
    assert (counts.instances, counts.fail_rows) == (3, 1)
    assert counts.skipped == {"duplicate UID": 1, "no UID": 1, "no file hash": 1}


def test_every_processed_zip_becomes_a_delivered_zip_of_the_peer(tmp_path):
    _, counts = upgrade(typical(tmp_path))
    with Ledger(tmp_path / "processed.sqlite3") as ledger:
        for sha, name in ((ZIP_A, "cd_0412.zip"), (ZIP_B, "portal.zip"), (ZIP_C, "old.zip")):
            record = ledger.zip_by_sha(sha, PEER)
            assert record is not None and (record.state, record.name) == (ZipState.DELIVERED, name)
            assert ledger.zip_by_sha(sha, OTHER) is None
        assert ledger.zip_by_sha(ZIP_B, PEER).first_seen == datetime(2024, 3, 1, 10, tzinfo=UTC).timestamp()
        assert ledger.zips_by_state() == {"delivered": 3}
    assert counts.zips == 3


def test_current_timestamp_values_are_read_as_utc(tmp_path):
    started = time.time()
    upgrade(typical(tmp_path))
    with Ledger(tmp_path / "processed.sqlite3") as ledger:
        stored = dict(ledger.db.execute("SELECT sop_instance_uid, stored_at FROM instances").fetchall())
        assert stored["1.2.2"] == datetime(2024, 3, 1, 10, 0, 5, tzinfo=UTC).timestamp()
        assert started - 2 <= stored["1.2.1"] <= time.time()  # CURRENT_TIMESTAMP has whole seconds
        assert ledger.zip_by_sha(ZIP_A, PEER).first_seen == pytest.approx(stored["1.2.1"], abs=2)


def test_a_second_start_backs_up_and_imports_nothing(tmp_path):
    path = typical(tmp_path)
    upgrade(path)
    backup, counts = upgrade(path)
    assert (backup, counts) == (None, None)
    with Ledger(path) as ledger:
        assert ledger.instance_count() == 3 and ledger.zips_by_state() == {"delivered": 3}
        assert ledger.db.execute("SELECT zips, instances FROM imported_original").fetchall() == [(3, 3)]
    assert [p.name for p in tmp_path.iterdir() if "before-upgrade" in p.name] == ["processed.sqlite3.before-upgrade"]


def test_the_original_tables_are_left_as_they_were(tmp_path):
    path = typical(tmp_path)
    before = snapshot(path)
    upgrade(path)
    assert snapshot(path) == before


def test_odd_timestamps_fall_back_to_the_time_of_the_import_and_are_counted(tmp_path):
    path = original(
        tmp_path / "processed.sqlite3",
        zips=[(ZIP_A, "a.zip", "yesterday"), (ZIP_B, "b.zip", 1709287200), (ZIP_C, "c.zip", "2024-03-01T10:00:00Z")],
        objects=[("1.1", "f1", ZIP_A, "OK", "2024-03-01T10:00:00.5+01:00"), ("1.2", "f2", ZIP_A, "OK", -5)],
    )
    sqlite3.connect(path).execute(
        "UPDATE processed_zip SET processed_at=NULL WHERE zip_name='a.zip'"
    ).connection.commit()
    started = time.time()
    _, counts = upgrade(path)
    assert (counts.zips, counts.instances, counts.odd_times) == (3, 2, 2)
    with Ledger(path) as ledger:
        assert ledger.zip_by_sha(ZIP_A, PEER).first_seen >= started
        assert ledger.zip_by_sha(ZIP_B, PEER).first_seen == 1709287200
        assert ledger.zip_by_sha(ZIP_C, PEER).first_seen == 1709287200
        stored = dict(ledger.db.execute("SELECT sop_instance_uid, stored_at FROM instances").fetchall())
        assert stored["1.1"] == 1709287200 - 3600 + 0.5 and stored["1.2"] >= started


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-01 10:00:00", 1709287200.0),
        ("2024-03-01T10:00:00Z", 1709287200.0),
        ("1709287200", 1709287200.0),
        (1709287200000, 1709287200.0),
        (None, None),
        ("garbage", None),
        (2460371.5, None),  # a Julian day number, not unix time
        (b"2024-03-01", None),
    ],
)
def test_timestamps_of_the_original_file_are_read_in_every_form_it_may_hold(value, expected):
    assert when(value) == expected


def test_hashes_and_statuses_are_read_in_any_case_and_zips_already_in_the_ledger_are_kept(tmp_path):
    path = original(
        tmp_path / "processed.sqlite3",
        zips=[(ZIP_A.upper(), "a.zip", None), (ZIP_B, "b.zip", None), ("", "nohash.zip", None)],
        objects=[
            ("1.1", "F1", ZIP_A.upper(), "OK", None),
            ("1.2", "f2", ZIP_A, "ok", None),
            ("1.3", "f3", ZIP_A, None, None),
        ],
    )
    with Ledger(path) as ledger:
        known = ledger.zip_begin(ZIP_B, PEER, "b-seen-by-the-watcher.zip", 10, 1.0)
        counts = import_original(ledger, PEER)
        assert ledger.delivered_by_sha(PEER, "f1").zip_name == "a.zip"
        assert ledger.zip_by_sha(ZIP_A, PEER).state is ZipState.DELIVERED
        assert ledger.zip_by_sha(ZIP_B, PEER) == known
        assert ledger.delivered_by_uid(PEER, "1.2") is not None and ledger.delivered_by_uid(PEER, "1.3") is None
    assert counts.skipped == {"ZIP already in the ledger": 1, "ZIP without hash": 1, "status neither OK nor FAIL": 1}


def test_zips_known_only_by_their_hash_are_reported_for_their_peer_only(tmp_path):
    path = typical(tmp_path)
    upgrade(path)
    with Ledger(path) as ledger:
        assert has_zips_known_only_by_hash(ledger, PEER)  # old.zip: no instance rows
        assert not has_zips_known_only_by_hash(ledger, OTHER)
    path2 = original(tmp_path / "p2.sqlite3", zips=[(ZIP_A, "a.zip", None)], objects=[("1", "f", ZIP_A, "OK", None)])
    backup, counts = upgrade(path2)
    assert counts.zips_hash_only == 0
    with Ledger(path2) as ledger:
        assert not has_zips_known_only_by_hash(ledger, PEER)


def test_an_import_that_fails_midway_leaves_nothing_behind(tmp_path):
    path = tmp_path / "processed.sqlite3"
    db = sqlite3.connect(path)  # an older variant of the original file: uploaded_objects without file_path
    db.executescript(
        "CREATE TABLE processed_zip(zip_sha256 TEXT PRIMARY KEY, zip_name TEXT, processed_at TIMESTAMP);"
        "CREATE TABLE uploaded_objects(sop_instance_uid TEXT, file_sha256 TEXT, status TEXT);"
        f"INSERT INTO processed_zip VALUES ('{ZIP_A}', 'a.zip', CURRENT_TIMESTAMP);"
    )
    db.close()
    with Ledger(path) as ledger:
        with pytest.raises(sqlite3.OperationalError):
            import_original(ledger, PEER)
        assert ledger.zips_by_state() == {}
        assert ledger.zip_by_sha(ZIP_A, PEER) is None
        assert "imported_original" not in {r[0] for r in ledger.db.execute("SELECT name FROM sqlite_master")}


def test_the_log_line_names_what_was_imported_skipped_and_where_the_backup_is(tmp_path):
    backup, counts = upgrade(typical(tmp_path))
    assert counts.message(backup) == (
        "Imported the original state file: 3 ZIPs and 3 delivered instances (1 FAIL row not counted as delivered; "
        f"3 rows skipped: 1 duplicate UID, 1 no UID, 1 no file hash); backup at {backup}"
    )
    single = type(counts)(zips=41, instances=18342, fail_rows=12, skipped={"no UID": 3})
    assert single.message(backup).startswith(
        "Imported the original state file: 41 ZIPs and 18342 delivered instances "
        "(12 FAIL rows not counted as delivered; 3 rows skipped: no UID); backup at "
    )


def test_an_original_file_locked_by_a_writer_raises_instead_of_going_on_without_a_backup(tmp_path):
    path = typical(tmp_path)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the original script, still running, in the middle of a write
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            backup_if_original(path, busy_timeout=0.1)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert backup_if_original(path) == tmp_path / "processed.sqlite3.before-upgrade"


def test_the_log_line_of_a_clean_import_has_no_empty_notes(tmp_path):
    path = original(tmp_path / "p.sqlite3", zips=[(ZIP_A, "a.zip", None)], objects=[("1", "f", ZIP_A, "OK", None)])
    backup, counts = upgrade(path)
    assert (
        counts.message(backup)
        == f"Imported the original state file: 1 ZIP and 1 delivered instance; backup at {backup}"
    )
