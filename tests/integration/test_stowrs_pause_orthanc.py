"""A real Orthanc (DICOMweb plugin, Basic auth via RegisteredUsers, HTTPS) refusing our password pauses that destination.

Beside it, an in-process pynetdicom SCP gets everything; the ZIPs wait in the watch folder, and the watcher restarted
with the right password delivers them.
"""

from __future__ import annotations

import logging

import pytest

from tests.integration.conftest import DICOMWEB_PASSWORD, DICOMWEB_USER, DicomWebOrthanc
from tests.unit.test_pipeline import RecordingSCP, study_zip
from zip2pacs.config import parse_config
from zip2pacs.daemon import run_once
from zip2pacs.ledger import Ledger
from zip2pacs.report import status_text

pytestmark = pytest.mark.integration


def config_with(tmp_path, scp: RecordingSCP, url: str, ca_file: str, password: str):
    raw = {
        "behavior": {"wait_zip_complete_seconds": 0, "unreadable_zip_grace_seconds": 0, "give_up_after_hours": 1e-9},
        "limits": {"min_free_disk_mb": 0},
        "destinations": [
            {"name": "local", "kind": "dimse", "peer_host": "127.0.0.1", "peer_port": scp.port, "peer_ae_title": "X"},
            {"name": "cloud", "kind": "stowrs", "url": url, "ca_file": ca_file, "username": DICOMWEB_USER,
             "password": password},
        ],
    }  # fmt: skip
    return parse_config(raw, tmp_path / "config.yaml")


def test_orthanc_refusing_our_password_pauses_it_for_every_zip_until_a_restart_with_the_right_one(
    tmp_path, dicomweb_orthanc: DicomWebOrthanc, dicomweb_https, dicomweb_pki, caplog
):
    scp = RecordingSCP()
    url, ca = f"{dicomweb_https.url}/dicom-web", str(dicomweb_pki.ca_file)
    first, uids_a = study_zip(tmp_path, "a.zip", seed=91)
    second, uids_b = study_zip(tmp_path, "b.zip", seed=92)
    try:
        wrong = config_with(tmp_path, scp, url, ca, "not-the-password")
        with caplog.at_level(logging.INFO, logger="zip2pacs"):
            assert run_once(wrong) is False
        [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert "cloud paused" in error and "HTTP 401" in error and "username 'watcher'" in error
        assert "not-the-password" not in caplog.text
        assert "b.zip: cloud:" not in caplog.text  # b.zip was not tried for cloud: only a.zip's request was made
        assert sorted(scp.stored) == sorted(uids_a + uids_b) and dicomweb_orthanc.instance_count() == 0
        assert first.exists() and second.exists() and not list(wrong.failed_dir.glob("*"))
        with Ledger(wrong.state_db) as ledger:
            text = status_text(ledger, wrong)
        assert "Paused for their credentials" in text and "cloud (stowrs:" in text and "HTTP 401" in text
        assert "ZIPs: 2 pending" in text and "  cloud (stowrs:" in text  # one line per ZIP, then per destination
        right = config_with(tmp_path, scp, url, ca, DICOMWEB_PASSWORD)
        requests = scp.requests
        assert run_once(right) is True
    finally:
        scp.stop()
    assert dicomweb_orthanc.instances_uids() == set(uids_a + uids_b) and scp.requests == requests
    assert (right.archive_dir / "a.zip").exists() and (right.archive_dir / "b.zip").exists()
