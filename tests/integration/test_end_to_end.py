"""The command run as a subprocess against a real Orthanc; outcomes checked through Orthanc's REST API."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, build_context
from pynetdicom.status import code_to_category

from tests.factories import (
    fix_file_meta,
    layout_nested,
    make_study,
    make_zip,
    read_instance,
    valid_testdata_files,
    write_slowly,
)
from tests.integration.conftest import Orthanc, free_port, wait_until

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Storable:
    files: tuple[Path, ...]  # every valid DICOM file among pydicom's bundled ones
    uids: frozenset[str]  # the SOP Instance UIDs an Orthanc stores when sent those files one by one


def _send_one(ae: AE, port: int, path: Path) -> bool:
    """C-STORE one file, re-encoded by pydicom, then as its raw bytes; return True when a store was accepted."""
    ds = read_instance(path)
    if ds is None:
        return False
    try:
        ds = fix_file_meta(ds)
        syntax = ds.file_meta.TransferSyntaxUID
        context = build_context(ds.SOPClassUID, [syntax])
    except Exception:  # noqa: BLE001 - a UID pydicom cannot use; Orthanc would never get it
        return False
    for payload in (ds, path):
        assoc = ae.associate("127.0.0.1", port, contexts=[context], ae_title=Orthanc.aet)
        if not assoc.is_established:
            continue
        # Without it each C-STORE waits ~40 ms on Nagle and delayed ACKs.
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            status = assoc.send_c_store(payload)
        except Exception:  # noqa: BLE001 - no accepted context, or a dataset pydicom cannot encode
            status = None
        finally:
            if assoc.is_established:
                assoc.release()
        if not status:
            return False  # no answer (rtplan_truncated.dcm): the raw bytes would wait just as long
        if code_to_category(status.Status) in ("Success", "Warning"):
            return True
    return False


@pytest.fixture(scope="session")
def storable(orthanc_factory: Callable[[str], Orthanc]) -> Storable:
    """Learn which bundled files Orthanc can store by sending each to a second, reference Orthanc with pynetdicom."""
    reference = orthanc_factory("reference")
    ae = AE(ae_title="REFERENCE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 3  # rtplan_truncated.dcm gets no answer
    loggers = [logging.getLogger(name) for name in ("pynetdicom", "pydicom")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)  # refusals, odd encodings and encoding failures are expected here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            files = tuple(valid_testdata_files())
            for path in files:
                _send_one(ae, reference.dicom_port, path)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    uids = frozenset(reference.instances_uids())
    assert len(uids) > 50, "the reference Orthanc stored almost nothing; the check would prove little"
    return Storable(files, uids)


def _drop(zip_path: Path, incoming: Path, name: str | None = None) -> Path:
    """Move a finished ZIP into the watch folder in one rename, as a tool writing elsewhere first would."""
    target = incoming / (name or zip_path.name)
    shutil.copy2(zip_path, target.with_suffix(".part"))
    target.with_suffix(".part").rename(target)
    return target


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def test_every_storable_bundled_file_is_delivered_once_and_a_second_copy_of_the_zip_sends_nothing(
    workspace, run_cli, orthanc, storable, tmp_path
):
    tree = tmp_path / "export"
    layout_nested(storable.files, tree)
    zip_path = make_zip(tmp_path / "pydicom testdata.zip", tree, arc_root="EXPORT", junk=True)
    config = workspace.write_config(orthanc.dicom_port)

    _drop(zip_path, workspace.incoming)
    first = run_cli([config, "--once"], timeout=300)

    stored = orthanc.instances_uids()
    missing, extra = sorted(storable.uids - stored), sorted(stored - storable.uids)
    assert not missing and not extra, f"missing {missing}\nunexpected {extra}\n{_output(first)}"
    assert [p.name for p in workspace.files(workspace.archive, "*.zip")] == ["pydicom testdata.zip"], _output(first)
    assert workspace.files(workspace.failed) == []
    assert first.returncode == 0, _output(first)
    assert workspace.files(workspace.incoming) == []

    # Empty the PACS: if the ledger is honoured, the same instances under another ZIP name are not sent again.
    orthanc.clear()
    _drop(zip_path, workspace.incoming, "same export again.zip")
    second = run_cli([config, "--once"], timeout=300)

    assert second.returncode == 0, _output(second)
    assert orthanc.instance_count() == 0, _output(second)
    assert sorted(p.name for p in workspace.files(workspace.archive, "*.zip")) == [
        "pydicom testdata.zip",
        "same export again.zip",
    ]
    assert workspace.files(workspace.failed) == []


def test_daemon_takes_a_slowly_copied_zip_only_once_complete_and_stops_cleanly_on_sigterm(
    workspace, spawn_cli, orthanc, tmp_path
):
    files = make_study(tmp_path / "study", n_series=2, per_series=5, seed=7)
    uids = {dcmread(p).SOPInstanceUID for p in files}
    data = make_zip(tmp_path / "slow.zip", tmp_path / "study").read_bytes()
    config = workspace.write_config(orthanc.dicom_port, behavior={"wait_zip_complete_seconds": 1.5})
    daemon = spawn_cli([config])

    target = workspace.incoming / "slow.zip"
    write_slowly(target, data, seconds=3.0, chunks=12)  # pauses of 0.25 s, well under the 1.5 s quiet time
    assert daemon.poll() is None, daemon.stderr_path.read_text()
    assert orthanc.instance_count() == 0, "the ZIP was taken before it was complete"

    orthanc.wait_for_uids(uids, timeout=60)
    wait_until(lambda: (workspace.archive / "slow.zip").exists(), 30, "slow.zip in archive/")
    assert orthanc.instances_uids() == uids
    assert workspace.files(workspace.failed) == [], "the ZIP was judged corrupt while it was being copied"

    daemon.send_signal(signal.SIGTERM)
    try:
        code = daemon.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("the daemon did not stop within 10 s of SIGTERM", pytrace=False)
    assert code == 0, daemon.stderr_path.read_text()[-4000:]


def test_check_succeeds_against_a_running_orthanc(workspace, run_cli, orthanc):
    config = workspace.write_config(orthanc.dicom_port)

    result = run_cli([config, "--check"], timeout=60)

    assert result.returncode == 0, _output(result)


def test_check_fails_clearly_against_a_closed_port(workspace, run_cli):
    port = free_port()  # nobody listens there
    config = workspace.write_config(port)

    result = run_cli([config, "--check"], timeout=60)

    said = (result.stdout + result.stderr).lower()
    assert result.returncode == 1, _output(result)
    assert str(port) in said or "connect" in said, _output(result)
    assert "traceback" not in said, _output(result)


def test_config_with_a_misspelt_key_exits_2_naming_the_key_without_a_traceback(workspace, run_cli):
    config = workspace.write_config(4242, dicom={"peer_prot": 4242})

    result = run_cli([config, "--check"], timeout=60)

    assert result.returncode == 2, _output(result)
    assert "peer_prot" in result.stdout + result.stderr, _output(result)
    assert "Traceback" not in result.stderr, _output(result)


def test_once_delivers_a_study_in_several_transfer_syntaxes_to_dcmtk_storescp(workspace, run_cli, storescp, tmp_path):
    files = []
    for seed, syntax in enumerate((ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless)):
        files += make_study(tmp_path / "export", n_series=1, per_series=2, seed=seed, transfer_syntax=syntax)
    uids = {dcmread(p).SOPInstanceUID for p in files}
    _drop(make_zip(tmp_path / "mixed.zip", tmp_path / "export"), workspace.incoming)
    config = workspace.write_config(storescp.port, dicom={"peer_ae_title": storescp.aet})

    result = run_cli([config, "--once"], timeout=120)

    assert result.returncode == 0, _output(result)
    assert {dcmread(p).SOPInstanceUID for p in storescp.files()} == uids, _output(result)
    assert (workspace.archive / "mixed.zip").exists()
