"""Presentation contexts (one transfer syntax each, within 128 per association) and what a re-encoded file carries."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.factories import make_dataset, write_dicom
from tests.odd_files import ODD_BYTES, ODD_TEXT, with_junk, with_odd_values
from tests.peers import RecordingScp
from zip2pacs.contexts import Context, Mode, needed_contexts, payload, plan_groups
from zip2pacs.sender import Outcome, store
from zip2pacs.sniff import Instance, detect

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
PRIVATE_ROOT = "1.2.826.0.1.3680043.9.9999."


def detected(path: Path) -> Instance:
    instance = detect(path, "", path.stat().st_size).instance
    assert instance is not None
    return instance


def received(data: bytes, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    return read_dataset(BytesIO(data), is_implicit_VR=syntax == ImplicitVRLittleEndian, is_little_endian=True)


@pytest.fixture(scope="module")
def scp() -> Iterator[RecordingScp]:
    server = RecordingScp()
    yield server
    server.stop()


# --- What is proposed --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("own", "other"),
    [(ExplicitVRLittleEndian, ImplicitVRLittleEndian), (ImplicitVRLittleEndian, ExplicitVRLittleEndian)],
)
def test_each_little_endian_syntax_is_proposed_in_a_context_of_its_own(own: str, other: str) -> None:
    assert needed_contexts(CTImageStorage, own) == (Context(CTImageStorage, (own,)), Context(CTImageStorage, (other,)))


def test_a_deflated_file_needs_one_context_in_which_the_peer_picks_either_syntax() -> None:
    # It is inflated and re-encoded whatever the peer picks.
    assert needed_contexts(CTImageStorage, DeflatedExplicitVRLittleEndian) == (
        Context(CTImageStorage, (*UNCOMPRESSED,)),
    )


def instance_of_class(sop_class: str, syntax: str) -> Instance:
    return Instance(Path("x"), sop_class, "", syntax, "", "", "", 0, True, 0)


def test_no_association_is_planned_with_more_than_128_contexts_now_that_each_syntax_has_its_own() -> None:
    instances = [instance_of_class(f"{PRIVATE_ROOT}{n}", ExplicitVRLittleEndian) for n in range(1, 71)]

    groups = plan_groups(instances)

    assert [len(g.contexts) for g in groups] == [128, 12]  # two contexts per SOP class: 64 classes, then 6
    assert sorted(i for g in groups for i in g.indices) == list(range(70))
    for group in groups:  # every context an instance needs is in its group
        for index in group.indices:
            assert set(needed_contexts(instances[index].sop_class_uid, ExplicitVRLittleEndian)) <= set(group.contexts)


def test_the_uncompressed_fallback_is_not_proposed_when_both_syntaxes_have_a_context_already() -> None:
    instances = [
        instance_of_class(CTImageStorage, ExplicitVRLittleEndian),
        instance_of_class(CTImageStorage, RLELossless),
    ]

    [group] = plan_groups(instances)

    assert set(group.contexts) == {
        Context(CTImageStorage, (ExplicitVRLittleEndian,)),
        Context(CTImageStorage, (ImplicitVRLittleEndian,)),
        Context(CTImageStorage, (RLELossless,)),
    }


# --- What arrives --------------------------------------------------------------------------------------------------


def test_an_implicit_vr_file_arrives_as_it_is_at_a_peer_that_prefers_explicit_vr(
    tmp_path: Path, scp: RecordingScp
) -> None:
    path = write_dicom(tmp_path / "implicit.dcm", make_dataset(transfer_syntax=ImplicitVRLittleEndian))
    instance = detected(path)
    peer = scp.configure({CTImageStorage: [ExplicitVRLittleEndian, ImplicitVRLittleEndian]})

    [result] = store(peer, [instance])

    assert result.outcome is Outcome.STORED, result.detail
    assert "streamed" in result.detail
    got = scp.stored[instance.sop_instance_uid]
    assert got.transfer_syntax == ImplicitVRLittleEndian
    assert got.data == path.read_bytes()[instance.data_offset :]


@pytest.mark.parametrize(
    "elements", [(ODD_TEXT,), (ODD_TEXT, ODD_BYTES)], ids=["odd in total", "two odd values, even in total"]
)
def test_a_file_with_values_of_odd_length_is_re_encoded_with_its_values_padded(
    tmp_path: Path, scp: RecordingScp, elements: tuple
) -> None:
    instance = detected(with_odd_values(tmp_path / "odd.dcm", *elements))
    peer = scp.configure({CTImageStorage: [ExplicitVRLittleEndian]})

    [result] = store(peer, [instance])

    assert result.outcome is Outcome.STORED, result.detail
    assert "re-encoded" in result.detail
    data = scp.stored[instance.sop_instance_uid].data
    assert len(data) % 2 == 0
    ds = received(data)
    assert ds[ODD_TEXT[0]].value == "ODD"  # padded with a space, which pydicom strips
    if ODD_BYTES in elements:
        assert ds[ODD_BYTES[0]].value == ODD_BYTES[2] + b"\x00"


def test_junk_after_a_data_set_that_must_be_re_encoded_is_not_read_as_elements(
    tmp_path: Path, scp: RecordingScp
) -> None:
    path = with_odd_values(tmp_path / "odd.dcm", ODD_TEXT)
    with path.open("ab") as file:
        file.write(b"\x00" * 64)  # pydicom alone reads this as an element (0000,0000)
    instance = detected(path)
    peer = scp.configure({CTImageStorage: [ExplicitVRLittleEndian]})

    [result] = store(peer, [instance])

    assert result.outcome is Outcome.STORED, result.detail
    ds = received(scp.stored[instance.sop_instance_uid].data)
    assert [elem.tag for elem in ds if elem.tag.group < 0x0008] == []
    assert ds.PixelData == make_dataset(instance_uid=instance.sop_instance_uid).PixelData


def test_odd_fragments_of_encapsulated_pixel_data_are_padded_when_re_encoded(tmp_path: Path, scp: RecordingScp) -> None:
    path = write_dicom(tmp_path / "rle.dcm", make_dataset(transfer_syntax=RLELossless))
    data = path.read_bytes()
    first = data.rindex(b"\xfe\xff\x00\xe0")  # the last item: the frame's only fragment
    length = struct.unpack_from("<L", data, first + 4)[0]
    end = first + 8 + length
    path.write_bytes(data[: first + 4] + struct.pack("<L", length + 1) + data[first + 8 : end] + b"\xff" + data[end:])
    instance = detected(path)
    assert not instance.faithful
    peer = scp.configure({CTImageStorage: [RLELossless]})

    [result] = store(peer, [instance])

    assert result.outcome is Outcome.STORED, result.detail
    got = scp.stored[instance.sop_instance_uid]
    assert len(got.data) % 2 == 0
    fragments = list(generate_fragments(received(got.data).PixelData))
    assert [len(f) for f in fragments][-1] == length + 2
    assert fragments[-1] == data[first + 8 : end] + b"\xff\x00"


def test_pynetdicom_streams_only_a_file_whose_data_set_runs_to_its_end(tmp_path: Path) -> None:
    whole = detected(write_dicom(tmp_path / "whole.dcm", make_dataset()))
    padded = detected(with_junk(tmp_path / "padded.dcm", b"\x00" * 3))

    assert payload(whole, Mode.STREAM) == str(whole.path)
    assert isinstance(payload(padded, Mode.STREAM), Dataset)  # send_c_store() streams a file to its end
