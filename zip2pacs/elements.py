"""Walking DICOM element headers without pydicom: where a data set ends, and the few values detection needs.

pydicom reads a truncated file without a word; this walk, seeking over values, is what tells a damaged file
from a whole one, and on the way it keeps the top-level UIDs detection needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO, Literal

UNDEFINED = 0xFFFFFFFF
WALK_TAGS = frozenset({0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00041220})  # sniff's _TAGS, by number
META_ELEMENTS = frozenset({0x0000, 0x0002, 0x0003, 0x0010})  # group length, SOP class, instance, syntax
MAX_UID_BYTES = 1024  # a longer "UID" is left to pydicom
DIRECTORY_RECORDS = 0x00041220
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass
class Found:
    """Top-level values a walk read on its way (by tag), and whether it met something pydicom should judge."""

    values: dict[int, bytes] = field(default_factory=dict)
    unusual: bool = False  # tags out of order (junk after the data set), or an overlong value


def elements_end_in_file(
    file: BinaryIO, size: int, implicit: bool, little: bool, nested: bool = False, found: Found | None = None
) -> bool:
    """Walk element headers from the current position, seeking over values; return False when the file ends early.

    pydicom reads a truncated file without a word, so this is what tells a damaged file from a whole one.
    At the top level the elements must end exactly at end of file; ``nested`` ends at a delimitation item.
    The top-level values of ``WALK_TAGS`` are kept in ``found``.
    """
    order: Literal["little", "big"] = "little" if little else "big"
    previous = -1
    position = file.tell()  # kept by hand: tell() on every element costs as much as the rest of the walk
    while True:
        if not nested and size - position < 8:
            return True  # the end, or a few padding bytes: no element can start there
        head = file.read(8)
        if len(head) < 8:
            return False
        position += 8
        group, element = int.from_bytes(head[0:2], order), int.from_bytes(head[2:4], order)
        if not nested:
            if group << 16 | element <= previous:
                if found is not None:
                    found.unusual = True
                return True  # tags must ascend: this is junk after a whole dataset, not a truncation
            previous = group << 16 | element
        if group == 0xFFFE:  # items and delimiters are always implicit: tag + 4-byte length
            length = int.from_bytes(head[4:8], order)
            if element in (0xE00D, 0xE0DD):
                return nested
            if length == UNDEFINED:
                if not elements_end_in_file(file, size, implicit, little, nested=True):
                    return False
                position = file.tell()
                continue
        elif implicit:
            length = int.from_bytes(head[4:8], order)
        elif head[4:6] in LONG_VRS:
            more = file.read(4)
            if len(more) < 4:
                return False
            position += 4
            length = int.from_bytes(more, order)
        else:
            length = int.from_bytes(head[6:8], order)
        if length == UNDEFINED:  # a sequence or encapsulated pixel data: items until its delimiter
            if found is not None and not nested and previous in WALK_TAGS:
                found.values[previous] = b""  # only its presence counts (a Directory Record Sequence)
            if not elements_end_in_file(file, size, implicit or head[4:6] == b"UN", little, nested=True):
                return False
            position = file.tell()
        elif position + length > size:
            return False
        elif found is not None and not nested and previous in WALK_TAGS:
            found.values[previous] = file.read(length) if previous != DIRECTORY_RECORDS else b""
            found.unusual |= length > MAX_UID_BYTES and previous != DIRECTORY_RECORDS
            position += length
            file.seek(position)
        else:
            file.seek(length, 1)
            position += length


def read_meta(file: BinaryIO) -> tuple[dict[int, bytes], int]:
    """Walk the file meta elements (explicit VR little endian) after the preamble; return their values and end."""
    file.seek(132)
    values: dict[int, bytes] = {}
    while True:
        head = file.read(8)
        if len(head) < 8 or int.from_bytes(head[0:2], "little") != 0x0002:
            return values, file.tell() - len(head)
        if head[4:6] in LONG_VRS:
            length = int.from_bytes(file.read(4), "little")
        else:
            length = int.from_bytes(head[6:8], "little")
        element = int.from_bytes(head[2:4], "little")
        if element in META_ELEMENTS and length <= MAX_UID_BYTES:
            values[element] = file.read(length)
        else:
            file.seek(length, 1)
