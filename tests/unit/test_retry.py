"""--retry-failed: ZIPs go back under their own names, reason files are kept aside, hopeless ZIPs stay unless named."""

from __future__ import annotations

import json
from pathlib import Path

from zip2pacs.cli import main
from zip2pacs.config import Config, load_config
from zip2pacs.ledger import Counts, Ledger, ZipState
from zip2pacs.retry import plan_retry, retry_failed

PEER = "ORTHANC@127.0.0.1:4242"
REFUSED = "3 instance(s) refused by ORTHANC@127.0.0.1:4242"


def configured(tmp_path: Path) -> tuple[Path, Config]:
    path = tmp_path / "config.yaml"
    path.write_text("")
    config = load_config(path)
    config.failed_dir.mkdir()
    return path, config


def failed(config: Config, name: str, came_as: str, reason: str) -> Path:
    """Put a ZIP in failed/ as the pipeline does: the ZIP, and its reason file naming what it came as."""
    zip_path = config.failed_dir / name
    zip_path.write_bytes(b"PK\x05\x06" + bytes(18) + name.encode())
    reason_file = zip_path.with_name(name + ".error.json")
    reason_file.write_text(json.dumps({"zip": came_as, "reason": reason, "entries": [{"name": "IM1", "problem": "x"}]}))
    return zip_path


def test_a_retried_zip_goes_back_under_its_own_name_and_its_reason_file_is_kept_in_retried(tmp_path):
    _, config = configured(tmp_path)
    failed(config, "study.zip", "study.zip", REFUSED)
    failed(config, "study-1.zip", "study.zip", REFUSED)  # a second study.zip, renamed when it failed
    failed(config, "cd-1.zip", "cd.zip", REFUSED)

    moved = retry_failed(config)

    assert sorted(p.name for p in moved) == ["cd.zip", "study-1.zip", "study.zip"]
    assert (config.watch_dir / "study.zip").read_bytes().endswith(b"study.zip")  # each its own name when free
    assert sorted(p.name for p in config.failed_dir.iterdir()) == ["retried"]
    kept = sorted((config.failed_dir / "retried").iterdir())
    assert [p.name.split(".")[0] for p in kept] == ["cd", "study", "study"]
    assert all(p.name.endswith(".error.json") for p in kept)
    assert {json.loads(p.read_text())["reason"] for p in kept} == {REFUSED}  # nothing lost


def test_a_zip_that_failed_for_what_its_bytes_are_is_listed_and_moved_only_when_named(tmp_path, capsys):
    path, config = configured(tmp_path)
    failed(config, "photos.zip", "photos.zip", "no DICOM instance in the ZIP")
    failed(config, "locked.zip", "locked.zip", "CorruptArchive: entry a.dcm is encrypted (password-protected ...)")
    failed(config, "bomb.zip", "bomb.zip", "UnsafeArchive: entry x declares more than the limit (zip bomb?)")
    failed(config, "study.zip", "study.zip", REFUSED)

    assert main([str(path), "--retry-failed"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in config.watch_dir.iterdir()) == ["study.zip"]
    assert f"Moved 1 ZIP(s) from {config.failed_dir} back to {config.watch_dir}" in out
    assert "  bomb.zip: UnsafeArchive: entry x declares" in out and "  photos.zip: no DICOM instance" in out
    assert "  locked.zip: CorruptArchive: entry a.dcm is encrypted" in out

    assert main([str(path), "--retry-failed", "locked.zip", "photos.zip"]) == 0
    assert sorted(p.name for p in config.watch_dir.iterdir()) == ["locked.zip", "photos.zip", "study.zip"]
    assert [z.path.name for z in plan_retry(config).keep] == ["bomb.zip"]


def test_retry_failed_names_a_zip_that_is_not_in_failed_and_moves_nothing(tmp_path, capsys):
    path, config = configured(tmp_path)
    failed(config, "study.zip", "study.zip", REFUSED)

    assert main([str(path), "--retry-failed", "study.zip", "sutdy.zip"]) == 1

    assert f"Error: no such ZIP in {config.failed_dir}: sutdy.zip" in capsys.readouterr().err
    assert (config.failed_dir / "study.zip").exists() and not config.watch_dir.exists()


def test_a_failed_zip_taken_again_keeps_its_attempts_and_first_seen_with_a_fresh_budget(tmp_path):
    with Ledger(tmp_path / "l.db") as ledger:
        record = ledger.zip_begin("zz", PEER, "a.zip", 10, 1.0)
        ledger.zip_finish(record.id, ZipState.FAILED, Counts(found=1, failed=1), error="refused", spent=7200.0)

        ledger.reset_failed("zz", PEER)
        again = ledger.zip_begin("zz", PEER, "a.zip", 10, 1.0)

    assert again.state is ZipState.PENDING
    assert again.attempts == 2 and again.first_seen == record.first_seen
    assert again.tried_seconds < 60  # the 7200 s spent before do not count against give_up_after_hours
