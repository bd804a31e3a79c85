"""Archive means delivered: paths that used to archive, fail or stall a ZIP wrongly (each a regression test)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import zipfile

import pytest
from pydicom import dcmread

from tests.factories import junk_entries, zip_bytes
from tests.integration.conftest import free_port
from tests.unit.test_pipeline import RecordingSCP, make_config, process_all, scp, study_zip  # noqa: F401
from zip2pacs import delivery, sender, zipstart
from zip2pacs.daemon import run_once
from zip2pacs.intake import list_zips
from zip2pacs.ledger import Ledger, ZipState
from zip2pacs.pipeline import Pipeline
from zip2pacs.retry import backoff_delay
from zip2pacs.synth import write_study


def test_zip_replaced_under_its_name_while_sent_is_not_archived_unsent(tmp_path, scp):  # noqa: F811
    config = make_config(tmp_path, scp.port, send_batch_size=1)
    first, first_uids = study_zip(tmp_path, "study.zip", seed=21)
    second_source, second_uids = study_zip(tmp_path, "other.zip", seed=22)
    staged = tmp_path / "staged.zip"
    shutil.move(second_source, staged)
    first_bytes = first.read_bytes()

    def replace_on_first_store(ds):
        if staged.exists():
            os.replace(staged, first)  # a re-export lands under the same name mid-delivery
        return 0x0000

    scp.status_for = replace_on_first_store
    [outcome] = process_all(config)

    assert outcome.state is ZipState.DELIVERED
    assert sorted(scp.stored) == sorted(first_uids)
    archived = [p for p in config.archive_dir.iterdir() if p.suffix == ".zip"]
    assert [p.read_bytes() == first_bytes for p in archived] == [True]  # the delivered bytes, not the new file
    assert first.exists() and first.read_bytes() != first_bytes  # the replacement waits in the watch folder

    scp.status_for = lambda ds: 0x0000
    [again] = process_all(config)
    assert again.state is ZipState.DELIVERED
    assert set(second_uids) <= set(scp.stored)


def test_stray_deliveries_are_adopted_only_by_the_zip_that_made_them(tmp_path, scp):  # noqa: F811
    config = make_config(tmp_path, scp.port)
    with Ledger(config.state_db) as ledger:
        # A crash of another export.zip, before its hash was known, left rows without a ZIP record.
        ledger.record_delivery(
            config.peer.key, None, "study.zip", sop_instance_uid="1.2.3", sha256="ab" * 32, sop_class_uid="1.2",
            study_uid="1.2.3.4", series_uid="1.2.3.5", transfer_syntax="1.2.840.10008.1.2.1", status=0,
            outcome="stored", claim="1:2:3:4",
        )  # fmt: skip
    study_zip(tmp_path, "study.zip", seed=23)
    [outcome] = process_all(config)
    assert outcome.state is ZipState.DELIVERED
    with sqlite3.connect(config.state_db) as db:
        assert db.execute("SELECT zip_id FROM instances WHERE sop_instance_uid='1.2.3'").fetchall() == [(None,)]


def pipeline_for(config):
    ledger = Ledger(config.state_db)
    return ledger, Pipeline(config, ledger)


# --- 2: local I/O errors are no verdict; no instance is lost to its name ---------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A tmpfs with few inodes, as the work folder's file system (root only)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=16", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs: {made.stderr.decode().strip()}")
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_running_out_of_inodes_while_extracting_leaves_the_zip_pending_not_archived(tmp_path, scp, tiny_disk):  # noqa: F811
    config = make_config(tmp_path, scp.port)
    config = dataclasses.replace(config, work_dir=tiny_disk / "work")
    zip_path, uids = study_zip(tmp_path, "big.zip", seed=24, n_series=3, per_series=10, junk=False)

    [outcome] = process_all(config)

    assert outcome.state is ZipState.PENDING, outcome
    assert zip_path.exists() and not any(config.archive_dir.glob("*.zip"))
    assert str(tiny_disk / "work") in outcome.error and "inodes free" in outcome.error
    assert outcome.counts.skipped == 0  # nothing was judged "not DICOM" for want of an inode
    with Ledger(config.state_db) as ledger:
        [(_name, _peer, attempts, next_retry, error)] = ledger.pending()
        assert attempts == 1 and next_retry is not None and "No space left" in error


def test_an_entry_whose_path_the_file_system_cannot_hold_is_still_delivered(tmp_path, scp):  # noqa: F811
    config = make_config(tmp_path, scp.port)
    source = tmp_path / "one"
    [dicom] = write_study(source, seed=25, n_series=1, per_series=1, rows=8, cols=8)
    deep = "/".join(["D" * 200] * 20) + "/IM0001"  # 4 KB: longer than a path may be
    zip_path = config.watch_dir / "deep.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.write(dicom, deep)

    [outcome] = process_all(config)

    assert outcome.state is ZipState.DELIVERED, outcome
    assert (outcome.counts.found, outcome.counts.sent, outcome.counts.skipped) == (1, 1, 0)
    assert scp.stored == [str(dcmread(dicom).SOPInstanceUID)]


# --- 4: a copy that stalls is not failed for good ---------------------------------------------------------


def test_a_zip_whose_copy_stalled_stays_pending_and_is_delivered_once_complete(tmp_path, scp):  # noqa: F811
    config = make_config(tmp_path, scp.port, unreadable_zip_grace_seconds=600)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=26)
    whole = zip_path.read_bytes()
    zip_path.write_bytes(whole[: len(whole) // 2])  # the copy paused half way

    [first] = process_all(config)
    assert first.state is ZipState.PENDING and "still being copied" in first.error
    assert not list(config.failed_dir.glob("*")) and zip_path.exists()

    zip_path.write_bytes(whole)  # the copy resumed and finished
    [second] = process_all(config)
    assert second.state is ZipState.DELIVERED
    assert sorted(scp.stored) == sorted(uids)
    with Ledger(config.state_db) as ledger:
        assert ledger.pending() == []  # the look at the half copy is not left pending in --status


def test_an_unreadable_zip_unchanged_for_the_grace_period_is_failed(tmp_path, scp):  # noqa: F811
    config = make_config(tmp_path, scp.port, unreadable_zip_grace_seconds=600)
    (config.watch_dir).mkdir(parents=True, exist_ok=True)
    broken = config.watch_dir / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    [first] = process_all(config)
    assert first.state is ZipState.PENDING
    with sqlite3.connect(config.state_db) as db:  # the first look was ten minutes ago
        db.execute("UPDATE zips SET first_seen = first_seen - 601")
    [second] = process_all(config)
    assert second.state is ZipState.FAILED and (config.failed_dir / "broken.zip").exists()


# --- 7: a bug is not a verdict ------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [TypeError("a code error"), OSError(errno.EMFILE, "Too many open files")])
def test_an_unexpected_error_while_sending_leaves_the_zip_pending_with_its_history(
    tmp_path,
    scp,  # noqa: F811
    monkeypatch,
    caplog,
    error,
):
    config = make_config(tmp_path, scp.port)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=27)
    real = sender._send_one
    calls = []

    def flaky(assoc, lane, instance, mode, message_id):
        calls.append(instance.sop_instance_uid)
        if len(calls) == 3:
            raise error
        return real(assoc, lane, instance, mode, message_id)

    monkeypatch.setattr(sender, "_send_one", flaky)
    [outcome] = process_all(config)

    assert outcome.state is ZipState.PENDING, outcome
    assert zip_path.exists() and not list(config.failed_dir.glob("*"))
    with Ledger(config.state_db) as ledger:
        [(_name, _peer, attempts, next_retry, _error)] = ledger.pending()
        record = ledger.zip_by_file(zip_path.name, zip_path.stat().st_size, zip_path.stat().st_mtime, config.peer.key)
        assert record is not None and len(ledger.history(record.id)) == 1
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == (1 if isinstance(error, TypeError) else 0)

    monkeypatch.setattr(sender, "_send_one", real)
    [again] = process_all(config)
    assert again.state is ZipState.DELIVERED and sorted(set(scp.stored)) == sorted(uids)


def test_an_unexpected_error_during_extraction_is_retried_with_back_off_not_failed(tmp_path, scp, monkeypatch, caplog):  # noqa: F811
    config = make_config(tmp_path, scp.port, send_batch_size=1)
    zip_path, _ = study_zip(tmp_path, "study.zip", seed=28)
    real = delivery.detect
    seen = []

    def breaks_on_the_fourth(path, sha256, size):
        seen.append(path)
        if len(seen) == 4:
            raise RuntimeError("a bug in detection")
        return real(path, sha256, size)

    monkeypatch.setattr(delivery, "detect", breaks_on_the_fourth)
    [outcome] = process_all(config)

    assert outcome.state is ZipState.PENDING and "RuntimeError" in outcome.error
    assert "FileNotFoundError" not in caplog.text  # senders never lose their files under them
    assert not list(config.failed_dir.glob("*")) and zip_path.exists()
    with Ledger(config.state_db) as ledger:
        [(_name, _peer, attempts, next_retry, _error)] = ledger.pending()
        assert attempts == 1 and next_retry > time.time() + 30  # retry_base_seconds 60, not at once
    assert len([r for r in caplog.records if r.exc_info]) == 1


# --- 9: retry arithmetic and clock jumps --------------------------------------------------------------------


def test_back_off_never_overflows_and_stays_within_its_bounds():
    assert backoff_delay(1, 30, 1800) == 30
    assert backoff_delay(3, 30, 1800) == 120
    assert backoff_delay(5000, 1, 60) == 60


def test_a_zip_retried_a_thousand_times_is_still_postponed(tmp_path):
    config = make_config(tmp_path, free_port(), retry_base_seconds=1, retry_max_seconds=60)
    zip_path, _ = study_zip(tmp_path, "study.zip", seed=29)
    process_all(config)  # no peer: pending
    with sqlite3.connect(config.state_db) as db:
        db.execute("UPDATE zips SET attempts = 1100")
    [outcome] = process_all(config)
    assert outcome.state is ZipState.PENDING


def test_a_wall_clock_set_forward_does_not_give_up_at_once(tmp_path):
    config = make_config(tmp_path, free_port(), give_up_after_hours=24)
    study_zip(tmp_path, "study.zip", seed=30)
    process_all(config)
    with sqlite3.connect(config.state_db) as db:  # the clock jumped two days ahead since the first attempt
        db.execute("UPDATE zips SET first_seen = first_seen - 172800, updated = updated - 172800")
    [outcome] = process_all(config)
    assert outcome.state is ZipState.PENDING and not list(config.failed_dir.glob("*"))


def test_a_wall_clock_set_back_does_not_stall_the_retry(tmp_path):
    config = make_config(tmp_path, free_port())
    study_zip(tmp_path, "study.zip", seed=31)
    process_all(config)
    with sqlite3.connect(config.state_db) as db:  # the clock went back a day: next_retry is now far away
        db.execute("UPDATE zips SET next_retry = next_retry + 86400")
    ledger, pipeline = pipeline_for(config)
    with ledger:
        [ready] = list_zips(config.watch_dir)
        assert pipeline.due(ready)
        assert pipeline.next_retry_in() <= config.retry_max_seconds + 1


# --- issue 12: move_zip_to_archive: false (the original script's setting) -------------------------------------


def test_a_delivered_zip_left_in_the_watch_folder_is_never_sent_extracted_or_hashed_again(tmp_path, scp, monkeypatch):  # noqa: F811
    config = make_config(tmp_path, scp.port, move_zip_to_archive=False)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=32)
    assert run_once(config) is True
    assert zip_path.exists() and not any(config.archive_dir.glob("*.zip"))
    assert sorted(scp.stored) == sorted(uids)

    def no_hashing(fd):
        raise AssertionError("a kept ZIP must not be hashed again")

    monkeypatch.setattr(zipstart, "sha256_fd", no_hashing)
    assert run_once(config) is True
    assert len(scp.stored) == len(uids) and zip_path.exists()
    with Ledger(config.state_db) as ledger:
        assert ledger.zips_by_state() == {"delivered": 1}


# --- issue 12: counters that add up ---------------------------------------------------------------------------


def test_every_entry_of_a_zip_lands_in_exactly_one_counter(tmp_path, scp):  # noqa: F811
    config = make_config(tmp_path, scp.port)
    source = tmp_path / "src" / "mixed"
    files = write_study(source, seed=33, n_series=1, per_series=6, rows=8, cols=8)
    refused = str(dcmread(files[0]).SOPInstanceUID)
    scp.status_for = lambda ds: 0xC123 if str(ds.SOPInstanceUID) == refused else 0x0000
    entries = {f"STUDY/IM{n}": f.read_bytes() for n, f in enumerate(files)}
    entries["STUDY/COPY_OF_IM1"] = files[1].read_bytes()  # the same instance twice in the ZIP
    entries["broken_inner.zip"] = b"PK\x03\x04 not a zip"  # a nested ZIP that does not open
    entries.update(junk_entries())
    zip_path = config.watch_dir / "mixed.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    zip_path.write_bytes(zip_bytes(entries))
    file_entries = len(entries)

    [outcome] = process_all(config)

    c = outcome.counts
    assert c.found + c.skipped == file_entries, c
    assert c.found == c.sent + c.duplicates + c.failed + c.pending, c
    assert (c.sent, c.duplicates, c.failed, c.pending) == (5, 1, 1, 0)
    reason = json.loads((config.failed_dir / "mixed.zip.error.json").read_text())
    assert reason["counts"] == dataclasses.asdict(c)


def test_instances_never_attempted_are_pending_not_failed(tmp_path):
    config = make_config(tmp_path, free_port())
    study_zip(tmp_path, "study.zip", seed=34)
    [outcome] = process_all(config)
    assert outcome.state is ZipState.PENDING
    assert (outcome.counts.failed, outcome.counts.pending) == (0, 6)


# --- issue 12: the original script's state file ------------------------------------------------------------------

ORIGINAL_SCHEMA = """
CREATE TABLE processed_zip (zip_sha256 TEXT PRIMARY KEY, zip_name TEXT, processed_at TIMESTAMP);
CREATE TABLE uploaded_objects (sop_instance_uid TEXT, file_sha256 TEXT, zip_sha256 TEXT, file_path TEXT,
    status TEXT, uploaded_at TIMESTAMP, PRIMARY KEY (sop_instance_uid, file_sha256));
"""


def original_state(path, zips=(), objects=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(ORIGINAL_SCHEMA)
        db.executemany("INSERT INTO processed_zip VALUES (?, ?, CURRENT_TIMESTAMP)", zips)
        db.executemany("INSERT INTO uploaded_objects VALUES (?, ?, ?, ?, ?, CURRENT_TIMESTAMP)", objects)
    db.close()


def test_instances_the_original_script_uploaded_are_duplicates_and_nothing_is_sent(tmp_path, scp):  # noqa: F811
    config = make_config(tmp_path, scp.port)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=36)
    rows = [(u, "ab" * 32, "cd" * 32, f"/mnt/e/work/x/{n}.dcm", "OK", ) for n, u in enumerate(uids)]  # fmt: skip
    rows.append(("9.9.9", "ef" * 32, "cd" * 32, "/mnt/e/work/x/fail.dcm", "FAIL"))
    original_state(config.state_db, zips=[("cd" * 32, "old.zip")], objects=rows)

    assert run_once(config) is True

    assert scp.requests == 0 and (config.archive_dir / "study.zip").exists()
    assert list(config.state_db.parent.glob("*.before-upgrade")), "a backup of the original file is made first"


def test_a_zip_the_original_script_knew_only_by_its_hash_sends_nothing(tmp_path, scp, monkeypatch):  # noqa: F811
    config = make_config(tmp_path, scp.port, send_batch_size=1)
    zip_path, _ = study_zip(tmp_path, "study.zip", seed=37)
    sha = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    original_state(config.state_db, zips=[(sha, "study.zip")])
    stored = threading.Event()
    scp.status_for = lambda ds: (stored.set(), 0x0000)[1]
    hashing = zipstart.sha256_fd

    def slow_hash(fd):  # the hash comes late: the first batch is ready long before
        stored.wait(2)
        return hashing(fd)

    monkeypatch.setattr(zipstart, "sha256_fd", slow_hash)
    assert run_once(config) is True

    assert scp.requests == 0 and (config.archive_dir / "study.zip").exists()


def test_a_file_an_antivirus_removes_before_detection_leaves_the_zip_pending_not_archived(tmp_path, scp, monkeypatch):  # noqa: F811
    config = make_config(tmp_path, scp.port)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=38, junk=False)
    real = delivery.detect
    seen = []

    def quarantined_by_antivirus(path, sha256, size):
        seen.append(path)
        if len(seen) == 3:
            path.unlink()  # taken away between extraction and detection
        return real(path, sha256, size)

    monkeypatch.setattr(delivery, "detect", quarantined_by_antivirus)
    [outcome] = process_all(config)

    assert outcome.state is ZipState.PENDING and "not of the ZIP" in outcome.error, outcome
    assert zip_path.exists() and outcome.counts.skipped == 0

    monkeypatch.setattr(delivery, "detect", real)
    [again] = process_all(config)
    assert again.state is ZipState.DELIVERED and set(uids) <= set(scp.stored)


ORIGINAL_CONFIG = """\
paths:
  watch_dir: "{root}/incoming"
  work_dir: "{root}/work"
  archive_dir: "{root}/archive"
  state_db: "{root}/state/processed.sqlite3"

dicom:
  local_ae_title: "ZIPWATCHER"
  local_port: 4011          # Orthanc needs a known port
  peer_host: "127.0.0.1"
  peer_port: {port}
  peer_ae_title: "TESTPACS"
  max_pdu: 131072
  use_tls: false

behavior:
  dedup_policy: "uid_then_sha256"
  poll_interval_seconds: 5
  wait_zip_complete_seconds: 10
  send_batch_size: 128
  delete_extracted_after_upload: true
  move_zip_to_archive: true

logging:
  level: "DEBUG"
  file: "{root}/logs/uploader.log"
  enable_pynetdicom_debug: false
"""


def test_the_original_scripts_config_file_passes_check_as_it_is(tmp_path, scp, capsys):  # noqa: F811
    from zip2pacs.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(ORIGINAL_CONFIG.format(root=tmp_path, port=scp.port))

    assert main([str(path), "--check"]) == 0
    assert "Configuration" in capsys.readouterr().out


def test_status_before_the_first_start_leaves_the_original_state_file_untouched(tmp_path, scp, capsys):  # noqa: F811
    from zip2pacs.cli import main

    config_path = tmp_path / "config.yaml"
    config_path.write_text(ORIGINAL_CONFIG.format(root=tmp_path, port=scp.port))
    state = tmp_path / "state" / "processed.sqlite3"
    original_state(state, zips=[("cd" * 32, "old.zip")])
    before = state.read_bytes()

    assert main([str(config_path), "--status"]) == 0
    assert "first start backs it up and imports it" in capsys.readouterr().out
    assert state.read_bytes() == before


def test_a_zip_that_changed_since_it_looked_complete_is_left_for_the_next_scan_without_a_traceback(
    tmp_path,
    scp,  # noqa: F811
    caplog,
):
    config = make_config(tmp_path, scp.port)
    study_zip(tmp_path, "study.zip", seed=39)
    [ready] = list_zips(config.watch_dir)
    stale = dataclasses.replace(ready, mtime_ns=ready.mtime_ns - 1)  # what the scan saw before the last write
    with Ledger(config.state_db) as ledger:
        outcome = Pipeline(config, ledger).process_zip(stale)
    assert outcome.state is ZipState.PENDING and "changed since it was found complete" in outcome.error
    assert scp.requests == 0 and not [r for r in caplog.records if r.exc_info]
