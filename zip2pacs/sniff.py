"""DICOM detection by content, whatever the file name."""

from __future__ import annotations

import enum
import errno
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID

from .elements import DIRECTORY_RECORDS, Found, data_set_end, read_meta

LOGGER = logging.getLogger(__name__)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
DEFLATED_EXPLICIT_LE = "1.2.840.10008.1.2.1.99"
# pydicom's original_encoding (implicit VR, little endian) -> the transfer syntax it implies
SYNTAX_BY_ENCODING: dict[tuple[bool | None, bool | None], str] = {
    (True, True): "1.2.840.10008.1.2",
    (False, True): "1.2.840.10008.1.2.1",
    (False, False): "1.2.840.10008.1.2.2",
}
BIG_ENDIAN = "1.2.840.10008.1.2.2"
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)+")
# Only these values are read: everything else is skipped by seeking, so files stay cheap to classify.
_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "DirectoryRecordSequence"]


class Kind(enum.Enum):
    INSTANCE = "instance"  # a storable DICOM instance
    DICOMDIR = "dicomdir"  # Media Storage Directory: never sent
    NO_UID = "no_uid"  # DICOM, but without a SOP Class / SOP Instance / Study / Series UID: reported, not sent
    DAMAGED = "damaged"  # DICOM whose bytes end before its elements do (truncated): reported, not sent
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
    faithful: bool  # True: the data set's bytes can be streamed as they are (consistent Part 10 file, even lengths)
    data_offset: int  # where the data set starts in the file, after the file meta (0 when not faithful)
    data_end: int | None = None  # where its last whole element ends (junk may follow); None: at the end of the file


@dataclass(frozen=True)
class Detection:
    kind: Kind
    instance: Instance | None
    reason: str  # why it is not an instance ("" for instances)


def sniff_bytes_is_part10(head: bytes) -> bool:
    """Return True when the first bytes of a file are a 128-byte preamble followed by b"DICM"."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def _may_start_dataset(head: bytes) -> bool:
    # Elements are sorted by tag and every instance has (0008,0016), so a dataset without a
    # preamble starts with an even group <= 0x0008, read as little or big endian.
    if len(head) < 8:
        return False
    little, big = head[0] | head[1] << 8, head[0] << 8 | head[1]
    return any(group <= 8 and group % 2 == 0 for group in (little, big))


def _text(dataset: Dataset, keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in dataset:
        return ""
    # The raw bytes, when pydicom has not converted the element yet: converting and validating
    # each value would cost more than the rest of detection.
    value = dataset.get_item(tag).value
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("ascii", "replace")
    if not isinstance(value, str) or "\\" in value:  # missing, multi-valued or mis-typed: not a usable UID
        return ""
    return value.strip().rstrip("\x00").strip()


def _is_uid(value: str) -> bool:
    return len(value) <= 64 and _UID_PATTERN.fullmatch(value) is not None


def _explicit(start: bytes) -> bool:
    """Return True when the first element's bytes 4-5 are two capital letters: a VR, so explicit VR."""
    return all(0x40 < byte < 0x5B for byte in start[4:6])


def _start_matches(start: bytes, syntax: str) -> bool:
    # pydicom silently reads around a meta header that lies about implicit/explicit VR or
    # endianness; such a file must not be streamed under the syntax its meta header claims.
    try:
        implicit, little = UID(syntax).is_implicit_VR, UID(syntax).is_little_endian
    except ValueError:  # not a known transfer syntax: pydicom reads it as explicit VR LE too
        implicit, little = False, True
    if len(start) < 6:
        return False
    group = int.from_bytes(start[:2], "little" if little else "big")
    return group <= 8 and _explicit(start) != implicit


def _streamable(walk: Found | None, data_start: int) -> bool:
    """Return True when the walked data set may go as it is: in order, and no value of odd length (PS3.5 7.1.1)."""
    # An odd fragment is a protocol error to dcmtk-based peers (PS3.8 9.3.5.1): they abort the association.
    return walk is not None and not walk.odd and not walk.unordered and (walk.end - data_start) % 2 == 0


def _clean(raw: bytes | None) -> str:
    """Return a UI value's text as _text() does: stripped, "" when absent or multi-valued."""
    value = (raw or b"").decode("ascii", "replace")
    return "" if "\\" in value else value.strip().rstrip("\x00").strip()


@dataclass(frozen=True)
class _Fields:
    """What classification needs from a file, read by pydicom or by the header walk."""

    meta_class: str
    meta_instance: str
    meta_syntax: str
    sop_class: str
    sop_instance: str
    study: str
    series: str
    directory: bool  # a Directory Record Sequence is present
    inferred: str  # the transfer syntax the data set's encoding implies


def _fields(dataset: Dataset) -> _Fields:
    meta = dataset.file_meta
    implicit, little = dataset.original_encoding
    return _Fields(
        meta_class=_text(meta, "MediaStorageSOPClassUID"),
        meta_instance=_text(meta, "MediaStorageSOPInstanceUID"),
        meta_syntax=_text(meta, "TransferSyntaxUID"),
        sop_class=_text(dataset, "SOPClassUID"),
        sop_instance=_text(dataset, "SOPInstanceUID"),
        study=_text(dataset, "StudyInstanceUID"),
        series=_text(dataset, "SeriesInstanceUID"),
        directory="DirectoryRecordSequence" in dataset,
        inferred=SYNTAX_BY_ENCODING.get((implicit, little), SYNTAX_BY_ENCODING[(True, True)]),
    )


def _walked(path: Path, sha256: str, size: int, file: BinaryIO) -> Detection | None:
    """Classify a plain Part 10 file from one walk of its element headers, without pydicom.

    Return None for anything less plain (meta group length missing or wrong, deflated, data set not
    encoded as its meta says, tags out of order, truncated): pydicom then reads the file as before.
    """
    meta, meta_end = read_meta(file)
    length, syntax = meta.get(0x0000, b""), _clean(meta.get(0x0010))
    if len(length) != 4 or meta_end != 132 + 12 + int.from_bytes(length, "little"):
        return None
    if not syntax or syntax == DEFLATED_EXPLICIT_LE:
        return None
    file.seek(meta_end)
    start = file.read(6)
    if not _start_matches(start, syntax):
        return None
    found = Found()
    file.seek(meta_end)
    on_disk = os.fstat(file.fileno()).st_size
    if not data_set_end(file, on_disk, not _explicit(start), syntax != BIG_ENDIAN, found) or found.unusual:
        return None
    values = found.values
    fields = _Fields(
        meta_class=_clean(meta.get(0x0002)),
        meta_instance=_clean(meta.get(0x0003)),
        meta_syntax=syntax,
        sop_class=_clean(values.get(0x00080016)),
        sop_instance=_clean(values.get(0x00080018)),
        study=_clean(values.get(0x0020000D)),
        series=_clean(values.get(0x0020000E)),
        directory=DIRECTORY_RECORDS in values,
        inferred=syntax,
    )
    return _classify(path, sha256, size, True, fields, start, meta_end, found)


def _classify(
    path: Path, sha256: str, size: int, part10: bool, f: _Fields, start: bytes, data_start: int, walk: Found | None
) -> Detection:
    """Classify from the fields read; `walk` is the walk of the data set from `data_start`, None when not walked."""
    sop_class, sop_instance = f.sop_class, f.sop_instance
    if DICOMDIR_SOP_CLASS in (f.meta_class, sop_class) or f.directory:
        return Detection(Kind.DICOMDIR, None, "DICOMDIR (media storage directory)")
    if not part10 and not (_is_uid(sop_class) and _is_uid(sop_instance)):
        # force=True turns almost any bytes into some dataset: only plausible UIDs prove DICOM.
        return Detection(Kind.NOT_DICOM, None, "not DICOM (no preamble, no parseable dataset)")
    study, series = f.study, f.series
    # Study and Series Instance UID are Type 1 in every composite IOD: a PACS cannot file an instance without them.
    uids = (("SOP Class UID", sop_class), ("SOP Instance UID", sop_instance), ("Study Instance UID", study))
    missing = [name for name, uid in (*uids, ("Series Instance UID", series)) if not uid]
    if missing:
        return Detection(Kind.NO_UID, None, f"DICOM without {', '.join(missing)}")
    meta_syntax = f.meta_syntax
    faithful = (
        part10
        and bool(meta_syntax)
        and meta_syntax != DEFLATED_EXPLICIT_LE
        and f.meta_class == sop_class
        and f.meta_instance == sop_instance
        and _start_matches(start, meta_syntax)
        and data_start > 0
        and _streamable(walk, data_start)
    )
    instance = Instance(
        path=path,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax=meta_syntax or f.inferred,
        study_uid=study,
        series_uid=series,
        sha256=sha256,
        size=size,
        faithful=faithful,
        data_offset=data_start if faithful else 0,
        data_end=walk.end if walk is not None else None,
    )
    return Detection(Kind.INSTANCE, instance, "")


def _read_by_pydicom(path: Path, sha256: str, size: int, part10: bool, head: bytes, file: BinaryIO) -> Detection:
    """Classify a file less plain than `_walked` takes with pydicom, then walk its data set to tell damage."""
    file.seek(0)
    with warnings.catch_warnings():
        # pydicom warns about every oddity of real-world files; the outcome is what counts.
        warnings.simplefilter("ignore")
        dataset = dcmread(file, force=True, stop_before_pixels=True, specific_tags=_TAGS)
    # The first bytes after the meta header show how the dataset is really encoded.
    meta_length = dataset.file_meta.get("FileMetaInformationGroupLength")
    start = b""
    meta_end = 0
    data_start = None
    if part10 and isinstance(meta_length, int):
        # Streaming starts where the elements end; a group length that disagrees is not trusted.
        meta_end = read_meta(file)[1]
        meta_end = meta_end if meta_end == 132 + 12 + meta_length else 0
        file.seek(132 + 12 + meta_length)
        start = file.read(6)
        data_start = 132 + 12 + meta_length if start else None
    elif not part10 and len(dataset.file_meta) == 0:
        data_start = 0
    fields = _fields(dataset)
    detection = _classify(path, sha256, size, part10, fields, start, meta_end, None)
    deflated = fields.meta_syntax == DEFLATED_EXPLICIT_LE
    if detection.kind not in (Kind.INSTANCE, Kind.NO_UID) or data_start is None or deflated:
        return detection
    walk = Found()
    file.seek(data_start)
    # The bytes, not the meta header, say whether VRs are explicit (some headers lie).
    implicit = not _explicit(start or head[:6])
    if not data_set_end(
        file, os.fstat(file.fileno()).st_size, implicit, dataset.original_encoding[1] is not False, walk
    ):
        return Detection(Kind.DAMAGED, None, "damaged: the file ends inside a data element (truncated)")
    # Where the data set ends counts only when the walk started where it begins.
    trusted = walk if data_start == meta_end or not part10 else None
    return _classify(path, sha256, size, part10, fields, start, meta_end, trusted)


def _detect(path: Path, sha256: str, size: int) -> Detection:
    part10 = False
    try:
        with path.open("rb") as file:
            head = file.read(132)
            part10 = sniff_bytes_is_part10(head)
            if not part10 and not _may_start_dataset(head):
                return Detection(Kind.NOT_DICOM, None, "not DICOM (no preamble, no dataset start)")
            if part10 and (walked := _walked(path, sha256, size, file)) is not None:
                return walked  # most files: a fifth of the time pydicom takes
            return _read_by_pydicom(path, sha256, size, part10, head, file)
    except IsADirectoryError:
        return Detection(Kind.NOT_DICOM, None, "a folder, not a file")
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # a seek to an offset the file's own bytes made invalid
            return Detection(Kind.NOT_DICOM, None, "not DICOM (unparseable)")
        raise  # this machine's problem (a file locked or removed, an I/O error): no verdict on the file
    except Exception as exc:  # pydicom raises many kinds on malformed bytes
        # Only the exception type: messages may quote element values.
        if part10:
            return Detection(Kind.NOT_DICOM, None, f"DICOM preamble but unparseable dataset ({type(exc).__name__})")
        return Detection(Kind.NOT_DICOM, None, "not DICOM (no preamble, no parseable dataset)")


def detect(path: Path, sha256: str, size: int) -> Detection:
    """Classify one file by its content; malformed files are NOT_DICOM.

    Raise OSError when the file cannot be read (removed or locked by another program, an I/O error): that
    says nothing about the file, so it must not become a verdict.
    """
    detection = _detect(path, sha256, size)
    LOGGER.debug("%s: %s %s", path.name, detection.kind.value, detection.reason)
    return detection
