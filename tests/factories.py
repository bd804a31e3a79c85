"""Test data built on the spot: DICOM datasets, studies on disk, ZIPs with junk, pydicom's bundled files."""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    generate_uid,
)

from zip2pacs.synth import uid as seeded_uid  # a UID derived only from its parts: same seed, same UID

MODALITIES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4": "MR",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.7": "OT",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.1": "CR",  # CR Image Storage
    "1.2.840.10008.5.1.4.1.1.128": "PT",  # PET Image Storage
}

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


def _pixels(rows: int, cols: int, salt: int, big_endian: bool) -> bytes:
    # 12-bit values in 16-bit words; a pattern that differs per instance so SHA-256 differs too.
    fmt = (">" if big_endian else "<") + "H"
    return b"".join(struct.pack(fmt, (i * 7 + salt) % 4096) for i in range(rows * cols))


def make_dataset(
    sop_class: str = CTImageStorage,
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_uid: str | None = None,
    rows: int = 8,
    cols: int = 8,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **tags: object,
) -> Dataset:
    """Return a small image dataset with realistic minimal headers and valid file meta; ``tags`` override keywords.

    Missing UIDs are random. A compressed ``transfer_syntax`` is produced with ``Dataset.compress`` (RLE works with
    pydicom alone; JPEG-LS / JPEG 2000 need their encoders installed).
    """
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    instance_uid = instance_uid or generate_uid()
    syntax = UID(transfer_syntax)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax.is_compressed else syntax
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "TEST^PATIENT"
    ds.PatientID = "TEST0001"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = MODALITIES.get(str(sop_class), "OT")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    salt = int(instance_uid.replace(".", "")[-6:] or 0)
    ds.PixelData = _pixels(rows, cols, salt, big_endian=syntax == ExplicitVRBigEndian)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    if syntax.is_compressed:
        ds.compress(syntax)
    return ds


def write_dicom(path: Path, ds: Dataset, preamble: bool = True) -> Path:
    """Write ``ds`` to ``path`` (folders created) and return the path.

    ``preamble=True`` writes a Part 10 file (preamble, "DICM", file meta); ``preamble=False`` writes the bare
    dataset without preamble or file meta, as old ACR-NEMA-style exports do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        dcmwrite(path, ds, enforce_file_format=True)
        return path
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
    bare = ds.copy()
    bare.file_meta = FileMetaDataset()
    bare.preamble = None
    dcmwrite(
        path,
        bare,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=syntax != ExplicitVRBigEndian,
        enforce_file_format=False,
    )
    return path


def make_study(
    folder: Path,
    n_series: int = 2,
    per_series: int = 3,
    seed: int = 0,
    sop_class: str = CTImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_id: str = "TEST0001",
) -> list[Path]:
    """Write one study as nested folders (``PAT/STUDY/SERnnn/IMnnnn``), every other file without an extension.

    UIDs and pixels depend only on ``seed``, so a test can rebuild the same study and expect the same UIDs.
    """
    folder = Path(folder)
    study_uid = seeded_uid("study", seed)
    paths = []
    for s in range(1, n_series + 1):
        series_uid = seeded_uid("series", seed, s)
        for i in range(1, per_series + 1):
            ds = make_dataset(
                sop_class=sop_class,
                study_uid=study_uid,
                series_uid=series_uid,
                instance_uid=seeded_uid("instance", seed, s, i),
                transfer_syntax=transfer_syntax,
                PatientID=patient_id,
                SeriesNumber=s,
                InstanceNumber=i,
            )
            name = f"IM{i:04d}" + (".dcm" if i % 2 == 0 else "")
            paths.append(write_dicom(folder / f"PAT{seed}" / f"STUDY{seed}" / f"SER{s:03d}" / name, ds))
    return paths


def junk_entries(arc_root: str = "") -> dict[str, bytes]:
    """Return non-DICOM entries an export tool typically adds: readme, a PNG, a DICOMDIR, macOS and Windows junk."""
    root = arc_root.strip("/") + "/" if arc_root.strip("/") else ""
    return {
        f"{root}readme.txt": b"Exported by a test viewer.\r\nNot a DICOM file.\r\n",
        f"{root}viewer/icon.png": PNG_HEADER,
        f"{root}DICOMDIR": Path(get_testdata_file("DICOMDIR")).read_bytes(),
        f"{root}Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 56,
        f"__MACOSX/{root}._readme.txt": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X",
        f"{root}empty.dcm": b"",
    }


def make_zip(
    zip_path: Path,
    files_or_dir: Path | Iterable[Path],
    arc_root: str = "",
    junk: bool = True,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    """Write a ZIP of a folder (paths relative to it) or of files (relative to their common folder); return its path.

    Entries go under ``arc_root``; with ``junk`` the entries of ``junk_entries`` are added too.
    """
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(files_or_dir, (str, os.PathLike)) and Path(files_or_dir).is_dir():
        base = Path(files_or_dir)
        files = sorted(p for p in base.rglob("*") if p.is_file())
    else:
        files = [Path(p) for p in files_or_dir]  # type: ignore[union-attr]
        base = Path(os.path.commonpath([p.parent for p in files])) if files else Path(".")
    root = arc_root.strip("/")
    with zipfile.ZipFile(zip_path, "w", compression=compression) as zf:
        for path in files:
            arcname = path.relative_to(base).as_posix()
            zf.write(path, f"{root}/{arcname}" if root else arcname)
        if junk:
            for arcname, data in junk_entries(root).items():
                zf.writestr(arcname, data)
    return zip_path


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """Return the bytes of a ZIP holding ``files`` (arcname -> content)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in files.items():
            zf.writestr(arcname, data)
    return buffer.getvalue()


def write_slowly(path: Path, data: bytes, seconds: float = 3.0, chunks: int = 12) -> None:
    """Write ``data`` to ``path`` in ``chunks`` pieces spread over ``seconds``, flushing each, as a slow copy does."""
    pause = threading.Event()  # never set: wait() is a pacing delay between writes, not a wait on a condition
    step = -(-len(data) // chunks)
    with open(path, "wb") as fh:
        for start in range(0, len(data), step):
            fh.write(data[start : start + step])
            fh.flush()
            os.fsync(fh.fileno())
            if start + step < len(data):
                pause.wait(seconds / chunks)


def testdata_files() -> list[Path]:
    """Return every file bundled with pydicom for its own tests (DICOM or not), sorted."""
    return sorted(Path(p) for p in get_testdata_files())


def read_instance(path: Path) -> Dataset | None:
    """Return the dataset of a storable DICOM instance (SOP Class and Instance UID present, not a DICOMDIR), else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd encodings are the point of pydicom's test files
            ds = dcmread(path, force=True)
        sop_class = ds.get("SOPClassUID")
        sop_instance = ds.get("SOPInstanceUID")
        media = ds.file_meta.get("MediaStorageSOPClassUID") if hasattr(ds, "file_meta") else None
    except Exception:  # noqa: BLE001 - pydicom raises many kinds of errors on arbitrary bytes, some lazily
        return None
    if not sop_class or not sop_instance:
        return None
    if MediaStorageDirectoryStorage in (str(sop_class), str(media or "")):
        return None
    return ds


def valid_testdata_files() -> list[Path]:
    """Return pydicom's bundled files that hold a storable DICOM instance."""
    return [p for p in testdata_files() if read_instance(p) is not None]


def fix_file_meta(ds: Dataset) -> Dataset:
    """Give ``ds`` consistent file meta (SOP Class/Instance UIDs, a transfer syntax guessed from its encoding)."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = ds.original_encoding[0] if ds.original_encoding[0] is not None else True
        little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
        if implicit:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = meta.get("ImplementationClassUID") or PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def layout_nested(files: Sequence[Path], dest: Path) -> list[Path]:
    """Copy ``files`` into nested folders under ``dest``, every other one without its extension; return the copies."""
    dest = Path(dest)
    copies = []
    for n, src in enumerate(files):
        name = src.name if n % 2 else src.stem
        target = dest / f"disk{n % 3}" / f"series{n % 7:02d}" / f"{n:04d}_{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        copies.append(target)
    return copies
