"""The lane: its command set and response parsing (checked against pydicom), its fragments and its failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.factories import make_dataset, write_dicom
from tests.peers import RecordingScp, vanishing_peer
from zip2pacs.association import Peer, associate
from zip2pacs.dimse import Lane, LaneClosed, command_set, open_lane, parse_command
from zip2pacs.sender import Outcome, store
from zip2pacs.sniff import Instance, detect


def test_command_set_decodes_as_a_c_store_request_with_a_correct_group_length() -> None:
    raw = command_set(CTImageStorage, "1.2.3.45", message_id=7)

    ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)

    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.AffectedSOPClassUID == CTImageStorage
    assert ds.AffectedSOPInstanceUID == "1.2.3.45"  # odd length: padded with one NUL
    assert (ds.CommandField, ds.MessageID, ds.Priority) == (0x0001, 7, 0)
    assert ds.CommandDataSetType != 0x0101  # a data set follows
    assert [int(e.tag) for e in ds] == sorted(int(e.tag) for e in ds)


def test_parse_command_reads_the_status_and_error_comment_of_a_response() -> None:
    rsp = Dataset()
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.CommandField = 0x8001
    rsp.MessageIDBeingRespondedTo = 7
    rsp.CommandDataSetType = 0x0101
    rsp.Status = 0xA700
    rsp.ErrorComment = "Out of disk"

    values = parse_command(encode(rsp, True, True))

    assert values[0x0100] == b"\x01\x80"
    assert values[0x0900] == b"\x00\xa7"
    assert values[0x0902].rstrip(b" ") == b"Out of disk"


def test_parse_command_refuses_elements_outside_group_zero_or_running_past_the_end() -> None:
    with pytest.raises(ValueError):
        parse_command(b"\x08\x00\x16\x00\x02\x00\x00\x001\x00")
    with pytest.raises(ValueError):
        parse_command(b"\x00\x00\x00\x09\x10\x00\x00\x00\x00\x00")


# --- The lane on a real association ----------------------------------------------------------------------------


def detected(path: Path) -> Instance:
    instance = detect(path, "", path.stat().st_size).instance
    assert instance is not None
    return instance


@pytest.fixture(scope="module")
def scp() -> Iterator[RecordingScp]:
    server = RecordingScp()
    yield server
    server.stop()


def test_every_fragment_is_even_when_the_peer_announces_an_odd_maximum_pdu_length(
    tmp_path: Path, scp: RecordingScp
) -> None:
    path = write_dicom(tmp_path / "ct.dcm", make_dataset(rows=224, cols=224))  # 100 KB
    instance = detected(path)
    peer = scp.configure({CTImageStorage: [ExplicitVRLittleEndian]}, max_pdu=16383)

    [result] = store(peer, [instance])

    assert result.outcome is Outcome.STORED, result.detail
    assert scp.stored[instance.sop_instance_uid].data == path.read_bytes()[instance.data_offset :]
    assert len(scp.fragments) > 6
    assert [n for n in scp.fragments if n % 2 or n > 16383 - 6] == []


@contextmanager
def held_lane(peer: Peer) -> Iterator[Lane]:
    """A lane holding an association with `peer` that proposes CT Image Storage in explicit VR little endian."""
    assoc = associate(peer, [build_context(CTImageStorage, [ExplicitVRLittleEndian])])
    lane = open_lane(assoc, 5)
    assert lane is not None
    lane.hold()
    try:
        yield lane
    finally:
        lane.let_go()
        assoc.release()


def test_a_data_set_of_odd_length_is_refused_before_a_byte_of_it_is_sent(tmp_path: Path, scp: RecordingScp) -> None:
    path = write_dicom(tmp_path / "ct.dcm", make_dataset())
    instance = detected(path)
    sent = (instance.sop_class_uid, instance.sop_instance_uid, instance.transfer_syntax, path)
    start, end = instance.data_offset, path.stat().st_size
    peer = scp.configure({CTImageStorage: [ExplicitVRLittleEndian]})

    with held_lane(peer) as lane:
        with pytest.raises(ValueError, match="odd"):
            lane.store_file(*sent, start, end - 1, message_id=1)
        response = lane.store_file(*sent, start, end, message_id=2)  # the association is still usable

    assert response.status == 0x0000
    assert scp.stored[instance.sop_instance_uid].data == path.read_bytes()[start:end]


def test_a_closed_socket_is_reported_as_a_lost_connection_not_as_a_bad_file_descriptor(
    tmp_path: Path, scp: RecordingScp
) -> None:
    path = write_dicom(tmp_path / "ct.dcm", make_dataset())
    instance = detected(path)
    sent = (instance.sop_class_uid, instance.sop_instance_uid, instance.transfer_syntax, path)
    peer = scp.configure({CTImageStorage: [ExplicitVRLittleEndian]})

    with held_lane(peer) as lane:
        lane.sock.close()  # as pynetdicom does once it saw the peer go
        with pytest.raises(LaneClosed) as closed:
            lane.store_file(*sent, instance.data_offset, path.stat().st_size, message_id=1)
        lane.assoc.abort()

    assert "connection" in str(closed.value)
    assert "Bad file descriptor" not in str(closed.value)


# --- A peer that goes right after accepting the association -------------------------------------------------------


@pytest.fixture
def vanishing() -> Iterator[tuple[Peer, threading.Event]]:
    with vanishing_peer() as peer_and_event:
        yield peer_and_event


def _closed_by_pynetdicom(assoc: Association) -> bool:
    sock = getattr(assoc.dul.socket, "socket", None)
    return not assoc.is_established and (sock is None or sock.fileno() == -1)


def test_a_lane_opened_after_the_peer_closed_the_connection_says_so_in_plain_words(
    vanishing: tuple[Peer, threading.Event],
) -> None:
    peer, go = vanishing
    assoc = associate(peer, [build_context(CTImageStorage, [ExplicitVRLittleEndian])])
    go.set()
    wait_for(lambda: _closed_by_pynetdicom(assoc), "pynetdicom to see the connection closed")

    with pytest.raises(LaneClosed, match="the peer closed the connection right after the association was set up"):
        open_lane(assoc, 5)


def test_holding_a_lane_whose_peer_closed_the_connection_says_so_in_plain_words(
    vanishing: tuple[Peer, threading.Event],
) -> None:
    peer, go = vanishing
    assoc = associate(peer, [build_context(CTImageStorage, [ExplicitVRLittleEndian])])
    lane = open_lane(assoc, 5)
    assert lane is not None
    go.set()
    wait_for(lambda: _closed_by_pynetdicom(assoc), "pynetdicom to see the connection closed")

    with pytest.raises(LaneClosed, match="the peer closed the connection right after the association was set up"):
        lane.hold()
    lane.let_go(abort=True)  # harmless on a lane that was never held
    assert not assoc.is_established


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    tick = threading.Event()  # never set: paces the polling
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        tick.wait(0.01)
