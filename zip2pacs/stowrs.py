"""DICOMweb STOW-RS: instances POSTed to {base}/studies as multipart/related, streamed from disk, judged one by one.

A request carries the instances of one study, up to a count and a size. Each is judged from the Store Instances
Response in the body (see stowrs_response.py): an instance the answer does not mention is sent again in a smaller
request, down to a request of its own, so one instance a server refuses without saying which cannot hold the rest.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import requests
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from . import __version__
from .sniff import Instance
from .stowrs_response import (
    Answer,
    CheckResult,
    CredentialsRefused,
    DestinationUnavailable,
    Reply,
    check_result,
    judge,
    read,
    reason,
    unavailable,
)
from .verdicts import Outcome, StoreResult

if TYPE_CHECKING:
    from .pause import Gate

__all__ = [
    "CheckResult",
    "CredentialsRefused",
    "DestinationUnavailable",
    "StowConnection",
    "StowSettings",
    "Throttled",
    "check",
    "plan_requests",
]

LOGGER = logging.getLogger(__name__)

CHUNK = 256 * 1024  # bytes read from a file, and sent, at a time
MULTIPART = 'multipart/related; type="application/dicom"'
ACCEPT = "application/dicom+json"  # alone: Orthanc reads the header whole; an XML answer is read all the same
THROTTLED = (408, 429, 503)  # a server that takes fewer requests at once may say so with these


class Throttled(Exception):
    """The server throttled a request while others were in flight, and this connection gave way (may_yield).

    ``results`` are the instances judged before (already given to on_result); ``rest`` were not judged: they
    go back to the backlog for the connections still sending.
    """

    def __init__(self, words: str, retry_after: float | None):
        super().__init__(words)
        self.retry_after = retry_after
        self.results: list[StoreResult] = []
        self.rest: list[Instance] = []


@dataclass(frozen=True)
class StowSettings:
    """Where and how to reach one STOW-RS service; secrets are never part of the text of this object."""

    base_url: str  # the DICOMweb root, e.g. https://pacs.example/dicom-web ({base_url}/studies is the endpoint)
    name: str = ""  # the destination's name, for messages (the URL when empty)
    ca_file: Path | None = None  # CA certificates to trust; None: the system's CA store
    verify: bool = True  # False: do not verify the server's certificate (tests, never in production)
    cert_file: Path | None = None  # client certificate (PEM), with its key in key_file or in the same file
    key_file: Path | None = None
    username: str | None = None  # Basic authentication
    password: str | None = field(default=None, repr=False)
    token_file: Path | None = None  # bearer token, read before each batch (an outside tool may renew it)
    token_env: str | None = None  # ... or the name of the environment variable that holds it
    max_instances: int = 100  # per request
    max_bytes: int = 256 * 1024 * 1024  # per request (a single larger instance goes alone)
    timeout: float = 120.0  # seconds to connect, and to wait for each read of the answer
    # Shut while the server refuses our credentials (see pause.py); the pipeline gives each destination its own.
    gate: Gate | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        scheme, _, rest = self.base_url.partition("://")
        problems = [
            (scheme.lower() not in ("http", "https"), "base_url must start with https:// or http://"),
            ("@" in rest.split("/", 1)[0], "base_url must not hold credentials: use username/password or a token"),
            (self.username is not None and self.password is None, "username needs a password"),
            (self.username is not None and self.has_token, "set username/password or a token, not both"),
            (bool(self.token_file and self.token_env), "set token_file or token_env, not both"),
            (self.key_file is not None and self.cert_file is None, "key_file needs cert_file"),
            (self.max_instances < 1 or self.max_bytes < 1 or self.timeout <= 0, "limits must be positive"),
        ]
        for wrong, why in problems:
            if wrong:
                raise ValueError(f"STOW-RS destination {self.label}: {why}")

    @property
    def label(self) -> str:
        return self.name or self.base_url

    @property
    def has_token(self) -> bool:
        return self.token_file is not None or self.token_env is not None


def plan_requests(instances: Sequence[Instance], max_instances: int, max_bytes: int) -> list[list[int]]:
    """Return the indices of the instances grouped per study, in requests of at most max_instances and max_bytes.

    Two copies of one SOP instance never share a request: the answer names instances by UID.
    """
    studies: dict[str, list[int]] = {}
    for index, instance in enumerate(instances):
        studies.setdefault(instance.study_uid, []).append(index)
    requests_: list[list[int]] = []
    for indices in studies.values():
        batch: list[int] = []
        size, uids = 0, set[str]()
        for index in indices:
            instance = instances[index]
            full = len(batch) >= max_instances or size + instance.size > max_bytes
            if batch and (full or instance.sop_instance_uid in uids):
                requests_.append(batch)
                batch, size, uids = [], 0, set()
            batch.append(index)
            size += instance.size
            uids.add(instance.sop_instance_uid)
        if batch:
            requests_.append(batch)
    return requests_


class _Body:
    """A multipart/related body read from the files while it is sent; len() is its exact size (Content-Length)."""

    def __init__(self, instances: Sequence[Instance]):
        self.boundary = uuid.uuid4().hex
        self.parts = [_part(instance) for instance in instances]  # (bytes before the file's, path, bytes to send)
        self.heads = [self._head(len(prefix) + length) + prefix for prefix, _, length in self.parts]
        self.tail = f"--{self.boundary}--\r\n".encode()
        self.length = sum(len(h) + p[2] + 2 for h, p in zip(self.heads, self.parts, strict=True)) + len(self.tail)
        self.error: OSError | None = None  # set when a file could not be read: this machine's problem

    def _head(self, length: int) -> bytes:
        return f"--{self.boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {length}\r\n\r\n".encode()

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        pending = bytearray()  # small pieces are gathered, so a request of small files is not a write per piece
        try:
            for piece in self._pieces():
                if len(piece) >= CHUNK and not pending:
                    yield piece
                    continue
                pending += piece
                if len(pending) >= CHUNK:
                    yield bytes(pending)
                    pending.clear()
            if pending:
                yield bytes(pending)
        except OSError as exc:
            self.error = exc
            raise

    def _pieces(self) -> Iterator[bytes]:
        for head, (_, path, length) in zip(self.heads, self.parts, strict=True):
            yield head
            with path.open("rb") as file:
                while length > 0:
                    data = file.read(min(CHUNK, length))
                    if not data:
                        raise OSError(f"{path.name} became shorter while it was being sent")
                    length -= len(data)
                    yield data
            yield b"\r\n"
        yield self.tail


def _part(instance: Instance) -> tuple[bytes, Path, int]:
    """Return what goes before the file's bytes (a file meta when it has none), its path and how many bytes to send."""
    with instance.path.open("rb") as file:
        start = file.read(132)
        size = os.fstat(file.fileno()).st_size
    end = instance.data_end if instance.data_end is not None and instance.data_end <= size else size
    if start[128:132] == b"DICM":
        return b"", instance.path, end  # bytes a CD burner left after the data set are not sent
    if start[:2] == b"\x02\x00":  # a file meta without preamble
        return bytes(128) + b"DICM", instance.path, end
    meta = FileMetaDataset()  # a bare data set: STOW-RS takes Part 10 files only
    meta.MediaStorageSOPClassUID = UID(instance.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(instance.sop_instance_uid)
    meta.TransferSyntaxUID = UID(instance.transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta)
    return bytes(128) + b"DICM" + buffer.getvalue(), instance.path, end


class StowConnection:
    """One HTTP session (kept alive between requests) with one STOW-RS service; one per sending thread."""

    def __init__(self, settings: StowSettings):
        self.settings = settings
        self.url = f"{settings.base_url}/studies"
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"zip2pacs/{__version__}"
        self.verify = _verify(settings)
        if settings.cert_file is not None:
            key = settings.key_file
            self.session.cert = (str(settings.cert_file), str(key)) if key else str(settings.cert_file)
        if settings.username is not None:
            self.session.auth = (settings.username, settings.password or "")
        self.retry_after: float | None = None  # the longest Retry-After of the last store(), in seconds
        self.answered = 0  # HTTP answers on this session: a transport error after one may be a closed keep-alive
        self.sent: tuple[object, ...] = ()  # the fingerprint of the credentials sent (see pause.Gate.admit)
        # Asked when the server throttles a request: True when another connection goes on sending, so this
        # one gives way (store raises Throttled) instead of leaving its instances for a later attempt.
        self.may_yield: Callable[[], bool] | None = None

    def __enter__(self) -> StowConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()

    def store(
        self, instances: Sequence[Instance], on_result: Callable[[StoreResult], None] | None = None
    ) -> list[StoreResult]:
        """Store the instances; return results in input order, calling on_result as each is judged.

        Raise DestinationUnavailable when the service cannot be used and nothing was judged yet (refused,
        unreachable, TLS, credentials, 5xx); once some are, the rest are TRANSIENT with the same words.
        Raise OSError when a file cannot be read (this machine's problem, no verdict on the instance).
        Raise Throttled when the server throttled a request (408, 429, 503) and may_yield() said to give way.
        """
        results: dict[int, StoreResult] = {}
        self.retry_after = None
        if not instances:
            return []

        def record(index: int, outcome: Outcome, status: int | None, detail: str) -> None:
            result = StoreResult(instances[index], outcome, status, detail)
            results[index] = result
            LOGGER.debug("%s %s: %s", result.instance.sop_instance_uid, outcome.value, detail)
            if on_result is not None:
                on_result(result)

        try:
            self._admit()
            self._authorize()
            for batch in plan_requests(instances, self.settings.max_instances, self.settings.max_bytes):
                self._judge(instances, batch, record)
        except Throttled as exc:
            self.retry_after = exc.retry_after
            exc.results = [results[index] for index in sorted(results)]
            exc.rest = [instances[index] for index in range(len(instances)) if index not in results]
            raise
        except DestinationUnavailable as exc:
            if exc.retry_after is not None:
                self.retry_after = max(self.retry_after or 0.0, exc.retry_after)
            if not results:
                raise
            for index in range(len(instances)):
                if index not in results:
                    record(index, Outcome.TRANSIENT, None, str(exc))
        return [results[index] for index in range(len(instances))]

    def _judge(self, instances: Sequence[Instance], batch: list[int], record: Callable[..., None]) -> None:
        """Send one request and record what its answer settles; send the rest again in halves, down to one."""
        try:
            reply = self._exchange([instances[i] for i in batch])
        except DestinationUnavailable as exc:
            if exc.status in THROTTLED and not isinstance(exc, CredentialsRefused):
                self._give_way(str(exc), exc.retry_after)
            raise
        if reply.busy and reply.status in THROTTLED:
            self._give_way(reply.words, reply.retry_after)
        settled, again = judge([instances[i].sop_instance_uid for i in batch], reply)
        for position, (outcome, status, detail) in settled.items():
            record(batch[position], outcome, status, detail)
        half = (len(again) + 1) // 2
        for part in (again[:half], again[half:]):
            if part:
                self._judge(instances, [batch[p] for p in part], record)

    def _give_way(self, words: str, retry_after: float | None) -> None:
        """Raise Throttled when another connection goes on sending; return to judge the answer as it is if not."""
        if self.may_yield is not None and self.may_yield():
            raise Throttled(words, retry_after)

    def _exchange(self, batch: list[Instance]) -> Reply:
        """POST one request and return its answer; raise DestinationUnavailable when the service cannot be used."""
        for attempt in (1, 2):
            body = _Body(batch)
            reused = self.answered > 0
            started = time.monotonic()
            try:
                response = self.session.post(
                    self.url,
                    data=body,
                    headers={"Content-Type": f"{MULTIPART}; boundary={body.boundary}", "Accept": ACCEPT},
                    timeout=self.settings.timeout,
                    verify=self.verify,  # given each time: REQUESTS_CA_BUNDLE would otherwise override ca_file
                    allow_redirects=False,  # a redirected POST may come back a GET: say where base_url should point
                )
            except requests.exceptions.ReadTimeout:
                words = f"no answer within {self.settings.timeout:g} s (the server may have stored some)"
                return Reply(None, Answer((), False), words, True)
            except requests.exceptions.RequestException as exc:
                if body.error is not None:
                    raise body.error from exc
                stale = (
                    reused
                    and attempt == 1
                    and not isinstance(exc, requests.exceptions.SSLError | requests.exceptions.Timeout)
                )
                if stale:  # most likely a kept-alive connection the server had closed: once more on a new one
                    LOGGER.debug("%s: %s; sending again on a new connection", self.settings.label, reason(exc))
                    continue
                raise unavailable(exc, self.settings, self.url) from exc
            self.answered += 1
            took, status = time.monotonic() - started, response.status_code
            LOGGER.debug(
                "%s: HTTP %d to %d instance(s), %d bytes, in %.2f s",
                self.settings.label,
                status,
                len(batch),
                len(body),
                took,
            )
            reply = self._heard(response)
            if reply.retry_after is not None:
                self.retry_after = max(self.retry_after or 0.0, reply.retry_after)
            return reply
        raise AssertionError("not reached")

    def _admit(self) -> None:
        """Raise DestinationUnavailable, sending nothing, while the destination is paused for its credentials."""
        gate = self.settings.gate
        if gate is None:
            return
        sent = gate.admit()
        if sent is None:
            refusal = gate.refusal
            raise DestinationUnavailable(f"{self.settings.label} is paused: {refusal.words if refusal else '?'}")
        self.sent = sent

    def _heard(self, response: requests.Response) -> Reply:
        """Return what the answer says, telling the gate whether the server refused our credentials."""
        gate = self.settings.gate
        try:
            reply = read(response, self.settings, self.url)
        except CredentialsRefused as exc:
            if gate is not None:
                gate.refused(exc.status, str(exc), self.sent)
            raise
        except DestinationUnavailable:
            if gate is not None:
                gate.answered()
            raise
        if gate is not None:
            gate.answered()
        return reply

    def _authorize(self) -> None:
        """Set the bearer token, read anew each time: a tool outside may renew it. Its value is never logged."""
        s = self.settings
        if s.token_file is not None:
            try:
                token = s.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                self._no_token(f"cannot read the token file {s.token_file} (token_file): {exc.strerror}")
            where = f"the token file {s.token_file} (token_file) is empty"
        elif s.token_env is not None:
            token, where = os.environ.get(s.token_env, "").strip(), f"${s.token_env} (token_env) holds no token"
        else:
            return
        if not token:
            self._no_token(where)
        self.session.headers["Authorization"] = f"Bearer {token}"

    def _no_token(self, why: str) -> NoReturn:
        """Raise CredentialsRefused: there is no token to send; the destination is paused until there is one."""
        exc = CredentialsRefused(f"{self.settings.label}: {why}", None)
        if self.settings.gate is not None:
            self.settings.gate.refused(None, str(exc), self.sent)
        raise exc from None

    def check(self) -> CheckResult:
        """Ask QIDO-RS for one study; see check()."""
        self._authorize()
        started, url = time.monotonic(), f"{self.url}?limit=1"
        try:
            response = self.session.get(
                url,
                headers={"Accept": "application/dicom+json"},
                timeout=self.settings.timeout,
                verify=self.verify,
                allow_redirects=False,  # as a STOW-RS request: a redirect is a base_url to change
            )
        except requests.exceptions.RequestException as exc:
            raise unavailable(exc, self.settings, self.url) from exc
        status = response.status_code
        if status in (401, 403, 404) or 300 <= status < 400 or (status >= 500 and status != 501):
            read(response, self.settings, self.url)  # raises DestinationUnavailable saying why (501: no QIDO-RS here)
        seconds = time.monotonic() - started
        return check_result(status, url, seconds, self.settings, self.verify is not False)


def check(settings: StowSettings) -> CheckResult:
    """Prove, without storing anything, that the service exists and takes our credentials (GET {base}/studies?limit=1).

    Raise DestinationUnavailable when it cannot be reached, TLS fails, credentials are refused, or it answers 404/5xx.
    """
    with StowConnection(settings) as connection:
        return connection.check()


def _verify(settings: StowSettings) -> bool | str:
    if not settings.verify:
        return False
    if settings.ca_file is not None:
        return str(settings.ca_file)
    # The system's store, where an IT department installs its own CA, rather than the bundle requests ships with.
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return paths.cafile
    if paths.capath and os.path.isdir(paths.capath):
        return paths.capath
    return True
