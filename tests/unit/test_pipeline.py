"""Pipeline and service loop against a real in-process pynetdicom Storage SCP that records what it receives."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from zip2pacs import zipstart
from zip2pacs.config import parse_config
from zip2pacs.daemon import run_once
from zip2pacs.intake import list_zips
from zip2pacs.ledger import Ledger, ZipState
from zip2pacs.pipeline import Pipeline
from zip2pacs.synth import write_study, zip_folder


class RecordingSCP:
    """A Storage SCP that records each C-STORE and answers ``status_for(dataset)``."""

    def __init__(self):
        self.stored: list[str] = []
        self.requests = 0
        self.associations = 0
        self.status_for = lambda ds: 0x0000
        self.lock = threading.Lock()
        ae = AE(ae_title="TESTPACS")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.handle), (evt.EVT_ESTABLISHED, self.count)],
        )
        self.port = self.server.server_address[1]

    def handle(self, event):
        ds = event.dataset
        status = self.status_for(ds)
        with self.lock:
            self.requests += 1
            if status in (0x0000, 0xB000):
                self.stored.append(str(ds.SOPInstanceUID))
        return status

    def count(self, event):
        with self.lock:
            self.associations += 1

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def scp():
    server = RecordingSCP()
    yield server
    server.stop()


def make_config(root: Path, port: int, **behavior):
    raw = {
        "dicom": {
            "peer_port": port,
            "peer_ae_title": "TESTPACS",
            "acse_timeout": 5,
            "dimse_timeout": 5,
            "network_timeout": 5,
        },
        # unreadable ZIPs are judged at once here; tests of the grace period set it
        "behavior": {
            "wait_zip_complete_seconds": 0,
            "retry_base_seconds": 60,
            "unreadable_zip_grace_seconds": 0,
            **behavior,
        },
        "limits": {"min_free_disk_mb": 0},
    }
    return parse_config(raw, root / "config.yaml")


def study_zip(root: Path, name: str, seed: int, junk: bool = True, n_series: int = 2, per_series: int = 3) -> Path:
    source = root / "src" / name
    files = write_study(source, seed=seed, n_series=n_series, per_series=per_series, rows=8, cols=8)
    if junk:
        (source / "README.TXT").write_text("Viewer instructions")
        (source / "autorun.inf").write_bytes(b"[autorun]\r\n")
    path = zip_folder(source, root / "incoming" / name)
    return path, [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def process_all(config):
    with Ledger(config.state_db) as ledger:
        pipeline = Pipeline(config, ledger)
        return [pipeline.process_zip(z) for z in list_zips(config.watch_dir)]


def test_zip_is_delivered_archived_and_recorded(tmp_path, scp):
    config = make_config(tmp_path, scp.port)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=1)
    [outcome] = process_all(config)
    assert outcome.state is ZipState.DELIVERED
    assert sorted(scp.stored) == sorted(uids)
    assert (outcome.counts.found, outcome.counts.sent, outcome.counts.skipped) == (6, 6, 2)
    assert not zip_path.exists() and (config.archive_dir / "study.zip").exists()
    assert list(config.work_dir.iterdir()) == []
    with Ledger(config.state_db) as ledger:
        assert ledger.instance_count() == 6
        assert ledger.zips_by_state() == {"delivered": 1}


def test_same_zip_again_is_archived_as_duplicate_without_sending(tmp_path, scp):
    config = make_config(tmp_path, scp.port)
    zip_path, _ = study_zip(tmp_path, "study.zip", seed=1)
    copy = tmp_path / "copy.zip"
    shutil.copy(zip_path, copy)
    process_all(config)
    shutil.move(copy, config.watch_dir / "study.zip")
    [outcome] = process_all(config)
    assert outcome.state is ZipState.DUPLICATE
    assert scp.requests == 6
    assert sorted(p.name for p in config.archive_dir.iterdir()) == ["study-1.zip", "study.zip"]


def test_other_zip_with_the_same_instances_sends_nothing(tmp_path, scp):
    config = make_config(tmp_path, scp.port)
    study_zip(tmp_path, "a.zip", seed=1)
    process_all(config)
    study_zip(tmp_path, "b.zip", seed=1, junk=False)  # other ZIP bytes, same instances
    [outcome] = process_all(config)
    assert outcome.state is ZipState.DELIVERED
    assert (outcome.counts.sent, outcome.counts.duplicates) == (0, 6)
    assert scp.requests == 6


def changed_copy_zip(root: Path, name: str, seed: int) -> Path:
    """A ZIP with the same SOP Instance UIDs as study ``seed`` but different bytes."""
    source = root / "changed" / name
    for path in write_study(source, seed=seed, rows=8, cols=8):
        ds = dcmread(path)
        ds.StudyDescription = "CORRECTED"
        ds.save_as(path)
    return zip_folder(source, root / "incoming" / name)


@pytest.mark.parametrize(("policy", "sent_again"), [("uid_then_sha256", 0), ("uid_only", 0), ("sha256_only", 6)])
def test_changed_instance_follows_the_dedup_policy(tmp_path, scp, policy, sent_again):
    config = make_config(tmp_path, scp.port, dedup_policy=policy)
    study_zip(tmp_path, "a.zip", seed=3)
    process_all(config)
    changed_copy_zip(tmp_path, "b.zip", seed=3)
    [outcome] = process_all(config)
    assert outcome.counts.changed == 6
    assert outcome.counts.sent == sent_again
    assert scp.requests == 6 + sent_again


def test_file_twice_in_one_zip_is_sent_once(tmp_path, scp):
    config = make_config(tmp_path, scp.port, dedup_policy="sha256_only")
    zip_path, uids = study_zip(tmp_path, "a.zip", seed=4, junk=False)
    with zipfile.ZipFile(zip_path, "a") as zf:
        first = zf.namelist()[0]
        zf.writestr("copy/of/" + first.split("/")[-1] + ".bak", zf.read(first))
    [outcome] = process_all(config)
    assert (outcome.counts.found, outcome.counts.sent, outcome.counts.duplicates) == (7, 6, 1)


def test_corrupt_zip_is_quarantined_with_a_reason_and_never_deleted(tmp_path, scp):
    config = make_config(tmp_path, scp.port)
    config.watch_dir.mkdir(parents=True)
    (config.watch_dir / "broken.zip").write_bytes(b"PK\x03\x04 this is not really a zip" * 10)
    [outcome] = process_all(config)
    assert outcome.state is ZipState.FAILED
    assert (config.failed_dir / "broken.zip").read_bytes().startswith(b"PK\x03\x04")
    reason = json.loads((config.failed_dir / "broken.zip.error.json").read_text())
    assert "not a readable ZIP" in reason["reason"]
    assert scp.requests == 0


def test_zip_without_dicom_is_quarantined(tmp_path, scp):
    config = make_config(tmp_path, scp.port)
    config.watch_dir.mkdir(parents=True)
    with zipfile.ZipFile(config.watch_dir / "docs.zip", "w") as zf:
        zf.writestr("report.pdf", b"%PDF-1.4 not dicom")
    [outcome] = process_all(config)
    assert outcome.state is ZipState.FAILED
    reason = json.loads((config.failed_dir / "docs.zip.error.json").read_text())
    assert reason["reason"] == "no DICOM instance in the ZIP"
    assert reason["entries"][0]["name"] == "report.pdf"


def test_peer_down_keeps_the_zip_pending_and_a_later_run_delivers_it_once(tmp_path, scp):
    closed = make_config(tmp_path, 1)  # nothing listens on port 1 on loopback
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=5)
    assert run_once(closed) is False
    assert zip_path.exists()
    with Ledger(closed.state_db) as ledger:
        [(name, _, attempts, next_retry, error)] = ledger.pending()
        assert (name, attempts) == ("study.zip", 1) and next_retry is not None and "unavailable" in error
    # The same ledger, now pointed at a live peer: everything goes, once.
    config = make_config(tmp_path, scp.port)
    assert run_once(config) is True
    assert sorted(scp.stored) == sorted(uids)
    assert (config.archive_dir / "study.zip").exists()


def test_out_of_resources_keeps_the_zip_pending_and_the_retry_sends_only_the_rest(tmp_path, scp):
    config = make_config(tmp_path, scp.port)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=6)
    refused = set(uids[3:])
    scp.status_for = lambda ds: 0xA700 if str(ds.SOPInstanceUID) in refused else 0x0000
    [outcome] = process_all(config)
    assert outcome.state is ZipState.PENDING and zip_path.exists()
    assert 3 <= len(scp.stored) < 6
    scp.status_for = lambda ds: 0x0000
    before = list(scp.stored)
    [outcome] = process_all(config)
    assert outcome.state is ZipState.DELIVERED
    assert sorted(scp.stored) == sorted(uids)
    assert not set(before) & set(scp.stored[len(before) :]), "an instance was sent twice"


def test_permanent_refusal_moves_the_zip_to_failed_naming_instance_and_status(tmp_path, scp):
    config = make_config(tmp_path, scp.port)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=7)
    scp.status_for = lambda ds: 0xC123 if str(ds.SOPInstanceUID) == uids[0] else 0x0000
    [outcome] = process_all(config)
    assert outcome.state is ZipState.FAILED
    reason = json.loads((config.failed_dir / "study.zip.error.json").read_text())
    assert len(reason["entries"]) == 1
    assert uids[0] in reason["entries"][0]["problem"] and "0xC123" in reason["entries"][0]["problem"]
    assert reason["counts"]["sent"] == 5


def test_a_refusal_with_a_status_reads_in_the_reason_file_with_the_status_code_once(tmp_path, scp):
    config = make_config(tmp_path, scp.port)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=77)
    scp.status_for = lambda ds: 0xC000 if str(ds.SOPInstanceUID) == uids[0] else 0x0000
    [outcome] = process_all(config)
    assert outcome.state is ZipState.FAILED
    [entry] = json.loads((config.failed_dir / "study.zip.error.json").read_text())["entries"]
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assert entry["problem"] == f"SOP Instance UID {uids[0]}, SOP Class {ct}: 0xC000 Cannot Understand (streamed)"


def test_run_once_waits_for_a_zip_to_settle_before_taking_it(tmp_path, scp):
    config = make_config(tmp_path, scp.port, wait_zip_complete_seconds=0.3)
    study_zip(tmp_path, "study.zip", seed=8)
    assert run_once(config) is True
    assert len(scp.stored) == 6


def test_parallel_associations_deliver_every_instance_exactly_once(tmp_path, scp):
    config = parse_config(
        {
            "dicom": {"peer_port": scp.port, "peer_ae_title": "TESTPACS", "max_associations": 3},
            "behavior": {"wait_zip_complete_seconds": 0, "send_batch_size": 2},
            "limits": {"min_free_disk_mb": 0},
        },
        tmp_path / "config.yaml",
    )
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=9, n_series=3, per_series=5)
    [outcome] = process_all(config)
    assert outcome.state is ZipState.DELIVERED
    assert sorted(scp.stored) == sorted(uids) and scp.requests == 15
    with Ledger(config.state_db) as ledger:
        assert ledger.instance_count() == 15


def test_one_association_carries_every_batch_of_a_zip(tmp_path, scp):
    config = make_config(tmp_path, scp.port, send_batch_size=2)
    # Reuse across batches, not the ramp: on a slow machine the ramp may add one once 4 results took 0.15 s.
    config = config.__class__(**{**config.__dict__, "max_associations": 1})
    _, uids = study_zip(tmp_path, "study.zip", seed=10, n_series=2, per_series=4)

    [outcome] = process_all(config)

    assert outcome.state is ZipState.DELIVERED
    assert sorted(scp.stored) == sorted(uids)
    assert scp.associations == 1  # four batches, one association


def test_instances_sent_before_the_zip_hash_is_known_are_recorded_under_the_zip(tmp_path, scp, monkeypatch):
    config = make_config(tmp_path, scp.port, send_batch_size=1)
    _, uids = study_zip(tmp_path, "study.zip", seed=11)
    hashing = zipstart.sha256_fd
    sent_some = threading.Event()
    scp.status_for = lambda ds: (sent_some.set(), 0x0000)[1]

    def slow_hash(fd):
        sent_some.wait(10)  # the hash is known only after the first instance was stored
        return hashing(fd)

    monkeypatch.setattr(zipstart, "sha256_fd", slow_hash)
    [outcome] = process_all(config)

    assert outcome.state is ZipState.DELIVERED and sorted(scp.stored) == sorted(uids)
    with sqlite3.connect(config.state_db) as db:
        [(zip_id, sha)] = db.execute("SELECT id, sha256 FROM zips").fetchall()
        owners = db.execute("SELECT zip_id, COUNT(*) FROM instances GROUP BY zip_id").fetchall()
    assert owners == [(zip_id, len(uids))]
    with open(config.archive_dir / "study.zip", "rb") as archived:
        assert sha == hashing(archived.fileno())


def test_second_watcher_on_the_same_ledger_is_refused(tmp_path, scp):
    from zip2pacs.daemon import AlreadyRunning, single_instance

    config = make_config(tmp_path, scp.port)
    config.state_db.parent.mkdir(parents=True)
    with single_instance(config), pytest.raises(AlreadyRunning):
        run_once(config)


def test_leftover_extraction_folders_are_removed_at_start_and_other_files_kept(tmp_path, scp):
    config = make_config(tmp_path, scp.port)
    leftover = config.work_dir / "study-0123456789ab"
    (leftover / "a").mkdir(parents=True)
    (leftover / "a" / "IM1").write_bytes(b"x")
    (config.work_dir / "notes").mkdir()
    assert run_once(config) is True
    assert not leftover.exists() and (config.work_dir / "notes").exists()


def test_retry_failed_moves_zips_back_and_the_next_run_tries_again(tmp_path, scp):
    from zip2pacs.report import status_text
    from zip2pacs.retry import retry_failed

    config = make_config(tmp_path, scp.port)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=10)
    scp.status_for = lambda ds: 0xC000
    assert run_once(config) is False
    assert (config.failed_dir / "study.zip").exists()
    with Ledger(config.state_db) as ledger:
        text = status_text(ledger, config)
    assert "1 failed" in text and "study.zip: 6 instance(s) refused" in text
    assert retry_failed(config) == [config.watch_dir / "study.zip"]
    scp.status_for = lambda ds: 0x0000
    assert run_once(config) is True
    assert sorted(scp.stored) == sorted(uids)
    with Ledger(config.state_db) as ledger:
        assert ledger.zips_by_state() == {"delivered": 1}


def test_zip_undelivered_past_the_budget_moves_to_failed_with_its_history(tmp_path):
    config = make_config(tmp_path, 1, give_up_after_hours=1e-9)
    zip_path, _ = study_zip(tmp_path, "study.zip", seed=11)
    assert run_once(config) is False
    reason = json.loads((config.failed_dir / "study.zip.error.json").read_text())
    assert reason["reason"].startswith("gave up after 1 attempt(s); last error: peer unavailable")
    assert reason["attempts"] == 1 and reason["counts"]["found"] == 6
    assert [h["state"] for h in reason["history"]] == ["failed"]
    assert "connection refused" in reason["history"][0]["error"]


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_random_zips_never_escape_the_loop_and_never_vanish(tmp_path_factory, scp):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    names = st.text(st.sampled_from("ab/\\.:~ \u00e9C"), min_size=1, max_size=12)
    entries = st.lists(st.tuples(names, st.binary(max_size=300)), max_size=5)

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(entries=entries, raw=st.one_of(st.none(), st.binary(max_size=200)))
    def check(entries, raw):
        root = tmp_path_factory.mktemp("random")
        config = make_config(root, scp.port)
        config.watch_dir.mkdir(parents=True)
        path = config.watch_dir / "random.zip"
        if raw is not None:
            path.write_bytes(raw)
        else:
            with zipfile.ZipFile(path, "w") as zf:
                for name, data in entries:
                    zf.writestr(name, data)
        assert run_once(config) is False  # nothing in it is DICOM: never "delivered"
        assert (config.failed_dir / "random.zip").exists(), "the ZIP must be kept in failed/"
        assert (config.failed_dir / "random.zip.error.json").exists()
        outside = [p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(root / "state")]
        assert all(p.parent in (config.failed_dir, root / "logs") for p in outside), outside

    check()


def test_refused_file_is_replaced_by_another_copy_of_the_same_instance_in_the_zip(tmp_path, scp):
    config = make_config(tmp_path, scp.port)
    source = tmp_path / "src" / "twins"
    files = write_study(source, seed=12, n_series=1, per_series=3, rows=8, cols=8)
    broken = dcmread(files[0])
    broken.StudyDescription = "BROKEN COPY"
    broken.save_as(source / "AAA_first_copy")  # sorted first in the ZIP
    zip_folder(source, config.watch_dir / "twins.zip")
    scp.status_for = lambda ds: 0xC000 if ds.get("StudyDescription") == "BROKEN COPY" else 0x0000
    [outcome] = process_all(config)
    assert outcome.state is ZipState.DELIVERED
    assert sorted(scp.stored) == sorted(str(dcmread(f).SOPInstanceUID) for f in files)
    # The refused copy counts once, as a duplicate of the instance its twin delivered.
    assert (outcome.counts.found, outcome.counts.sent, outcome.counts.duplicates, outcome.counts.failed) == (4, 3, 1, 0)
    assert outcome.counts.skipped == 0


def test_no_patient_name_or_birth_date_in_any_log_line_even_at_debug(tmp_path, scp, caplog):
    config = make_config(tmp_path, scp.port)
    source = tmp_path / "src" / "phi"
    write_study(source, seed=13, n_series=1, per_series=2, rows=8, cols=8, patient=("SECRET^NAME", "PID0013"))
    (source / "NOUID").write_bytes(b"\x08\x00\x20\x00\x08\x00\x00\x0020260101")  # a fragment: date, no UIDs
    zip_folder(source, config.watch_dir / "phi.zip")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("pynetdicom").setLevel(logging.DEBUG)
        try:
            [outcome] = process_all(config)
        finally:
            logging.getLogger("pynetdicom").setLevel(logging.NOTSET)
    assert outcome.state is ZipState.DELIVERED
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "phi.zip" in text and len(caplog.records) > 10
    assert "SECRET" not in text and "19700101" not in text


def test_shutdown_during_extraction_leaves_the_zip_pending_never_judged_on_part_of_it(tmp_path, scp, monkeypatch):
    import threading
    import time

    from zip2pacs.delivery import Delivery

    config = make_config(tmp_path, scp.port)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=14)
    stop = threading.Event()
    examine = Delivery._examine

    examined = []

    def examine_then_stop(self, f):
        examined.append(f.arcname)
        examine(self, f)
        stop.set()  # SIGTERM arrives once the first file is out of the ZIP

    monkeypatch.setattr(Delivery, "_examine", examine_then_stop)
    with Ledger(config.state_db) as ledger:
        [z] = list_zips(config.watch_dir)
        outcome = Pipeline(config, ledger, stop).process_zip(z)
        record = ledger.zip_by_file(z.path.name, z.size, z.mtime, config.peer.key)
    assert outcome.state is ZipState.PENDING and zip_path.exists()
    assert len(examined) == 2, "extraction must stop at the shutdown, not read the rest of the ZIP"
    assert record.next_retry <= time.time(), "an interrupted ZIP goes on at the next start, without back-off"
    assert len(scp.stored) < len(uids)
    monkeypatch.undo()
    assert run_once(config) is True
    assert sorted(scp.stored) == sorted(uids)


def test_status_says_when_a_pending_zip_was_moved_away_by_hand(tmp_path):
    from zip2pacs.report import status_text

    config = make_config(tmp_path, 1)
    zip_path, _ = study_zip(tmp_path, "study.zip", seed=15)
    assert run_once(config) is False
    with Ledger(config.state_db) as ledger:
        assert "1 attempt(s), next " in status_text(ledger, config)
        zip_path.rename(tmp_path / "elsewhere.zip")
        assert "1 attempt(s), no longer in the watch folder" in status_text(ledger, config)
