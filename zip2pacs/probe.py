"""C-ECHO and the `--check` probe: which common storage SOP classes and transfer syntaxes the peer accepts."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import STATUS_SUCCESS, code_to_category

from .association import associate
from .contexts import Context
from .dimse import accepted_contexts
from .peer import Peer

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# What `--check` asks the peer about: the storage SOP classes most ZIP exports hold, images in the
# syntaxes most often found on CDs, documents uncompressed. 12 x 8 + 7 x 2 = 110 contexts (<= 127 with Verification).
PROBE_IMAGE_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    uids.JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    uids.JPEG2000,
    RLELossless,
)
_PROBE_IMAGES = (
    uids.CTImageStorage,
    uids.MRImageStorage,
    uids.ComputedRadiographyImageStorage,
    uids.DigitalXRayImageStorageForPresentation,
    uids.DigitalMammographyXRayImageStorageForPresentation,
    uids.UltrasoundImageStorage,
    uids.UltrasoundMultiFrameImageStorage,
    uids.PositronEmissionTomographyImageStorage,
    uids.NuclearMedicineImageStorage,
    uids.SecondaryCaptureImageStorage,
    uids.XRayAngiographicImageStorage,
    uids.RTDoseStorage,
)
_PROBE_DOCUMENTS = (
    uids.RTStructureSetStorage,
    uids.RTPlanStorage,
    uids.BasicTextSRStorage,
    uids.EnhancedSRStorage,
    uids.ComprehensiveSRStorage,
    uids.KeyObjectSelectionDocumentStorage,
    uids.EncapsulatedPDFStorage,
)
PROBE_CATALOGUE: tuple[Context, ...] = tuple(Context(c, PROBE_IMAGE_SYNTAXES) for c in _PROBE_IMAGES) + tuple(
    Context(c, _UNCOMPRESSED) for c in _PROBE_DOCUMENTS
)

SHORT_SYNTAX_NAMES: dict[str, str] = {
    ExplicitVRLittleEndian: "explicit LE",
    ImplicitVRLittleEndian: "implicit LE",
    uids.JPEGBaseline8Bit: "JPEG baseline",
    JPEGLosslessSV1: "JPEG lossless",
    JPEGLSLossless: "JPEG-LS lossless",
    JPEG2000Lossless: "JPEG 2000 lossless",
    uids.JPEG2000: "JPEG 2000",
    RLELossless: "RLE",
}


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    seconds: float
    detail: str


@dataclass(frozen=True)
class ClassSupport:
    sop_class: str
    proposed: tuple[str, ...]  # transfer syntaxes offered, one presentation context each
    accepted: tuple[str, ...]  # those the peer accepted, in the same order; empty: SOP class refused


@dataclass(frozen=True)
class ProbeResult:
    association_seconds: float  # connect, TLS handshake and A-ASSOCIATE, until established
    echo: EchoResult  # its seconds are the C-ECHO round trip alone
    classes: tuple[ClassSupport, ...]
    implementation: str  # the peer's implementation version name, e.g. OFFIS_DCMTK_367
    tls: bool


def echo(peer: Peer) -> EchoResult:
    """C-ECHO the peer, timing association and echo together; raise PeerUnavailable when no association is made."""
    started = time.monotonic()
    assoc = associate(peer, [build_context(Verification)])
    try:
        status = assoc.send_c_echo()
        seconds = time.monotonic() - started
    finally:
        if assoc.is_established:
            assoc.release()
    return _echo_result(status, seconds)


def _echo_result(status: Dataset, seconds: float) -> EchoResult:
    if "Status" not in status:
        return EchoResult(False, seconds, "no C-ECHO response (timeout or abort)")
    code = int(status.Status)
    ok = code_to_category(code) == STATUS_SUCCESS
    return EchoResult(ok, seconds, f"C-ECHO status 0x{code:04X} ({code_to_category(code)})")


def probe(peer: Peer) -> ProbeResult:
    """Associate proposing Verification and the common storage SOP classes, C-ECHO, and report what was accepted.

    Raise PeerUnavailable when no association is made (refused, rejected, timed out, TLS failure).
    """
    contexts = [build_context(Verification)]
    for entry in PROBE_CATALOGUE:
        contexts += [build_context(entry.abstract_syntax, [ts]) for ts in entry.transfer_syntaxes]
    started = time.monotonic()
    assoc = associate(peer, contexts)
    associated = time.monotonic() - started
    try:
        accepted = accepted_contexts(assoc)
        if Verification in accepted:
            began = time.monotonic()
            status = assoc.send_c_echo()
            echoed = _echo_result(status, time.monotonic() - began)
        else:
            echoed = EchoResult(False, 0.0, "the peer refused the Verification SOP class (no C-ECHO possible)")
        implementation = str(assoc.acceptor.implementation_version_name or assoc.acceptor.implementation_class_uid)
    finally:
        if assoc.is_established:
            assoc.release()
    classes = tuple(
        ClassSupport(
            entry.abstract_syntax,
            entry.transfer_syntaxes,
            tuple(ts for ts in entry.transfer_syntaxes if ts in accepted.get(entry.abstract_syntax, ())),
        )
        for entry in PROBE_CATALOGUE
    )
    return ProbeResult(associated, echoed, classes, implementation.strip(), peer.tls is not None)
