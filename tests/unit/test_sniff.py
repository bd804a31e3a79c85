"""Detection by content: Part 10 files, bare datasets, DICOMDIRs, files without UIDs, and junk of every kind."""

from __future__ import annotations

import gzip
import logging
import random
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from tests.factories import PNG_HEADER, make_dataset, read_instance, valid_testdata_files, write_dicom, zip_bytes
from tests.factories import testdata_files as bundled_files
from tests.odd_files import ODD_BYTES, ODD_TEXT, element, with_elements_after_pixels, with_junk, with_odd_values
from zip2pacs import sniff
from zip2pacs.sniff import Detection, Kind, detect, sniff_bytes_is_part10


def bundled(name: str) -> Path:
    return Path(get_testdata_file(name))


def write_bytes(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def write_with_huge_pixel_data(path: Path, declared_length: int) -> None:
    # A Part 10 file whose PixelData is written as a header only, then the file is extended to hold it.
    ds = make_dataset()
    del ds.PixelData
    write_dicom(path, ds)
    with path.open("r+b") as file:
        file.seek(0, 2)
        file.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, declared_length))
        file.truncate(file.tell() + declared_length)


# --- Part 10 files ---------------------------------------------------------------------------------------------


def test_a_part10_file_is_an_instance_with_the_uids_of_its_dataset() -> None:
    path = bundled("CT_small.dcm")
    ds = dcmread(path)

    detection = detect(path, "abc123", 39206)

    assert detection == Detection(Kind.INSTANCE, detection.instance, "")
    instance = detection.instance
    assert instance is not None
    assert instance.path == path
    assert instance.sop_class_uid == ds.SOPClassUID
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    assert instance.study_uid == ds.StudyInstanceUID
    assert instance.series_uid == ds.SeriesInstanceUID
    assert instance.transfer_syntax == ExplicitVRLittleEndian
    assert (instance.sha256, instance.size) == ("abc123", 39206)
    assert instance.faithful


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("MR_small.dcm", "1.2.840.10008.1.2.1"),
        ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
        ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
        ("JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51"),
        ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
        ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
        ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
        ("waveform_ecg.dcm", "1.2.840.10008.1.2.1"),
    ],
)
def test_a_consistent_part10_file_reports_its_transfer_syntax_and_is_faithful(name: str, syntax: str) -> None:
    detection = detect(bundled(name), "", 0)

    assert detection.kind is Kind.INSTANCE
    assert detection.instance is not None
    assert detection.instance.transfer_syntax == syntax
    assert detection.instance.faithful


def test_a_generated_rle_file_is_detected_as_rle(tmp_path: Path) -> None:
    ds = make_dataset(transfer_syntax=RLELossless)
    path = write_dicom(tmp_path / "IM0001", ds)

    instance = detect(path, "", 0).instance

    assert instance is not None
    assert instance.transfer_syntax == RLELossless
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    assert instance.faithful


def test_a_deflated_file_reports_deflate_and_is_not_faithful() -> None:
    instance = detect(bundled("image_dfl.dcm"), "", 0).instance

    assert instance is not None
    assert instance.transfer_syntax == DeflatedExplicitVRLittleEndian
    assert instance.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.0.0.0.977067309.6001.0"
    assert not instance.faithful


@pytest.mark.parametrize("keyword", ["MediaStorageSOPInstanceUID", "MediaStorageSOPClassUID"])
def test_a_file_whose_meta_header_disagrees_with_its_dataset_is_not_faithful(tmp_path: Path, keyword: str) -> None:
    ds = make_dataset()
    setattr(ds.file_meta, keyword, "1.2.3.4.5")
    ds.preamble = b"\x00" * 128
    path = tmp_path / "disagrees.dcm"
    # enforce_file_format=True would rewrite the meta header from the dataset.
    dcmwrite(path, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert dcmread(path).file_meta.get(keyword) == "1.2.3.4.5"

    instance = detect(path, "", 0).instance

    assert instance is not None
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    assert instance.sop_class_uid == ds.SOPClassUID
    assert not instance.faithful


@pytest.mark.parametrize("name", ["rtplan.dcm", "rtdose.dcm", "badVR.dcm"])
def test_a_real_world_file_with_a_stale_media_storage_instance_uid_is_not_faithful(name: str) -> None:
    ds = dcmread(bundled(name), stop_before_pixels=True)
    assert ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID

    instance = detect(bundled(name), "", 0).instance

    assert instance is not None
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    assert not instance.faithful


def test_a_file_whose_meta_claims_explicit_vr_over_an_implicit_dataset_is_not_faithful() -> None:
    # SC_rgb_jpeg.dcm: meta says JPEG Baseline, the dataset is written in implicit VR.
    instance = detect(bundled("SC_rgb_jpeg.dcm"), "", 0).instance

    assert instance is not None
    assert not instance.faithful


def test_a_file_whose_meta_claims_implicit_vr_over_an_explicit_dataset_is_not_faithful(tmp_path: Path) -> None:
    original = bundled("CT_small.dcm").read_bytes()
    relabelled = original.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2\x00\x00\x00", 1)
    assert relabelled != original
    path = write_bytes(tmp_path, "relabelled.dcm", relabelled)

    instance = detect(path, "", 0).instance

    assert instance is not None
    assert instance.sop_instance_uid == dcmread(bundled("CT_small.dcm")).SOPInstanceUID
    assert not instance.faithful


def test_a_part10_file_without_transfer_syntax_is_an_instance_with_an_inferred_syntax(tmp_path: Path) -> None:
    ds = make_dataset()
    del ds.file_meta.TransferSyntaxUID
    ds.preamble = b"\x00" * 128
    path = tmp_path / "no_syntax"
    dcmwrite(path, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)

    instance = detect(path, "", 0).instance

    assert instance is not None
    assert instance.transfer_syntax == ExplicitVRLittleEndian
    assert not instance.faithful


# --- Datasets without preamble ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("rtstruct.dcm", ImplicitVRLittleEndian),
        ("ExplVR_LitEndNoMeta.dcm", ExplicitVRLittleEndian),
        ("ExplVR_BigEndNoMeta.dcm", ExplicitVRBigEndian),
    ],
)
def test_a_bundled_dataset_without_preamble_is_an_instance_that_is_not_faithful(name: str, syntax: str) -> None:
    ds = dcmread(bundled(name), force=True)

    instance = detect(bundled(name), "", 0).instance

    assert instance is not None
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    assert instance.sop_class_uid == ds.SOPClassUID
    assert instance.transfer_syntax == syntax
    assert not instance.faithful


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_a_generated_dataset_without_preamble_or_meta_is_an_instance(tmp_path: Path, syntax: str) -> None:
    ds = make_dataset(transfer_syntax=syntax)
    path = write_dicom(tmp_path / "deep" / "er" / "0001", ds, preamble=False)
    assert not sniff_bytes_is_part10(path.read_bytes()[:132])

    instance = detect(path, "", 0).instance

    assert instance is not None
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    assert instance.study_uid == ds.StudyInstanceUID
    assert instance.series_uid == ds.SeriesInstanceUID
    assert instance.transfer_syntax == syntax
    assert not instance.faithful


def test_a_file_starting_with_its_meta_group_without_preamble_is_an_instance(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.preamble = None
    path = tmp_path / "meta_first"
    dcmwrite(path, ds, enforce_file_format=False)
    assert path.read_bytes()[:2] == b"\x02\x00"

    instance = detect(path, "", 0).instance

    assert instance is not None
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    assert instance.transfer_syntax == ExplicitVRLittleEndian
    assert not instance.faithful


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom's own check of the bad value set here
def test_a_dataset_without_preamble_whose_uids_are_not_uids_is_not_dicom(tmp_path: Path) -> None:
    ds = make_dataset(transfer_syntax=ImplicitVRLittleEndian)
    ds.SOPInstanceUID = "not-a-uid"
    path = write_dicom(tmp_path / "odd", ds, preamble=False)

    assert detect(path, "", 0).kind is Kind.NOT_DICOM


# --- DICOMDIR and files without UIDs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["DICOMDIR", "DICOMDIR-implicit", "DICOMDIR-bigEnd", "DICOMDIR-empty.dcm", "DICOMDIR-nooffset"]
)
def test_a_dicomdir_is_recognised_and_never_an_instance(name: str) -> None:
    detection = detect(bundled(name), "", 0)

    assert detection.kind is Kind.DICOMDIR
    assert detection.instance is None
    assert detection.reason


def test_a_part10_file_without_sop_instance_uid_is_no_uid_and_says_which(tmp_path: Path) -> None:
    ds = make_dataset()
    del ds.SOPInstanceUID
    path = write_dicom(tmp_path / "IM0001.dcm", ds)

    detection = detect(path, "", 0)

    assert detection.kind is Kind.NO_UID
    assert detection.instance is None
    assert "SOP Instance UID" in detection.reason
    assert "SOP Class UID" not in detection.reason


@pytest.mark.parametrize("name", ["meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm", "UN_sequence.dcm"])
def test_a_bundled_part10_file_without_uids_is_no_uid(name: str) -> None:
    assert detect(bundled(name), "", 0).kind is Kind.NO_UID


def test_reasons_and_debug_logs_never_name_the_patient(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = make_dataset(PatientName="SECRET^PERSON", PatientBirthDate="19450508")
    del ds.SOPInstanceUID
    path = write_dicom(tmp_path / "IM0001", ds)

    with caplog.at_level(logging.DEBUG, logger="zip2pacs.sniff"):
        detection = detect(path, "", 0)

    assert detection.kind is Kind.NO_UID
    text = detection.reason + caplog.text
    assert "SECRET" not in text and "19450508" not in text
    assert "IM0001" in caplog.text


# --- Junk ------------------------------------------------------------------------------------------------------

JUNK = {
    "readme.txt": b"Exported by a viewer.\r\nNothing to see here.\r\n" * 20,
    "x.dcm": b"This is not really DICOM, whatever its name says.\n" * 10,
    "icon.png": PNG_HEADER,
    "report.pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 5,
    "photo.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 300,
    "nested.zip": zip_bytes({"a.txt": b"hello", "b/c.dcm": b"not dicom"}),
    "empty": b"",
    "one_byte": b"\x08",
    "seven_bytes": b"\x08\x00\x16\x00UI\x00",
    "Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 56,
    "preamble_only": b"\x00" * 128 + b"DICM",
    "random.bin": random.Random(1234).randbytes(4096),
    "zeros.bin": b"\x00" * 4096,
}


@pytest.mark.parametrize("name", sorted(JUNK))
def test_junk_is_not_an_instance(tmp_path: Path, name: str) -> None:
    detection = detect(write_bytes(tmp_path, name, JUNK[name]), "", len(JUNK[name]))

    assert detection.kind is not Kind.INSTANCE
    assert detection.instance is None
    assert detection.reason


@pytest.mark.parametrize("name", sorted(set(JUNK) - {"preamble_only"}))
def test_junk_without_dicom_preamble_is_not_dicom(tmp_path: Path, name: str) -> None:
    assert detect(write_bytes(tmp_path, name, JUNK[name]), "", 0).kind is Kind.NOT_DICOM


def test_a_gzipped_dicom_file_is_not_dicom(tmp_path: Path) -> None:
    data = gzip.compress(bundled("CT_small.dcm").read_bytes())

    assert detect(write_bytes(tmp_path, "CT_small.dcm.gz", data), "", 0).kind is Kind.NOT_DICOM


def test_random_bytes_that_look_like_a_dataset_start_are_not_dicom(tmp_path: Path) -> None:
    rng = random.Random(42)
    starts = [b"\x08\x00\x05\x00", b"\x08\x00\x16\x00UI", b"\x02\x00\x00\x00", b"\x00\x08\x00\x16UI", b"\x08\x00"]
    kinds = {
        detect(
            write_bytes(tmp_path, f"blob{n}", rng.choice(starts) + rng.randbytes(rng.randrange(0, 3000))), "", 0
        ).kind
        for n in range(300)
    }

    assert kinds == {Kind.NOT_DICOM}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    head=st.sampled_from(
        [b"", b"\x08\x00", b"\x02\x00\x10\x00UI", b"\x00" * 128 + b"DICM", b"\x00" * 128 + b"DICM\x02\x00"]
    ),
    body=st.binary(max_size=2048),
)
def test_detect_never_raises_and_never_finds_an_instance_in_arbitrary_bytes(
    tmp_path: Path, head: bytes, body: bytes
) -> None:
    detection = detect(write_bytes(tmp_path, "arbitrary", head + body), "", 0)

    assert detection.kind is not Kind.INSTANCE


def test_a_directory_is_not_dicom_and_a_missing_file_is_no_verdict(tmp_path: Path) -> None:
    detection = detect(tmp_path, "", 0)
    assert detection.kind is Kind.NOT_DICOM and "folder" in detection.reason
    with pytest.raises(FileNotFoundError):  # removed by another program: this machine's problem, not the file's
        detect(tmp_path / "gone.dcm", "", 0)


# --- Every bundled file, and large ones ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # the full pydicom read of the reference warns about odd files
def test_every_bundled_pydicom_file_is_classified_and_agrees_with_a_full_pydicom_read() -> None:
    files = bundled_files()

    detections = {path: detect(path, "", path.stat().st_size) for path in files}

    instances = {path for path, d in detections.items() if d.kind is Kind.INSTANCE}
    damaged = {path.name for path, d in detections.items() if d.kind is Kind.DAMAGED}
    assert damaged == {"rtplan_truncated.dcm", "MR_truncated.dcm"}  # pydicom reads them without a word
    assert all(isinstance(d, Detection) for d in detections.values())
    assert len(instances) > len(files) / 2, f"{len(instances)} instances among {len(files)} files"
    # Files without Study or Series Instance UID (Type 1 in every composite IOD) are reported, not sent.
    filed = {
        p
        for p in valid_testdata_files()
        if all(read_instance(p).get(k) for k in ("StudyInstanceUID", "SeriesInstanceUID")) and p.name not in damaged
    }
    assert instances == filed, f"{len(instances)} instances among {len(files)} files"
    no_study = {p.name for p, d in detections.items() if d.kind is Kind.NO_UID and "Study Instance UID" in d.reason}
    assert "JPEGLSNearLossless_08.dcm" in no_study


def test_the_header_walk_and_pydicom_classify_every_bundled_file_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    files = bundled_files()
    walked = 0

    def counted(*args):  # type: ignore[no-untyped-def]
        nonlocal walked
        result = real_walk(*args)
        walked += result is not None
        return result

    real_walk = sniff._walked
    monkeypatch.setattr(sniff, "_walked", counted)
    fast = {path: detect(path, "x", path.stat().st_size) for path in files}
    monkeypatch.setattr(sniff, "_walked", lambda *args: None)
    slow = {path: detect(path, "x", path.stat().st_size) for path in files}

    assert {p.name: d for p, d in fast.items() if d != slow[p]} == {}
    assert walked > len(files) / 2  # most files take the walk, not pydicom


def test_a_file_with_50_mb_of_pixel_data_is_decided_without_loading_the_pixels(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.Rows = ds.Columns = 5000
    ds.PixelData = bytes(5000 * 5000 * 2)  # 50 MB
    path = write_dicom(tmp_path / "big", ds)
    assert path.stat().st_size > 50_000_000

    tracemalloc.start()
    try:
        instance = detect(path, "", path.stat().st_size).instance
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert instance is not None
    assert (instance.sop_instance_uid, instance.series_uid) == (ds.SOPInstanceUID, ds.SeriesInstanceUID)
    assert instance.faithful
    assert peak < 5_000_000, f"detection allocated {peak} bytes"


def test_a_file_declaring_4_gb_of_pixel_data_is_decided_from_its_header(tmp_path: Path) -> None:
    # The file is sparse: reading its pixel data would take gigabytes of memory.
    path = tmp_path / "huge"
    write_with_huge_pixel_data(path, 0xFFFFFFF0)

    detection = detect(path, "", path.stat().st_size)

    assert detection.kind is Kind.INSTANCE
    assert detection.instance is not None
    assert detection.instance.faithful


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_bundled_truncated_files_are_damaged_not_instances(name):
    path = Path(get_testdata_file(name))
    detection = detect(path, "x", path.stat().st_size)
    assert detection.kind is Kind.DAMAGED
    assert "truncated" in detection.reason


@pytest.mark.parametrize("name", ["MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "SC_rgb_jpeg.dcm", "MR_small_RLE.dcm"])
def test_whole_files_cut_anywhere_in_their_data_are_damaged(tmp_path, name):
    data = Path(get_testdata_file(name)).read_bytes()
    assert detect(write_bytes(tmp_path, "whole", data), "x", len(data)).kind is Kind.INSTANCE
    for cut in (len(data) - 1, len(data) - 100, len(data) * 3 // 4):
        path = write_bytes(tmp_path, f"cut{cut}", data[:cut])
        assert detect(path, "x", cut).kind is Kind.DAMAGED, f"{name} cut at {cut} of {len(data)}"


def test_trailing_padding_after_a_whole_dataset_is_not_damage(tmp_path):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    for padding in (b"\x00", b"\x00" * 7, b"\x00" * 64):
        path = write_bytes(tmp_path, f"pad{len(padding)}", data + padding)
        assert detect(path, "x", len(data) + len(padding)).kind is Kind.INSTANCE


def test_preambleless_dataset_cut_short_is_damaged(tmp_path):
    ds = make_dataset()
    whole = tmp_path / "whole"
    write_dicom(whole, ds, preamble=False)
    data = whole.read_bytes()
    assert detect(whole, "x", len(data)).kind is Kind.INSTANCE
    cut = write_bytes(tmp_path, "cut", data[:-10])
    assert detect(cut, "x", len(data) - 10).kind is Kind.DAMAGED


# --- Bytes after the last element, values of odd length: what may be streamed ---------------------------------


@pytest.mark.parametrize(
    "junk", [b"\x00", b"\x00\xff\x00", b"JUNK\x00\x00\x00", b"\x00" * 4, b"\x00" * 64, b"JUNK" * 9]
)
def test_bytes_after_the_last_element_are_left_out_of_the_data_set_to_stream(tmp_path: Path, junk: bytes) -> None:
    path = with_junk(tmp_path / "junk.dcm", junk)
    whole = path.stat().st_size - len(junk)

    instance = detect(path, "", path.stat().st_size).instance

    assert instance is not None
    assert instance.faithful
    assert instance.data_end == whole
    assert (instance.data_end - instance.data_offset) % 2 == 0


def test_a_whole_part10_file_streams_to_its_last_byte(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "whole.dcm", make_dataset())

    instance = detect(path, "", path.stat().st_size).instance

    assert instance is not None
    assert instance.faithful
    assert instance.data_end == path.stat().st_size


@pytest.mark.parametrize(
    "elements", [(ODD_TEXT,), (ODD_TEXT, ODD_BYTES)], ids=["odd in total", "two odd values, even in total"]
)
def test_a_data_set_with_a_value_of_odd_length_is_not_faithful(tmp_path: Path, elements: tuple) -> None:
    path = with_odd_values(tmp_path / "odd.dcm", *elements)

    instance = detect(path, "", path.stat().st_size).instance

    assert instance is not None
    assert not instance.faithful  # pydicom re-encodes it, its values padded
    assert instance.data_end == path.stat().st_size


def test_values_of_odd_length_inside_a_sequence_are_found_even_when_the_total_is_even(tmp_path: Path) -> None:
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + element(*ODD_TEXT) + element(*ODD_BYTES)
    item += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)  # item delimiter
    sequence = struct.pack("<HH2sHL", 0x0040, 0x0275, b"SQ", 0, 0xFFFFFFFF) + item
    sequence += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)  # sequence delimiter
    data = with_odd_values(tmp_path / "plain.dcm").read_bytes()
    pixels = data.index(struct.pack("<HH2s", 0x7FE0, 0x0010, b"OW"))
    path = write_bytes(tmp_path, "odd.dcm", data[:pixels] + sequence + data[pixels:])
    assert dcmread(path).RequestAttributesSequence[0].PerformedProcedureStepDescription == "ODD"
    assert path.stat().st_size % 2 == 0  # even in total: only the values inside the sequence are odd

    instance = detect(path, "", path.stat().st_size).instance

    assert instance is not None
    assert not instance.faithful


def test_elements_out_of_order_up_to_the_end_of_the_file_are_data_not_junk(tmp_path: Path) -> None:
    path = with_elements_after_pixels(tmp_path / "unordered.dcm", (0x00400254, b"LO", b"EVEN"))

    instance = detect(path, "", path.stat().st_size).instance

    assert instance is not None
    assert instance.data_end == path.stat().st_size  # nothing of the data set is left out
    assert not instance.faithful  # pydicom re-encodes it, its elements in order


def test_a_dataset_without_preamble_knows_where_its_elements_end(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "bare", make_dataset(), preamble=False)
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(b"\x00" * 16)

    instance = detect(path, "", size + 16).instance

    assert instance is not None
    assert instance.data_end == size
