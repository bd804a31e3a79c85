"""What a C-STORE's answer means: an outcome per instance, and the words that explain it to a person."""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection
from dataclasses import dataclass

from pynetdicom.status import (
    STATUS_CANCEL,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from .contexts import Decompress, Group, Mode, syntax_name, why_not_decompressed
from .peer import Peer
from .sniff import Instance

LOGGER = logging.getLogger(__name__)

NO_CONTEXT = "peer accepted no presentation context"  # how no_context() begins: the instance was never sent


class Outcome(enum.Enum):
    STORED = "stored"  # 0x0000
    WARNING = "warning"  # stored with a warning status
    TRANSIENT = "transient"  # try again later (no response, abort, 0xA7xx)
    PERMANENT = "permanent"  # the peer refuses this instance for good


@dataclass(frozen=True)
class StoreResult:
    instance: Instance
    outcome: Outcome
    status: int | None  # the C-STORE status, None when no response came
    detail: str  # human-readable: status in words, error comment, refusal reason


def refusal_diagnosis(peer: Peer, why: str) -> str:
    """Say what most likely makes a peer abort every association at its first C-STORE, before any response."""
    me = peer.local_ae_title
    return (
        f"the peer aborted the association at the first C-STORE request, twice, before any response ({why}): "
        f"it most likely does not allow our AE title {me} to store. On Orthanc, add {me} to DicomModalities "
        f'(e.g. "watcher": ["{me}", "<this machine\'s address>", 104]) or set "DicomAlwaysAllowStore": true, '
        f"then restart Orthanc; on another PACS, register {me} as a sending AE title"
    )


def no_context(instance: Instance, group: Group, accepted: Collection[str], policy: Decompress) -> str:
    """Say which SOP class and syntaxes were proposed, which the peer took, and why no decoding was tried."""
    proposed = dict.fromkeys(
        ts for c in group.contexts if c.abstract_syntax == instance.sop_class_uid for ts in c.transfer_syntaxes
    )
    taken = ", ".join(syntax_name(ts) for ts in dict.fromkeys(accepted)) or "none"
    detail = (
        f"{NO_CONTEXT} for {syntax_name(instance.sop_class_uid)} "
        f"in {', '.join(syntax_name(ts) for ts in proposed)} (accepted for this SOP class: {taken})"
    )
    why = why_not_decompressed(instance.transfer_syntax, policy)
    if why and why != "it is not compressed":
        detail += f"; not sent decompressed: {why}"
    return detail


def describe(r: StoreResult) -> str:
    """Return a reason file's words for a refused instance: which one, its status code once, and why."""
    what = r.detail
    if r.status is None and what.startswith(NO_CONTEXT):
        what = f"not sent: the {what}"
    elif r.status is not None and f"0x{r.status:04X}" not in what:  # result_of() puts it first, STOW-RS inside
        what = f"0x{r.status:04X} {what}"
    return f"SOP Instance UID {r.instance.sop_instance_uid}, SOP Class {r.instance.sop_class_uid}: {what}"


def result_of(instance: Instance, code: int | None, comment: str, mode: Mode) -> StoreResult:
    """Classify a C-STORE response status (None when no response came)."""
    if code is None:
        return StoreResult(
            instance,
            Outcome.TRANSIENT,
            None,
            "no response (timeout or association aborted)",
        )
    category = code_to_category(code)
    words = STORAGE_SERVICE_CLASS_STATUS.get(code, (category, ""))[1] or category
    detail = f"0x{code:04X} {words} ({mode.value})"
    if comment:
        detail += f": {comment}"
    if category == STATUS_SUCCESS:
        outcome = Outcome.STORED
    elif category == STATUS_WARNING:
        outcome = Outcome.WARNING
        LOGGER.warning("%s stored with warning %s", instance.sop_instance_uid, detail)
    elif category == STATUS_CANCEL or code & 0xFF00 == 0xA700 or code == 0x0213:
        outcome = Outcome.TRANSIENT  # out of resources: the same instance may go later
    else:
        outcome = Outcome.PERMANENT
    return StoreResult(instance, outcome, code, detail)
