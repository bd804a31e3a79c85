"""association.py: which pynetdicom internals are patched, falling back when they differ, and failures in words."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from tests.unit.test_sender import UNCOMPRESSED, make_dicom
from zip2pacs import association, sender
from zip2pacs.association import Peer, PeerUnavailable, associate
from zip2pacs.dimse import Lane, open_lane
from zip2pacs.sender import Outcome

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process would: no warning given yet, no hook found broken, the lane on."""
    monkeypatch.setattr(association, "_FALLBACK", association._Fallback())
    monkeypatch.delenv(association.LANE_SWITCH, raising=False)


@pytest.fixture(scope="module")
def scp() -> Iterator[tuple[AE, ThreadedAssociationServer, list[str]]]:
    """A Storage SCP for CT in the uncompressed syntaxes; returns its AE, server and the SOP Instance UIDs received."""
    ae = AE(ae_title="STORESCP")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, UNCOMPRESSED)
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield ae, server, received
    server.shutdown()


@pytest.fixture
def peer(scp: tuple[AE, ThreadedAssociationServer, list[str]]) -> Iterator[Peer]:
    """The SCP as a peer, reset: any calling and called AE title welcome, nothing received yet."""
    ae, server, received = scp
    received.clear()
    yield Peer(port=server.socket.getsockname()[1], ae_title="STORESCP", acse_timeout=5, dimse_timeout=5)
    ae.require_calling_aet = []
    ae.require_called_aet = False


@pytest.fixture
def lanes(monkeypatch: pytest.MonkeyPatch) -> list[Lane | None]:
    """Record every lane the sender opens (None: it sent through pynetdicom's send_c_store())."""
    opened: list[Lane | None] = []

    def recorded(assoc: Association, timeout: float | None) -> Lane | None:
        opened.append(open_lane(assoc, timeout))
        return opened[-1]

    monkeypatch.setattr(sender, "open_lane", recorded)
    return opened


def store_two(tmp_path: Path, peer: Peer, scp: tuple[AE, ThreadedAssociationServer, list[str]]) -> None:
    """Store two CT instances, one association each, and check the SCP got them."""
    instances = [make_dicom(tmp_path, CTImageStorage) for _ in range(2)]
    for instance in instances:
        [result] = sender.store(peer, [instance])
        assert result.outcome is Outcome.STORED, result.detail
    assert scp[2] == [i.sop_instance_uid for i in instances]


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING-or-worse lines association.py logged; none may carry a traceback."""
    records = [r for r in caplog.records if r.name == association.LOGGER.name and r.levelno >= logging.WARNING]
    assert all(r.exc_info is None for r in records)
    return [r.getMessage() for r in records]


def echo_once(peer: Peer) -> Association:
    assoc = associate(peer, [build_context(Verification)])
    assoc.release()
    return assoc


# --- where Peer lives -----------------------------------------------------------------------------


def test_the_peer_module_imports_without_pynetdicom_and_association_leaves_its_settings_alone() -> None:
    code = (
        "import sys; import zip2pacs.peer; assert 'pynetdicom' not in sys.modules, 'peer imports pynetdicom'; "
        "import zip2pacs.association; from pynetdicom import _config; "
        "assert not _config.STORE_SEND_CHUNKED_DATASET, 'set at import'"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)

    assert run.returncode == 0, run.stderr
    assert association.Peer is __import__("zip2pacs.peer").peer.Peer  # old imports keep working


# --- failures in words ----------------------------------------------------------------------------


def test_an_unknown_host_name_is_reported_as_a_name_resolution_failure() -> None:
    with pytest.raises(PeerUnavailable) as raised:
        echo_once(Peer(host="pacs.invalid", acse_timeout=2))

    assert "cannot resolve host name 'pacs.invalid': " in str(raised.value)
    assert "local socket" not in str(raised.value)


@pytest.fixture
def http_port() -> Iterator[int]:
    """A port that answers like Orthanc's HTTP port: '400 Bad Request' to the first bytes, then it hangs up."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nBad Request")
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(5)


@pytest.fixture
def hang_up_port() -> Iterator[int]:
    """A port that accepts a connection and closes it at once."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            while True:
                listener.accept()[0].close()
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(5)


def test_a_port_that_answers_http_is_reported_at_once_as_not_a_dicom_port(http_port: int) -> None:
    started = time.monotonic()

    with pytest.raises(PeerUnavailable) as raised:
        echo_once(Peer(port=http_port, acse_timeout=5))

    assert str(raised.value) == (
        f"ORTHANC@127.0.0.1:{http_port}: the peer at 127.0.0.1:{http_port} did not answer the association request "
        "like a DICOM peer (is this the DICOM port?): it answered 'HTTP/1.0 400 Bad Request'"
    )
    assert time.monotonic() - started < 4


def test_a_port_that_hangs_up_at_once_is_reported_as_not_a_dicom_port(hang_up_port: int) -> None:
    with pytest.raises(PeerUnavailable) as raised:
        echo_once(Peer(port=hang_up_port, acse_timeout=5))

    assert str(raised.value).endswith(
        f"the peer at 127.0.0.1:{hang_up_port} did not answer the association request like a DICOM peer "
        "(is this the DICOM port?): it closed the connection without a word"
    )


def test_a_calling_ae_title_the_peer_does_not_know_is_named_with_what_to_change(scp, peer: Peer) -> None:
    scp[0].require_calling_aet = ["SOMEONE_ELSE"]

    with pytest.raises(PeerUnavailable) as raised:
        echo_once(peer)

    message = str(raised.value)
    assert "Calling AE title not recognised" in message
    assert "the peer does not know our AE title ZIPWATCHER: add it to the PACS's list of modalities" in message
    assert "(Orthanc: DicomModalities)" in message
    assert "dicom.local_ae_title" in message


def test_a_called_ae_title_the_peer_does_not_answer_to_names_dicom_peer_ae_title(scp, peer: Peer) -> None:
    scp[0].require_called_aet = True

    with pytest.raises(PeerUnavailable) as raised:
        echo_once(Peer(port=peer.port, ae_title="NOT_STORESCP", acse_timeout=5))

    message = str(raised.value)
    assert "Called AE title not recognised" in message
    assert "the peer is not called NOT_STORESCP: set dicom.peer_ae_title to the PACS's own AE title" in message


# --- the version gate -----------------------------------------------------------------------------


def test_pynetdicom_3_0_may_be_patched_and_other_versions_may_not(monkeypatch: pytest.MonkeyPatch) -> None:
    for version, allowed in [("3.0.4", True), ("3.0.0.dev0", True), ("3.1.0", False), ("4.0.0", False), ("?", False)]:
        monkeypatch.setattr(association, "PYNETDICOM_VERSION", version)
        assert (association.why_no_hooks() is None) is allowed, version
    monkeypatch.setattr(association, "PYNETDICOM_VERSION", "3.0.4")
    monkeypatch.setenv(association.LANE_SWITCH, "0")
    assert association.why_no_hooks() is None
    assert association.why_no_lane() == "the fast sender is turned off (ZIP2PACS_LANE=0)"


def test_an_unchecked_pynetdicom_gets_no_hooks_and_stores_through_send_c_store_with_one_warning(
    tmp_path: Path, scp, peer: Peer, lanes: list[Lane | None], monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setattr(association, "PYNETDICOM_VERSION", "3.1.0")

    assoc = associate(peer, [build_context(Verification)])
    try:
        assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # set by a public event
    finally:
        assoc.release()
    store_two(tmp_path, peer, scp)

    assert type(assoc.dul.socket) is AssociationSocket  # not ours: pynetdicom's own
    assert "_serve_request" not in vars(assoc) and "_is_transport_event" not in vars(assoc.dul)
    assert assoc.dul._run_loop_delay == 0.001
    assert lanes == [None, None]
    assert warnings_in(caplog) == [
        "pynetdicom 3.1.0 is not a version the fast sender was checked with (3.0.x); "
        "sending through pynetdicom's send_c_store(), which is slower"
    ]


def test_the_lane_switch_turns_off_the_lane_only_and_warns_once(
    tmp_path: Path, scp, peer: Peer, lanes: list[Lane | None], monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setenv(association.LANE_SWITCH, "0")

    assoc = echo_once(peer)
    store_two(tmp_path, peer, scp)

    assert assoc.dul.socket.read_guard is None
    assert "_serve_request" in vars(assoc)  # the fix for pynetdicom 3.0's response race stays
    assert lanes == [None, None]
    assert _config.STORE_SEND_CHUNKED_DATASET  # send_c_store() streams the file from disk
    assert len(warnings_in(caplog)) == 1


# --- hooks that meet other internals ----------------------------------------------------------------


def read_only(cls: type, name: str) -> property:
    """The attribute as a property without a setter: pynetdicom keeps using it, nobody can replace it."""
    original = getattr(cls, name)
    return property(lambda self: original.__get__(self, cls))


def test_a_transport_check_that_cannot_be_replaced_falls_back_to_send_c_store_and_stores(
    tmp_path: Path, scp, peer: Peer, lanes: list[Lane | None], monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setattr(DULServiceProvider, "_is_transport_event", read_only(DULServiceProvider, "_is_transport_event"))

    store_two(tmp_path, peer, scp)

    assert lanes == [None, None]
    [warning] = warnings_in(caplog)
    assert "AttributeError" in warning and "send_c_store()" in warning


def test_a_request_server_that_cannot_be_replaced_keeps_the_association(
    tmp_path: Path, scp, peer: Peer, lanes: list[Lane | None], monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setattr(Association, "_serve_request", read_only(Association, "_serve_request"))

    store_two(tmp_path, peer, scp)

    assert all(lane is not None for lane in lanes)  # the lane does not need it
    [warning] = warnings_in(caplog)
    assert "AttributeError" in warning


def test_a_changed_socket_factory_signature_falls_back_to_a_plain_ae_for_the_process(
    tmp_path: Path, scp, peer: Peer, lanes: list[Lane | None], monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    def two_arguments(self: AE, assoc: Association) -> AssociationSocket:  # as if pynetdicom now passed three
        raise AssertionError("not reached")

    monkeypatch.setattr(association._TunedAE, "_create_socket", two_arguments)

    store_two(tmp_path, peer, scp)

    assert lanes == [None, None]
    [warning] = warnings_in(caplog)
    assert "TypeError" in warning and "send_c_store()" in warning
    assert association.why_no_hooks() is not None  # later associations go without hooks at once


def test_an_unexpected_pynetdicom_error_is_transient_naming_its_type_with_the_traceback_once_at_debug(
    peer: Peer, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    def broken(*args: object, **kwargs: object) -> Association:
        raise RuntimeError("something inside pynetdicom")

    monkeypatch.setattr(AE, "associate", broken)
    caplog.set_level(logging.DEBUG, logger=association.LOGGER.name)

    with pytest.raises(PeerUnavailable) as raised:
        echo_once(peer)

    assert str(raised.value).endswith("could not make the association (RuntimeError: something inside pynetdicom)")
    assert warnings_in(caplog) == []
    assert len([r for r in caplog.records if r.exc_info is not None]) == 1
    assert association.why_no_hooks() is None  # not the hooks' fault: they stay


def test_a_store_whose_hooks_break_never_raises_anything_but_peer_unavailable(
    tmp_path: Path, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: AssociationSocket) -> None:
        raise ValueError("changed")

    monkeypatch.setattr(association._TunedSocket, "_guard_reads", broken)

    [result] = sender.store(peer, [make_dicom(tmp_path, CTImageStorage)])

    assert result.outcome is Outcome.STORED
