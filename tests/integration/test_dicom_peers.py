"""Speaking DICOM like dcmtk: decompression on refusal, refused SOP classes, >128 contexts, TLS, a peer that stalls."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from tests.certificates import Pki, make_pki
from tests.factories import make_study, make_zip
from tests.integration.conftest import Orthanc, StoreSCP, wait_until
from zip2pacs.contexts import LOSSLESS_COMPRESSED, plan_groups
from zip2pacs.sniff import Instance

pytestmark = pytest.mark.integration

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
LOSSLESS_FILES = (
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless, first-order prediction (.70)
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless (.80)
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless (.90)
    "MR_small_RLE.dcm",  # RLE lossless (1.2.840.10008.1.2.5)
    "SC_rgb_rle.dcm",
)
LOSSY_FILES = (
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline (.50)
    "JPEG2000.dcm",  # JPEG 2000 (.91)
    "JPEGLSNearLossless_08.dcm",  # JPEG-LS near-lossless (.81)
)


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def _drop(zip_path: Path, incoming: Path) -> Path:
    """Move a finished ZIP into the watch folder in one rename."""
    target = incoming / zip_path.name
    shutil.copy2(zip_path, target.with_suffix(".part"))
    target.with_suffix(".part").rename(target)
    return target


def _copies(names: tuple[str, ...], folder: Path) -> list[Path]:
    """Copy pydicom test files, each with its own SOP Instance UID and the tags Orthanc requires.

    Several (MR_small_*) share one UID, and some lack a patient or study: Orthanc would keep one or refuse them.
    Pixel data are kept as they are, still compressed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        ds = dcmread(get_testdata_file(name))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = ds.get("PatientID") or "DECOMPRESS"
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or generate_uid()
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or generate_uid()
        ds.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
    return paths


def _stored_file(orthanc: Orthanc, sop_instance_uid: str) -> Dataset:
    """Fetch the file Orthanc stored for a SOP Instance UID and parse it."""
    query = {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
    [found] = orthanc.request("POST", "/tools/find", query)  # type: ignore[misc]
    with urllib.request.urlopen(f"{orthanc.url}/instances/{found}/file", timeout=30) as rsp:
        return dcmread(BytesIO(rsp.read()))


@pytest.fixture(scope="module")
def uncompressed_orthanc(configured_orthanc_factory: Callable[[str, dict[str, object]], Orthanc]) -> Orthanc:
    """An Orthanc that accepts only the two uncompressed little-endian transfer syntaxes."""
    orthanc = configured_orthanc_factory("uncompressed", {"AcceptedTransferSyntaxes": UNCOMPRESSED})
    return orthanc


def test_orthanc_accepting_only_uncompressed_gets_compressed_files_decoded_to_the_same_pixels(
    workspace, run_cli, uncompressed_orthanc, tmp_path
) -> None:
    orthanc = uncompressed_orthanc
    orthanc.clear()
    files = _copies(LOSSLESS_FILES + LOSSY_FILES, tmp_path / "export")
    _drop(make_zip(tmp_path / "compressed.zip", tmp_path / "export", junk=False), workspace.incoming)
    config = workspace.write_config(orthanc.dicom_port, behavior={"decompress": "lossy"})

    result = run_cli([config, "--once"], timeout=180)

    assert result.returncode == 0, _output(result)
    assert (workspace.archive / "compressed.zip").exists(), _output(result)
    for path in files:
        original = dcmread(path)
        stored = _stored_file(orthanc, original.SOPInstanceUID)
        assert stored.file_meta.TransferSyntaxUID in UNCOMPRESSED, path.name
        expected, got = original.pixel_array, stored.pixel_array
        assert got.shape == expected.shape, path.name
        if original.file_meta.TransferSyntaxUID in LOSSLESS_COMPRESSED:
            assert np.array_equal(got, expected), f"{path.name}: pixels differ"
        else:  # decoded once by the sender and once here, by the same decoder: identical too
            assert np.array_equal(got, expected), f"{path.name}: pixels differ"


def test_under_the_default_lossless_policy_a_lossy_file_fails_naming_its_sop_class_and_syntax(
    workspace, run_cli, uncompressed_orthanc, tmp_path
) -> None:
    orthanc = uncompressed_orthanc
    orthanc.clear()
    files = _copies(("MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"), tmp_path / "export")
    _drop(make_zip(tmp_path / "mixed.zip", tmp_path / "export", junk=False), workspace.incoming)
    config = workspace.write_config(orthanc.dicom_port)

    result = run_cli([config, "--once"], timeout=120)

    assert result.returncode == 1, _output(result)
    [entry] = json.loads((workspace.failed / "mixed.zip.error.json").read_text())["entries"]
    assert entry["name"] == "SC_rgb_jpeg_dcmtk.dcm"
    assert "Secondary Capture Image Storage in JPEG Baseline (Process 1)" in entry["problem"], entry
    assert "behavior.decompress is 'lossless'" in entry["problem"], entry
    assert orthanc.instances_uids() == {dcmread(files[0]).SOPInstanceUID}


STORESCP_PROFILE = f"""\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = {ExplicitVRLittleEndian}
TransferSyntax2 = {ImplicitVRLittleEndian}

[[PresentationContexts]]
[CTAndMROnly]
PresentationContext1 = {Verification}\\Uncompressed
PresentationContext2 = {CTImageStorage}\\Uncompressed
PresentationContext3 = {MRImageStorage}\\Uncompressed

[[Profiles]]
[CTAndMROnly]
PresentationContexts = CTAndMROnly
"""


def test_an_instance_of_a_sop_class_storescp_refuses_fails_for_good_and_the_rest_are_stored(
    workspace, run_cli, storescp_factory: Callable[[list[str]], StoreSCP], tmp_path
) -> None:
    profile = tmp_path / "storescp.cfg"
    profile.write_text(STORESCP_PROFILE)
    scp = storescp_factory(["-xf", str(profile), "CTAndMROnly"])
    export = tmp_path / "export"
    kept = make_study(export, n_series=1, per_series=3, seed=1, sop_class=CTImageStorage)
    kept += make_study(export, n_series=1, per_series=2, seed=2, sop_class=MRImageStorage)
    refused = make_study(export, n_series=1, per_series=1, seed=3, sop_class=SecondaryCaptureImageStorage)
    _drop(make_zip(tmp_path / "three classes.zip", export, junk=False), workspace.incoming)
    config = workspace.write_config(scp.port, dicom={"peer_ae_title": scp.aet})

    result = run_cli([config, "--once"], timeout=120)

    assert result.returncode == 1, _output(result)
    assert {dcmread(p).SOPInstanceUID for p in scp.files()} == {dcmread(p).SOPInstanceUID for p in kept}
    [entry] = json.loads((workspace.failed / "three classes.zip.error.json").read_text())["entries"]
    assert dcmread(refused[0]).SOPInstanceUID in entry["problem"], entry
    assert "no presentation context for Secondary Capture Image Storage" in entry["problem"], entry
    with sqlite3.connect(workspace.state_db) as db:
        assert db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == len(kept)


def _tiny(folder: Path, sop_class: str, syntax: str) -> Path:
    """Write a pixel-less instance of a SOP class in a transfer syntax."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "CONTEXTS"
    ds.Modality = "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_batch_needing_more_than_128_presentation_contexts_is_delivered_completely(
    workspace, run_cli, storescp: StoreSCP, tmp_path
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts][:70]
    pairs = [(c, s) for c in classes for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)]
    files = [_tiny(export, sop_class, syntax) for sop_class, syntax in pairs]
    instances = [Instance(p, c, "", s, "", "", "", 0, True, 0) for p, (c, s) in zip(files, pairs, strict=True)]
    assert len({(i.sop_class_uid, i.transfer_syntax) for i in instances}) == 210
    assert len(plan_groups(instances)) >= 2  # more contexts than one association may carry
    _drop(make_zip(tmp_path / "many contexts.zip", export, junk=False), workspace.incoming)
    config = workspace.write_config(storescp.port, dicom={"peer_ae_title": storescp.aet})

    result = run_cli([config, "--once"], timeout=180)

    assert result.returncode == 0, _output(result)
    assert {dcmread(p).SOPInstanceUID for p in storescp.files()} == {dcmread(p).SOPInstanceUID for p in files}
    assert (workspace.archive / "many contexts.zip").exists()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_orthanc(configured_orthanc_factory: Callable[[str, dict[str, object]], Orthanc], pki: Pki) -> Orthanc:
    """An Orthanc speaking DICOM TLS only, with a certificate for 127.0.0.1 signed by the test CA."""
    return configured_orthanc_factory(
        "tls",
        {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki.server_cert),
            "DicomTlsPrivateKey": str(pki.server_key),
            "DicomTlsTrustedCertificates": str(pki.ca_file),
            "DicomTlsRemoteCertificateRequired": False,
        },
    )


def _tls_config(workspace, orthanc: Orthanc, ca_file: Path, name: str = "config.yaml", **tls: object):
    settings = {"ca_file": str(ca_file), **tls}
    return workspace.write_config(orthanc.dicom_port, name, dicom={"use_tls": True}, tls=settings)


def test_orthanc_with_dicom_tls_receives_the_files_and_check_says_so(workspace, run_cli, tls_orthanc, pki, tmp_path):
    tls_orthanc.clear()
    files = make_study(tmp_path / "export", n_series=1, per_series=3, seed=11)
    _drop(make_zip(tmp_path / "secure.zip", tmp_path / "export"), workspace.incoming)
    config = _tls_config(workspace, tls_orthanc, pki.ca_file)

    check = run_cli([config, "--check"], timeout=60)
    once = run_cli([config, "--once"], timeout=120)

    assert check.returncode == 0, _output(check)
    assert "over DICOM TLS" in check.stdout and "C-ECHO OK" in check.stdout, _output(check)
    assert once.returncode == 0, _output(once)
    assert tls_orthanc.instances_uids() == {dcmread(p).SOPInstanceUID for p in files}


def test_check_against_orthanc_with_dicom_tls_fails_clearly_with_a_wrong_ca(workspace, run_cli, tls_orthanc, pki):
    config = _tls_config(workspace, tls_orthanc, pki.other_ca_file)

    result = run_cli([config, "--check"], timeout=60)

    assert result.returncode == 1, _output(result)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("Association failed")]
    assert "TLS handshake failed: certificate verify failed" in line, _output(result)
    assert "Traceback" not in result.stdout + result.stderr, _output(result)


def test_orthanc_requiring_a_client_certificate_stores_from_a_watcher_that_presents_one(
    workspace, run_cli, configured_orthanc_factory, pki, tmp_path
):
    orthanc = configured_orthanc_factory(
        "tls-client-cert",
        {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki.server_cert),
            "DicomTlsPrivateKey": str(pki.server_key),
            "DicomTlsTrustedCertificates": str(pki.ca_file),  # signed our client certificate
            "DicomTlsRemoteCertificateRequired": True,
        },
    )
    files = make_study(tmp_path / "export", n_series=1, per_series=2, seed=12)
    _drop(make_zip(tmp_path / "signed.zip", tmp_path / "export"), workspace.incoming)
    anonymous = _tls_config(workspace, orthanc, pki.ca_file, "anonymous.yaml")
    config = _tls_config(workspace, orthanc, pki.ca_file, cert_file=str(pki.client_cert), key_file=str(pki.client_key))

    refused = run_cli([anonymous, "--check"], timeout=60)
    delivered = run_cli([config, "--once"], timeout=120)

    assert refused.returncode == 1, _output(refused)
    [line] = [line for line in refused.stdout.splitlines() if line.startswith("Association failed")]
    assert "client certificate" in line, _output(refused)
    assert delivered.returncode == 0, _output(delivered)
    assert orthanc.instances_uids() == {dcmread(p).SOPInstanceUID for p in files}


@pytest.fixture
def stalling_scp() -> Iterator[tuple[int, threading.Event, list[str]]]:
    """A Storage SCP whose C-STORE handler waits until the test sets the event: a peer that stops answering."""
    answer = threading.Event()
    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        answer.wait(60)
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="STALLING")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, UNCOMPRESSED)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield server.socket.getsockname()[1], answer, stored
    answer.set()
    server.shutdown()


def test_a_peer_that_stops_answering_times_out_the_zip_stays_pending_and_the_daemon_carries_on(
    workspace, spawn_cli, stalling_scp, tmp_path
) -> None:
    port, answer, stored = stalling_scp
    files = make_study(tmp_path / "export", n_series=1, per_series=2, seed=21)
    uids = {dcmread(p).SOPInstanceUID for p in files}
    config = workspace.write_config(
        port,
        dicom={"peer_ae_title": "STALLING", "dimse_timeout": 1, "network_timeout": 5},
        behavior={"retry_base_seconds": 1, "retry_max_seconds": 1},
    )
    daemon = spawn_cli([config])
    _drop(make_zip(tmp_path / "stalled.zip", tmp_path / "export"), workspace.incoming)

    wait_until(lambda: "attempt 1 incomplete" in _log(workspace), 30, "the first attempt to time out")
    assert "no response within 1 s (dimse_timeout)" in _log(workspace)
    assert daemon.poll() is None, daemon.stderr_path.read_text()[-3000:]
    assert (workspace.incoming / "stalled.zip").exists()
    assert workspace.files(workspace.archive) == [] and workspace.files(workspace.failed) == []
    with sqlite3.connect(workspace.state_db) as db:
        assert db.execute("SELECT state FROM zips").fetchall() == [("pending",)]

    answer.set()  # the peer answers again: the next retry delivers
    wait_until(lambda: (workspace.archive / "stalled.zip").exists(), 60, "stalled.zip in archive/")
    assert uids <= set(stored)
    assert daemon.poll() is None


def _log(workspace) -> str:
    return workspace.log_file.read_text(errors="replace") if workspace.log_file.exists() else ""
