"""The C-STORE command set as the lane writes it and the response as it reads it, checked against pydicom."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from zip2pacs.dimse import command_set, parse_command


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
