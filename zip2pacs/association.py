"""The only module that opens sockets: tuned pynetdicom associations with the peer, and why none was made.

The tuning reaches into pynetdicom's internals (the DUL's reads and nap, the reactor's request server), which
:mod:`zip2pacs.dimse` relies on to send C-STOREs itself. They are touched only on the pynetdicom series they
were checked with (:data:`CHECKED_SERIES`); on any other, or when touching them fails, associations are
pynetdicom's own, C-STOREs go through its ``send_c_store()``, and one WARNING says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import ssl
import threading
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom import __version__ as _installed_version
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import AddressInformation, AssociationSocket

from .peer import Peer
from .tls import RecordingContext, TlsError, client_context, describe_alert, describe_handshake_error

__all__ = ["NothingAccepted", "Peer", "PeerUnavailable", "associate", "why_no_hooks", "why_no_lane"]

LOGGER = logging.getLogger(__name__)

PYNETDICOM_VERSION: str = _installed_version  # read at call time, so tests can play another version
CHECKED_SERIES = (3, 0)  # the internals hooked here are alike in pynetdicom 3.0.0 to 3.0.4
LANE_SWITCH = "ZIP2PACS_LANE"  # "0" in the environment: C-STOREs go through send_c_store() (read at call time)

# The DUL reactor sleeps this long whenever it finds nothing to do (pynetdicom: 1 ms); every
# C-STORE waits on it at least twice, so a shorter nap lifts the rate of small files.
_RUN_LOOP_DELAY = 0.0002
_DICOM_ANSWERS = (0x02, 0x03, 0x07)  # A-ASSOCIATE-AC, A-ASSOCIATE-RJ, A-ABORT: what a peer may answer a request
_SLOWER = "sending through pynetdicom's send_c_store(), which is slower"


class PeerUnavailable(Exception):
    """No association could be made (refused, timed out, rejected); delivery is delayed, not failed."""


class NothingAccepted(PeerUnavailable):
    """The peer answered the association request but refused every presentation context proposed."""


class _Fallback:
    """What this process learnt about pynetdicom: the warnings given (each once), hooks found broken."""

    def __init__(self) -> None:
        self.warned: set[str] = set()
        self.broken: str | None = None  # why the hooks are off for good, once they broke an association
        self.lock = threading.Lock()

    def warn_once(self, message: str, failure: BaseException | None = None) -> None:
        with self.lock:
            if message in self.warned:
                return
            self.warned.add(message)
        LOGGER.warning("%s", message)
        if failure is not None:
            LOGGER.debug("what the fast sender's hooks met", exc_info=failure)


_FALLBACK = _Fallback()


def why_no_hooks() -> str | None:
    """Return why pynetdicom's internals are left alone in this process, or None when they may be patched."""
    if _FALLBACK.broken is not None:
        return _FALLBACK.broken
    match = re.match(r"(\d+)\.(\d+)\.", PYNETDICOM_VERSION)
    if match is None or (int(match[1]), int(match[2])) != CHECKED_SERIES:
        checked = ".".join(map(str, CHECKED_SERIES))
        return f"pynetdicom {PYNETDICOM_VERSION} is not a version the fast sender was checked with ({checked}.x)"
    return None


def why_no_lane() -> str | None:
    """Return why C-STOREs go through pynetdicom's send_c_store() in this process, or None when a lane may be had."""
    if os.environ.get(LANE_SWITCH) == "0":
        return f"the fast sender is turned off ({LANE_SWITCH}=0)"
    return why_no_hooks()


def _hooks_failed(failure: Exception, consequence: str = _SLOWER) -> None:
    what = f"{type(failure).__name__}: {failure}"
    _FALLBACK.warn_once(
        f"pynetdicom {PYNETDICOM_VERSION} differs from what the fast sender expects ({what}); {consequence}", failure
    )


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
    """An association socket that never waits on Nagle's algorithm or on delayed ACKs, and lets a lane have it."""

    raw: _RecordingSocket | None = None
    read_guard: threading.Lock | None = None  # held by a dimse.Lane while the sending thread owns the socket
    recv_error: OSError | None = None  # kept: pynetdicom only logs it (a TLS alert says why the peer hung up)
    heard = b""  # the start of the peer's first answer: it tells a DICOM peer from, say, a web server
    hung_up = False  # the peer closed the connection

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        raw = _RecordingSocket(address.address_family, socket.SOCK_STREAM)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Small PDUs (a C-STORE command, the last fragment) must leave at once, not wait for an ACK.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.assoc.network_timeout is not None:
                raw.settimeout(self.assoc.network_timeout)
            raw.bind(address.as_tuple)
        except BaseException:
            raw.close()
            raise
        self.raw = raw
        try:  # the hooks go in before the DUL thread starts
            self.assoc.dul._run_loop_delay = _RUN_LOOP_DELAY
            if why_no_lane() is None:
                self._guard_reads()
        except Exception as exc:  # other internals: pynetdicom sends everything for this association
            self.read_guard = None
            _hooks_failed(exc)
        self._is_connected = False
        return raw

    def _guard_reads(self) -> None:
        """Make the DUL thread skip reading the socket while a lane holds ``read_guard``."""
        dul = self.assoc.dul
        reads = dul._is_transport_event
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

    def recv(self, nr_bytes: int) -> bytearray:
        try:
            data = super().recv(nr_bytes)
        except OSError as exc:
            self.recv_error = exc
            self.hung_up = not isinstance(exc, TimeoutError)
            raise
        if len(data) < nr_bytes:  # pynetdicom returns short only when the peer closed the connection
            self.hung_up = True
        if data and not self.heard:
            self._note_first_answer(data)
        # Peers that keep Nagle on (dcmtk, Orthanc) hold their second small write until we ACK the
        # first; Linux clears TCP_QUICKACK after a while, so it is re-armed after every read.
        if hasattr(socket, "TCP_QUICKACK") and self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data

    def _note_first_answer(self, data: bytearray) -> None:
        self.heard = bytes(data)
        if data[0] not in _DICOM_ANSWERS and self.socket is not None:
            # pynetdicom stops at the first 6 bytes of a stranger's answer; a few more say who answered.
            with contextlib.suppress(OSError, ValueError, AttributeError):  # TLS takes no flags; Windows no DONTWAIT
                self.heard += self.socket.recv(80, socket.MSG_PEEK | socket.MSG_DONTWAIT)


class _TunedAE(AE):
    """An AE whose associations use :class:`_TunedSocket`."""

    def _create_socket(self, assoc, address, tls_args):  # type: ignore[no-untyped-def]
        sock = _TunedSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


def associate(peer: Peer, contexts: list[Any]) -> Association:
    """Return an established association; raise PeerUnavailable saying why there is none."""
    tuned = why_no_hooks() is None
    tls_context = _tls_context(peer)
    try:
        assoc = _request(peer, contexts, tls_context, tuned)
    except Exception as exc:
        if not tuned or isinstance(exc, OSError):
            raise _unavailable(peer, exc) from exc
        tuned, tls_context = False, _tls_context(peer)
        assoc = _request_without_hooks(peer, contexts, tls_context, exc)
    if assoc.is_established:
        if tuned:
            _keep_responses(assoc)
        if getattr(assoc.dul.socket, "read_guard", None) is None:
            # send_c_store() reads this per call; without it, it would read a whole file with pydicom and re-encode it.
            _config.STORE_SEND_CHUNKED_DATASET = True
            why = why_no_lane()  # None: a hook failed, and said so
            if why is not None:
                _FALLBACK.warn_once(f"{why}; {_SLOWER}")
        return assoc
    answer = assoc.acceptor.primitive
    if answer is not None and answer.result == 0x00 and assoc.rejected_contexts and not assoc.accepted_contexts:
        # pynetdicom aborts such an association; the peer's answer is still a refusal of these contexts.
        raise NothingAccepted(f"{peer.key}: the peer refused all {len(contexts)} presentation contexts proposed")
    raise PeerUnavailable(f"{peer.key}: {_why_not_established(assoc, peer, tls_context)}")


def _tls_context(peer: Peer) -> RecordingContext | None:
    if peer.tls is None:
        return None
    try:
        return client_context(peer.tls)
    except TlsError as exc:  # the files changed since the configuration was checked
        raise PeerUnavailable(f"{peer.key}: {exc}") from exc


def _request(peer: Peer, contexts: list[Any], tls_context: RecordingContext | None, tuned: bool) -> Association:
    ae = _TunedAE(ae_title=peer.local_ae_title) if tuned else AE(ae_title=peer.local_ae_title)
    # pynetdicom's own socket gets TCP_NODELAY through its public events: without it, a small C-STORE
    # command waits for the peer's delayed ACK (40 ms on Linux).
    handlers: list[Any] = [] if tuned else [(evt.EVT_CONN_OPEN, _no_delay)]
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.network_timeout
    ae.connection_timeout = peer.acse_timeout
    return ae.associate(
        peer.host,
        peer.port,
        contexts=contexts,
        ae_title=peer.ae_title,
        max_pdu=peer.max_pdu,
        bind_address=("", peer.local_port) if peer.local_port else None,
        tls_args=(tls_context, peer.host) if tls_context is not None else None,
        evt_handlers=handlers,
    )


def _no_delay(event: evt.Event) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]


def _request_without_hooks(
    peer: Peer, contexts: list[Any], tls_context: RecordingContext | None, failure: Exception
) -> Association:
    """Ask again with pynetdicom's own AE after the tuned one failed; when that works, the hooks were at fault."""
    try:
        assoc = _request(peer, contexts, tls_context, tuned=False)
    except Exception as exc:
        raise _unavailable(peer, exc) from exc
    what = f"{type(failure).__name__}: {failure}"
    _FALLBACK.broken = f"pynetdicom {PYNETDICOM_VERSION} failed with the fast sender's hooks ({what})"
    _FALLBACK.warn_once(f"{_FALLBACK.broken}; {_SLOWER}", failure)
    return assoc


def _unavailable(peer: Peer, exc: Exception) -> PeerUnavailable:
    if isinstance(exc, socket.gaierror):
        return PeerUnavailable(f"{peer.key}: cannot resolve host name {peer.host!r}: {exc} (see dicom.peer_host)")
    if isinstance(exc, OSError):  # e.g. the local port is already in use
        return PeerUnavailable(f"{peer.key}: cannot open a local socket: {exc}")
    LOGGER.debug("pynetdicom %s failed to associate with %s", PYNETDICOM_VERSION, peer.key, exc_info=exc)
    what = f"{type(exc).__name__}: {exc}"
    return PeerUnavailable(f"{peer.key}: pynetdicom {PYNETDICOM_VERSION} could not make the association ({what})")


def _keep_responses(assoc: Association) -> None:
    """Hand back responses that pynetdicom's reactor snatches from a waiting send_c_store().

    pynetdicom 3.0 races: its reactor may take a fast peer's C-STORE-RSP off the DIMSE queue,
    log "Received unexpected C-STORE service message" and drop it, so send_c_store() waits for
    dimse_timeout and aborts. Requestor-side, any response belongs to the waiting sender.
    """
    try:
        serve, queue = assoc._serve_request, assoc.dimse.msg_queue

        def serve_or_return(msg, context_id):  # type: ignore[no-untyped-def]
            if not msg.is_valid_request and msg.is_valid_response:
                LOGGER.debug("pynetdicom's reactor took a %s; handed back", msg.msg_type)
                queue.put((context_id, msg))
                return
            serve(msg, context_id)

        assoc._serve_request = serve_or_return  # type: ignore[method-assign]
    except Exception as exc:
        _hooks_failed(exc, "its reactor may take a response from send_c_store(), which then waits for dimse_timeout")


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
        return _rejection(rsp, peer)
    if not isinstance(sock, _TunedSocket):  # pynetdicom's own socket kept nothing to tell
        return f"no association: aborted, or no answer within acse_timeout {peer.acse_timeout:g} s"
    stranger = _stranger(sock)
    if stranger is not None:
        return (
            f"the peer at {peer.host}:{peer.port} did not answer the association request like a DICOM peer "
            f"(is this the DICOM port?): {stranger}"
        )
    if sock.heard[:1] == b"\x07":
        return "the peer aborted the association request"
    return f"no answer to the association request within acse_timeout {peer.acse_timeout:g} s"


def _stranger(sock: _TunedSocket) -> str | None:
    """Say what the peer did that no DICOM peer does, or return None."""
    if not sock.heard:
        return "it closed the connection without a word" if sock.hung_up else None
    if sock.heard[0] in _DICOM_ANSWERS:
        return None
    line = sock.heard.split(b"\r\n")[0].split(b"\n")[0][:60].decode("ascii", "replace")
    return f"it answered {line!r}" if line.isprintable() else f"it answered {len(sock.heard)}+ bytes of no DICOM PDU"


def _rejection(rsp: A_ASSOCIATE, peer: Peer) -> str:
    words = f"association rejected ({rsp.result_str}, by {rsp.source_str}: {rsp.reason_str})"
    if rsp.result_source == 1 and rsp.diagnostic == 3:  # service user: calling AE title not recognised
        return (
            f"{words}: the peer does not know our AE title {peer.local_ae_title}: add it to the PACS's list of "
            "modalities (Orthanc: DicomModalities), or set dicom.local_ae_title to one it knows"
        )
    if rsp.result_source == 1 and rsp.diagnostic == 7:  # service user: called AE title not recognised
        return (
            f"{words}: the peer is not called {peer.ae_title}: set dicom.peer_ae_title to the PACS's own AE title "
            "(Orthanc: DicomAet)"
        )
    return words
