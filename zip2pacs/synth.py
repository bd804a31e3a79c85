"""Synthetic studies, reproducible from a seed: for the demo, the benchmark and the tests."""

from __future__ import annotations

import random
import zipfile
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)


def uid(*parts: object) -> str:
    """Return a UID derived from ``parts`` alone, so the same seed gives the same study."""
    # pydicom hashes its sources concatenated: the repr of the tuple keeps (1, 23) apart from (12, 3).
    return generate_uid(entropy_srcs=[repr(tuple(str(p) for p in parts))])


def ct_slice(
    rng: random.Random,
    study_uid: str,
    series_uid: str,
    instance_uid: str,
    number: int,
    rows: int = 64,
    cols: int = 64,
    patient: tuple[str, str] = ("DEMO^PATIENT", "DEMO0001"),
) -> Dataset:
    """Return one CT slice with realistic headers and random 16-bit pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = uid(study_uid, "frame")
    ds.PatientName, ds.PatientID = patient
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "ACC" + study_uid.replace(".", "")[-8:]
    ds.StudyID, ds.StudyDescription = "1", "SYNTHETIC CT"
    ds.Modality, ds.Manufacturer = "CT", "DICOM ZIP Watcher synth"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0.0, 0.0, float(number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness, ds.PixelSpacing = 1.0, [0.5, 0.5]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = rng.randbytes(rows * cols * 2)
    return ds


def write_study(
    folder: Path,
    seed: int,
    n_series: int = 2,
    per_series: int = 3,
    rows: int = 64,
    cols: int = 64,
    patient: tuple[str, str] = ("DEMO^PATIENT", "DEMO0001"),
    pixel_data: Callable[[int], bytes] | None = None,
) -> list[Path]:
    """Write one study as Part 10 files in nested folders, every other file without extension; return the paths.

    ``pixel_data(i)`` gives slice ``i``'s pixels instead of random ones (the benchmark's phantom).
    """
    rng = random.Random(seed)
    study_uid = uid("study", seed)
    paths = []
    for s in range(n_series):
        series_uid = uid("series", seed, s)
        series_dir = folder / f"STUDY{seed:04d}" / f"SERIES{s:03d}"
        series_dir.mkdir(parents=True, exist_ok=True)
        for i in range(per_series):
            ds = ct_slice(rng, study_uid, series_uid, uid("instance", seed, s, i), i + 1, rows, cols, patient)
            ds.SeriesNumber = s + 1
            if pixel_data is not None:
                ds.PixelData = pixel_data(i)
            path = series_dir / (f"IM{i:05d}.dcm" if i % 2 == 0 else f"IM{i:05d}")
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def zip_folder(folder: Path, zip_path: Path, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Write every file under ``folder`` into ``zip_path`` with paths relative to ``folder``."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
    return zip_path
