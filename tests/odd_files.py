"""Part 10 files as some writers leave them: bytes after the last element, values of odd length left unpadded."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.factories import make_dataset, write_dicom

ODD_TEXT = (0x00400254, b"LO", b"ODD")  # Performed Procedure Step Description, 3 bytes, unpadded
ODD_BYTES = (0x00420011, b"OB", b"\x01\x02\x03")  # Encapsulated Document, 3 bytes, unpadded


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    """Encode one element in explicit VR little endian, its value exactly as given (no padding)."""
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def with_junk(path: Path, junk: bytes, **tags: object) -> Path:
    """Write a small CT instance and append `junk` after its last element, as some CD burners do."""
    write_dicom(path, make_dataset(**tags))
    with path.open("ab") as file:
        file.write(junk)
    return path


def with_elements_after_pixels(path: Path, *elements: tuple[int, bytes, bytes], **tags: object) -> Path:
    """Write a small CT instance, then `elements` after its Pixel Data (out of order), values as given."""
    write_dicom(path, make_dataset(**tags))
    with path.open("ab") as file:
        file.write(b"".join(element(*e) for e in elements))
    return path


def with_odd_values(path: Path, *elements: tuple[int, bytes, bytes], **tags: object) -> Path:
    """Write a small CT instance holding `elements` (before its Pixel Data) with their values left unpadded."""
    ds = make_dataset(**tags)
    pixels = ds.PixelData
    del ds.PixelData
    write_dicom(path, ds)
    with path.open("ab") as file:
        file.write(b"".join(element(*e) for e in elements))
        file.write(element(0x7FE00010, b"OW", pixels))
    return path
