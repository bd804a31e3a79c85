"""DICOM detection by content, whatever the file name."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class Kind(enum.Enum):
    INSTANCE = "instance"  # a storable DICOM instance
    DICOMDIR = "dicomdir"  # Media Storage Directory: never sent
    NO_UID = "no_uid"  # DICOM, but no SOP Class / SOP Instance UID: reported, not sent
    NOT_DICOM = "not_dicom"


@dataclass(frozen=True)
class Instance:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str  # the dataset's transfer syntax UID
    study_uid: str
    series_uid: str
    sha256: str
    size: int
    faithful: bool  # True: the file's bytes can be streamed as they are (consistent Part 10 file)


@dataclass(frozen=True)
class Detection:
    kind: Kind
    instance: Instance | None
    reason: str  # why it is not an instance ("" for instances)


def detect(path: Path, sha256: str, size: int) -> Detection:
    """Classify one file by content (TO BE WRITTEN)."""
    raise NotImplementedError
