"""The timed senders: our watcher from the ZIP, dcmtk storescu and pynetdicom's storescu app from the files."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from corpora import Corpus
from receivers import AET, Receiver, default_env

REPO = Path(__file__).resolve().parent.parent
WATCHER = REPO / "dicom_zip_watcher.py"
NODELAY_STORESCU = Path(__file__).resolve().parent / "pynetdicom_storescu_nodelay.py"
STORESCU_BIN = "/usr/bin/storescu"  # dcmtk's; pynetdicom installs another "storescu" on PATH
TIME_BIN = "/usr/bin/time"
RUN_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Measurement:
    seconds: float  # wall time from launch to exit, interpreter start-up included
    peak_rss_mb: float  # the largest resident set of the process (and its children), from /usr/bin/time
    ok: bool  # exit code 0 and every instance counted at the receiver
    received: int
    note: str = ""
    capped: bool = False  # stopped after the time cap: seconds and received cover part of the corpus


def supported_keys() -> set[str]:
    """Return the dotted config keys this checkout of zip2pacs accepts."""
    sys.path.insert(0, str(REPO))
    from zip2pacs.config import KEYS

    return {k.dotted for k in KEYS}


def timed(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cap: float | None = None
) -> tuple[float, float, int | None]:
    """Run ``cmd`` under /usr/bin/time -v; return (wall seconds, peak RSS in MB, exit code or None when capped).

    After ``cap`` seconds the command is terminated and the seconds are those it ran.
    """
    rusage = log.with_suffix(".time")
    rc: int | None
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [TIME_BIN, "-v", "-o", str(rusage), *cmd], stdout=out, stderr=subprocess.STDOUT, env=env or default_env()
        )
        try:
            rc = proc.wait(timeout=cap or RUN_TIMEOUT)
            seconds = time.perf_counter() - started
        except subprocess.TimeoutExpired:
            seconds = time.perf_counter() - started
            _terminate_child_of(proc)
            rc = None
    peak_kb = 0
    for line in rusage.read_text(errors="replace").splitlines():
        if "Maximum resident set size" in line:
            peak_kb = int(line.rsplit(":", 1)[1])
    return seconds, peak_kb / 1024, rc


def _terminate_child_of(proc: subprocess.Popen[bytes]) -> None:
    # Terminate the command, not /usr/bin/time, so that time still writes the command's peak RSS.
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _measure(
    cmd: list[str],
    log: Path,
    corpus: Corpus,
    receiver: Receiver,
    env: dict[str, str] | None = None,
    cap: float | None = None,
) -> Measurement:
    seconds, rss, rc = timed(cmd, log, env, cap)
    received = receiver.received()
    if rc is None:  # capped: the rate so far stands for the whole corpus (a latency-bound sender is steady)
        ok = 0 < received <= corpus.count
        return Measurement(seconds, rss, ok, received, f"capped at {cap:.0f} s", capped=True)
    ok = rc == 0 and received == corpus.count
    note = "" if ok else f"exit {rc}, {received}/{corpus.count} received (log {log})"
    return Measurement(seconds, rss, ok, received, note)


class Watcher:
    """dicom_zip_watcher.py --once on a fresh copy of the corpus ZIP, a fresh ledger and fresh folders.

    ``max_associations`` None leaves the key out of the config: the watcher's default configuration.
    """

    def __init__(self, max_associations: int | None):
        self.max_associations = max_associations
        self.name = "watcher default" if max_associations is None else f"watcher ma={max_associations}"
        self.source = "ZIP"

    def prepare(self, run_dir: Path, corpus: Corpus, receiver: Receiver, keys: set[str]) -> Path:
        """Write the config and copy the ZIP into incoming/; return the config path."""
        shutil.rmtree(run_dir, ignore_errors=True)
        (run_dir / "incoming").mkdir(parents=True)
        shutil.copyfile(corpus.zip_path, run_dir / "incoming" / corpus.zip_path.name)
        dicom = {
            "peer_host": "127.0.0.1",
            "peer_port": receiver.port,
            "peer_ae_title": AET,
            "local_ae_title": "ZIPWATCHER",
        }
        if "dicom.max_associations" in keys and self.max_associations is not None:
            dicom["max_associations"] = self.max_associations
        config = {
            "paths": {
                "watch_dir": "incoming",
                "work_dir": "work",
                "archive_dir": "archive",
                "failed_dir": "failed",
                "state_db": "state/uploader.sqlite3",
            },
            "dicom": dicom,
            "behavior": {"wait_zip_complete_seconds": 0},
            "limits": {"min_free_disk_mb": 0},
            "logging": {"level": "INFO", "file": "logs/uploader.log"},
        }
        path = run_dir / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def run(
        self, run_dir: Path, corpus: Corpus, receiver: Receiver, keys: set[str], cap: float | None = None
    ) -> Measurement:
        """Deliver the ZIP once, never capped; the ZIP must end in archive/ and every instance at the receiver."""
        config = self.prepare(run_dir, corpus, receiver, keys)
        result = _measure([sys.executable, str(WATCHER), str(config), "--once"], run_dir / "run.log", corpus, receiver)
        return _archived(result, run_dir, corpus)

    def rerun(self, run_dir: Path, corpus: Corpus, receiver: Receiver) -> Measurement:
        """Deliver the same ZIP again with the same ledger: every instance is a duplicate."""
        shutil.copyfile(corpus.zip_path, run_dir / "incoming" / corpus.zip_path.name)
        before = receiver.received()
        cmd = [sys.executable, str(WATCHER), str(run_dir / "config.yaml"), "--once"]
        seconds, rss, rc = timed(cmd, run_dir / "rerun.log")
        ok = rc == 0 and receiver.received() == before
        return Measurement(seconds, rss, ok, 0, "" if ok else f"exit {rc} (log {run_dir / 'rerun.log'})")


def _archived(result: Measurement, run_dir: Path, corpus: Corpus) -> Measurement:
    if result.ok and not any((run_dir / "archive").rglob(corpus.zip_path.name)):
        return Measurement(result.seconds, result.peak_rss_mb, False, result.received, "ZIP not in archive/")
    return result


class RunningWatcher(Watcher):
    """The watcher as a clinic runs it: started first, default configuration; timed from the ZIP's arrival.

    A daemon pays its interpreter start-up and imports once, not per ZIP: this is the figure a user sees for
    each study after the first minute. The ZIP is renamed into incoming/ (as a finished copy appears) and the
    time runs until it is in archive/.
    """

    READY_SECONDS = 1.0  # after the start line: the observer and the ledger are up well within this

    def __init__(self) -> None:
        super().__init__(None)
        self.name = "watcher running"

    def run(
        self, run_dir: Path, corpus: Corpus, receiver: Receiver, keys: set[str], cap: float | None = None
    ) -> Measurement:
        """Start the watcher, drop the ZIP in, wait for it in archive/, stop the watcher."""
        config = self.prepare(run_dir, corpus, receiver, keys)
        name = corpus.zip_path.name
        staged = run_dir / name
        (run_dir / "incoming" / name).rename(staged)
        log = run_dir / "run.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(WATCHER), str(config)], stdout=out, stderr=subprocess.STDOUT, cwd=run_dir
            )
            try:
                return self._drop_and_wait(proc, run_dir, staged, corpus, receiver)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def _drop_and_wait(
        self, proc: subprocess.Popen[bytes], run_dir: Path, staged: Path, corpus: Corpus, receiver: Receiver
    ) -> Measurement:
        uploader_log = run_dir / "logs" / "uploader.log"
        deadline = time.monotonic() + 60
        while not (uploader_log.exists() and "DICOM ZIP Watcher" in uploader_log.read_text(errors="replace")):
            if proc.poll() is not None or time.monotonic() > deadline:
                return Measurement(0.0, 0.0, False, 0, f"the watcher did not start (log {uploader_log})")
            time.sleep(0.05)
        time.sleep(self.READY_SECONDS)
        started = time.perf_counter()
        staged.rename(run_dir / "incoming" / staged.name)
        while not any((run_dir / "archive").rglob(staged.name)):
            if proc.poll() is not None or time.perf_counter() - started > RUN_TIMEOUT:
                return Measurement(time.perf_counter() - started, 0.0, False, receiver.received(), "not archived")
            time.sleep(0.005)
        seconds = time.perf_counter() - started
        rss = _peak_rss_mb(proc.pid)
        received = receiver.received()
        ok = received == corpus.count
        return Measurement(seconds, rss, ok, received, "" if ok else f"{received}/{corpus.count} received")


def _peak_rss_mb(pid: int) -> float:
    """Return the process's peak resident set so far (VmHWM), in MB; 0 when it cannot be read."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class DcmtkStorescu:
    """dcmtk storescu: scan the extracted folder recursively, every file whatever its name, one association."""

    def __init__(self, env_extra: dict[str, str] | None = None):
        self.env_extra = env_extra or {}
        self.name = "dcmtk storescu" + (" NODELAY" if self.env_extra else "")
        self.source = "files"

    def run(
        self, run_dir: Path, corpus: Corpus, receiver: Receiver, keys: set[str], cap: float | None = None
    ) -> Measurement:
        """Send every file (stop after ``cap`` seconds); -R proposes only the contexts the files need."""
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        cmd = [STORESCU_BIN, "-aec", AET, "-R", "+sd", "+r", "127.0.0.1", str(receiver.port), str(corpus.files_dir)]
        return _measure(cmd, run_dir / "run.log", corpus, receiver, dict(default_env(), **self.env_extra), cap)


class PynetdicomStorescu:
    """pynetdicom's storescu app (python -m pynetdicom storescu ... -r) with TCP_NODELAY set on its socket."""

    name = "pynetdicom storescu NODELAY"
    source = "files"

    def run(
        self, run_dir: Path, corpus: Corpus, receiver: Receiver, keys: set[str], cap: float | None = None
    ) -> Measurement:
        """Send every file of the folder, recursively, on one association (stop after ``cap`` seconds)."""
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        cmd = [sys.executable, str(NODELAY_STORESCU), "127.0.0.1", str(receiver.port), str(corpus.files_dir)]
        return _measure([*cmd, "-r", "-aec", AET], run_dir / "run.log", corpus, receiver, cap=cap)


def tool_versions() -> dict[str, str]:
    """Return the versions of the sending tools and libraries."""
    import pydicom
    import pynetdicom

    dcmtk = subprocess.run([STORESCU_BIN, "--version"], capture_output=True, text=True, check=False).stdout
    return {
        "python": sys.version.split()[0],
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk.splitlines()[0].strip("$ ").strip() if dcmtk else "unknown",
    }
