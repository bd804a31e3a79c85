"""An Orthanc that answers C-ECHO from anyone but lets only the modalities it knows store (issue: nobody told why)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from pydicom import dcmread

from tests.integration.conftest import Orthanc
from zip2pacs.synth import write_study, zip_folder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def strict_orthanc(configured_orthanc_factory) -> Orthanc:
    return configured_orthanc_factory("strict", {"DicomAlwaysAllowStore": False, "DicomModalities": {}})


def test_an_orthanc_that_does_not_let_our_ae_title_store_is_named_in_the_log_status_and_reason(
    workspace, run_cli, strict_orthanc
):
    source = workspace.root / "src"
    files = write_study(source, seed=41, n_series=1, per_series=30, rows=8, cols=8)
    zip_path = zip_folder(source, workspace.incoming / "study.zip")
    config = workspace.write_config(strict_orthanc.dicom_port)

    check = run_cli([config, "--check"])
    assert "Not verified" in check.stdout and "ZIPWATCHER" in check.stdout

    first = run_cli([config, "--once"])
    assert first.returncode == 1
    log = workspace.log_file.read_text()
    assert "does not allow our AE title ZIPWATCHER to store" in log and "DicomAlwaysAllowStore" in log
    assert log.count("association with ORTHANC@") <= 2  # two associations tell; not one per instance
    assert log.count("| WARNING |") <= 5  # and the 30 instances left for later make one line, not 30
    assert strict_orthanc.instance_count() == 0 and zip_path.exists()

    status = run_cli([config, "--status"])
    assert "does not allow our AE title ZIPWATCHER to store" in status.stdout

    with sqlite3.connect(workspace.state_db) as db:  # a day of trying later, the reason file says what to change
        db.execute("UPDATE zips SET tried_seconds = 90000, next_retry = 0")
    run_cli([config, "--once"])
    reason = json.loads((workspace.failed / "study.zip.error.json").read_text())
    assert "DicomModalities" in reason["reason"]
    assert {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}  # the study was real
