"""The only module that opens sockets: tuned pynetdicom associations with the peer, and why none was made."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from dataclasses import dataclass

from pynetdicom import AE, _config
from pynetdicom import __version__ as pynetdicom_version
from pynetdicom.association import Association
from pynetdicom.transport import AddressInformation, AssociationSocket

from .contexts import Decompress
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
        self._guard_reads()
        self._is_connected = False
        return self.raw

    read_guard: threading.Lock | None = None  # held by a dimse.Lane while the sending thread owns the socket

    def _guard_reads(self) -> None:
        """Make the DUL thread skip reading the socket while a lane holds ``read_guard``."""
        dul = self.assoc.dul
        reads = getattr(dul, "_is_transport_event", None)
        if reads is None:
            return  # other pynetdicom internals: no lane, pynetdicom sends everything
        guard = threading.Lock()

        def guarded_reads() -> bool:
            if not guard.acquire(blocking=False):
                return False
            try:
                return bool(reads())
            finally:
                guard.release()

        dul._is_transport_event = guarded_reads  # type: ignore[method-assign]
        self.read_guard = guard

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


def associate(peer: Peer, contexts: list) -> Association:  # type: ignore[type-arg]
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
    serve = getattr(assoc, "_serve_request", None)
    if serve is None or not hasattr(assoc.dimse, "msg_queue"):
        LOGGER.debug("pynetdicom %s has other internals; its own response handling is used", pynetdicom_version)
        return

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
    recv_error = getattr(sock, "recv_error", None)
    if isinstance(recv_error, ssl.SSLError):
        return describe_alert(recv_error)
    rsp = assoc.acceptor.primitive
    if assoc.is_rejected and rsp is not None:
        return f"association rejected ({rsp.result_str}, by {rsp.source_str}: {rsp.reason_str})"
    if assoc.is_aborted:
        return f"no association: aborted, or no answer within acse_timeout {peer.acse_timeout:g} s"
    return "association not established"
