"""Files with bytes after their last element, or values of odd length, delivered to dcmtk's storescp and Orthanc.

PS3.8 forbids a PDV fragment of odd length; dcmtk-based peers abort the association on one ("Odd Fragment
Length"), so such a file must go as a data set of even length: cut before its junk, or re-encoded and padded.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom.dsutils import split_dataset

from tests.integration.conftest import Orthanc, StoreSCP
from tests.odd_files import ODD_BYTES, ODD_TEXT, with_junk, with_odd_values
from zip2pacs.sender import Outcome, Peer, store
from zip2pacs.sniff import Instance, Kind, detect

pytestmark = pytest.mark.integration

ODD_JUNK = (b"\x00", b"\x00\xff\x00", b"JUNK\x00\x00\x00")  # 1, 3 and 7 bytes after the last element


def _odd_files(folder: Path) -> list[Path]:
    folder.mkdir()
    files = [with_junk(folder / f"junk{len(junk)}.dcm", junk, PatientID="ODD-JUNK") for junk in ODD_JUNK]
    files.append(with_odd_values(folder / "odd-text.dcm", ODD_TEXT, PatientID="ODD-VALUE"))  # odd in total
    files.append(with_odd_values(folder / "odd-both.dcm", ODD_TEXT, ODD_BYTES, PatientID="ODD-VALUE"))  # even total
    return files


def _instances(files: list[Path]) -> list[Instance]:
    detections = [detect(path, "", path.stat().st_size) for path in files]
    assert all(d.kind is Kind.INSTANCE for d in detections), detections
    return [d.instance for d in detections if d.instance is not None]


def _data_set(path: Path) -> bytes:
    """The bytes after the file meta of a file storescp wrote with --bit-preserving: the data set as received."""
    return path.read_bytes()[split_dataset(path)[1] :]


def _received(scp: StoreSCP) -> dict[str, bytes]:
    return {str(dcmread(path).SOPInstanceUID): _data_set(path) for path in scp.files()}


def _expected_elements(path: Path) -> Dataset:
    """The original data set as pydicom reads it, without what follows its last element."""
    ds = dcmread(path, force=True)
    for tag in [elem.tag for elem in ds if elem.tag.group < 0x0008]:  # junk read as elements
        del ds[tag]
    return ds


def _assert_same_elements(got: Dataset, path: Path) -> None:
    expected = _expected_elements(path)
    assert [int(elem.tag) for elem in got] == [int(elem.tag) for elem in expected], path.name
    for elem in expected:
        value = got[elem.tag].value
        if isinstance(value, bytes):
            assert value.rstrip(b"\x00 ") == elem.value.rstrip(b"\x00 "), f"{path.name} {elem.tag}"
        else:
            assert value == elem.value, f"{path.name} {elem.tag}"


def test_storescp_receives_files_with_odd_junk_or_odd_values_as_valid_data_sets_of_even_length(
    storescp_factory: Callable[[list[str]], StoreSCP], tmp_path: Path
) -> None:
    scp = storescp_factory(["--accept-all", "--promiscuous", "--bit-preserving"])
    files = _odd_files(tmp_path / "export")
    instances = _instances(files)

    results = store(Peer(port=scp.port, ae_title=scp.aet, dimse_timeout=15, network_timeout=15), instances)

    assert [r.outcome for r in results] == [Outcome.STORED] * len(files), [r.detail for r in results]
    received = _received(scp)
    for instance in instances:
        data = received[instance.sop_instance_uid]
        assert len(data) % 2 == 0, instance.path.name
        got = read_dataset(BytesIO(data), is_implicit_VR=False, is_little_endian=True)
        _assert_same_elements(got, instance.path)
    for instance, junk in zip(instances, ODD_JUNK, strict=False):  # even data sets: streamed, cut before the junk
        original = instance.path.read_bytes()
        assert received[instance.sop_instance_uid] == original[instance.data_offset : -len(junk)], instance.path.name


def test_even_junk_after_the_last_element_is_not_streamed(
    storescp_factory: Callable[[list[str]], StoreSCP], tmp_path: Path
) -> None:
    scp = storescp_factory(["--accept-all", "--promiscuous", "--bit-preserving"])
    path = with_junk(tmp_path / "padded.dcm", b"\x00" * 4)
    [instance] = _instances([path])

    [result] = store(Peer(port=scp.port, ae_title=scp.aet), [instance])

    assert result.outcome is Outcome.STORED, result.detail
    assert "streamed" in result.detail
    assert _received(scp)[instance.sop_instance_uid] == path.read_bytes()[instance.data_offset : -4]


def test_orthanc_stores_files_with_odd_junk_or_odd_values_with_all_their_elements(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    files = _odd_files(tmp_path / "export")
    instances = _instances(files)

    results = store(Peer(port=orthanc.dicom_port, ae_title=orthanc.aet), instances)

    assert [r.outcome for r in results] == [Outcome.STORED] * len(files), [r.detail for r in results]
    orthanc.wait_for_uids({i.sop_instance_uid for i in instances})
    for instance in instances:
        query = {"Level": "Instance", "Query": {"SOPInstanceUID": instance.sop_instance_uid}}
        [found] = orthanc.request("POST", "/tools/find", query)  # type: ignore[misc]
        with urllib.request.urlopen(f"{orthanc.url}/instances/{found}/file", timeout=30) as rsp:
            stored = dcmread(BytesIO(rsp.read()))
        _assert_same_elements(stored, instance.path)
