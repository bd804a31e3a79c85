"""Whether an instance must be sent, by the configured policy, the ledger and what this ZIP already holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from .ledger import Delivered, Ledger
from .sniff import Instance


@dataclass
class Seen:
    """UIDs and file hashes already queued for sending from the ZIP under way."""

    uids: set[str] = field(default_factory=set)
    shas: set[str] = field(default_factory=set)

    def add(self, inst: Instance) -> None:
        self.uids.add(inst.sop_instance_uid)
        self.shas.add(inst.sha256)


@dataclass(frozen=True)
class Decision:
    send: bool
    changed_from: Delivered | None  # an earlier delivery of the same UID with other bytes
    in_this_zip: bool = False  # not sent because another file of this ZIP is the same instance


def decide(ledger: Ledger, peer: str, policy: str, inst: Instance, seen: Seen) -> Decision:
    """Return whether ``inst`` must be sent to ``peer``.

    ``uid_then_sha256``: not when its SOP Instance UID was delivered, else not when a file with the same
    SHA256 was; ``uid_only``: the UID alone; ``sha256_only``: the bytes alone, so a changed version of a
    delivered instance is sent again. A UID delivered before with other bytes is reported as changed.
    """
    by_uid = ledger.delivered_by_uid(peer, inst.sop_instance_uid)
    changed = by_uid if by_uid is not None and by_uid.sha256 != inst.sha256 else None
    by_uid_policy = policy in ("uid_then_sha256", "uid_only")
    by_sha_policy = policy in ("uid_then_sha256", "sha256_only")
    if (by_uid_policy and by_uid is not None) or (
        by_sha_policy and ledger.delivered_by_sha(peer, inst.sha256) is not None
    ):
        return Decision(False, changed)
    if (by_uid_policy and inst.sop_instance_uid in seen.uids) or (by_sha_policy and inst.sha256 in seen.shas):
        return Decision(False, changed, in_this_zip=True)
    return Decision(True, changed)
