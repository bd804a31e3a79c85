"""Presentation contexts: what to propose for a batch, and how each instance can go once the peer answered."""

from __future__ import annotations

import enum
import io
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from .sniff import SYNTAX_BY_ENCODING, Instance

MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1-255
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"})

# Syntaxes pydicom can re-encode into one another losslessly (deflated is inflated on reading).
LITTLE_ENDIAN = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# Compressed syntaxes whose decoding gives back exactly the pixels that were encoded. Every other
# compressed syntax (JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000 and HTJ2K that may be
# lossy) counts as lossy: decoding it makes a new image that only `decompress: lossy` may send.
LOSSLESS_COMPRESSED = frozenset(
    {
        JPEGLossless,  # 1.2.840.10008.1.2.4.57
        JPEGLosslessSV1,  # .70
        JPEGLSLossless,  # .80
        JPEG2000Lossless,  # .90
        JPEG2000MCLossless,  # .92
        HTJ2KLossless,  # .201
        HTJ2KLosslessRPCL,  # .202
        RLELossless,  # 1.2.840.10008.1.2.5
    }
)


class Decompress(enum.StrEnum):
    """Which compressed files may be decoded and sent uncompressed when the peer refuses their syntax."""

    NEVER = "never"
    LOSSLESS = "lossless"  # only syntaxes in LOSSLESS_COMPRESSED
    LOSSY = "lossy"  # any syntax an installed decoder handles


@dataclass(frozen=True)
class Context:
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]  # in order of preference


@dataclass(frozen=True)
class Group:
    indices: tuple[int, ...]  # positions in the caller's sequence of instances
    contexts: tuple[Context, ...]


class Mode(enum.Enum):
    STREAM = "streamed"  # the file's bytes as they are, never decoded
    DATASET = "re-encoded"  # read with pydicom, encoded in an accepted uncompressed syntax
    DECOMPRESS = "decompressed"  # pixel data decoded, sent in an accepted uncompressed syntax


def can_decompress(transfer_syntax: str) -> bool:
    """Return True when an installed pydicom pixel decoder handles this (compressed) transfer syntax."""
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (ImportError, NotImplementedError, ValueError):
        return False


def may_decompress(transfer_syntax: str, policy: Decompress) -> bool:
    """Return True when the policy allows decoding this compressed syntax and a decoder for it is installed."""
    return not why_not_decompressed(transfer_syntax, policy)


def why_not_decompressed(transfer_syntax: str, policy: Decompress) -> str:
    """Return why a file in this syntax cannot be sent decompressed, or "" when it can."""
    if transfer_syntax in LITTLE_ENDIAN or transfer_syntax == ExplicitVRBigEndian:
        return "it is not compressed"
    if policy == Decompress.NEVER:
        return "behavior.decompress is 'never'"
    if policy == Decompress.LOSSLESS and transfer_syntax not in LOSSLESS_COMPRESSED:
        return "it is lossy and behavior.decompress is 'lossless' (set 'lossy' to allow)"
    if not can_decompress(transfer_syntax):
        return "no installed decoder handles it"
    return ""


def needed_contexts(
    sop_class: str, transfer_syntax: str, policy: Decompress = Decompress.LOSSLESS
) -> tuple[Context, ...]:
    """Return the contexts that give an instance of this SOP class and syntax a way to go under the policy.

    Each syntax a file may go in as it is has a context of its own: a peer given (implicit, explicit) in one
    context picks one of them, and a file in the other would have to be re-encoded.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        # Deflated data goes inflated, re-encoded whatever the peer picks: one context is enough.
        return (Context(sop_class, UNCOMPRESSED),)
    if transfer_syntax in LITTLE_ENDIAN:
        other = ImplicitVRLittleEndian if transfer_syntax == ExplicitVRLittleEndian else ExplicitVRLittleEndian
        return Context(sop_class, (transfer_syntax,)), Context(sop_class, (other,))
    if transfer_syntax == ExplicitVRBigEndian:
        # pydicom does not byte-swap OW pixel data when re-encoding, so big endian goes as it is.
        return (Context(sop_class, (transfer_syntax,)),)
    # A compressed (or unknown) syntax gets a context of its own: proposing uncompressed syntaxes
    # in the same context would let a peer pick them and force needless decompression.
    own_only = Context(sop_class, (transfer_syntax,))
    if may_decompress(transfer_syntax, policy):
        return own_only, Context(sop_class, UNCOMPRESSED)
    return (own_only,)


def plan_groups(
    instances: Sequence[Instance], limit: int = MAX_CONTEXTS, policy: Decompress = Decompress.LOSSLESS
) -> list[Group]:
    """Split instances into groups, each needing at most `limit` contexts, all of a SOP class together."""
    by_class: dict[str, tuple[list[int], dict[Context, None]]] = {}
    for index, instance in enumerate(instances):
        members, needs = by_class.setdefault(instance.sop_class_uid, ([], {}))
        members.append(index)
        needs.update(dict.fromkeys(needed_contexts(instance.sop_class_uid, instance.transfer_syntax, policy)))
    for sop_class, (_, needs) in by_class.items():
        if all(Context(sop_class, (syntax,)) in needs for syntax in UNCOMPRESSED):
            needs.pop(Context(sop_class, UNCOMPRESSED), None)  # either syntax has a context of its own already

    groups: list[Group] = []
    indices: list[int] = []
    contexts: list[Context] = []
    for class_indices, class_contexts in by_class.values():
        if contexts and len(contexts) + len(class_contexts) > limit:
            groups.append(Group(tuple(sorted(indices)), tuple(contexts)))
            indices, contexts = [], []
        indices.extend(class_indices)
        contexts.extend(class_contexts)
    if contexts:
        groups.append(Group(tuple(sorted(indices)), tuple(contexts)))
    return groups


def choose(
    instance: Instance, accepted: Mapping[str, Collection[str]], policy: Decompress = Decompress.LOSSLESS
) -> Mode | None:
    """Return how the instance can go given the accepted syntaxes per SOP class, or None when it cannot."""
    syntaxes = accepted.get(instance.sop_class_uid, ())
    own = instance.transfer_syntax
    if own in syntaxes:
        return Mode.STREAM if instance.faithful else Mode.DATASET
    any_uncompressed = any(syntax in UNCOMPRESSED for syntax in syntaxes)
    if own in LITTLE_ENDIAN and any_uncompressed:
        return Mode.DATASET
    if any_uncompressed and may_decompress(own, policy):
        return Mode.DECOMPRESS
    return None


def payload(instance: Instance, mode: Mode) -> str | Dataset:
    """Return what send_c_store() gets: the file's path to stream, or a data set to encode.

    Only a ``faithful`` instance is streamed: detection found its file meta in agreement with the data set,
    so the C-STORE carries the data set's own SOP class, instance and transfer syntax. send_c_store()
    streams a file to its end, so a file with bytes after its data set goes as a data set.
    """
    if mode is Mode.STREAM and instance.data_end in (None, instance.path.stat().st_size):
        return str(instance.path)
    return _dataset(instance, mode)


class _Upto(io.RawIOBase):
    """A file that ends at `end`: pydicom must not read the bytes after the data set as elements."""

    def __init__(self, file: io.BufferedReader, end: int):
        self.file, self.end, self.name = file, end, file.name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return self.file.readinto(memoryview(buffer)[: max(0, self.end - self.file.tell())])

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.file.seek(self.end + offset) if whence == io.SEEK_END else self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()


def _read(instance: Instance) -> Dataset:
    """Read the instance with pydicom, up to where its data set ends."""
    with instance.path.open("rb") as file:
        if instance.data_end is None:
            return dcmread(file, force=True)
        return dcmread(io.BufferedReader(_Upto(file, instance.data_end)), force=True)


def _pad_odd_values(dataset: Dataset) -> None:
    """Pad every value of odd length to even (PS3.5 7.1.1), in sequences too.

    pydicom writes a value it has not converted exactly as it read it, odd length and all.
    """
    for tag in list(dataset.keys()):
        element = dataset.get_item(tag)
        if _is_sequence(element):  # its length is worked out anew when it is written
            for item in cast(DataElement, dataset[tag]).value or ():
                _pad_odd_values(item)
        elif element.is_raw:
            raw = cast(RawDataElement, element)
            value = raw.value or b""
            if raw.length != _UNDEFINED and len(value) % 2:
                vr = raw.VR or _dictionary_vr(int(tag))
                dataset[tag] = raw._replace(value=value + (b" " if vr in _TEXT_VRS else b"\x00"), length=len(value) + 1)
            elif raw.length == _UNDEFINED and int(tag) == _PIXEL_DATA:
                dataset[tag] = raw._replace(value=_even_fragments(value))


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:  # a private or unknown tag
        return "UN"


def _is_sequence(element: DataElement | RawDataElement) -> bool:
    if element.VR is not None:
        return element.VR == "SQ"
    # Implicit VR: a sequence is known from the dictionary, or from its undefined length.
    tag = int(element.tag)
    return tag != _PIXEL_DATA and (cast(RawDataElement, element).length == _UNDEFINED or _dictionary_vr(tag) == "SQ")


def _even_fragments(value: bytes) -> bytes:
    """Return encapsulated pixel data (items up to a sequence delimiter) with odd fragments padded by a NUL."""
    out, position = bytearray(), 0
    while position + 8 <= len(value):
        head = value[position : position + 8]
        length = int.from_bytes(head[4:8], "little")
        if head[:4] != b"\xfe\xff\x00\xe0" or position + 8 + length > len(value):
            return bytes(out) + value[position:]  # the delimiter, or bytes pydicom will judge
        fragment = value[position + 8 : position + 8 + length] + b"\x00" * (length % 2)
        out += head[:4] + len(fragment).to_bytes(4, "little") + fragment
        position += 8 + length
    return bytes(out) + value[position:]


def _dataset(instance: Instance, mode: Mode) -> Dataset:
    """Read the instance with pydicom, pad its odd values and make its file meta agree with the dataset."""
    ds = _read(instance)
    _pad_odd_values(ds)
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    meta = ds.file_meta
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    syntax = str(meta.get("TransferSyntaxUID") or instance.transfer_syntax)
    actual = SYNTAX_BY_ENCODING.get(ds.original_encoding)
    claimed: str = syntax if syntax in SYNTAX_BY_ENCODING.values() else ExplicitVRLittleEndian
    if not syntax or (actual is not None and actual != claimed):
        # The file meta is missing or lies: trust how pydicom actually decoded the data set.
        syntax = actual or ExplicitVRLittleEndian
    meta.TransferSyntaxUID = UID(syntax)
    if mode is Mode.DECOMPRESS:
        # The SOP Instance UID is kept: the peer must see the same instance, only re-encoded.
        ds.decompress(generate_instance_uid=False)
    return ds


def syntax_name(uid: str) -> str:
    """Return the transfer syntax or SOP class name, or the UID itself when pydicom does not know it."""
    return UID(uid).name
