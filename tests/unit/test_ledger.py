"""Ledger: schema on a real SQLite file, dedup look-ups per peer, ZIP states."""

import sqlite3

import pytest

from zip2pacs.ledger import SCHEMA_VERSION, Counts, Ledger, ZipState

PEER = "ORTHANC@127.0.0.1:4242"
OTHER = "PACS2@127.0.0.1:104"


def deliver(ledger, peer=PEER, uid="1.2.3", sha="aa", zip_id=1, zip_name="a.zip"):
    ledger.record_delivery(
        peer,
        zip_id,
        zip_name,
        sop_instance_uid=uid,
        sha256=sha,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_uid="1.2",
        series_uid="1.2.1",
        transfer_syntax="1.2.840.10008.1.2.1",
        status=0,
        outcome="stored",
    )


def test_new_database_gets_the_schema_version_and_wal(tmp_path):
    Ledger(tmp_path / "state" / "l.db").close()
    db = sqlite3.connect(tmp_path / "state" / "l.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopening_keeps_the_data(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        deliver(ledger)
    with Ledger(tmp_path / "l.db") as ledger:
        assert ledger.delivered_by_uid(PEER, "1.2.3").sha256 == "aa"
        assert ledger.instance_count() == 1


def test_deliveries_are_kept_per_peer(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        deliver(ledger)
        assert ledger.delivered_by_uid(PEER, "1.2.3") is not None
        assert ledger.delivered_by_sha(PEER, "aa") is not None
        assert ledger.delivered_by_uid(OTHER, "1.2.3") is None
        assert ledger.delivered_by_sha(OTHER, "aa") is None


def test_zip_begin_counts_attempts_and_keeps_first_seen(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        first = ledger.zip_begin("zz", PEER, "a.zip", 10, 1.0)
        second = ledger.zip_begin("zz", PEER, "a-copy.zip", 10, 2.0)
        assert first.id == second.id and first.attempts == 1
        assert second.attempts == 2 and second.first_seen == first.first_seen
        assert second.name == "a-copy.zip"
        assert ledger.zip_by_file("a-copy.zip", 10, 2.0, PEER).id == first.id
        assert ledger.zip_by_file("a-copy.zip", 10, 2.0, OTHER) is None


def test_zip_finish_records_state_counts_and_retry(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        record = ledger.zip_begin("zz", PEER, "a.zip", 10, 1.0)
        ledger.zip_finish(record.id, ZipState.PENDING, Counts(found=3, sent=1), error="peer down", next_retry=99.0)
        pending = ledger.pending()
        assert pending == [("a.zip", PEER, 1, 99.0, "peer down")]
        ledger.zip_finish(record.id, ZipState.FAILED, Counts(found=3), error="refused", final_path="/f/a.zip")
        assert ledger.zips_by_state() == {"failed": 1}
        assert ledger.recent_failures()[0][2:] == ("refused", "/f/a.zip")


def test_reset_failed_gives_a_fresh_budget_and_keeps_the_count_of_attempts(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        record = ledger.zip_begin("zz", PEER, "a.zip", 10, 1.0)
        ledger.zip_finish(record.id, ZipState.FAILED, Counts(), error="x", spent=100.0)
        ledger.reset_failed("zz", PEER)
        again = ledger.zip_by_sha("zz", PEER)
        assert again.state is ZipState.PENDING and again.attempts == 1 and again.tried_seconds == 0
        assert again.attempts_at_reset == 1  # the back-off starts over


def test_version_1_ledger_is_migrated_and_keeps_its_rows(tmp_path):
    from zip2pacs.ledger import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[1] + ";PRAGMA user_version=1;")
    db.execute(
        "INSERT INTO zips (sha256, peer, name, size, mtime, state, first_seen, updated) "
        "VALUES ('zz', ?, 'a.zip', 1, 1.0, 'pending', 1.0, 1.0)",
        (PEER,),
    )
    db.commit()
    db.close()
    with Ledger(path) as ledger:
        record = ledger.zip_by_sha("zz", PEER)
        assert record is not None and ledger.history(record.id) == []
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_attempts_that_did_not_deliver_are_kept_as_history(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        record = ledger.zip_begin("zz", PEER, "a.zip", 10, 1.0)
        ledger.zip_finish(record.id, ZipState.PENDING, Counts(), error="peer unavailable: connection refused")
        ledger.zip_begin("zz", PEER, "a.zip", 10, 1.0)
        ledger.zip_finish(record.id, ZipState.FAILED, Counts(), error="gave up")
        history = ledger.history(record.id)
        assert [(h["attempt"], h["state"], h["error"]) for h in history] == [
            (1, "pending", "peer unavailable: connection refused"),
            (2, "failed", "gave up"),
        ]


def test_newer_schema_than_the_program_is_refused(tmp_path):
    path = tmp_path / "new.db"
    sqlite3.connect(path).execute("PRAGMA user_version=99").connection.commit()
    with pytest.raises(RuntimeError, match="newer than this program"):
        Ledger(path)
