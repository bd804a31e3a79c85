"""Several destinations: the config's `destinations:` list, and fan-out to two real in-process pynetdicom SCPs."""

from __future__ import annotations

import json
import logging
import shutil
import socket
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from tests.unit.test_pipeline import RecordingSCP, study_zip
from zip2pacs.config import ConfigError, parse_config
from zip2pacs.daemon import run_once
from zip2pacs.intake import list_zips
from zip2pacs.ledger import Ledger, ZipState
from zip2pacs.pipeline import Pipeline
from zip2pacs.report import status_text
from zip2pacs.retry import retry_failed
from zip2pacs.synth import write_study, zip_folder

BEHAVIOR = {"wait_zip_complete_seconds": 0, "retry_base_seconds": 60, "unreadable_zip_grace_seconds": 0}
TIMEOUTS = {"acse_timeout": 5, "dimse_timeout": 5, "network_timeout": 5}


def dimse(name: str, port: int) -> dict:
    return {"name": name, "kind": "dimse", "peer_host": "127.0.0.1", "peer_port": port, "peer_ae_title": "TESTPACS"}


def make_config(root: Path, destinations: list[dict] | None, port: int = 4242, **behavior):
    raw = {
        "dicom": {"peer_port": port, "peer_ae_title": "TESTPACS", **TIMEOUTS},
        "behavior": {**BEHAVIOR, **behavior},
        "limits": {"min_free_disk_mb": 0},
    }
    if destinations is not None:
        raw["destinations"] = destinations
    return parse_config(raw, root / "config.yaml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scp_on(port: int) -> RecordingSCP:
    """Return a RecordingSCP listening on ``port`` (a destination that comes up where it was down)."""
    server = RecordingSCP()
    server.stop()  # its handlers are kept, on the port asked for
    ae = AE(ae_title="TESTPACS")
    ae.supported_contexts = AllStoragePresentationContexts
    server.server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, server.handle), (evt.EVT_ESTABLISHED, server.count)],
    )
    server.port = port
    return server


def ct_only() -> RecordingSCP:
    """Return a RecordingSCP that takes CT only: Secondary Capture is refused at negotiation, so it has no status."""
    server = RecordingSCP()
    server.stop()  # its handlers are kept, behind an AE that supports fewer SOP classes
    ae = AE(ae_title="TESTPACS")
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(Verification)
    server.server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, server.handle), (evt.EVT_ESTABLISHED, server.count)],
    )
    server.port = server.server.server_address[1]
    return server


def final_line(caplog: pytest.LogCaptureFixture, name: str) -> str:
    """Return the one INFO line that ends a ZIP's attempt (``name: state - counts``), as logged."""
    [line] = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and r.getMessage().startswith(f"{name}: ") and " s (" in r.getMessage()
    ]
    return line


@pytest.fixture
def two():
    a, b = RecordingSCP(), RecordingSCP()
    yield a, b
    a.stop()
    b.stop()


def mixed_zip(root: Path, name: str, seed: int) -> tuple[Path, list[str], list[str]]:
    """Return a ZIP of 3 CT and 3 Secondary Capture instances, with the UIDs of each kind."""
    source = root / "src" / name
    files = write_study(source, seed=seed, n_series=2, per_series=3, rows=8, cols=8)
    ct, sc = [], []
    for n, path in enumerate(sorted(files)):
        ds = dcmread(path)
        if n >= 3:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
            ds.save_as(path)
        (sc if n >= 3 else ct).append(str(ds.SOPInstanceUID))
    return zip_folder(source, root / "incoming" / name), ct, sc


def test_without_destinations_the_dicom_section_is_one_destination_named_pacs_keyed_as_before(tmp_path):
    config = make_config(tmp_path, None, port=4242)
    [d] = config.destinations
    assert (d.name, d.kind, d.key, d.peer) == ("pacs", "dimse", config.peer.key, config.peer)
    assert d.key == "TESTPACS@127.0.0.1:4242"


def test_destinations_take_their_settings_and_the_rest_from_the_dicom_section(tmp_path):
    stow = {"name": "web", "kind": "stowrs", "url": "https://pacs.example/dicom-web/", "token_env": "PACS_TOKEN"}
    ct = "1.2.840.10008.5.1.4.1.1.2"
    config = make_config(tmp_path, [stow, {**dimse("tele", 11112), "max_associations": 2, "sop_classes": [ct]}])
    web, tele = config.destinations
    assert web.key == "stowrs:https://pacs.example/dicom-web" and web.stow is not None and web.peer is None
    assert web.stow.token_env == "PACS_TOKEN" and web.stow.name == "web"
    assert tele.key == "TESTPACS@127.0.0.1:11112" and tele.max_associations == 2
    assert tele.peer is not None and tele.peer.dimse_timeout == 5 and tele.sop_classes == {ct}
    assert config.peer == tele.peer  # the first dimse destination


def test_every_problem_of_the_destinations_is_reported_at_once_naming_where(tmp_path):
    destinations = [
        {"name": "a b", "kind": "dimse", "peer_host": "h", "peer_port": "104", "peer_ae_title": "X"},
        {"name": "web", "kind": "stowrs", "url": "https://x/dw", "username": "u"},
        {"name": "web", "kind": "stowrs", "url": "ftp://x", "colour": "red"},
        {"name": "x", "kind": "ftp"},
    ]
    with pytest.raises(ConfigError) as raised:
        make_config(tmp_path, destinations)
    problems = raised.value.problems
    assert "At 'destinations[0].name': expected a name of letters, digits, _ and -, got 'a b'" in problems
    assert any(p.startswith("At 'destinations[0].peer_port': expected an integer 1-65535") for p in problems)
    assert "At 'destinations[1]': expected consistent STOW-RS settings, got username needs a password" in problems
    assert any(p.startswith("At 'destinations[2].colour': unknown key") for p in problems)
    assert "At 'destinations[3].kind': expected one of dimse, stowrs, got 'ftp'" in problems


def test_one_destination_down_leaves_the_zip_pending_for_it_alone_and_the_other_gets_everything_once(tmp_path, caplog):
    a, port = RecordingSCP(), free_port()
    config = make_config(tmp_path, [dimse("local", a.port), dimse("tele", port)])
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=41)
    try:
        with caplog.at_level(logging.INFO, logger="zip2pacs"):
            assert run_once(config) is False
        assert "study.zip [tele]: " in caplog.text and "study.zip: local: delivered" in caplog.text
        assert "study.zip: tele: pending" in caplog.text
        assert zip_path.exists() and sorted(a.stored) == sorted(uids)
        with Ledger(config.state_db) as ledger:
            [(name, key, _, _, error)] = ledger.pending()
            assert (name, key) == ("study.zip", f"TESTPACS@127.0.0.1:{port}") and "unavailable" in error
            text = status_text(ledger, config)
        assert "Pending:" in text and f"study.zip -> tele (TESTPACS@127.0.0.1:{port})" in text
        b = scp_on(port)
        try:
            assert run_once(config) is True
            assert sorted(b.stored) == sorted(uids)
        finally:
            b.stop()
        assert sorted(a.stored) == sorted(uids), "the destination that had everything was sent something again"
        assert (config.archive_dir / "study.zip").exists() and not zip_path.exists()
        with Ledger(config.state_db) as ledger:
            assert ledger.zips_by_state() == {"delivered": 2}
    finally:
        a.stop()


def test_a_destination_whose_retry_is_not_due_waits_while_the_zip_is_looked_at_again(tmp_path, two):
    a, b = two
    port = free_port()
    config = make_config(tmp_path, [dimse("local", a.port), dimse("tele", port)])
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=42)
    assert run_once(config) is False
    with Ledger(config.state_db) as ledger:
        pipeline = Pipeline(make_config(tmp_path, [dimse("local", a.port), dimse("tele", port)]), ledger)
        pipeline.skip_not_due = True  # as the service loop does
        [z] = list_zips(config.watch_dir)
        assert pipeline.due(z) is False  # tele waits 60 s; local has everything
        [outcome] = [pipeline.process_zip(z)]
        assert outcome.state is ZipState.PENDING and zip_path.exists()
        [(_, _, attempts, _, _)] = ledger.pending()
        assert attempts == 1  # not tried again before its time
    assert sorted(a.stored) == sorted(uids)


def test_a_destination_refusing_a_sop_class_sends_the_zip_to_failed_and_retry_sends_only_to_it(tmp_path, two):
    a, b = two
    config = make_config(tmp_path, [dimse("strict", a.port), dimse("backup", b.port)])
    zip_path, ct, sc = mixed_zip(tmp_path, "study.zip", seed=43)
    a.status_for = lambda ds: 0xC000 if ds.SOPClassUID == SecondaryCaptureImageStorage else 0x0000
    assert run_once(config) is False
    assert (config.failed_dir / "study.zip").exists() and not zip_path.exists()
    assert sorted(b.stored) == sorted(ct + sc) and sorted(a.stored) == sorted(ct)
    reason = json.loads((config.failed_dir / "study.zip.error.json").read_text())
    assert reason["destination"] == "strict" and "strict" in reason["reason"]
    assert sorted(e["destination"] for e in reason["entries"]) == ["strict"] * 3
    assert {d["destination"]: d["state"] for d in reason["destinations"]} == {"strict": "failed", "backup": "delivered"}
    a.status_for = lambda ds: 0x0000  # the operator fixed the PACS
    requests_b = b.requests
    assert retry_failed(config, ["study.zip"]) == [config.watch_dir / "study.zip"]
    assert run_once(config) is True
    assert sorted(a.stored) == sorted(ct + sc) and b.requests == requests_b
    assert (config.archive_dir / "study.zip").exists()


def test_a_destination_added_later_gets_a_dropped_again_zip_and_the_first_gets_nothing_again(tmp_path, two):
    a, b = two
    first = make_config(tmp_path, None, port=a.port)  # the dicom: section alone, as before destinations existed
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=44)
    assert run_once(first) is True and sorted(a.stored) == sorted(uids)
    shutil.copy(first.archive_dir / "study.zip", zip_path)  # dropped again
    requests_a = a.requests
    later = make_config(tmp_path, [dimse("pacs", a.port), dimse("teleradiology", b.port)])
    assert run_once(later) is True
    assert sorted(b.stored) == sorted(uids) and a.requests == requests_a
    assert not zip_path.exists() and len(list(later.archive_dir.glob("study*.zip"))) == 2


def test_instances_a_destination_does_not_take_are_neither_sent_nor_pending_for_it(tmp_path, two):
    a, b = two
    ct_only = {**dimse("ct", b.port), "sop_classes": ["1.2.840.10008.5.1.4.1.1.2"]}
    config = make_config(tmp_path, [dimse("all", a.port), ct_only])
    zip_path, ct, sc = mixed_zip(tmp_path, "study.zip", seed=45)
    assert run_once(config) is True
    assert sorted(a.stored) == sorted(ct + sc) and sorted(b.stored) == sorted(ct)
    assert (config.archive_dir / "study.zip").exists()


REPO = Path(__file__).resolve().parents[2]


def test_every_destination_key_is_documented_in_the_readme():
    from zip2pacs.destinations import COMMON, DIMSE_KEYS, STOW_KEYS

    readme = (REPO / "README.md").read_text()
    for key in {**COMMON, **DIMSE_KEYS, **STOW_KEYS}:
        assert f"`{key}`" in readme, f"destinations key {key} is not documented in README.md"


def test_the_commented_destinations_example_in_config_yaml_is_valid(tmp_path):
    import yaml

    lines = (REPO / "config.yaml").read_text().splitlines()
    begin = lines.index("#destinations:")
    example = "\n".join(line[1:] for line in lines[begin:] if line.startswith("#"))
    config = parse_config(yaml.safe_load(example), tmp_path / "config.yaml")
    assert [(d.name, d.kind) for d in config.destinations] == [("local", "dimse"), ("cloud", "stowrs")]


def test_a_destination_past_its_retry_budget_sends_the_zip_to_failed_and_the_other_stays_delivered(tmp_path, two):
    a, _ = two
    config = make_config(tmp_path, [dimse("local", a.port), dimse("tele", free_port())], give_up_after_hours=1e-9)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=46)
    assert run_once(config) is False
    assert (config.failed_dir / "study.zip").exists() and sorted(a.stored) == sorted(uids)
    reason = json.loads((config.failed_dir / "study.zip.error.json").read_text())
    assert reason["destination"] == "tele" and reason["reason"].startswith("tele: gave up after 1 attempt(s)")
    with Ledger(config.state_db) as ledger:
        assert ledger.zips_by_state() == {"delivered": 1, "failed": 1}


def test_status_counts_each_zip_once_by_its_overall_state_and_breaks_the_count_down_per_destination(tmp_path, two):
    a, b = two
    down = free_port()
    both = make_config(tmp_path, [dimse("local", a.port), dimse("backup", b.port)])
    study_zip(tmp_path, "done.zip", seed=47)
    assert run_once(both) is True
    three = make_config(tmp_path, [dimse("local", a.port), dimse("backup", b.port), dimse("tele", down)])
    study_zip(tmp_path, "waiting.zip", seed=48)
    assert run_once(three) is False  # delivered to local and backup, pending for tele
    with Ledger(three.state_db) as ledger:
        lines = status_text(ledger, three).splitlines()
    at = lines.index("ZIPs: 1 delivered, 1 pending")
    assert lines[at + 1 : at + 4] == [
        f"  local (TESTPACS@127.0.0.1:{a.port}): 2 delivered",
        f"  backup (TESTPACS@127.0.0.1:{b.port}): 2 delivered",
        f"  tele (TESTPACS@127.0.0.1:{down}): 1 pending",
    ]


def test_a_zip_counts_once_failed_when_one_destination_failed_it_and_a_duplicate_copy_counts_once(tmp_path):
    from zip2pacs.ledger import Counts

    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        for peer, state in (("a", ZipState.DELIVERED), ("b", ZipState.FAILED)):
            record = ledger.zip_begin("11" * 32, peer, "x.zip", 1, 1.0)
            ledger.zip_finish(record.id, state, Counts())
        for peer in ("a", "b"):
            record = ledger.zip_begin("22" * 32, peer, "y.zip", 1, 1.0)
            ledger.zip_finish(record.id, ZipState.DELIVERED, Counts())
            ledger.count_duplicate_copy(record.id)  # one copy of y.zip archived: a duplicate for both
        assert ledger.zips_overall() == {"failed": 1, "delivered": 1, "duplicate": 1}
        assert ledger.zips_by_peer() == {
            "a": {"delivered": 2, "duplicate": 1},
            "b": {"failed": 1, "delivered": 1, "duplicate": 1},
        }


def test_a_zip_to_two_destinations_is_extracted_once_and_each_gets_every_instance(tmp_path, two, monkeypatch):
    from zip2pacs import delivery

    folders, extract = [], delivery.extract_zip
    monkeypatch.setattr(delivery, "extract_zip", lambda *a, **k: folders.append(a[1]) or extract(*a, **k))
    a, b = two
    config = make_config(tmp_path, [dimse("local", a.port), dimse("tele", b.port)])
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=49)
    assert run_once(config) is True
    assert len(folders) == 1 and sorted(a.stored) == sorted(uids) and sorted(b.stored) == sorted(uids)
    assert not folders[0].exists()  # removed once both were done with it


def test_an_instance_a_destination_takes_in_no_presentation_context_reads_as_not_sent_in_the_reason_file(tmp_path):
    local, strict = RecordingSCP(), ct_only()
    try:
        config = make_config(tmp_path, [dimse("local", local.port), dimse("strict", strict.port)])
        zip_path, ct, sc = mixed_zip(tmp_path, "study.zip", seed=50)
        assert run_once(config) is False
        assert sorted(strict.stored) == sorted(ct) and sorted(local.stored) == sorted(ct + sc)
    finally:
        local.stop()
        strict.stop()
    reason = json.loads((config.failed_dir / "study.zip.error.json").read_text())
    problems = {e["problem"].split(",")[0]: e["problem"] for e in reason["entries"]}
    assert sorted(problems) == sorted(f"SOP Instance UID {uid}" for uid in sc)
    for uid in sc:
        assert problems[f"SOP Instance UID {uid}"].startswith(
            f"SOP Instance UID {uid}, SOP Class {SecondaryCaptureImageStorage}: not sent: the peer accepted no "
            "presentation context for Secondary Capture Image Storage in "
        ), problems


def test_the_final_line_of_a_zip_sent_to_two_destinations_counts_its_entries_once_and_each_destination_apart(
    tmp_path, two, caplog
):
    local, strict = two
    config = make_config(tmp_path, [dimse("local", local.port), dimse("strict", strict.port)])
    mixed_zip(tmp_path, "study.zip", seed=51)
    strict.status_for = lambda ds: 0xC000 if ds.SOPClassUID == SecondaryCaptureImageStorage else 0x0000
    with caplog.at_level(logging.INFO, logger="zip2pacs"):
        assert run_once(config) is False
    assert final_line(caplog, "study.zip").startswith(
        "study.zip: failed - 6 entries: 6 instances; local: sent 6; strict: sent 3, failed 3; "
    )
    reason = json.loads((config.failed_dir / "study.zip.error.json").read_text())
    assert reason["counts"]["found"] == 6 and reason["counts"]["failed"] == 3, "counted once, for strict"
    counts = {d["destination"]: (d["counts"]["sent"], d["counts"]["failed"]) for d in reason["destinations"]}
    assert counts == {"local": (6, 0), "strict": (3, 3)}


def test_the_final_line_names_skipped_entries_once_and_what_waits_for_a_destination_down(tmp_path, caplog):
    local = RecordingSCP()
    try:
        config = make_config(tmp_path, [dimse("local", local.port), dimse("tele", free_port())])
        study_zip(tmp_path, "study.zip", seed=52)  # 6 instances and 2 files that are not DICOM
        with caplog.at_level(logging.INFO, logger="zip2pacs"):
            assert run_once(config) is False
    finally:
        local.stop()
    assert final_line(caplog, "study.zip").startswith(
        "study.zip: pending - 8 entries: 6 instances, skipped 2; local: sent 6; tele: pending 6; "
    )


def test_the_final_line_says_how_many_instances_a_destination_does_not_take(tmp_path, two, caplog):
    a, b = two
    ct_only_filter = {**dimse("ct", b.port), "sop_classes": [CTImageStorage]}
    config = make_config(tmp_path, [dimse("all", a.port), ct_only_filter])
    mixed_zip(tmp_path, "study.zip", seed=53)
    with caplog.at_level(logging.INFO, logger="zip2pacs"):
        assert run_once(config) is True
    assert final_line(caplog, "study.zip").startswith(
        "study.zip: delivered - 6 entries: 6 instances; all: sent 6; ct: sent 3, filtered out 3; "
    )
