"""In-process peers for unit tests: a Storage SCP that records what it received, down to each P-DATA
fragment's length, and a peer that closes the connection once it has accepted the association."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from zip2pacs.association import Peer


@dataclass(frozen=True)
class Stored:
    transfer_syntax: str
    data: bytes  # the data set exactly as it arrived


@dataclass
class RecordingScp:
    """One SCP for a test module (a server takes half a second to stop); `configure` resets it for each test."""

    ae: AE = field(default_factory=lambda: AE(ae_title="STORESCP"))
    fragments: list[int] = field(default_factory=list)  # P-DATA fragment lengths, message control header excluded
    stored: dict[str, Stored] = field(default_factory=dict)  # by SOP Instance UID

    def __post_init__(self) -> None:
        self.ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_PDU_RECV, self._on_pdu)]
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)

    def configure(self, contexts: dict[str, list[str]], max_pdu: int = 16382) -> Peer:
        """Support these SOP classes in these syntaxes (in order of preference); return the peer to send to."""
        self.fragments.clear()
        self.stored.clear()
        self.ae.maximum_pdu_size = max_pdu
        self.ae.supported_contexts = []
        self.ae.add_supported_context(Verification)
        for sop_class, syntaxes in contexts.items():
            self.ae.add_supported_context(sop_class, syntaxes)
        self.server.contexts = self.ae.supported_contexts  # a server keeps its own copy
        port = self.server.socket.getsockname()[1]
        return Peer(port=port, ae_title="STORESCP", acse_timeout=5, dimse_timeout=5, network_timeout=5)

    def stop(self) -> None:
        self.server.shutdown()

    def _on_pdu(self, event: evt.Event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            for item in event.pdu.presentation_data_value_items:
                self.fragments.append(len(item.presentation_data_value or b"") - 1)

    def _on_store(self, event: evt.Event) -> Dataset:
        request = event.request
        self.stored[str(request.AffectedSOPInstanceUID)] = Stored(
            str(event.context.transfer_syntax), request.DataSet.getvalue()
        )
        status = Dataset()
        status.Status = 0x0000
        return status


def _read_pdu(conn: socket.socket) -> bytes:
    head = b""
    while len(head) < 6:
        head += conn.recv(6 - len(head))
    body = b""
    while len(body) < int.from_bytes(head[2:6], "big"):
        body += conn.recv(int.from_bytes(head[2:6], "big") - len(body))
    return head + body


def _accept_every_context(request: bytes) -> bytes:
    """Return an A-ASSOCIATE-AC PDU accepting every context of an A-ASSOCIATE-RQ in its first syntax."""
    rq = A_ASSOCIATE_RQ()
    rq.decode(request)
    primitive = rq.to_primitive()
    for cx in primitive.presentation_context_definition_list:
        cx.result, cx.transfer_syntax = 0x00, [cx.transfer_syntax[0]]
    primitive.presentation_context_definition_results_list = primitive.presentation_context_definition_list
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(primitive)
    return ac.encode()


@contextmanager
def vanishing_peer() -> Iterator[tuple[Peer, threading.Event]]:
    """A peer that accepts every association, then closes each connection once the event is set (at once if set)."""
    listener = socket.create_server(("127.0.0.1", 0))
    go = threading.Event()

    def serve() -> None:
        try:
            while True:
                conn = listener.accept()[0]
                with conn:
                    conn.sendall(_accept_every_context(_read_pdu(conn)))
                    go.wait(10)
        except OSError:  # the listener is closed: the test is over
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Peer(port=listener.getsockname()[1], ae_title="VANISHING", acse_timeout=5, dimse_timeout=5), go
    finally:
        go.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        thread.join(5)
