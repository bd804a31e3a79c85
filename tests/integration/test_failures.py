"""Fault injection: a peer that is down, dies mid-ZIP or refuses a SOP class; a watcher killed mid-ZIP."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.integration.conftest import Orthanc, wait_until
from zip2pacs.synth import uid, write_study, zip_folder

pytestmark = pytest.mark.integration


def study_zip(workspace, name: str, seed: int, per_series: int, n_series: int = 2, folder: Path | None = None):
    """Write a generated study as a ZIP; return its path and its SOP Instance UIDs."""
    source = workspace.root / "src" / name
    files = write_study(source, seed=seed, n_series=n_series, per_series=per_series, rows=16, cols=16)
    path = zip_folder(source, (folder or workspace.root / "staging") / name)
    return path, {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def drop(zip_path: Path, workspace) -> Path:
    """Move a finished ZIP into incoming/ in one rename, as a copy tool finishing would."""
    target = workspace.incoming / zip_path.name
    zip_path.rename(target)
    return target


def log_says(workspace, text: str) -> bool:
    return workspace.log_file.exists() and text in workspace.log_file.read_text()


def ledger_uids(workspace) -> Counter[str]:
    db = sqlite3.connect(workspace.state_db)
    try:
        return Counter(row[0] for row in db.execute("SELECT sop_instance_uid FROM instances"))
    finally:
        db.close()


def stop(proc, timeout: float = 20) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def test_peer_down_when_the_zip_arrives_and_up_later_gets_it_after_a_retry_once(workspace, spawn_cli, tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc-late"), "late")  # its ports are known, nothing listens yet
    config = workspace.write_config(server.dicom_port)
    zip_path, uids = study_zip(workspace, "late.zip", seed=21, per_series=4)
    proc = spawn_cli([config])
    try:
        drop(zip_path, workspace)
        wait_until(lambda: log_says(workspace, "attempt 1 incomplete"), 30, "a failed first attempt")
        assert (workspace.incoming / "late.zip").exists(), "the ZIP must wait in incoming/ while the peer is down"
        server.start()
        server.wait_for_uids(uids, timeout=60)
        wait_until(lambda: (workspace.archive / "late.zip").exists(), 30, "the ZIP in archive/")
        assert server.instance_count() == len(uids)
        assert ledger_uids(workspace) == Counter(uids)
        assert stop(proc) == 0
    finally:
        server.stop()


def test_orthanc_killed_mid_zip_and_restarted_ends_with_every_instance_stored(workspace, spawn_cli, tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc-crash"), "crash").start()
    config = workspace.write_config(server.dicom_port, behavior={"send_batch_size": 50})
    zip_path, uids = study_zip(workspace, "big.zip", seed=22, per_series=150)
    proc = spawn_cli([config])
    try:
        drop(zip_path, workspace)
        wait_until(lambda: server.instance_count() >= 40, 60, "the first instances on Orthanc", interval=0.01)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        wait_until(lambda: log_says(workspace, "incomplete"), 60, "the interrupted attempt in the log")
        server.start()  # same storage, same ports
        server.wait_for_uids(uids, timeout=90)
        wait_until(lambda: (workspace.archive / "big.zip").exists(), 60, "the ZIP in archive/")
        assert server.instances_uids() == uids
        assert set(ledger_uids(workspace)) == uids
        assert stop(proc) == 0
    finally:
        server.stop()


class CountingSCP:
    """An in-process Storage SCP that counts C-STORE requests per SOP Instance UID."""

    def __init__(self, delay: float = 0.004):
        self.received: Counter[str] = Counter()
        self.associations = 0
        self.lock = threading.Lock()
        self.delay = delay
        ae = AE(ae_title="ORTHANC")
        ae.supported_contexts = AllStoragePresentationContexts
        handlers = [(evt.EVT_C_STORE, self.handle), (evt.EVT_ESTABLISHED, self.established)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def established(self, event) -> None:
        with self.lock:
            self.associations += 1

    def handle(self, event) -> int:
        threading.Event().wait(self.delay)  # a PACS that takes a few ms per instance
        with self.lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] += 1
        return 0x0000

    def total(self) -> int:
        with self.lock:
            return sum(self.received.values())


def test_watcher_killed_mid_zip_and_restarted_delivers_everything_without_resending(workspace, spawn_cli, run_cli):
    scp = CountingSCP()
    try:
        config = workspace.write_config(scp.port, behavior={"send_batch_size": 40})
        zip_path, uids = study_zip(workspace, "big.zip", seed=23, per_series=150)
        proc = spawn_cli([config])
        drop(zip_path, workspace)
        wait_until(lambda: scp.total() >= 60, 60, "the first C-STOREs", interval=0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        before, opened = scp.total(), scp.associations
        assert 60 <= before < len(uids), "the kill must land mid-ZIP"
        assert (workspace.incoming / "big.zip").exists()
        assert any(workspace.work.iterdir()), "the killed run leaves its extraction folder behind"

        done = run_cli([config, "--once"])
        assert done.returncode == 0, done.stderr[-3000:]
        assert set(scp.received) == uids
        resent = {u: n for u, n in scp.received.items() if n > 1}
        # Only an instance in flight at the kill (stored, its response not yet recorded) can go twice: at most
        # one per association the ramp had opened by then.
        assert len(resent) <= opened, f"sent twice: {resent} ({opened} association(s) open at the kill)"
        assert ledger_uids(workspace) == Counter(uids)
        assert (workspace.archive / "big.zip").exists()
        assert [p.name for p in workspace.work.iterdir()] == [], "leftover extraction folders are cleaned up"
    finally:
        scp.server.shutdown()


def test_peer_refusing_a_sop_class_sends_the_rest_and_quarantines_the_zip_naming_the_instance(
    workspace, run_cli, orthanc
):
    source = workspace.root / "src" / "mixed"
    files = write_study(source, seed=24, n_series=1, per_series=3, rows=8, cols=8)
    odd = dcmread(files[0])
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9.7777.1"  # private
    odd.SOPInstanceUID = odd.file_meta.MediaStorageSOPInstanceUID = uid("odd", 24)
    odd.save_as(source / "ODD0001")
    zip_folder(source, workspace.incoming / "mixed.zip")
    config = workspace.write_config(orthanc.dicom_port)

    done = run_cli([config, "--once"])
    assert done.returncode == 1
    expected = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert orthanc.instances_uids() == expected
    reason = json.loads((workspace.failed / "mixed.zip.error.json").read_text())
    assert reason["reason"] == f"1 instance(s) refused by ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    [entry] = reason["entries"]
    assert entry["name"] == "ODD0001"
    assert uid("odd", 24) in entry["problem"] and "1.2.826.0.1.3680043.9.7777.1" in entry["problem"]
    assert "no presentation context" in entry["problem"]
    assert (workspace.failed / "mixed.zip").exists()
    status = run_cli([config, "--status"])
    assert "1 failed" in status.stdout and "mixed.zip" in status.stdout


def test_status_shows_a_pending_zip_with_its_next_retry_and_error(workspace, run_cli):
    config = workspace.write_config(1, behavior={"retry_base_seconds": 600, "retry_max_seconds": 600})
    study_zip(workspace, "waiting.zip", seed=25, per_series=1, folder=workspace.incoming)
    assert run_cli([config, "--once"]).returncode == 1
    out = run_cli([config, "--status"]).stdout
    assert "1 pending" in out
    assert "waiting.zip -> ORTHANC@127.0.0.1:1: 1 attempt(s), next" in out
    assert "connection refused" in out
