"""The command in-process and as a subprocess: demo, exit codes, logging set-up, progress lines."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from zip2pacs.cli import main, setup_logging
from zip2pacs.config import parse_config
from zip2pacs.demo import run_demo

REPO = Path(__file__).resolve().parents[2]


def test_demo_delivers_every_generated_instance_to_the_embedded_scp(tmp_path):
    delivered, received, config = run_demo(tmp_path / "demo", studies=2, keep=True)
    assert delivered is True
    assert len(received.uids) == 16 and len(set(received.uids)) == 16
    assert len(received.studies) == 2
    assert sorted(p.name for p in config.archive_dir.iterdir()) == ["demo_study_0.zip", "demo_study_1.zip"]
    assert len(list(received.folder.glob("*.dcm"))) == 16


def test_demo_command_says_what_arrived_and_cleans_up():
    proc = subprocess.run(
        [sys.executable, "dicom_zip_watcher.py", "--demo"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Demo: 24 instances of 3 studies stored by the embedded SCP" in proc.stdout
    assert "DEMO^PATIENT" not in proc.stderr  # no patient names in the log


def test_missing_config_argument_is_a_usage_error(capsys):
    try:
        main([])
    except SystemExit as exc:
        assert exc.code == 2
    assert "configuration file is required" in capsys.readouterr().err


def test_bad_config_exits_2_with_one_line_per_problem(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("dicom:\n  peer_port: abc\n  colour: blue\n")
    assert main([str(path), "--status"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "At 'dicom.peer_port': expected an integer 1-65535, got 'abc'" in err
    assert "At 'dicom.colour': unknown key" in err
    assert "Traceback" not in err


def test_log_file_rotates_at_max_bytes(tmp_path):
    config = parse_config({"logging": {"max_bytes": 2000, "backup_count": 2}}, tmp_path / "config.yaml")
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        setup_logging(config)
        for i in range(200):
            logging.getLogger("zip2pacs.test").info("line %d of a long enough message to fill the file", i)
    finally:
        for h in list(root.handlers):
            h.close()
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    logs = sorted(p.name for p in config.log_file.parent.iterdir())
    assert logs == ["uploader.log", "uploader.log.1", "uploader.log.2"]
    assert all(p.stat().st_size <= 2100 for p in config.log_file.parent.iterdir())
    assert " | INFO | line 199 " in config.log_file.read_text()


def test_folder_under_a_file_is_a_config_error_naming_its_key(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "config.yaml"
    path.write_text("paths:\n  watch_dir: afile/incoming\n")
    assert main([str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert f"Error: invalid configuration in {path}:" in err
    assert f"At 'paths.watch_dir': expected a folder, got {tmp_path / 'afile' / 'incoming'}, under the file " in err
    assert "Traceback" not in err


def test_folder_key_naming_an_existing_file_exits_2_naming_the_key(tmp_path, capsys):
    (tmp_path / "archive").write_text("x")
    path = tmp_path / "config.yaml"
    path.write_text("")
    assert main([str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert f"At 'paths.archive_dir': expected a folder, got the file {tmp_path / 'archive'}" in err
    assert "File exists" not in err and "Traceback" not in err


def test_folder_that_cannot_be_created_names_its_key_and_the_config_file(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(f"paths:\n  failed_dir: {'f' * 300}\n")  # longer than any file system allows a name
    assert main([str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert f"Error: cannot create the folders configured in {path}:" in err
    assert f"At 'paths.failed_dir': cannot create the folder {tmp_path / ('f' * 300)} (File name too long)" in err
    assert "Traceback" not in err


def test_archive_dir_equal_to_watch_dir_exits_2_before_anything_is_created(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("paths:\n  archive_dir: incoming\n")
    assert main([str(path), "--once"]) == 2
    assert "At 'paths.archive_dir': expected a folder apart from paths.watch_dir" in capsys.readouterr().err
    assert not (tmp_path / "incoming").exists()


def _pynetdicom_level_after_setup(config_text: dict, tmp_path: Path) -> int:
    config = parse_config(config_text, tmp_path / "config.yaml")
    root = logging.getLogger()
    saved = list(root.handlers), root.level, logging.getLogger("pynetdicom").level
    try:
        setup_logging(config)
        return logging.getLogger("pynetdicom").level
    finally:
        for h in list(root.handlers):
            h.close()
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        logging.getLogger("pynetdicom").setLevel(saved[2])


def test_pynetdicom_debug_key_puts_pynetdicoms_own_debug_lines_in_the_log(tmp_path):
    assert _pynetdicom_level_after_setup({"logging": {"enable_pynetdicom_debug": True}}, tmp_path) == logging.DEBUG


def test_pynetdicom_stays_at_warning_by_default_and_follows_a_debug_level(tmp_path):
    assert _pynetdicom_level_after_setup({}, tmp_path) == logging.WARNING
    assert _pynetdicom_level_after_setup({"logging": {"level": "DEBUG"}}, tmp_path) == logging.DEBUG


@pytest.fixture
def ct_scp() -> Iterator[int]:
    """A Storage SCP (AE title STORESCP) that accepts CT in explicit little endian; yield its port."""
    ae = AE(ae_title="STORESCP")
    ae.implementation_version_name = "TEST_SCP_1"
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()


def test_check_names_the_peer_and_says_what_it_could_not_verify(tmp_path, ct_scp, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(f"dicom: {{peer_port: {ct_scp}, peer_ae_title: STORESCP, acse_timeout: 5}}\n")

    assert main([str(path), "--check"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith(f"Peer STORESCP at 127.0.0.1:{ct_scp} over plain TCP (no TLS)")
    assert lines[3].startswith(f"Association accepted by STORESCP at 127.0.0.1:{ct_scp} in ")
    assert lines[3].endswith(" ms (implementation TEST_SCP_1)")
    table_end = max(i for i, line in enumerate(lines) if line.startswith("  "))
    assert lines[table_end + 1] == (
        "Not verified: that the peer lets AE title ZIPWATCHER store "
        "(Orthanc: DicomAlwaysAllowStore / DicomModalities); only a real C-STORE proves it."
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_and_check_create_no_folder_and_status_says_no_ledger_exists_yet(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(f"dicom: {{peer_port: {_closed_port()}, acse_timeout: 2}}\n")

    assert main([str(path), "--status"]) == 0
    assert main([str(path), "--check"]) == 1

    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    out = capsys.readouterr().out
    assert f"Ledger {tmp_path / 'state' / 'uploader.sqlite3'}: none yet (no watcher has run with {path})" in out
    assert "Association failed: " in out


def test_a_second_watcher_refused_by_the_lock_writes_nothing_into_the_running_watchers_log(workspace, run_cli):
    from zip2pacs.config import load_config
    from zip2pacs.daemon import single_instance

    path = workspace.write_config(_closed_port())
    workspace.log_file.write_text("the running watcher's lines\n")
    with single_instance(load_config(path)):  # the running watcher
        proc = run_cli([path, "--once"])

    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"Error: another watcher is running with the ledger {workspace.state_db}; stop it first, "
        "or use another paths.state_db"
    )
    assert workspace.log_file.read_text() == "the running watcher's lines\n"
    assert sorted(p.name for p in workspace.log_file.parent.iterdir()) == ["uploader.log"]


def test_demo_says_how_to_run_the_watcher_with_the_python_it_was_run_with(monkeypatch, tmp_path):
    from zip2pacs.cli import python_command

    venv_python = tmp_path / ".venv" / "bin" / "python"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(venv_python))
    assert python_command() == ".venv/bin/python"
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    assert python_command() == "python3"
