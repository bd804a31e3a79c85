"""Senders share what waits: shares end together, one association carries a mixed ZIP, a step undone leaves."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import MRImageStorage

from tests.unit.test_pipeline import make_config, process_all, study_zip
from tests.unit.test_ramp import SlowScp
from zip2pacs import delivery, ramp
from zip2pacs.backlog import Backlog
from zip2pacs.ledger import ZipState
from zip2pacs.synth import write_study, zip_folder


def items(n: int) -> list:
    return [object() for _ in range(n)]  # the backlog never looks inside an instance


def test_a_sender_takes_its_share_of_what_waits_and_one_sender_alone_takes_a_batch():
    backlog = Backlog(limit=1000, batch=25)
    assert backlog.put(items(300), timeout=0)
    assert len(backlog.take(senders=1)) == 25  # one association: whole batches, as before
    assert len(backlog.take(senders=8)) == 25  # 275 for eight: a batch each at most
    backlog.take(senders=1) and [backlog.take(senders=1) for _ in range(8)]
    assert len(backlog) == 25
    assert len(backlog.take(senders=8)) == 4  # the tail: eight shares of 25, so the senders end together
    assert len(backlog.take(senders=8)) == 3


def test_shares_are_taken_in_order_and_the_end_is_none_once_closed():
    backlog = Backlog(limit=10, batch=4)
    first, rest = items(2), items(3)
    backlog.put(first + rest, timeout=0)
    backlog.close()
    assert backlog.take(senders=1) == first + rest[:2]
    assert backlog.take(senders=1) == rest[2:]
    assert backlog.take(senders=1) is None


def test_the_extractor_waits_when_the_backlog_is_full_and_a_stow_sender_waits_for_a_whole_batch():
    backlog = Backlog(limit=4, batch=3)
    assert backlog.put(items(4), timeout=0)
    assert not backlog.put(items(1), timeout=0.01)  # full: the extractor waits, memory and disk stay bounded
    got: list = []
    taker = threading.Thread(target=lambda: got.append(backlog.take(senders=1, least=3)))
    backlog.take(senders=1)  # three taken: one left, less than a batch
    taker.start()
    taker.join(0.2)
    assert taker.is_alive() and not got  # one instance waits: a STOW-RS request waits for more
    backlog.put(items(2), timeout=0)
    taker.join(5)
    assert len(got[0]) == 3


def test_what_a_throttled_sender_gives_back_is_taken_first_and_once_closed_a_stow_tail_is_shared():
    backlog = Backlog(limit=100, batch=4)
    batch, later = items(4), items(6)
    backlog.put(batch + later, timeout=0)
    assert backlog.take(senders=1, least=4) == batch
    backlog.give_back(batch)  # a STOW-RS request throttled: its instances go to the senders still going
    assert backlog.take(senders=1, least=4) == batch and len(backlog) == 6
    backlog.close()
    assert len(backlog.take(senders=3, least=4)) == 2  # the extraction is over: three requests share the six
    assert len(backlog.take(senders=3, least=4)) == 2


def test_waiting_means_a_whole_batch_waits_even_once_the_extraction_is_over():
    backlog = Backlog(limit=100, batch=5)
    backlog.put(items(4), timeout=0)
    assert not backlog.waiting()
    backlog.put(items(1), timeout=0)
    assert backlog.waiting()
    backlog.take(senders=1)
    backlog.put(items(4), timeout=0)
    backlog.close()
    assert not backlog.waiting()  # the last few: not worth a further association


def mixed_zip(root: Path, name: str, seed: int) -> tuple[Path, list[str]]:
    """A ZIP whose files alternate between two SOP classes, as a CD with CT and MR series does."""
    source = root / "src" / name
    files = sorted(write_study(source, seed=seed, n_series=2, per_series=6, rows=8, cols=8))
    for f in files[1::2]:
        ds = dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.save_as(f, enforce_file_format=True)
    return zip_folder(source, root / "incoming" / name), [str(dcmread(f).SOPInstanceUID) for f in files]


def test_a_zip_whose_instances_alternate_between_sop_classes_needs_a_new_association_once(tmp_path, scp):
    config = make_config(tmp_path, scp.port, send_batch_size=1)  # a share of one instance at a time
    config = config.__class__(**{**config.__dict__, "max_associations": 1})
    _, uids = mixed_zip(tmp_path, "mixed.zip", seed=60)
    [outcome] = process_all(config)
    assert outcome.state is ZipState.DELIVERED and sorted(scp.stored) == sorted(uids)
    # The first association knew only the first SOP class; the one made when the second appeared proposes
    # every context the ZIP needed so far, and carries the rest.
    assert scp.associations <= 2


@pytest.fixture
def scp():
    from tests.unit.test_pipeline import RecordingSCP

    server = RecordingSCP()
    yield server
    server.stop()


def test_associations_a_step_added_in_vain_leave_and_the_rest_deliver_everything(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(ramp, "SETTLE_SECONDS", 0.02)
    monkeypatch.setattr(ramp, "GAIN", 1e9)  # no step ever raises the rate enough: the first one is undone
    monkeypatch.setattr(delivery, "WARM_TIMEOUT", 1.0)
    scp = SlowScp()
    try:
        config = make_config(tmp_path, scp.port, send_batch_size=2)
        _, uids = study_zip(tmp_path, "study.zip", seed=61, n_series=4, per_series=20)
        with caplog.at_level("DEBUG", logger="zip2pacs"):
            [outcome] = process_all(config)
    finally:
        scp.server.shutdown()
    assert outcome.state is ZipState.DELIVERED and sorted(scp.stored) == sorted(uids)
    assert scp.most == 2  # the ramp tried a second association ...
    assert "did not raise the rate; back to 1" in caplog.text  # ... and undid it
    assert scp.active == 0


def test_a_zip_of_fewer_instances_than_a_batch_is_sent_on_one_association_even_to_a_slow_peer(tmp_path, monkeypatch):
    monkeypatch.setattr(ramp, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(ramp, "FIRST_RESULTS", 1)
    monkeypatch.setattr(ramp, "GAIN", 0.0)  # any step would count as a gain: only "nothing waits" stops it
    scp = SlowScp()
    try:
        config = make_config(tmp_path, scp.port)  # send_batch_size 25
        _, uids = study_zip(tmp_path, "study.zip", seed=62, n_series=2, per_series=10)
        [outcome] = process_all(config)
    finally:
        scp.server.shutdown()
    assert outcome.state is ZipState.DELIVERED and sorted(scp.stored) == sorted(uids)
    assert scp.most == 1  # 20 instances: a second association is not worth its round trips


def test_a_context_the_peer_refused_as_an_extra_gets_an_association_of_its_own_before_its_verdict(tmp_path):
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    from tests.unit.test_sender import instance_of
    from zip2pacs import sender
    from zip2pacs.association import Peer
    from zip2pacs.contexts import plan_groups
    from zip2pacs.sender import Outcome

    mixed_zip(tmp_path, "mixed.zip", seed=63)
    files = sorted(p for p in (tmp_path / "src" / "mixed.zip").rglob("*") if p.is_file())
    instances = [instance_of(f) for f in files]
    ct = next(i for i in instances if i.sop_class_uid == CTImageStorage)
    mr = next(i for i in instances if i.sop_class_uid == MRImageStorage)
    opened: list[int] = []
    ae = AE(ae_title="CTONLY")
    ae.add_supported_context(CTImageStorage)  # a peer that takes CT only
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000), (evt.EVT_ESTABLISHED, lambda e: opened.append(1))],
    )
    try:
        peer = Peer(port=server.server_address[1], ae_title="CTONLY", acse_timeout=5, dimse_timeout=5)
        with sender.Connection(peer) as connection:
            connection.wider = plan_groups([ct, mr])[0].contexts  # MR proposed beside CT, and refused
            [first] = connection.store([ct])
            [second] = connection.store([mr])
    finally:
        server.shutdown()
    assert first.outcome is Outcome.STORED
    assert second.outcome is Outcome.PERMANENT and "no presentation context" in second.detail
    # The verdict comes from an association that proposed MR for itself, not from one that took it as an extra:
    # a peer may accept a context alone that it refused among others.
    assert len(opened) == 2
