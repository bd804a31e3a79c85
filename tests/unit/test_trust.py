"""Archive means delivered: paths that used to archive, fail or stall a ZIP wrongly (each a regression test)."""

from __future__ import annotations

import os
import shutil
import sqlite3

from tests.unit.test_pipeline import RecordingSCP, make_config, process_all, scp, study_zip  # noqa: F401
from zip2pacs.ledger import Ledger, ZipState
from zip2pacs.pipeline import Pipeline


def test_zip_replaced_under_its_name_while_sent_is_not_archived_unsent(tmp_path, scp):  # noqa: F811
    config = make_config(tmp_path, scp.port, send_batch_size=1)
    first, first_uids = study_zip(tmp_path, "study.zip", seed=21)
    second_source, second_uids = study_zip(tmp_path, "other.zip", seed=22)
    staged = tmp_path / "staged.zip"
    shutil.move(second_source, staged)
    first_bytes = first.read_bytes()

    def replace_on_first_store(ds):
        if staged.exists():
            os.replace(staged, first)  # a re-export lands under the same name mid-delivery
        return 0x0000

    scp.status_for = replace_on_first_store
    [outcome] = process_all(config)

    assert outcome.state is ZipState.DELIVERED
    assert sorted(scp.stored) == sorted(first_uids)
    archived = [p for p in config.archive_dir.iterdir() if p.suffix == ".zip"]
    assert [p.read_bytes() == first_bytes for p in archived] == [True]  # the delivered bytes, not the new file
    assert first.exists() and first.read_bytes() != first_bytes  # the replacement waits in the watch folder

    scp.status_for = lambda ds: 0x0000
    [again] = process_all(config)
    assert again.state is ZipState.DELIVERED
    assert set(second_uids) <= set(scp.stored)


def test_stray_deliveries_are_adopted_only_by_the_zip_that_made_them(tmp_path, scp):  # noqa: F811
    config = make_config(tmp_path, scp.port)
    with Ledger(config.state_db) as ledger:
        # A crash of another export.zip, before its hash was known, left rows without a ZIP record.
        ledger.record_delivery(
            config.peer.key, None, "study.zip", sop_instance_uid="1.2.3", sha256="ab" * 32, sop_class_uid="1.2",
            study_uid="1.2.3.4", series_uid="1.2.3.5", transfer_syntax="1.2.840.10008.1.2.1", status=0,
            outcome="stored", claim="1:2:3:4",
        )  # fmt: skip
    study_zip(tmp_path, "study.zip", seed=23)
    [outcome] = process_all(config)
    assert outcome.state is ZipState.DELIVERED
    with sqlite3.connect(config.state_db) as db:
        assert db.execute("SELECT zip_id FROM instances WHERE sop_instance_uid='1.2.3'").fetchall() == [(None,)]


def pipeline_for(config):
    ledger = Ledger(config.state_db)
    return ledger, Pipeline(config, ledger)
