"""Fresh receivers on loopback for each timed run: stock Orthanc, tuned Orthanc, a discarding dcmtk storescp."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC_BIN = os.environ.get("ORTHANC_BIN", "/usr/sbin/Orthanc")
STORESCP_BIN = "/usr/bin/storescp"  # dcmtk's; pynetdicom installs another "storescp" on PATH
START_TIMEOUT = 30.0
AET = "BENCHSCP"


class ReceiverError(Exception):
    """A receiver did not start, or does not say how many instances it received."""


def free_port() -> int:
    """Return a TCP port nobody listens on at the moment (the kernel's pick on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_env() -> dict[str, str]:
    """Return this process's environment without TCP_NODELAY (dcmtk reads it; stock means unset)."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    return env


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    tick = threading.Event()  # never set: wait() paces the polling
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if condition():
            return
        tick.wait(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise ReceiverError(f"{what} did not start:\n{tail}")


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


class Receiver:
    """A DICOM Storage SCP process on 127.0.0.1 with its own folder; start() it fresh for every run."""

    name = "receiver"
    description = ""

    def __init__(self, root: Path):
        self.root = root
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "receiver.log"

    def start(self) -> Receiver:
        """Start a fresh process in an emptied folder and return once it accepts associations."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.port = free_port()
        self._launch()
        return self

    def _launch(self) -> None:
        raise NotImplementedError

    def received(self) -> int:
        """Return how many instances the receiver stored (or, when discarding, accepted)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop our own process by its pid and remove its folder."""
        _stop(self.proc, grace=2.0)  # its storage is thrown away: no need to wait for a clean shutdown
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def version(self) -> str:
        raise NotImplementedError


class Orthanc(Receiver):
    """Orthanc with a temp storage and index, no plugins, loopback-only HTTP without authentication."""

    name = "orthanc-stock"
    description = "Orthanc, default environment"
    env_extra: dict[str, str] = {}

    def __init__(self, root: Path):
        super().__init__(root)
        self.http_port = 0

    def config(self) -> dict[str, object]:
        """Return the JSON configuration: only what a private, throw-away instance needs."""
        return {
            "Name": self.name,
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "Plugins": [],  # Debian's default config loads /usr/share/orthanc/plugins; ours loads nothing
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": AET,
            "DicomPort": self.port,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": False,
        }

    def _launch(self) -> None:
        self.http_port = free_port()
        config_path = self.root / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        env = dict(default_env(), **self.env_extra)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [ORTHANC_BIN, str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root
            )
        _wait(self._answers, START_TIMEOUT, f"Orthanc {self.name}", self.proc, self.log_path)

    def _get(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def _answers(self) -> bool:
        try:
            self._get("/system")
        except (OSError, urllib.error.URLError):
            return False
        return _listening(self.port)

    def received(self) -> int:
        return int(self._get("/statistics")["CountInstances"])  # type: ignore[index]

    def version(self) -> str:
        out = subprocess.run([ORTHANC_BIN, "--version"], capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0].strip() if out else "unknown"


class TunedOrthanc(Orthanc):
    """The same Orthanc with TCP_NODELAY=1 in its environment (dcmtk then disables Nagle's algorithm)."""

    name = "orthanc-tuned"
    description = "Orthanc, TCP_NODELAY=1 in its environment"
    env_extra = {"TCP_NODELAY": "1"}


class DiscardingStoreSCP(Receiver):
    """dcmtk's storescp receiving every instance and discarding it (--ignore); counts from its log."""

    name = "storescp-discard"
    description = "dcmtk storescp --ignore, TCP_NODELAY=1 (receives, stores nothing: the senders' ceiling)"

    def _launch(self) -> None:
        # -v logs one "Received Store Request" line per instance: the only count --ignore leaves.
        cmd = [STORESCP_BIN, "-v", "--ignore", "--promiscuous", "--accept-all", "-aet", AET, str(self.port)]
        with open(self.log_path, "wb") as log:
            env = dict(default_env(), TCP_NODELAY="1")  # a ceiling: no Nagle wait on the receiving side
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        _wait(lambda: _listening(self.port), START_TIMEOUT, "storescp", self.proc, self.log_path)

    def received(self) -> int:
        # The log line is written before the response is sent, so it is complete once the client exits.
        return self.log_path.read_text(errors="replace").count("Received Store Request")

    def version(self) -> str:
        out = subprocess.run([STORESCP_BIN, "--version"], capture_output=True, text=True, check=False).stdout
        return out.splitlines()[0].strip("$ ").strip() if out else "unknown"


RECEIVERS: dict[str, type[Receiver]] = {r.name: r for r in (Orthanc, TunedOrthanc, DiscardingStoreSCP)}
