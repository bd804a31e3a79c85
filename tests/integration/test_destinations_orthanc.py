"""Fan-out to real servers: an Orthanc over DIMSE beside an Orthanc with its DICOMweb plugin over STOW-RS (HTTPS)."""

from __future__ import annotations

import pytest

from tests.certificates import Pki
from tests.integration.conftest import DICOMWEB_PASSWORD, DICOMWEB_USER, DicomWebOrthanc, Orthanc, TlsProxy
from tests.unit.test_pipeline import study_zip
from zip2pacs import cli
from zip2pacs.config import parse_config
from zip2pacs.daemon import run_once
from zip2pacs.ledger import Ledger

pytestmark = pytest.mark.integration


def two_destinations(tmp_path, orthanc: Orthanc, https: TlsProxy, pki: Pki, password: str = DICOMWEB_PASSWORD):
    raw = {
        "behavior": {"wait_zip_complete_seconds": 0, "retry_base_seconds": 60, "unreadable_zip_grace_seconds": 0},
        "limits": {"min_free_disk_mb": 0},
        "destinations": [
            {
                "name": "local",
                "kind": "dimse",
                "peer_host": "127.0.0.1",
                "peer_port": orthanc.dicom_port,
                "peer_ae_title": orthanc.aet,
            },
            {
                "name": "cloud",
                "kind": "stowrs",
                "url": f"{https.url}/dicom-web",
                "ca_file": str(pki.ca_file),
                "username": DICOMWEB_USER,
                "password": password,
                "max_instances": 4,
            },
        ],
    }
    return parse_config(raw, tmp_path / "config.yaml")


def test_a_zip_goes_to_an_orthanc_over_dimse_and_to_another_over_stowrs_https_once_each(
    tmp_path, orthanc, dicomweb_orthanc: DicomWebOrthanc, dicomweb_https, dicomweb_pki
):
    config = two_destinations(tmp_path, orthanc, dicomweb_https, dicomweb_pki)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=61)
    assert run_once(config) is True
    assert orthanc.instances_uids() == set(uids)
    assert dicomweb_orthanc.instances_uids() == set(uids)
    assert (config.archive_dir / "study.zip").exists() and not zip_path.exists()
    with Ledger(config.state_db) as ledger:
        assert ledger.zips_by_state() == {"delivered": 2}
        assert ledger.instance_count() == 2 * len(uids)


def test_wrong_stowrs_credentials_leave_the_zip_pending_for_that_destination_only(
    tmp_path, orthanc, dicomweb_orthanc: DicomWebOrthanc, dicomweb_https, dicomweb_pki
):
    wrong = two_destinations(tmp_path, orthanc, dicomweb_https, dicomweb_pki, password="not-the-password")
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=62)
    assert run_once(wrong) is False
    assert orthanc.instances_uids() == set(uids) and dicomweb_orthanc.instance_count() == 0
    assert zip_path.exists()
    with Ledger(wrong.state_db) as ledger:
        [(_, key, _, _, error)] = ledger.pending()
    assert key == f"stowrs:{dicomweb_https.url}/dicom-web" and "401" in error
    right = two_destinations(tmp_path, orthanc, dicomweb_https, dicomweb_pki)
    assert run_once(right) is True
    assert dicomweb_orthanc.instances_uids() == set(uids) and (right.archive_dir / "study.zip").exists()


def test_check_prints_one_block_per_destination(
    tmp_path, orthanc, dicomweb_orthanc, dicomweb_https, dicomweb_pki, capsys
):
    config = two_destinations(tmp_path, orthanc, dicomweb_https, dicomweb_pki)
    assert cli.check(config) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "Destination local (dimse" in out and "C-ECHO OK" in out
    assert "Destination cloud (stowrs" in out and "answers QIDO-RS" in out and "Not verified:" in out


def test_several_stowrs_requests_in_flight_over_https_store_every_instance_of_a_zip(
    tmp_path, dicomweb_orthanc: DicomWebOrthanc, dicomweb_https, dicomweb_pki, caplog
):
    raw = {
        "behavior": {"wait_zip_complete_seconds": 0, "unreadable_zip_grace_seconds": 0, "send_batch_size": 4},
        "limits": {"min_free_disk_mb": 0},
        "destinations": [
            {
                "name": "cloud",
                "kind": "stowrs",
                "url": f"{dicomweb_https.url}/dicom-web",
                "ca_file": str(dicomweb_pki.ca_file),
                "username": DICOMWEB_USER,
                "password": DICOMWEB_PASSWORD,
                "max_requests": 4,
            }
        ],
    }
    config = parse_config(raw, tmp_path / "config.yaml")
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=63, n_series=3, per_series=12)
    with caplog.at_level("DEBUG", logger="zip2pacs.stowrs"):
        assert run_once(config) is True
    assert dicomweb_orthanc.instances_uids() == set(uids) and (config.archive_dir / "study.zip").exists()
    requests_ = caplog.text.count("cloud: HTTP 200 to ")
    assert requests_ >= len(uids) // 4  # batches of send_batch_size, each in its own request
    with Ledger(config.state_db) as ledger:
        assert ledger.zips_by_state() == {"delivered": 1} and ledger.instance_count() == len(uids)
