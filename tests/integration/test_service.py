"""The daemon as a service: a polling observer that sees new ZIPs, a clean stop, a second instance refused."""

from __future__ import annotations

import signal

import pytest

from tests.integration.conftest import wait_until
from zip2pacs.demo import Received, start_scp
from zip2pacs.synth import write_study, zip_folder

pytestmark = pytest.mark.integration


@pytest.fixture
def embedded_scp(tmp_path):
    received = Received(tmp_path / "pacs")
    received.folder.mkdir()
    server = start_scp(received, ae_title="ORTHANC")
    yield received, server.server_address[1]
    server.shutdown()


def test_polling_observer_wakes_the_daemon_long_before_the_rescan(workspace, spawn_cli, run_cli, embedded_scp):
    received, port = embedded_scp
    # The rescan would come only after 60 s: delivery within seconds proves the observer's wake-up.
    config = workspace.write_config(port, behavior={"observer": "polling", "poll_interval_seconds": 60})
    proc = spawn_cli([config])
    wait_until(
        lambda: workspace.log_file.exists() and "polling observer" in workspace.log_file.read_text(), 20, "start"
    )
    assert "behavior.observer is polling" in workspace.log_file.read_text()

    source = workspace.root / "src"
    files = write_study(source, seed=31, n_series=1, per_series=3, rows=8, cols=8)
    zip_folder(source, workspace.root / "study.zip").rename(workspace.incoming / "study.zip")
    wait_until(lambda: (workspace.archive / "study.zip").exists(), 20, "the ZIP delivered and archived")
    assert len(received.uids) == len(files)

    second = run_cli([config, "--once"])
    assert second.returncode == 1 and "another watcher is running" in second.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert "Stopped" in workspace.log_file.read_text()
