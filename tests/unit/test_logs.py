"""Logs a clinic can read: library messages named after the ZIP and entry, at the watcher's level, once."""

from __future__ import annotations

import logging
import shutil
import socket
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification  # type: ignore[attr-defined]

from zip2pacs import logcontext, sender
from zip2pacs.association import Peer
from zip2pacs.cli import setup_logging
from zip2pacs.config import Config, parse_config
from zip2pacs.sender import Outcome
from zip2pacs.sniff import Kind, detect

# Meta header: JPEG Baseline, explicit VR; data set: implicit VR. pydicom warns when it reads it, and
# cannot encode it again (pynetdicom logs an ERROR with three tracebacks). Its twin is a plain copy.
MISLABELLED = Path(str(get_testdata_file("SC_rgb_jpeg.dcm")))
TWIN = Path(str(get_testdata_file("SC_rgb_jpeg_dcmd.dcm")))


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Config]:
    """A config whose log file is under tmp_path; the logging set-up is undone afterwards."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level, logging.getLogger("pynetdicom").level
    yield parse_config({"logging": {"level": "INFO"}}, tmp_path / "config.yaml")
    logcontext.release_warnings()
    for handler in list(root.handlers):
        handler.close()
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    logging.getLogger("pynetdicom").setLevel(saved[2])


def log_lines(config: Config) -> list[str]:
    return config.log_file.read_text(encoding="utf-8").splitlines()


def test_a_library_record_names_the_zip_and_the_entry_being_handled(logs):
    setup_logging(logs)
    extracted = logs.work_dir / "export-0123456789ab" / "IM1"
    with logcontext.about_zip("export.zip", {extracted: "CD/SERIES1/IM1"}), logcontext.about(extracted):
        logging.getLogger("pydicom.filereader").warning("odd value in (0028,0010)")
    logging.getLogger("pydicom").warning("outside any ZIP")
    assert log_lines(logs)[-2].endswith(
        " | WARNING | export.zip: entry CD/SERIES1/IM1: pydicom: odd value in (0028,0010)"
    )
    assert log_lines(logs)[-1].endswith(" | WARNING | pydicom: outside any ZIP")


def _pynetdicom_encode_failure() -> None:
    log = logging.getLogger("pynetdicom.dsutils")
    try:
        raise TypeError("With tag (0008,0008) got exception: encoding without a string argument")
    except TypeError as exc:  # what pynetdicom.dsutils.encode() logs, word for word
        log.error("pydicom.write_dataset() failed:")
        log.exception(exc)


def test_errors_the_watcher_handles_itself_are_hidden_at_info(logs):
    setup_logging(logs)
    _pynetdicom_encode_failure()
    logging.getLogger("pynetdicom.transport").error("TCP Initialisation Error: [Errno 111] Connection refused")
    logging.getLogger("pynetdicom.acse").error("Something pynetdicom has never said")
    assert [line.split(" | ", 1)[1] for line in log_lines(logs)] == [
        "ERROR | pynetdicom: Something pynetdicom has never said"
    ]


def test_watchdogs_error_when_it_is_stopped_during_a_move_is_not_an_error_in_the_log(logs):
    setup_logging(logs)
    # What watchdog 3+ logs when the watcher stops while it pairs a ZIP moved to archive/ (seen at each stop)
    logging.getLogger("watchdog.observers.inotify").error(
        "InotifyEmitter.queue_events() called when the thread is inactive"
    )
    logging.getLogger("watchdog.observers.inotify").error("Something watchdog has never said")
    assert [line.split(" | ", 1)[1] for line in log_lines(logs)] == [
        "ERROR | watchdog: Something watchdog has never said"
    ]


def test_errors_the_watcher_handles_itself_are_debug_lines_without_traceback_at_debug(logs):
    setup_logging(parse_config({"logging": {"level": "DEBUG"}}, logs.source))
    _pynetdicom_encode_failure()
    assert [line.split(" | ", 1)[1] for line in log_lines(logs)] == [
        "DEBUG | pynetdicom: pydicom.write_dataset() failed:",
        "DEBUG | pynetdicom: With tag (0008,0008) got exception: encoding without a string argument",
    ]


def test_a_pydicom_warning_is_logged_once_with_the_entry_and_python_does_not_print_it(logs, capsys):
    setup_logging(logs)
    with logcontext.about_zip("export.zip"), logcontext.about("CD/IMG0001"), warnings.catch_warnings():
        warnings.simplefilter("always")  # as a first warning from that line in a process would be
        logcontext.capture_warnings()  # catch_warnings() put back the showwarning it found
        dcmread(MISLABELLED, stop_before_pixels=True)
    lines = [line for line in log_lines(logs) if "Expected explicit VR" in line]
    assert len(lines) == 1
    assert " | WARNING | export.zip: entry CD/IMG0001: pydicom: Expected explicit VR, but found implicit VR" in lines[0]
    assert "UserWarning" not in capsys.readouterr().err  # Python's own "file.py:402: UserWarning: ..." lines


def test_a_python_warning_of_no_library_goes_to_the_log_once(logs, capsys):
    setup_logging(logs)
    with logcontext.about_zip("export.zip"), warnings.catch_warnings():
        warnings.simplefilter("always")
        logcontext.capture_warnings()
        warnings.warn("something odd", UserWarning, stacklevel=1)
    assert log_lines(logs)[-1].endswith(" | WARNING | export.zip: UserWarning: something odd")
    assert capsys.readouterr().err.count("something odd") == 1  # the console handler's line, not Python's


@pytest.fixture
def sc_scp() -> Iterator[int]:
    """A Storage SCP that takes Secondary Capture in JPEG Baseline or little endian; yield its port."""
    ae = AE(ae_title="STORESCP")
    ae.add_supported_context(Verification)
    ae.add_supported_context(
        SecondaryCaptureImageStorage, [JPEGBaseline8Bit, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    )
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.shutdown()


def test_a_file_pydicom_cannot_re_encode_is_named_once_and_leaves_no_traceback(logs, sc_scp, tmp_path):
    setup_logging(logs)
    extracted = tmp_path / "work" / "IMG0001"
    extracted.parent.mkdir()
    shutil.copyfile(MISLABELLED, extracted)
    detection = detect(extracted, "0" * 64, extracted.stat().st_size)
    assert detection.kind is Kind.INSTANCE and detection.instance is not None
    peer = Peer(port=sc_scp, ae_title="STORESCP", acse_timeout=5, dimse_timeout=5, network_timeout=5)

    before = logs.log_file.stat().st_size  # detect() read it outside any ZIP

    with logcontext.about_zip("export.zip", {extracted: "CD/IMG0001"}):
        [result] = sender.store(peer, [detection.instance])

    assert result.outcome is Outcome.PERMANENT and "could not encode" in result.detail
    text = logs.log_file.read_bytes()[before:].decode()
    assert "Traceback" not in text and " | ERROR | " not in text
    named = [line for line in text.splitlines() if "Expected explicit VR" in line]
    assert named and all("| WARNING | export.zip: entry CD/IMG0001: pydicom: Expected" in line for line in named)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def study_zip(folder: Path, name: str, entries: dict[str, Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as zf:
        for arcname, source in entries.items():
            zf.write(source, arcname)
    return folder / name


def test_a_peer_that_is_down_gives_the_watchers_line_and_no_error_from_pynetdicom(workspace, run_cli):
    study_zip(workspace.incoming, "export.zip", {"CD/IMG0001": TWIN})
    config = workspace.write_config(closed_port(), logging={"level": "INFO"})

    proc = run_cli([config, "--once"])

    assert proc.returncode == 1
    log = workspace.log_file.read_text(encoding="utf-8")
    assert "export.zip: ORTHANC@127.0.0.1" in log and "connection refused" in log
    assert "TCP Initialisation Error" not in log and "Association request failed" not in log
    assert " | ERROR | " not in log and " | ERROR | " not in proc.stderr


def test_a_delivered_zip_whose_first_copy_cannot_be_re_encoded_logs_no_traceback_nor_error(workspace, run_cli, sc_scp):
    study_zip(workspace.incoming, "export.zip", {"CD/A/IMG0001": MISLABELLED, "CD/B/IMG0001": TWIN})
    config = workspace.write_config(sc_scp, dicom={"peer_ae_title": "STORESCP"})  # logging at DEBUG

    proc = run_cli([config, "--once"])

    assert proc.returncode == 0, proc.stderr
    log = workspace.log_file.read_text(encoding="utf-8")
    assert "export.zip: delivered" in log
    assert "Traceback" not in log and " | ERROR | " not in log
    assert "UserWarning" not in proc.stderr and "warn_and_log(" not in proc.stderr  # Python's own printing


def test_a_value_pydicom_finds_invalid_is_not_logged_as_it_may_be_a_name_or_a_birth_date(logs):
    from pydicom.dataelem import DataElement

    setup_logging(logs)
    with logcontext.about_zip("export.zip"), warnings.catch_warnings():
        warnings.simplefilter("always")
        logcontext.capture_warnings()
        DataElement(0x00100030, "DA", "1970-01-01")  # PatientBirthDate written with dashes: invalid DA

    [line] = [line for line in log_lines(logs) if "Invalid value" in line]
    assert line.endswith(" | WARNING | export.zip: pydicom: Invalid value for VR DA (the value is not logged)")
    assert "1970" not in logs.log_file.read_text()
