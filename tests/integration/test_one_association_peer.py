"""dcmtk storescp without --fork serves one association at a time: a further one waits, and that is an answer."""

from __future__ import annotations

import logging

import pytest

from tests.unit.test_pipeline import make_config, process_all, study_zip
from tests.unit.test_ramp import quick_ramp  # noqa: F401
from zip2pacs import delivery
from zip2pacs.ledger import ZipState

pytestmark = pytest.mark.integration


def test_a_peer_serving_one_association_at_a_time_gets_every_instance_with_no_failure_logged(
    tmp_path,
    storescp_factory,
    quick_ramp,  # noqa: F811
    caplog,
    monkeypatch,
):
    monkeypatch.setattr(delivery, "WARM_TIMEOUT", 0.2)  # a further association waits longer than that here
    scp = storescp_factory(["--accept-all", "--promiscuous"])  # no --fork
    config = make_config(tmp_path, scp.port, send_batch_size=2)
    config = config.__class__(
        **{**config.__dict__, "peer": config.peer.__class__(**{**config.peer.__dict__, "ae_title": scp.aet})}
    )
    _, uids = study_zip(tmp_path, "study.zip", seed=42, n_series=2, per_series=150)

    with caplog.at_level(logging.INFO, logger="zip2pacs"):
        [outcome] = process_all(config)

    assert outcome.state is ZipState.DELIVERED and (config.archive_dir / "study.zip").exists()
    assert scp.count() == len(uids)
    assert "going on with 1 association(s)" in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("zip2pacs") and r.levelno >= logging.WARNING]
