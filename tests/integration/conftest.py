"""Real peers for end-to-end tests: Orthanc servers and a dcmtk storescp, each on free loopback ports."""

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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ORTHANC_BIN = os.environ.get("ORTHANC_BIN", "/usr/sbin/Orthanc")
START_TIMEOUT = 30.0
IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> None:
    """Fail under CI=true (the CI machine must have it), skip with the reason elsewhere."""
    reason = f"{what} is not installed; run scripts/test.sh to install it"
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """Return a TCP port nobody listens on at the moment (the kernel's pick on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Return the first truthy value of ``condition()``; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()  # never set: wait() paces the polling
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}", pytrace=False)
        tick.wait(interval)


def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=grace)


class Orthanc:
    """One Orthanc process with its own storage, config and ports; REST helpers for the tests."""

    aet = "ORTHANC"

    def __init__(self, root: Path, name: str):
        self.root = root
        self.name = name
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.log_path = root / "orthanc.log"
        self.config_path = root / "orthanc.json"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, object]:
        """Return the JSON configuration: no plugins, no auth, loopback HTTP only, every instance accepted."""
        return {
            "Name": self.name,
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "StorageCompression": False,
            "Plugins": [],  # Debian's default config loads /usr/share/orthanc/plugins; ours loads nothing
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {},
            "UnknownSopClassAccepted": False,
            "OverwriteInstances": False,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "StableAge": 3600,  # no "stable" events or jobs firing during a test
            "DeidentifyLogs": True,
        }

    def start(self) -> Orthanc:
        """Start the process and return once GET /system answers; fail with the log tail otherwise."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        env = dict(os.environ, TCP_NODELAY="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [ORTHANC_BIN, "--no-jobs", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
            )
        deadline = time.monotonic() + START_TIMEOUT
        tick = threading.Event()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.get("/system")
                return self
            except (OSError, urllib.error.URLError):
                tick.wait(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        pytest.fail(f"Orthanc {self.name} did not start on {self.url}:\n{tail}", pytrace=False)

    def stop(self) -> None:
        """Terminate our own process (by its pid), killing it if it does not exit."""
        if self.proc is not None:
            _stop(self.proc)

    def request(self, method: str, path: str, body: object = None) -> object:
        """Call the REST API and return the decoded JSON answer (None when empty)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def get(self, path: str) -> object:
        return self.request("GET", path)

    def instance_count(self) -> int:
        """Return how many instances Orthanc holds."""
        return int(self.get("/statistics")["CountInstances"])  # type: ignore[index]

    def instances_uids(self) -> set[str]:
        """Return the SOP Instance UIDs of every stored instance."""
        found = self.request("POST", "/tools/find", {"Level": "Instance", "Query": {}, "Expand": True})
        return {item["MainDicomTags"]["SOPInstanceUID"] for item in found}  # type: ignore[union-attr,index]

    def clear(self) -> None:
        """Delete every patient, so the next test starts from an empty server."""
        for patient in self.get("/patients"):  # type: ignore[union-attr]
            self.request("DELETE", f"/patients/{patient}")

    def wait_for_uids(self, uids: set[str], timeout: float = 60) -> set[str]:
        """Return the stored UIDs once they include ``uids``; fail after ``timeout`` seconds."""
        wait_until(lambda: uids <= self.instances_uids(), timeout, f"{len(uids)} instances on Orthanc {self.name}", 0.2)
        return self.instances_uids()


@pytest.fixture(scope="session")
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Orthanc]]:
    """Start Orthanc servers on demand (``orthanc_factory("name")``); every one is stopped at session end."""
    if not os.access(ORTHANC_BIN, os.X_OK):
        missing(f"Orthanc ({ORTHANC_BIN})")
    started: list[Orthanc] = []

    def start(name: str) -> Orthanc:
        server = Orthanc(tmp_path_factory.mktemp(f"orthanc-{name}"), name)
        started.append(server)
        return server.start()

    yield start
    for server in started:  # Orthanc takes seconds to stop: let them all stop at once
        if server.proc is not None and server.proc.poll() is None:
            server.proc.terminate()
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def orthanc_server(orthanc_factory: Callable[[str], Orthanc]) -> Orthanc:
    """The PACS the watcher delivers to, shared by the session."""
    return orthanc_factory("pacs")


@pytest.fixture
def orthanc(orthanc_server: Orthanc) -> Orthanc:
    """The shared PACS, emptied before the test."""
    orthanc_server.clear()
    return orthanc_server


def _storescp_binary() -> str | None:
    # pynetdicom's apps also install a "storescp" on PATH; the tests mean dcmtk's.
    for candidate in ("/usr/bin/storescp", shutil.which("storescp")):
        if candidate and os.access(candidate, os.X_OK):
            with subprocess.Popen([candidate, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as p:
                if b"dcmtk" in (p.communicate(timeout=10)[0] or b"").lower():
                    return candidate
    return None


class StoreSCP:
    """dcmtk's storescp on a free port, writing what it receives into ``folder``."""

    aet = "STORESCP"

    def __init__(self, binary: str, root: Path):
        self.binary = binary
        self.folder = root / "received"
        self.folder.mkdir(parents=True)
        self.log_path = root / "storescp.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--accept-all",
                    "--promiscuous",
                    "-aet",
                    self.aet,
                    "-od",
                    str(self.folder),
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, TCP_NODELAY="1"),
            )
        wait_until(self._listening, 15, f"storescp to listen on port {self.port}")
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"storescp exited: {self.log_path.read_text(errors='replace')[-2000:]}", pytrace=False)
        from pynetdicom import AE  # the C-ECHO proves the DICOM server, not just the socket, is up

        ae = AE(ae_title="PROBE")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.aet)
        if not assoc.is_established:
            return False
        assoc.release()
        return True

    def files(self) -> list[Path]:
        """Return the received files."""
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def count(self) -> int:
        """Return how many files were received."""
        return len(self.files())

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A running dcmtk storescp accepting every SOP class and transfer syntax."""
    binary = _storescp_binary()
    if binary is None:
        missing("dcmtk's storescp")
    scp = StoreSCP(binary, tmp_path / "storescp").start()
    yield scp
    scp.stop()


# --- Peers configured for one test: an Orthanc with extra settings, a storescp with extra options. ---


class ConfiguredOrthanc(Orthanc):
    """An Orthanc whose configuration adds or replaces settings (AcceptedTransferSyntaxes, DICOM TLS, ...)."""

    def __init__(self, root: Path, name: str, extra: dict[str, object]):
        super().__init__(root, name)
        self.extra = extra

    def config(self) -> dict[str, object]:
        return {**super().config(), **self.extra}


@pytest.fixture(scope="session")
def configured_orthanc_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str, dict[str, object]], Orthanc]]:
    """Start Orthanc servers with extra settings (``factory("name", {"Key": value})``); stopped at session end."""
    if not os.access(ORTHANC_BIN, os.X_OK):
        missing(f"Orthanc ({ORTHANC_BIN})")
    started: list[Orthanc] = []

    def start(name: str, extra: dict[str, object]) -> Orthanc:
        server = ConfiguredOrthanc(tmp_path_factory.mktemp(f"orthanc-{name}"), name, extra)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.terminate()
    for server in started:
        server.stop()


class ConfiguredStoreSCP(StoreSCP):
    """dcmtk's storescp started with the given options instead of --accept-all --promiscuous."""

    def __init__(self, binary: str, root: Path, options: list[str]):
        super().__init__(binary, root)
        self.options = options

    def start(self) -> ConfiguredStoreSCP:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, *self.options, "-aet", self.aet, "-od", str(self.folder), str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, TCP_NODELAY="1"),
            )
        wait_until(self._listening, 15, f"storescp to listen on port {self.port}")
        return self


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[Callable[[list[str]], StoreSCP]]:
    """Start dcmtk storescp with given options (``factory(["-xf", cfg, "Profile"])``); each is stopped at the end."""
    binary = _storescp_binary()
    if binary is None:
        missing("dcmtk's storescp")
    started: list[StoreSCP] = []

    def start(options: list[str]) -> StoreSCP:
        scp = ConfiguredStoreSCP(binary, tmp_path / f"storescp{len(started)}", options)
        started.append(scp)
        return scp.start()

    yield start
    for scp in started:
        scp.stop()


# --- An Orthanc with Debian's DICOMweb plugin (orthanc-dicomweb), Basic auth, and HTTPS through a TLS proxy. ---

import base64  # noqa: E402  (this section was added after the others)
import select  # noqa: E402
import ssl  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from tests.certificates import Pki  # imported when used: it skips without 'cryptography'

DICOMWEB_USER, DICOMWEB_PASSWORD = "watcher", "s3cret-for-tests"
# Orthanc refuses (a Lua error) any instance whose Series Description is this: a storage failure on one instance.
DICOMWEB_REFUSED_SERIES = "REFUSED BY LUA"


def dicomweb_plugin() -> str | None:
    """Return the path of Orthanc's DICOMweb plugin, or None when it is not installed."""
    candidates = [os.environ.get("ORTHANC_DICOMWEB_PLUGIN", ""), "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]
    candidates += sorted(str(p) for p in Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))
    return next((c for c in candidates if c and os.path.isfile(c)), None)


class DicomWebOrthanc(Orthanc):
    """An Orthanc serving DICOMweb at /dicom-web/ (plain HTTP) with Basic auth; its REST helpers log in."""

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, object]:
        lua = self.root / "refuse.lua"
        lua.write_text(
            "function ReceivedInstanceFilter(dicom, origin, info)\n"
            f"  if dicom.SeriesDescription == '{DICOMWEB_REFUSED_SERIES}' then error('refused by the test') end\n"
            "  return true\nend\n",
            encoding="utf-8",
        )
        return {
            **super().config(),
            "Plugins": [dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "AuthenticationEnabled": True,
            "RegisteredUsers": {DICOMWEB_USER: DICOMWEB_PASSWORD},
            "LuaScripts": [str(lua)],
        }

    def request(self, method: str, path: str, body: object = None) -> object:
        data = json.dumps(body).encode() if body is not None else None
        return json.loads(self.raw(method, path, data) or b"null")

    def raw(self, method: str, path: str, data: bytes | None = None) -> bytes:
        """Call the REST API with our credentials and return the answer's bytes."""
        req = urllib.request.Request(self.url + path, data=data, method=method)
        token = base64.b64encode(f"{DICOMWEB_USER}:{DICOMWEB_PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return bytes(resp.read())


class TlsProxy:
    """HTTPS in front of a plain HTTP port on loopback, optionally asking for a client certificate.

    Debian's Orthanc 1.10.1 dies (SIGSEGV) on the first request to its own HTTPS port on this OpenSSL 3 system,
    so TLS is terminated here, by Python's ssl module, and the bytes go on to Orthanc unchanged.
    """

    def __init__(self, backend_port: int, pki: Pki, client_certificates: bool = False):
        self.backend_port = backend_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        if client_certificates:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(pki.ca_file)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"  # the server certificate names 127.0.0.1

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(client, server_side=True)
        except OSError:  # a handshake the client gave up (it does not trust us) or we refused (no certificate)
            client.close()
            return
        backend = socket.create_connection(("127.0.0.1", self.backend_port))
        with self.lock:
            self.open.update((tls, backend))
        try:  # one thread per connection: an SSL socket must not be read and written by two threads at once
            while True:
                ready = [tls] if tls.pending() else select.select([tls, backend], [], [])[0]
                for source in ready:
                    data = source.recv(256 * 1024)
                    if not data:
                        return
                    (backend if source is tls else tls).sendall(data)
        except (OSError, ValueError):
            return  # a side closed, or stop() closed both
        finally:
            with self.lock:
                self.open.difference_update((tls, backend))
            tls.close()
            backend.close()

    def stop(self) -> None:
        """Stop listening and end every connection still open (a shutdown wakes accept() and select(); close does not)."""
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=10)
        with self.lock:
            for sock in list(self.open):
                if not isinstance(sock, ssl.SSLSocket):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="session")
def dicomweb_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away PKI (tests/certificates.py) for the TLS proxies."""
    from tests.certificates import make_pki

    return make_pki(tmp_path_factory.mktemp("dicomweb-pki"))


@pytest.fixture(scope="session")
def dicomweb_orthanc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomWebOrthanc]:
    """An Orthanc with the DICOMweb plugin and Basic auth, shared by the session."""
    if not os.access(ORTHANC_BIN, os.X_OK):
        missing(f"Orthanc ({ORTHANC_BIN})")
    if dicomweb_plugin() is None:
        missing("Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb)")
    server = DicomWebOrthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), "dicomweb")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def dicomweb_orthanc(dicomweb_orthanc_server: DicomWebOrthanc) -> DicomWebOrthanc:
    """The shared DICOMweb Orthanc, emptied before the test."""
    dicomweb_orthanc_server.clear()
    return dicomweb_orthanc_server


@pytest.fixture(scope="session")
def dicomweb_https(dicomweb_orthanc_server: DicomWebOrthanc, dicomweb_pki: Pki) -> Iterator[TlsProxy]:
    """HTTPS (server certificate from dicomweb_pki's CA) in front of the DICOMweb Orthanc."""
    proxy = TlsProxy(dicomweb_orthanc_server.http_port, dicomweb_pki)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def dicomweb_mutual_tls(dicomweb_orthanc_server: DicomWebOrthanc, dicomweb_pki: Pki) -> Iterator[TlsProxy]:
    """HTTPS in front of the DICOMweb Orthanc that takes only clients with a certificate from dicomweb_pki's CA."""
    proxy = TlsProxy(dicomweb_orthanc_server.http_port, dicomweb_pki, client_certificates=True)
    yield proxy
    proxy.stop()
