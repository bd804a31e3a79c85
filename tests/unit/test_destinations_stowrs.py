"""A STOW-RS destination beside a DIMSE one, in-process: the STOW-RS server of test_stowrs.py and a pynetdicom SCP."""

from __future__ import annotations

import threading
import time

from tests.unit.test_destinations import dimse, make_config
from tests.unit.test_pipeline import RecordingSCP, study_zip
from tests.unit.test_stowrs import Answerer, Seen, StowServer, stores_everything, stow_server  # noqa: F401
from zip2pacs.daemon import run_once
from zip2pacs.ledger import Ledger


def stowrs(name: str, server: StowServer) -> dict:
    return {"name": name, "kind": "stowrs", "url": server.base_url, "max_instances": 4}


def test_a_stowrs_destination_gets_every_instance_in_requests_of_one_study(tmp_path, stow_server):  # noqa: F811
    web, scp = stow_server(), RecordingSCP()
    try:
        config = make_config(tmp_path, [stowrs("web", web), dimse("local", scp.port)])
        zip_path, uids = study_zip(tmp_path, "study.zip", seed=71)
        assert run_once(config) is True
    finally:
        scp.stop()
    assert sorted(u for seen in web.posts() for u in seen.uids) == sorted(uids)
    assert all(len(seen.parts) <= 4 for seen in web.posts()) and sorted(scp.stored) == sorted(uids)
    assert (config.archive_dir / "study.zip").exists()


def test_a_busy_stowrs_destination_waits_as_long_as_its_retry_after_asks_and_the_other_is_served(tmp_path, stow_server):  # noqa: F811
    busy = {"on": True}
    web = stow_server(lambda seen: (503, {"Retry-After": "900"}, b"busy") if busy["on"] else stores_everything(seen))
    scp = RecordingSCP()
    try:
        config = make_config(tmp_path, [dimse("local", scp.port), stowrs("web", web)])
        zip_path, uids = study_zip(tmp_path, "study.zip", seed=72)
        assert run_once(config) is False and zip_path.exists() and sorted(scp.stored) == sorted(uids)
        with Ledger(config.state_db) as ledger:
            [(_, key, _, next_retry, error)] = ledger.pending()
        assert key == f"stowrs:{web.base_url}" and "503" in error
        assert next_retry is not None and next_retry >= time.time() + 800  # not retry_base_seconds (60)
        busy["on"] = False
        requests_before, refused = scp.requests, len(web.posts())
        assert run_once(config) is True
        stored = [u for seen in web.posts()[refused:] for u in seen.uids]
        assert sorted(stored) == sorted(uids) and scp.requests == requests_before
    finally:
        scp.stop()


def test_check_prints_a_block_per_destination_and_fails_when_one_refuses_our_credentials(tmp_path, stow_server, capsys):  # noqa: F811
    from zip2pacs import cli

    answers = {"GET": 200}
    web = stow_server(lambda seen: (answers["GET"], {}, b"[]"))
    scp = RecordingSCP()
    try:
        config = make_config(tmp_path, [dimse("local", scp.port), stowrs("web", web)])
        assert cli.check(config) == cli.EXIT_OK
        out = capsys.readouterr().out
        assert "Destination local (dimse" in out and "C-ECHO OK" in out
        assert "Destination web (stowrs" in out and "answers QIDO-RS (HTTP 200)" in out and "Not verified:" in out
        answers["GET"] = 401
        assert cli.check(config) == cli.EXIT_UNDELIVERED
        assert "Check failed:" in capsys.readouterr().out
    finally:
        scp.stop()
    assert [seen.path for seen in web.seen] == ["/dicom-web/studies?limit=1"] * 2  # nothing was stored


class InFlight:
    """An answerer that counts the requests in flight, and throttles those beyond ``allowed`` (429)."""

    def __init__(self, allowed: int = 99, seconds: float = 0.05):
        self.allowed, self.seconds = allowed, seconds
        self.now = self.most = self.throttled = 0
        self.lock = threading.Lock()

    def __call__(self, seen: Seen) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            over = self.now > self.allowed
            self.throttled += over
        try:
            if over:
                return 429, {"Retry-After": "600"}, b""
            time.sleep(self.seconds)  # a server at work: the next requests arrive meanwhile
            return stores_everything(seen)
        finally:
            with self.lock:
                self.now -= 1

    def stored(self, server: StowServer) -> list[str]:
        return sorted(u for seen in server.posts() for u in seen.uids if seen.status == 200)


def test_a_stowrs_destination_keeps_up_to_max_requests_in_flight_and_sends_each_instance_once(tmp_path, stow_server):  # noqa: F811
    counter = InFlight()
    web = stow_server(counter)
    config = make_config(tmp_path, [dict(stowrs("web", web), max_requests=3)], send_batch_size=3)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=73, per_series=15)
    assert run_once(config) is True
    assert counter.most == 3  # one request at a time before; never more than max_requests
    assert counter.stored(web) == sorted(uids) and (config.archive_dir / "study.zip").exists()


def test_a_server_that_throttles_further_requests_gets_the_zip_through_the_requests_it_takes(
    tmp_path,
    stow_server,  # noqa: F811
    caplog,
):
    counter = InFlight(allowed=1)
    web = stow_server(counter)
    config = make_config(tmp_path, [stowrs("web", web)], send_batch_size=3)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=74, per_series=15)
    with caplog.at_level("INFO", logger="zip2pacs"):
        assert run_once(config) is True  # not pending for its Retry-After: the request in flight took the rest
    assert counter.throttled >= 1 and counter.stored(web) == sorted(uids)  # each instance stored once
    assert (config.archive_dir / "study.zip").exists() and not zip_path.exists()
    assert "the server throttled a further request" in caplog.text
    with Ledger(config.state_db) as ledger:
        assert ledger.zips_by_state() == {"delivered": 1} and ledger.instance_count() == len(uids)


def test_when_every_request_is_throttled_the_zip_waits_for_the_retry_after_and_nothing_is_lost(tmp_path, stow_server):  # noqa: F811
    counter = InFlight(allowed=0)
    web = stow_server(counter)
    config = make_config(tmp_path, [stowrs("web", web)], send_batch_size=3)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=75, per_series=15)
    assert run_once(config) is False and zip_path.exists()
    with Ledger(config.state_db) as ledger:
        [(_, _, _, next_retry, error)] = ledger.pending()
        assert ledger.instance_count() == 0
    assert "429" in error and next_retry is not None and next_retry >= time.time() + 500  # its Retry-After: 600
    counter.allowed = 99
    assert run_once(config) is True
    assert counter.stored(web) == sorted(uids) and (config.archive_dir / "study.zip").exists()
