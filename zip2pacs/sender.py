"""The only module that opens sockets: C-ECHO and batched C-STORE with pynetdicom."""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_context
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import (
    STATUS_CANCEL,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)
from pynetdicom.transport import AddressInformation, AssociationSocket

from .contexts import (
    PROBE_CATALOGUE,
    Decompress,
    Group,
    Mode,
    choose,
    payload,
    plan_groups,
    syntax_name,
    why_not_decompressed,
)
from .sniff import Instance
from .tls import RecordingContext, TlsError, TlsSettings, client_context, describe_alert, describe_handshake_error

LOGGER = logging.getLogger(__name__)

# Stream Part 10 files from disk in PDU-sized chunks instead of decoding them (read at call time).
_config.STORE_SEND_CHUNKED_DATASET = True

# The DUL reactor sleeps this long whenever it finds nothing to do (pynetdicom: 1 ms); every
# C-STORE waits on it at least twice, so a shorter nap lifts the rate of small files.
_RUN_LOOP_DELAY = 0.0002


class PeerUnavailable(Exception):
    """No association could be made (refused, timed out, rejected); delivery is delayed, not failed."""


class NothingAccepted(PeerUnavailable):
    """The peer answered the association request but refused every presentation context proposed."""


@dataclass(frozen=True)
class Peer:
    host: str = "127.0.0.1"
    port: int = 4242
    ae_title: str = "ORTHANC"
    local_ae_title: str = "ZIPWATCHER"
    local_port: int = 0
    max_pdu: int = 0  # 0: no limit asked
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    decompress: Decompress = Decompress.LOSSLESS  # which compressed files may go decoded
    tls: TlsSettings | None = None  # None: plain TCP

    @property
    def key(self) -> str:
        """Stable identity of the peer in the ledger."""
        return f"{self.ae_title}@{self.host}:{self.port}"


class Outcome(enum.Enum):
    STORED = "stored"  # 0x0000
    WARNING = "warning"  # stored with a warning status
    TRANSIENT = "transient"  # try again later (no response, abort, 0xA7xx)
    PERMANENT = "permanent"  # the peer refuses this instance for good


@dataclass(frozen=True)
class StoreResult:
    instance: Instance
    outcome: Outcome
    status: int | None  # the C-STORE status, None when no response came
    detail: str  # human-readable: status in words, error comment, refusal reason


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    seconds: float
    detail: str


@dataclass(frozen=True)
class ClassSupport:
    sop_class: str
    proposed: tuple[str, ...]  # transfer syntaxes offered, one presentation context each
    accepted: tuple[str, ...]  # those the peer accepted, in the same order; empty: SOP class refused


@dataclass(frozen=True)
class ProbeResult:
    association_seconds: float  # connect, TLS handshake and A-ASSOCIATE, until established
    echo: EchoResult  # its seconds are the C-ECHO round trip alone
    classes: tuple[ClassSupport, ...]
    implementation: str  # the peer's implementation version name, e.g. OFFIS_DCMTK_367
    tls: bool


class _RecordingSocket(socket.socket):
    """A TCP socket that keeps the reason its connect() failed (pynetdicom only logs it)."""

    connect_error: OSError | None = None

    def connect(self, address):  # type: ignore[no-untyped-def]
        try:
            super().connect(address)
        except OSError as exc:
            self.connect_error = exc
            raise


class _TunedSocket(AssociationSocket):
    """An association socket that never waits on Nagle's algorithm or on delayed ACKs."""

    raw: _RecordingSocket

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        self.raw = _RecordingSocket(address.address_family, socket.SOCK_STREAM)
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Small PDUs (a C-STORE command, the last fragment) must leave at once, not wait for an ACK.
        self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.assoc.network_timeout is not None:
            self.raw.settimeout(self.assoc.network_timeout)
        self.raw.bind(address.as_tuple)
        self.assoc.dul._run_loop_delay = _RUN_LOOP_DELAY  # the one hook before the DUL thread starts
        self._is_connected = False
        return self.raw

    recv_error: OSError | None = None  # kept: pynetdicom only logs it (a TLS alert says why the peer hung up)

    def recv(self, nr_bytes: int) -> bytearray:
        try:
            data = super().recv(nr_bytes)
        except OSError as exc:
            self.recv_error = exc
            raise
        # Peers that keep Nagle on (dcmtk, Orthanc) hold their second small write until we ACK the
        # first; Linux clears TCP_QUICKACK after a while, so it is re-armed after every read.
        if hasattr(socket, "TCP_QUICKACK") and self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


class _TunedAE(AE):
    """An AE whose associations use :class:`_TunedSocket`."""

    def _create_socket(self, assoc, address, tls_args):  # type: ignore[no-untyped-def]
        sock = _TunedSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


def _associate(peer: Peer, contexts: list) -> Association:  # type: ignore[type-arg]
    """Return an established association; raise PeerUnavailable saying why there is none."""
    tls_context: RecordingContext | None = None
    if peer.tls is not None:
        try:
            tls_context = client_context(peer.tls)
        except TlsError as exc:  # the files changed since the configuration was checked
            raise PeerUnavailable(f"{peer.key}: {exc}") from exc
    ae = _TunedAE(ae_title=peer.local_ae_title)
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.network_timeout
    ae.connection_timeout = peer.acse_timeout
    bind = ("", peer.local_port) if peer.local_port else None
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            contexts=contexts,
            ae_title=peer.ae_title,
            max_pdu=peer.max_pdu,
            bind_address=bind,
            tls_args=(tls_context, peer.host) if tls_context is not None else None,
        )
    except OSError as exc:  # e.g. the local port is already in use
        raise PeerUnavailable(f"{peer.key}: cannot open a local socket: {exc}") from exc
    if assoc.is_established:
        _keep_responses(assoc)
        return assoc
    answer = assoc.acceptor.primitive
    if answer is not None and answer.result == 0x00 and assoc.rejected_contexts and not assoc.accepted_contexts:
        # pynetdicom aborts such an association; the peer's answer is still a refusal of these contexts.
        raise NothingAccepted(f"{peer.key}: the peer refused all {len(contexts)} presentation contexts proposed")
    raise PeerUnavailable(f"{peer.key}: {_why_not_established(assoc, peer, tls_context)}")


def _keep_responses(assoc: Association) -> None:
    """Hand back responses that pynetdicom's reactor snatches from a waiting send_c_store().

    pynetdicom 3.0.4 races: its reactor may take a fast peer's C-STORE-RSP off the DIMSE queue,
    log "Received unexpected C-STORE service message" and drop it, so send_c_store() waits for
    dimse_timeout and aborts. Requestor-side, any response belongs to the waiting sender.
    """
    serve = assoc._serve_request

    def serve_or_return(msg, context_id):  # type: ignore[no-untyped-def]
        if not msg.is_valid_request and msg.is_valid_response:
            LOGGER.debug("pynetdicom's reactor took a %s; handed back", msg.msg_type)
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_return  # type: ignore[method-assign]


def _why_not_established(assoc: Association, peer: Peer, tls_context: RecordingContext | None) -> str:
    sock = assoc.dul.socket
    error = getattr(getattr(sock, "raw", None), "connect_error", None)
    if tls_context is not None:
        error = tls_context.connect_error  # the TLS socket replaced the raw one before connecting
    if error is not None:
        if isinstance(error, TimeoutError):
            what = "TCP connection or TLS handshake" if tls_context is not None else "TCP connection"
            return f"{what} timed out after {peer.acse_timeout:g} s"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused (nothing listens on that port)"
        if tls_context is not None:
            return describe_handshake_error(error)
        return f"cannot connect: {error}"
    if isinstance(getattr(sock, "recv_error", None), ssl.SSLError):
        return describe_alert(sock.recv_error)
    rsp = assoc.acceptor.primitive
    if assoc.is_rejected and rsp is not None:
        return f"association rejected ({rsp.result_str}, by {rsp.source_str}: {rsp.reason_str})"
    if assoc.is_aborted:
        return f"no association: aborted, or no answer within acse_timeout {peer.acse_timeout:g} s"
    return "association not established"


def echo(peer: Peer) -> EchoResult:
    """C-ECHO the peer, timing association and echo together; raise PeerUnavailable when no association is made."""
    started = time.monotonic()
    assoc = _associate(peer, [build_context(Verification)])
    try:
        status = assoc.send_c_echo()
        seconds = time.monotonic() - started
    finally:
        if assoc.is_established:
            assoc.release()
    return _echo_result(status, seconds)


def _echo_result(status: Dataset, seconds: float) -> EchoResult:
    if "Status" not in status:
        return EchoResult(False, seconds, "no C-ECHO response (timeout or abort)")
    code = int(status.Status)
    ok = code_to_category(code) == STATUS_SUCCESS
    return EchoResult(ok, seconds, f"C-ECHO status 0x{code:04X} ({code_to_category(code)})")


def probe(peer: Peer) -> ProbeResult:
    """Associate proposing Verification and the common storage SOP classes, C-ECHO, and report what was accepted.

    Raise PeerUnavailable when no association is made (refused, rejected, timed out, TLS failure).
    """
    contexts = [build_context(Verification)]
    for entry in PROBE_CATALOGUE:
        contexts += [build_context(entry.abstract_syntax, [ts]) for ts in entry.transfer_syntaxes]
    started = time.monotonic()
    assoc = _associate(peer, contexts)
    associated = time.monotonic() - started
    try:
        accepted: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        if Verification in accepted:
            began = time.monotonic()
            status = assoc.send_c_echo()
            echoed = _echo_result(status, time.monotonic() - began)
        else:
            echoed = EchoResult(False, 0.0, "the peer refused the Verification SOP class (no C-ECHO possible)")
        implementation = str(assoc.acceptor.implementation_version_name or assoc.acceptor.implementation_class_uid)
    finally:
        if assoc.is_established:
            assoc.release()
    classes = tuple(
        ClassSupport(
            entry.abstract_syntax,
            entry.transfer_syntaxes,
            tuple(ts for ts in entry.transfer_syntaxes if ts in accepted.get(entry.abstract_syntax, ())),
        )
        for entry in PROBE_CATALOGUE
    )
    return ProbeResult(associated, echoed, classes, implementation.strip(), peer.tls is not None)


def store(
    peer: Peer,
    instances: Sequence[Instance],
    on_result: Callable[[StoreResult], None] | None = None,
) -> list[StoreResult]:
    """C-STORE the instances, one association per group of at most 128 contexts; return results in input order.

    Raise PeerUnavailable when the first association cannot be made; when a later one cannot,
    or the peer aborts, the instances not yet answered are returned as TRANSIENT.
    """
    results: dict[int, StoreResult] = {}

    def record(index: int, result: StoreResult) -> None:
        results[index] = result
        LOGGER.debug(
            "%s %s: %s",
            result.instance.sop_instance_uid,
            result.outcome.value,
            result.detail,
        )
        if on_result is not None:
            on_result(result)

    for group in plan_groups(instances, policy=peer.decompress):
        contexts = [build_context(c.abstract_syntax, list(c.transfer_syntaxes)) for c in group.contexts]
        try:
            assoc = _associate(peer, contexts)
        except NothingAccepted:
            for index in group.indices:
                instance = instances[index]
                detail = _no_context(instance, group, [], peer.decompress)
                record(index, StoreResult(instance, Outcome.PERMANENT, None, detail))
            continue
        except PeerUnavailable as exc:
            if not results:
                raise
            _give_up(instances, results, record, str(exc))
            break
        try:
            _store_group(assoc, instances, group, record, peer.decompress)
        finally:
            if assoc.is_established:
                assoc.release()
        if any(i not in results for i in group.indices):
            _give_up(instances, results, record, "association aborted")
            break
    return [results[i] for i in range(len(instances))]


def _give_up(
    instances: Sequence[Instance],
    results: dict[int, StoreResult],
    record: Callable[[int, StoreResult], None],
    detail: str,
) -> None:
    for index, instance in enumerate(instances):
        if index not in results:
            record(index, StoreResult(instance, Outcome.TRANSIENT, None, detail))


def _store_group(
    assoc: Association,
    instances: Sequence[Instance],
    group: Group,
    record: Callable[[int, StoreResult], None],
    policy: Decompress,
) -> None:
    """Send the group's instances over `assoc`, stopping when the association ends."""
    accepted: dict[str, list[str]] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), []).append(cx.transfer_syntax[0])
    refused = sorted({syntax_name(str(cx.abstract_syntax)) for cx in assoc.rejected_contexts})
    LOGGER.debug(
        "association with %s: %d contexts accepted, %d refused%s",
        assoc.acceptor.ae_title,
        len(assoc.accepted_contexts),
        len(assoc.rejected_contexts),
        f" ({', '.join(refused)})" if refused else "",
    )
    for message_id, index in enumerate(group.indices, start=1):
        if not assoc.is_established:
            return
        instance = instances[index]
        mode = choose(instance, accepted, policy)
        if mode is None:
            detail = _no_context(instance, group, accepted.get(instance.sop_class_uid, []), policy)
            record(index, StoreResult(instance, Outcome.PERMANENT, None, detail))
            continue
        try:
            data = payload(instance, mode)
            status = assoc.send_c_store(data, msg_id=(message_id - 1) % 65535 + 1)
        except Exception as exc:  # one unreadable or unencodable file must not stop the batch
            if not assoc.is_established:
                return
            detail = f"cannot send ({mode.value}): {type(exc).__name__}: {exc}"
            record(index, StoreResult(instance, Outcome.PERMANENT, None, detail))
            continue
        record(index, _result(instance, status, mode))


def _no_context(instance: Instance, group: Group, accepted: Sequence[str], policy: Decompress) -> str:
    """Say which SOP class and syntaxes were proposed, which the peer took, and why no decoding was tried."""
    proposed = dict.fromkeys(
        ts for c in group.contexts if c.abstract_syntax == instance.sop_class_uid for ts in c.transfer_syntaxes
    )
    taken = ", ".join(syntax_name(ts) for ts in dict.fromkeys(accepted)) or "none"
    detail = (
        f"peer accepted no presentation context for {syntax_name(instance.sop_class_uid)} "
        f"in {', '.join(syntax_name(ts) for ts in proposed)} (accepted for this SOP class: {taken})"
    )
    why = why_not_decompressed(instance.transfer_syntax, policy)
    if why and why != "it is not compressed":
        detail += f"; not sent decompressed: {why}"
    return detail


def _result(instance: Instance, status: Dataset, mode: Mode) -> StoreResult:
    """Classify a C-STORE response status Dataset (empty when no response came)."""
    if "Status" not in status:
        return StoreResult(
            instance,
            Outcome.TRANSIENT,
            None,
            "no response (timeout or association aborted)",
        )
    code = int(status.Status)
    category = code_to_category(code)
    words = STORAGE_SERVICE_CLASS_STATUS.get(code, (category, ""))[1] or category
    detail = f"0x{code:04X} {words} ({mode.value})"
    comment = status.get("ErrorComment")
    if comment:
        detail += f": {comment}"
    if category == STATUS_SUCCESS:
        outcome = Outcome.STORED
    elif category == STATUS_WARNING:
        outcome = Outcome.WARNING
        LOGGER.warning("%s stored with warning %s", instance.sop_instance_uid, detail)
    elif category == STATUS_CANCEL or code & 0xFF00 == 0xA700 or code == 0x0213:
        outcome = Outcome.TRANSIENT  # out of resources: the same instance may go later
    else:
        outcome = Outcome.PERMANENT
    return StoreResult(instance, outcome, code, detail)
