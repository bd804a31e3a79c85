"""C-STORE on an established pynetdicom association, written and read by the sending thread itself.

pynetdicom hands every PDU between three threads that poll one another: about 3 ms of Python per
C-STORE, whatever the file's size, which caps a sender far below what Orthanc or dcmtk can take.
While a batch goes, a :class:`Lane` pauses the association's reactor, keeps its DUL thread off the
socket (see ``association._TunedSocket``), writes each C-STORE-RQ as P-DATA-TF PDUs and blocks on the
socket for the C-STORE-RSP (PS3.7 9.1.1, 9.3.1; PS3.8 9.3.5). Association set-up, release, abort and
TLS stay pynetdicom's. Any PDU other than P-DATA-TF (an A-ABORT, say) ends the lane, and the
association is then aborted through pynetdicom.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.dsutils import encode

LOGGER = logging.getLogger(__name__)

_PDU = struct.Struct(">BBL")  # type, reserved, length
_PDV = struct.Struct(">LBB")  # item length, presentation context ID, message control header
_HEADERS = _PDU.size + _PDV.size
_P_DATA_TF, _A_RELEASE_RQ, _A_ABORT = 0x04, 0x05, 0x07
_COMMAND, _LAST = 0x01, 0x02  # message control header bits
_NO_DATA_SET = 0x0101  # (0000,0800) CommandDataSetType when no data set follows
_C_STORE_RQ, _C_STORE_RSP = 0x0001, 0x8001
_UNLIMITED_PDV = 1 << 20  # fragment size when the peer sets no maximum PDU length
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_IDLE_DUL_DELAY = 0.05  # the DUL thread's nap while it has nothing to do but wait for the lane
_GONE = "the peer closed the connection right after the association was set up"


def accepted_contexts(assoc: Association) -> dict[str, dict[str, int]]:
    """Return what the peer accepted: SOP class -> transfer syntax -> presentation context ID (first one kept)."""
    accepted: dict[str, dict[str, int]] = {}
    for cx in assoc.accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), {}).setdefault(str(cx.transfer_syntax[0]), cx.context_id or 0)
    return accepted


class LaneClosed(Exception):
    """The association cannot carry more requests: the peer aborted or hung up, or no response came in time."""


@dataclass(frozen=True)
class Response:
    status: int
    error_comment: str = ""


def command_set(sop_class: str, sop_instance: str, message_id: int, priority: int = 0) -> bytes:
    """Return a C-STORE-RQ command set, implicit VR little endian, with its group length (PS3.7 9.3.1.1)."""
    elements = (
        (0x0002, _uid(sop_class)),
        (0x0100, struct.pack("<H", _C_STORE_RQ)),
        (0x0110, struct.pack("<H", message_id)),
        (0x0700, struct.pack("<H", priority)),
        (0x0800, struct.pack("<H", 0x0001)),  # a data set follows
        (0x1000, _uid(sop_instance)),
    )
    body = b"".join(struct.pack("<HHL", 0, element, len(value)) + value for element, value in elements)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def parse_command(data: bytes | bytearray) -> dict[int, bytes]:
    """Return the command set's values by element number (group 0000, implicit VR little endian)."""
    values: dict[int, bytes] = {}
    position = 0
    while position + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHL", data, position)
        position += 8
        if group != 0 or position + length > len(data):
            raise ValueError("malformed command set")
        values[element] = bytes(data[position : position + length])
        position += length
    return values


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


class Lane:
    """Synchronous C-STORE exchanges over an association whose socket this thread holds between hold() and let_go()."""

    def __init__(self, assoc: Association, guard: threading.Lock, dimse_timeout: float | None):
        """Raise LaneClosed when pynetdicom has closed the association's socket already (the peer went)."""
        self.assoc = assoc
        self.guard = guard
        self.dimse_timeout = dimse_timeout
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is None or sock.fileno() == -1 or not assoc.is_established:
            raise LaneClosed(_GONE)
        self.sock: socket.socket = sock
        peer_max = assoc.acceptor.maximum_length or 0
        # PS3.8 wants fragments of even length: an odd maximum (16383, say) leaves its last byte unused.
        self.fragment = max(2, (peer_max - _PDV.size) & ~1) if peer_max else _UNLIMITED_PDV
        self.contexts = accepted_contexts(assoc)
        self._saved: tuple[float | None, float] = (None, 0.0)
        self._held = False

    def hold(self) -> None:
        """Take the socket: pause pynetdicom's reactor and keep its DUL thread from reading.

        Raise LaneClosed when the peer is gone already (pynetdicom saw it close the connection).
        """
        assoc = self.assoc
        assoc._reactor_checkpoint.clear()  # the reactor must not take our responses (as send_c_store does)
        while not assoc._is_paused:
            time.sleep(0.0001)
        self.guard.acquire()  # waits while the DUL thread is reading; then it reads no more
        try:
            if not assoc.is_established or self.sock.fileno() == -1:  # the DUL thread saw the peer go
                raise LaneClosed(_GONE)
            self._saved = (self.sock.gettimeout(), assoc.dul._run_loop_delay)
            self.sock.settimeout(self.dimse_timeout)
        except (OSError, LaneClosed) as exc:
            self.guard.release()
            assoc._reactor_checkpoint.set()
            raise LaneClosed(_GONE) from exc
        assoc.dul._run_loop_delay = _IDLE_DUL_DELAY
        self._held = True

    def let_go(self, abort: bool = False) -> None:
        """Give the socket back to pynetdicom, if held; abort the association through it when `abort`."""
        if self._held:
            self._held = False
            timeout, delay = self._saved
            with contextlib.suppress(OSError):  # closed already
                self.sock.settimeout(timeout)
            self.assoc.dul._run_loop_delay = delay
            self.assoc.dul._idle_timer.restart()  # the DUL saw no traffic while we held the socket
            self.guard.release()
            self.assoc._reactor_checkpoint.set()
        if abort and self.assoc.is_established:
            self.assoc.abort()

    def peer_spoke(self) -> bool:
        """Return True when the peer sent something unasked (an A-ABORT, a release request, or it hung up)."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        pending = getattr(self.sock, "pending", None)  # TLS may hold decrypted bytes select() cannot see
        return bool(readable) or bool(pending and pending())

    def context_id(self, sop_class: str, transfer_syntax: str) -> int | None:
        """Return the accepted presentation context for this SOP class and syntax, or None."""
        return self.contexts.get(sop_class, {}).get(transfer_syntax)

    def store_file(
        self,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        path: Path,
        offset: int,
        end: int | None,
        message_id: int,
    ) -> Response:
        """Send the file's bytes from `offset` to `end` (None: its end) as they are; return the peer's response.

        Raise ValueError before sending anything when they are an odd number, OSError when the file is shorter.
        """
        context_id = self._require(sop_class, transfer_syntax)
        with path.open("rb", buffering=0) as file:
            size = os.fstat(file.fileno()).st_size
            if (end := size if end is None else end) > size:
                raise OSError(f"the file became shorter than its data set ({size} of {end} bytes)")
            file.seek(offset)
            self._send(context_id, command_set(sop_class, sop_instance, message_id), file, end - offset)
        return self._response(message_id)

    def store_dataset(self, dataset: Dataset, transfer_syntax: str, message_id: int) -> Response:
        """Encode the data set in `transfer_syntax` and send it; return the peer's response."""
        syntax = UID(transfer_syntax)
        sop_class, sop_instance = str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)
        context_id = self._require(sop_class, syntax)
        data = encode(dataset, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        if data is None:
            raise ValueError(f"pydicom could not encode the data set in {syntax.name}")
        self._send(context_id, command_set(sop_class, sop_instance, message_id), memoryview(data), len(data))
        return self._response(message_id)

    def _require(self, sop_class: str, transfer_syntax: str) -> int:
        context_id = self.context_id(sop_class, transfer_syntax)
        if context_id is None:
            raise ValueError(f"no accepted presentation context for {sop_class} in {transfer_syntax}")
        return context_id

    # --- the wire ----------------------------------------------------------------------------------

    def _send(self, context_id: int, command: bytes, source: object, length: int) -> None:
        """Write the command PDU and the data set in fragments; the command leaves with the first one.

        An odd length is refused before a byte is written: dcmtk-based peers abort on an odd fragment (PS3.8).
        """
        if length % 2:
            raise ValueError(f"the data set is {length} bytes long: an odd length cannot be sent")
        head = (
            _PDU.pack(_P_DATA_TF, 0, _PDV.size + len(command))
            + _PDV.pack(len(command) + 2, context_id, _COMMAND | _LAST)
            + command
        )
        buffer = bytearray(_HEADERS + min(self.fragment, max(length, 0)))
        view = memoryview(buffer)
        left = length
        try:
            while True:
                size = min(self.fragment, left)
                if isinstance(source, memoryview):
                    offset = length - left
                    view[_HEADERS : _HEADERS + size] = source[offset : offset + size]
                else:
                    _read_exactly(source, view[_HEADERS : _HEADERS + size])
                left -= size
                _PDU.pack_into(buffer, 0, _P_DATA_TF, 0, _PDV.size + size)
                _PDV.pack_into(buffer, _PDU.size, size + 2, context_id, _LAST if left == 0 else 0)
                if head:
                    self.sock.sendall(head + view[: _HEADERS + size])
                    head = b""
                else:
                    self.sock.sendall(view[: _HEADERS + size])
                if left == 0:
                    return
        except TimeoutError as exc:
            raise LaneClosed(f"the peer took no data for {self.dimse_timeout:g} s (dimse_timeout)") from exc
        except OSError as exc:
            raise LaneClosed(_lost("while sending", exc)) from exc

    def _response(self, message_id: int) -> Response:
        """Read PDUs until a whole response command set (and any data set after it) has arrived."""
        command = bytearray()
        command_done = data_done = False
        while not (command_done and data_done):
            kind, body = self._read_pdu()
            if kind != _P_DATA_TF:
                raise LaneClosed(_describe_pdu(kind, body))
            position = 0
            while position + _PDV.size <= len(body):
                item_length, _, control = _PDV.unpack_from(body, position)
                fragment = body[position + _PDV.size : position + 4 + item_length]
                position += 4 + item_length
                if control & _COMMAND:
                    command += fragment
                    if control & _LAST:
                        command_done = True
                        try:
                            values = parse_command(command)
                        except ValueError as exc:
                            raise LaneClosed(f"malformed C-STORE response: {exc}") from exc
                        data_done = values.get(0x0800) == struct.pack("<H", _NO_DATA_SET)
                elif control & _LAST:
                    data_done = True  # a data set after a C-STORE-RSP carries nothing we need
        return self._check(values, message_id)

    def _check(self, values: dict[int, bytes], message_id: int) -> Response:
        field = _us(values.get(0x0100))
        responded_to = _us(values.get(0x0120))
        status = _us(values.get(0x0900))
        if field != _C_STORE_RSP or responded_to != message_id or status is None:
            raise LaneClosed(
                f"unexpected answer to C-STORE-RQ {message_id}: command 0x{field or 0:04X}, "
                f"responding to {responded_to}"
            )
        comment = values.get(0x0902, b"").decode("ascii", "replace").strip(" \x00")
        return Response(status, comment)

    def _read_pdu(self) -> tuple[int, bytearray]:
        header = self._read(_PDU.size)
        kind, _, length = _PDU.unpack(header)
        return kind, self._read(length)

    def _read(self, count: int) -> bytearray:
        data = bytearray(count)
        view = memoryview(data)
        got = 0
        try:
            while got < count:
                n = self.sock.recv_into(view[got:])
                if n == 0:
                    raise LaneClosed("the peer closed the connection")
                got += n
                if _QUICKACK is not None:
                    # Peers that keep Nagle on (Debian's dcmtk and Orthanc) hold their second small write
                    # until we ACK the first; Linux drops TCP_QUICKACK after a while, so it is re-armed.
                    with contextlib.suppress(OSError):
                        self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except TimeoutError as exc:
            raise LaneClosed(f"no response within {self.dimse_timeout:g} s (dimse_timeout)") from exc
        except OSError as exc:
            raise LaneClosed(_lost("while waiting for a response", exc)) from exc
        return data


def _lost(when: str, exc: OSError) -> str:
    if exc.errno == errno.EBADF:  # pynetdicom closed the socket: it saw the peer go
        return f"connection lost {when}: the connection was closed"
    return f"connection lost {when}: {exc}"


def _read_exactly(file: object, view: memoryview) -> None:
    got = 0
    while got < len(view):
        try:
            n = file.readinto(view[got:])  # type: ignore[attr-defined]
        except OSError as exc:
            n, why = 0, str(exc)
        else:
            why = "it became shorter"
        if not n:
            # Part of the message is out: the peer cannot tell where it ends, so only an abort is safe.
            raise LaneClosed(f"the file could not be read while it was sent ({why})")
        got += n


def _us(value: bytes | None) -> int | None:
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def _describe_pdu(kind: int, body: bytes | bytearray) -> str:
    if kind == _A_ABORT and len(body) >= 4:
        return f"the peer aborted the association (source {body[2]}, reason {body[3]})"
    if kind == _A_RELEASE_RQ:
        return "the peer asked to release the association in the middle of a C-STORE"
    return f"unexpected PDU type 0x{kind:02X} while waiting for a C-STORE response"


def open_lane(assoc: Association, dimse_timeout: float | None) -> Lane | None:
    """Return a lane over the association, or None when pynetdicom's internals do not allow one.

    Raise LaneClosed when the peer is gone already (it closed the connection once the association was set up).
    """
    guard = getattr(assoc.dul.socket, "read_guard", None)
    needed = (hasattr(assoc, "_reactor_checkpoint"), hasattr(assoc, "_is_paused"), hasattr(assoc.dul, "_idle_timer"))
    if guard is None or not all(needed):
        return None
    return Lane(assoc, guard, dimse_timeout)
