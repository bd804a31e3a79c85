"""The ramp: one association to start, one more while each raised the rate, never past the cap; refusals are answers."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.unit.test_pipeline import make_config, process_all, study_zip
from zip2pacs import delivery, ramp
from zip2pacs.ledger import ZipState
from zip2pacs.ramp import Learned, Ramp


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_ramp_doubles_while_the_rate_grows_and_undoes_the_first_step_that_did_not_help():
    clock = Clock()
    r = Ramp(cap=16, clock=clock)
    assert r.more(100, backlog=False) == 0  # nothing waits: one association is enough
    clock.now = 0.1
    assert r.more(100, backlog=True) == 0  # too soon to judge
    clock.now = 1.0
    assert r.more(100, backlog=True) == 1 and r.size == 2  # 100/s with one: try two
    clock.now = 1.5
    assert r.more(150, backlog=True) == 0  # the second association is not accepted yet
    r.opened(150)
    clock.now = 2.5
    assert r.more(280, backlog=True) == 2 and r.size == 4  # 130/s with two (+30%): try four
    r.opened(280)
    r.opened(280)
    assert not r.leave()
    clock.now = 3.5
    assert r.more(420, backlog=True) == 0 and r.size == 2  # 140/s with four (+8%): back to two
    assert r.closed and "did not raise the rate; back to 2" in r.why
    assert [r.leave(), r.leave(), r.leave()] == [True, True, False]  # the two added leave, no more
    assert r.senders() == 2


def test_a_step_that_nearly_doubled_the_rate_is_followed_by_a_quadrupling():
    clock = Clock()
    r = Ramp(cap=16, clock=clock)
    clock.now = 1.0
    assert r.more(20, backlog=True) == 1  # 20/s with one, from 4 results: the first step needs no more
    r.opened(20)
    clock.now = 2.0
    assert r.more(58, backlog=True) == 6 and r.size == 8  # 38/s with two (x1.9): a link far away; try eight
    assert r.senders() == 16  # shares leave work for the eight the next step may add


def test_the_ramp_never_passes_the_cap_and_a_refusal_stops_it_one_lower():
    clock = Clock()
    r = Ramp(cap=3, clock=clock)
    clock.now = 1.0
    assert r.more(50, backlog=True) == 1 and r.size == 2
    r.opened(50)
    clock.now = 2.0
    assert r.more(500, backlog=True) == 1 and r.size == 3  # the cap, not a doubling
    r.opened(500)
    clock.now = 10.0
    assert r.more(10_000, backlog=True) == 0 and r.size == 3
    refused = Ramp(cap=4, clock=clock)
    clock.now = 20.0
    assert refused.more(50, backlog=True) == 1
    refused.refused("local limit exceeded")
    assert refused.size == 1 and refused.closed


class SlowScp:
    """A Storage SCP that takes a few ms per C-STORE and records how many associations it served at once."""

    def __init__(self, maximum_associations: int = 10) -> None:
        self.stored: list[str] = []
        self.active = self.most = 0
        self.lock = threading.Lock()
        ae = AE(ae_title="TESTPACS")
        ae.maximum_associations = maximum_associations
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_C_STORE, self.store),
            (evt.EVT_ESTABLISHED, self.opened),
            (evt.EVT_RELEASED, self.closed),
            (evt.EVT_ABORTED, self.closed),
        ]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def store(self, event: evt.Event) -> int:
        time.sleep(0.004)  # a PACS far away, in miniature: each C-STORE waits
        with self.lock:
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def opened(self, event: evt.Event) -> None:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)

    def closed(self, event: evt.Event) -> None:
        with self.lock:
            self.active -= 1


@pytest.fixture
def quick_ramp(monkeypatch):
    monkeypatch.setattr(ramp, "SETTLE_SECONDS", 0.05)
    monkeypatch.setattr(ramp, "SETTLE_RESULTS", 2)
    monkeypatch.setattr(ramp, "GAIN", 0.0)  # every addition counts as a gain: the cap is what stops it
    monkeypatch.setattr(delivery, "WARM_TIMEOUT", 1.0)
    judged = Ramp.more
    monkeypatch.setattr(Ramp, "more", lambda self, done, backlog: judged(self, done, True))  # as if batches wait


def test_the_ramp_opens_more_associations_to_a_slow_peer_but_never_more_than_the_cap(tmp_path, quick_ramp):
    scp = SlowScp()
    try:
        config = make_config(tmp_path, scp.port, send_batch_size=2)
        config = config.__class__(**{**config.__dict__, "max_associations": 3})
        _, uids = study_zip(tmp_path, "study.zip", seed=40, n_series=4, per_series=30)
        [outcome] = process_all(config)
    finally:
        scp.server.shutdown()
    assert outcome.state is ZipState.DELIVERED and sorted(scp.stored) == sorted(uids)
    assert scp.most == 3


def test_a_peer_that_rejects_further_associations_gets_everything_with_no_failure_logged(tmp_path, quick_ramp, caplog):
    scp = SlowScp(maximum_associations=1)  # A-ASSOCIATE-RJ "local limit exceeded" beyond one
    try:
        config = make_config(tmp_path, scp.port, send_batch_size=2)
        _, uids = study_zip(tmp_path, "study.zip", seed=41, n_series=2, per_series=30)
        with caplog.at_level(logging.INFO, logger="zip2pacs"):
            [outcome] = process_all(config)
    finally:
        scp.server.shutdown()
    assert outcome.state is ZipState.DELIVERED and sorted(scp.stored) == sorted(uids)
    assert "going on with 1 association(s)" in caplog.text  # the ramp tried, and took the answer
    assert not [r for r in caplog.records if r.name.startswith("zip2pacs") and r.levelno >= logging.WARNING]


def test_the_next_zip_starts_where_the_last_one_settled_but_only_when_instances_wait():
    clock = Clock()
    learned = Learned()
    first = Ramp(cap=8, clock=clock, start=learned.start("pacs"))
    clock.now = 1.0
    assert first.more(100, backlog=True) == 1
    first.opened(100)
    clock.now = 2.0
    assert first.more(400, backlog=True) == 6 and first.size == 8  # 300/s with two after 100/s with one
    learned.settle("pacs", first)
    assert learned.start("pacs") == 1  # the last step was not judged yet: nothing learnt
    for _ in range(6):
        first.opened(400)
    clock.now = 3.0
    assert first.more(1300, backlog=True) == 0 and first.closed  # 900/s with eight: kept, at the cap
    learned.settle("pacs", first)
    assert (learned.start("pacs"), learned.start("other")) == (8, 1)

    few = Ramp(cap=8, clock=clock, start=learned.start("pacs"))
    assert few.more(0, backlog=False) == 0 and few.size == 1  # a ZIP of a few files: one association
    many = Ramp(cap=8, clock=clock, start=learned.start("pacs"))
    assert many.more(0, backlog=True) == 7 and many.size == 8  # at once, no settling first


def test_stow_requests_start_at_the_cap_and_the_next_zip_starts_below_the_level_the_server_throttled():
    clock, learned = Clock(), Learned()
    assert learned.start("web", 4) == 4  # nothing learnt: STOW-RS starts at its max_requests
    stow = Ramp(cap=4, clock=clock, start=learned.start("web", 4), unit="request(s) in flight", cap_key="max_requests")
    assert stow.more(0, backlog=False) == 0  # less than a batch waits: one request
    assert stow.more(0, backlog=True) == 3 and stow.size == 4
    for _ in range(3):
        stow.opened(0)
    stow.refused("the server throttled a further request (HTTP 429)")
    stow.refused("the server throttled a further request (HTTP 429)")
    assert stow.size == 2 and stow.closed and stow.more(100, backlog=True) == 0
    learned.settle("web", stow)
    assert learned.start("web", 4) == 2  # not the level that was throttled
    assert Ramp(cap=1, unit="request(s) in flight", cap_key="max_requests of web").why == "max_requests of web is 1"


def test_the_second_zip_to_a_peer_starts_with_the_associations_the_first_settled_on(tmp_path, quick_ramp, monkeypatch):
    starts: list[int] = []

    class Recorded(Ramp):
        def __init__(self, cap: int, clock=time.monotonic, start: int = 1, **words: str):
            starts.append(start)
            super().__init__(cap, clock, start, **words)

    monkeypatch.setattr(delivery, "Ramp", Recorded)
    scp = SlowScp()
    try:
        config = make_config(tmp_path, scp.port, send_batch_size=2)
        config = config.__class__(**{**config.__dict__, "max_associations": 3})
        _, first = study_zip(tmp_path, "first.zip", seed=42, n_series=2, per_series=30)
        _, second = study_zip(tmp_path, "second.zip", seed=43, n_series=2, per_series=30)
        outcomes = process_all(config)  # one pipeline, as the service runs: first.zip, then second.zip
    finally:
        scp.server.shutdown()
    assert [o.state for o in outcomes] == [ZipState.DELIVERED, ZipState.DELIVERED]
    assert sorted(scp.stored) == sorted(first + second) and scp.most == 3
    assert starts == [1, 3]  # the second ZIP opens its three associations at once
