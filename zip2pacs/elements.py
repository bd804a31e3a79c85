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
    """What a walk met: top-level values (by tag), where the data set ends, and what pydicom should judge."""

    values: dict[int, bytes] = field(default_factory=dict)
    unusual: bool = False  # tags out of order (junk after the data set), or an overlong value
    end: int = 0  # where the last whole top-level element ends: bytes after it are no part of the data set
    odd: bool = False  # some value (or item) the walk met has an odd length, which PS3.5 7.1.1 forbids
    unordered: bool = False  # elements out of order run to the end of the file: data a writer left unsorted


def data_set_end(file: BinaryIO, size: int, implicit: bool, little: bool, found: Found) -> bool:
    """Walk a data set from the current position; return False when the file ends inside an element.

    ``found.end`` is then where the data set ends: what follows a tag out of order is junk (padding a CD
    burner left, say) unless it is whole elements up to the end of the file, which a writer left unsorted.
    """
    if not elements_end_in_file(file, size, implicit, little, found=found):
        return False
    if size - found.end >= 8:  # the walk stopped at a tag out of order
        file.seek(found.end)
        rest = Found()
        zeros = file.read(4) == bytes(4)  # tag (0000,0000): zero padding, never an element of a data set
        file.seek(found.end)
        if not zeros and elements_end_in_file(file, size, implicit, little, found=rest, ordered=False):
            found.end, found.unordered, found.odd = rest.end, True, found.odd or rest.odd
    return True


def elements_end_in_file(
    file: BinaryIO,
    size: int,
    implicit: bool,
    little: bool,
    nested: bool = False,
    found: Found | None = None,
    ordered: bool = True,
) -> bool:
    """Walk element headers from the current position, seeking over values; return False when the file ends early.

    pydicom reads a truncated file without a word, so this is what tells a damaged file from a whole one.
    At the top level the elements end at a tag out of order (when ``ordered``) or within 8 bytes of the end of
    file, and ``found.end`` says where; ``nested`` ends at a delimitation item. The top-level values of
    ``WALK_TAGS`` are kept in ``found``, and any odd length met is noted there.
    """
    found = found if found is not None else Found()
    order: Literal["little", "big"] = "little" if little else "big"
    previous = -1
    position = file.tell()  # kept by hand: tell() on every element costs as much as the rest of the walk
    while True:
        if not nested and size - position < 8:
            found.end = position
            return True  # the end, or a few padding bytes: no element can start there
        head = file.read(8)
        if len(head) < 8:
            return False
        position += 8
        group, element = int.from_bytes(head[0:2], order), int.from_bytes(head[2:4], order)
        if not nested:
            if group << 16 | element <= previous and ordered:
                found.unusual = True
                found.end = position - 8
                return True  # tags must ascend: this is junk after a whole dataset, not a truncation
            previous = group << 16 | element
        if group == 0xFFFE:  # items and delimiters are always implicit: tag + 4-byte length
            length = int.from_bytes(head[4:8], order)
            if element in (0xE00D, 0xE0DD):
                return nested
            if length == UNDEFINED:
                if not elements_end_in_file(file, size, implicit, little, nested=True, found=found):
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
            if not nested and previous in WALK_TAGS:
                found.values[previous] = b""  # only its presence counts (a Directory Record Sequence)
            if not elements_end_in_file(file, size, implicit or head[4:6] == b"UN", little, nested=True, found=found):
                return False
            position = file.tell()
            continue
        if length & 1:
            found.odd = True
        if position + length > size:
            return False
        elif not nested and previous in WALK_TAGS:
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
