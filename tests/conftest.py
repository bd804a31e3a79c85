"""Shared fixtures: a throw-away folder tree with its config.yaml, and the command run as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMMAND = REPO / "dicom_zip_watcher.py"
FOLDERS = ("incoming", "work", "archive", "failed", "state", "logs")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def state_db(self) -> Path:
        return self.root / "state" / "uploader.sqlite3"

    @property
    def log_file(self) -> Path:
        return self.root / "logs" / "uploader.log"

    def config_dict(self, peer_port: int) -> dict[str, dict[str, object]]:
        """Return the settings of a fast test run against 127.0.0.1:``peer_port`` (paths relative to ``root``)."""
        return {
            "paths": {
                "watch_dir": "incoming",
                "work_dir": "work",
                "archive_dir": "archive",
                "failed_dir": "failed",
                "state_db": "state/uploader.sqlite3",
            },
            "dicom": {
                "peer_host": "127.0.0.1",
                "peer_port": peer_port,
                "peer_ae_title": "ORTHANC",
                "local_ae_title": "ZIPWATCHER",
                "acse_timeout": 5,
                "dimse_timeout": 15,
                "network_timeout": 15,
            },
            "behavior": {
                "poll_interval_seconds": 0.5,
                "wait_zip_complete_seconds": 0.5,
                "retry_base_seconds": 1,
                "retry_max_seconds": 2,
                "unreadable_zip_grace_seconds": 0,  # a corrupt ZIP is judged at once in tests
            },
            "logging": {"level": "DEBUG", "file": "logs/uploader.log"},
        }

    def write_config(self, peer_port: int, name: str = "config.yaml", **overrides: dict[str, object]) -> Path:
        """Write a config.yaml for ``peer_port`` into the tree and return its path.

        ``overrides`` are sections whose keys replace or add to the defaults, e.g.
        ``behavior={"wait_zip_complete_seconds": 1.5}``; unknown keys are written as given.
        """
        settings = self.config_dict(peer_port)
        for section, values in overrides.items():
            settings.setdefault(section, {}).update(values)
        path = self.root / name
        path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        return path

    def files(self, folder: Path, pattern: str = "*") -> list[Path]:
        """Return the files (not .gitkeep) matching ``pattern`` directly in ``folder``, sorted by name."""
        return sorted(p for p in folder.glob(pattern) if p.is_file() and p.name != ".gitkeep")


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A fresh incoming/work/archive/failed/state/logs tree."""
    for name in FOLDERS:
        (tmp_path / name).mkdir()
    return Workspace(tmp_path)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["TCP_NODELAY"] = "1"
    return env


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python dicom_zip_watcher.py ARGS`` from the repository root and return the finished process."""

    def run(args: Sequence[str | os.PathLike[str]], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(COMMAND), *map(str, args)],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def spawn_cli(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``python dicom_zip_watcher.py ARGS`` in the background; any still running at teardown is killed.

    Output goes to files (``proc.stdout_path``/``proc.stderr_path``) so a chatty daemon never blocks on a pipe.
    """
    started: list[subprocess.Popen[str]] = []

    def spawn(args: Sequence[str | os.PathLike[str]]) -> subprocess.Popen[str]:
        n = len(started)
        out, err = tmp_path / f"cli{n}.stdout", tmp_path / f"cli{n}.stderr"
        with open(out, "w") as out_fh, open(err, "w") as err_fh:
            proc = subprocess.Popen(
                [sys.executable, str(COMMAND), *map(str, args)],
                cwd=REPO,
                env=_env(),
                stdout=out_fh,
                stderr=err_fh,
                text=True,
            )
        proc.stdout_path = out  # type: ignore[attr-defined]
        proc.stderr_path = err  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
