"""A STOW-RS destination that refuses our credentials is paused for every ZIP, not retried ZIP by ZIP.

An in-process STOW-RS server (test_stowrs.py's) that takes one bearer token and answers 401 to any other, beside a
pynetdicom SCP; the service's pipeline is driven ZIP by ZIP, as the loop drives it.
"""

from __future__ import annotations

import logging
import time

from tests.unit.test_destinations import dimse, make_config
from tests.unit.test_pipeline import RecordingSCP, study_zip
from tests.unit.test_stowrs import Seen, StowServer, stores_everything, stow_server  # noqa: F401
from zip2pacs.daemon import run_once
from zip2pacs.intake import list_zips
from zip2pacs.ledger import Counts, Ledger, ZipState
from zip2pacs.pause import PAUSE_SECONDS
from zip2pacs.pipeline import Pipeline
from zip2pacs.report import status_text

GOOD = "the-right-token"


def takes_one_token(seen: Seen) -> tuple[int, dict[str, str], bytes]:
    if seen.headers.get("Authorization") != f"Bearer {GOOD}":
        return 401, {"WWW-Authenticate": "Bearer"}, b""
    return stores_everything(seen)


def service(config, ledger: Ledger) -> Pipeline:
    pipeline = Pipeline(config, ledger)
    pipeline.skip_not_due = True  # as run_forever does
    return pipeline


def each_zip(pipeline: Pipeline, config) -> list[ZipState]:
    """Process the ZIPs of the watch folder as the service loop does (each if due when its turn comes); return outcomes."""
    return [pipeline.process_zip(z).state for z in list_zips(config.watch_dir) if pipeline.due(z)]


def test_a_401_pauses_the_destination_for_every_zip_and_a_new_token_file_resumes_it(tmp_path, stow_server, caplog):  # noqa: F811
    web, scp = stow_server(takes_one_token), RecordingSCP()
    token = tmp_path / "web.token"
    token.write_text("an-expired-token\n")
    stow = {"name": "web", "kind": "stowrs", "url": web.base_url, "token_file": str(token), "max_instances": 4}
    # Any time counted against the budget would give up at once: a paused destination must count none.
    config = make_config(tmp_path, [dimse("local", scp.port), stow], give_up_after_hours=1e-9)
    first, uids_a = study_zip(tmp_path, "a.zip", seed=81)
    second, uids_b = study_zip(tmp_path, "b.zip", seed=82)
    try:
        with Ledger(config.state_db) as ledger, caplog.at_level(logging.INFO, logger="zip2pacs"):
            pipeline = service(config, ledger)
            assert each_zip(pipeline, config) == [ZipState.PENDING, ZipState.PENDING]
            assert len(web.posts()) == 1, "a paused destination was sent another request"
            assert sorted(scp.stored) == sorted(uids_a + uids_b)  # the other destination got everything
            assert first.exists() and second.exists() and not list(config.failed_dir.glob("*"))
            [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
            message = error.getMessage()
            assert "web paused" in message and "HTTP 401" in message and f"token_file {token}" in message
            assert "an-expired-token" not in caplog.text
            assert not any(pipeline.due(z) for z in list_zips(config.watch_dir))
            text = status_text(ledger, config)
            assert "Paused" in text and "web (stowrs:" in text and " since " in text and "HTTP 401" in text
            assert "b.zip -> web" in text and "waits while web is paused" in text
            requests_scp = scp.requests
            assert (
                each_zip(pipeline, config) == []
                and [pipeline.process_zip(z).state for z in list_zips(config.watch_dir)] == [ZipState.PENDING] * 2
            )
            assert len(web.posts()) == 1
            token.write_text(GOOD)  # an outside tool renews the token
            assert each_zip(pipeline, config) == [ZipState.DELIVERED, ZipState.DELIVERED]
            assert "web takes our credentials again" in caplog.text
            assert ledger.pauses() == [] and "Paused" not in status_text(ledger, config)
    finally:
        scp.stop()
    stored = [u for seen in web.posts()[1:] for u in seen.uids]
    assert sorted(stored) == sorted(uids_a + uids_b) and scp.requests == requests_scp
    assert (config.archive_dir / "a.zip").exists() and (config.archive_dir / "b.zip").exists()
    assert not first.exists() and not second.exists()


def test_after_the_pause_one_request_tries_again_and_a_refusal_keeps_it_paused(tmp_path, stow_server, caplog):  # noqa: F811
    web, scp = stow_server(lambda seen: (403, {}, b"forbidden")), RecordingSCP()
    stow = {"name": "web", "kind": "stowrs", "url": web.base_url, "username": "watcher", "password": "hunter2"}
    config = make_config(tmp_path, [dimse("local", scp.port), stow])
    study_zip(tmp_path, "a.zip", seed=83)
    study_zip(tmp_path, "b.zip", seed=84)
    clock = [time.monotonic()]
    try:
        with Ledger(config.state_db) as ledger, caplog.at_level(logging.INFO, logger="zip2pacs"):
            pipeline = service(config, ledger)
            gate = pipeline.pauses.gates[f"stowrs:{web.base_url}"]
            gate.clock = lambda: clock[0]
            each_zip(pipeline, config)
            [first] = ledger.pauses()
            assert len(web.posts()) == 1 and first.status == 403 and "username 'watcher'" in first.reason
            assert 0 < pipeline.next_retry_in() <= PAUSE_SECONDS
            clock[0] += PAUSE_SECONDS + 1
            assert each_zip(pipeline, config) == [ZipState.PENDING]  # one ZIP, one request: the probe
            assert len(web.posts()) == 2
            [again] = ledger.pauses()
            assert again.began == first.began and again.probe_at > first.probe_at
            assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
            assert "still refuses our credentials" in caplog.text and "hunter2" not in caplog.text
    finally:
        scp.stop()


def test_a_single_stowrs_destination_paused_takes_no_zip_until_its_token_variable_changes(
    tmp_path,
    stow_server,  # noqa: F811
    monkeypatch,
):
    web = stow_server(takes_one_token)
    monkeypatch.setenv("WEB_TOKEN", "wrong")
    config = make_config(tmp_path, [{"name": "web", "kind": "stowrs", "url": web.base_url, "token_env": "WEB_TOKEN"}])
    first, uids_a = study_zip(tmp_path, "a.zip", seed=85)
    second, uids_b = study_zip(tmp_path, "b.zip", seed=86)
    with Ledger(config.state_db) as ledger:
        pipeline = service(config, ledger)
        assert each_zip(pipeline, config) == [ZipState.PENDING]  # the second was not due once the first paused it
        outcome = pipeline.process_zip(list_zips(config.watch_dir)[1])  # --once takes it all the same: not sent
        assert outcome.state is ZipState.PENDING and "web is paused" in outcome.error and "$WEB_TOKEN" in outcome.error
        assert len(web.posts()) == 1 and first.exists() and second.exists()
        monkeypatch.setenv("WEB_TOKEN", GOOD)
        assert each_zip(pipeline, config) == [ZipState.DELIVERED, ZipState.DELIVERED]
    assert sorted(u for seen in web.posts()[1:] for u in seen.uids) == sorted(uids_a + uids_b)


def test_a_missing_token_file_pauses_the_destination_without_a_request_until_it_appears(tmp_path, stow_server):  # noqa: F811
    web, scp = stow_server(takes_one_token), RecordingSCP()
    token = tmp_path / "later.token"
    stow = {"name": "web", "kind": "stowrs", "url": web.base_url, "token_file": str(token)}
    config = make_config(tmp_path, [stow, dimse("local", scp.port)])
    study_zip(tmp_path, "a.zip", seed=87)
    try:
        with Ledger(config.state_db) as ledger:
            pipeline = service(config, ledger)
            assert each_zip(pipeline, config) == [ZipState.PENDING]
            [pause] = ledger.pauses()
            assert pause.status is None and "cannot read the token file" in pause.reason and web.seen == []
            assert each_zip(pipeline, config) == []
            token.write_text(GOOD)
            assert each_zip(pipeline, config) == [ZipState.DELIVERED]
    finally:
        scp.stop()


def test_a_restart_ends_the_pause_and_the_first_zip_tries_again(tmp_path, stow_server):  # noqa: F811
    web = stow_server(lambda seen: (401, {}, b""))
    config = make_config(tmp_path, [{"name": "web", "kind": "stowrs", "url": web.base_url}])
    study_zip(tmp_path, "a.zip", seed=88)
    study_zip(tmp_path, "b.zip", seed=89)
    assert run_once(config) is False and len(web.posts()) == 1
    assert run_once(config) is False and len(web.posts()) == 2
    with Ledger(config.state_db) as ledger:
        [pause] = ledger.pauses()  # the watcher stopped while paused: --status still says so
        assert pause.status == 401 and "we sent no username, password or token" in pause.reason
        assert "Paused" in status_text(ledger, config)


def test_time_a_destination_was_paused_is_not_counted_in_a_zips_tried_seconds(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        for peer in ("web", "local"):
            record = ledger.zip_begin("ab" * 32, peer, "a.zip", 10, 1.0)
            ledger.zip_finish(record.id, ZipState.PENDING, Counts(), "refused", spent=5)
        now = time.time()
        ledger.db.execute("UPDATE zips SET updated=?", (now - 1000,))  # the last attempt, 1000 s ago
        ledger.pause("web", 401, "refused", now - 900, now)  # paused 800 s of those 1000 s
        ledger.end_pauses("web")
        ledger.db.execute("UPDATE pauses SET ended=?", (now - 100,))
        web = ledger.zip_begin("ab" * 32, "web", "a.zip", 10, 1.0, max_gap=10_000)
        local = ledger.zip_begin("ab" * 32, "local", "a.zip", 10, 1.0, max_gap=10_000)
    assert 204 <= web.tried_seconds <= 206  # 5 s of the attempt and the 200 s it was not paused
    assert 1004 <= local.tried_seconds <= 1006  # the other destination was never paused
