"""Library lines logged while a ZIP is delivered name the ZIP and the entry (delivery.py sets the log context)."""

from __future__ import annotations

from tests.unit.test_logs import MISLABELLED, TWIN, sc_scp, study_zip  # noqa: F401 - sc_scp is a fixture


def test_a_pydicom_warning_while_a_zip_is_delivered_names_the_zip_and_the_entry(workspace, run_cli, sc_scp):  # noqa: F811
    study_zip(workspace.incoming, "export.zip", {"CD/A/IMG0001": MISLABELLED, "CD/B/IMG0001": TWIN})
    config = workspace.write_config(sc_scp, dicom={"peer_ae_title": "STORESCP"}, logging={"level": "INFO"})

    proc = run_cli([config, "--once"])

    assert proc.returncode == 0, proc.stderr
    warned = [line for line in workspace.log_file.read_text().splitlines() if "Expected explicit VR" in line]
    assert len(warned) == 2  # read once to detect it, once to re-encode it
    assert all("| WARNING | export.zip: entry CD/A/IMG0001: pydicom: Expected explicit VR" in line for line in warned)
