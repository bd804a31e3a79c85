"""Batched C-STORE over tuned associations: each instance streamed, re-encoded or decompressed as the peer allows."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.association import Association

from . import logcontext
from .association import NothingAccepted, Peer, PeerUnavailable, associate
from .contexts import (
    LITTLE_ENDIAN,
    MAX_CONTEXTS,
    UNCOMPRESSED,
    Context,
    Group,
    Mode,
    choose,
    payload,
    plan_groups,
    syntax_name,
)
from .dimse import Lane, LaneClosed, accepted_contexts, open_lane
from .sniff import Instance
from .verdicts import Outcome, StoreResult, no_context, refusal_diagnosis, result_of

__all__ = ["NothingAccepted", "Outcome", "Peer", "PeerUnavailable", "StoreResult", "store"]

LOGGER = logging.getLogger(__name__)

REUSE_IDLE_SECONDS = 10.0  # an association idle longer than this is released rather than reused


def store(
    peer: Peer,
    instances: Sequence[Instance],
    on_result: Callable[[StoreResult], None] | None = None,
) -> list[StoreResult]:
    """C-STORE the instances over associations of their own, released at the end; see Connection.store()."""
    with Connection(peer) as connection:
        return connection.store(instances, on_result)


class Connection:
    """Associations with one peer, each kept for the next batch while it has the contexts that batch needs.

    A ZIP's batches usually need the same few contexts, so a sender makes one association for the ZIP,
    not one per batch. An association left idle longer than REUSE_IDLE_SECONDS is released, not reused:
    peers close idle associations (Orthanc after 30 s), and a request must not meet a closing one.
    """

    def __init__(self, peer: Peer):
        self.peer = peer
        self.assoc: Association | None = None
        self.lane: Lane | None = None  # held for the association's life: pynetdicom's threads stay quiet
        self.proposed: frozenset[Context] = frozenset()
        self.own: frozenset[Context] = frozenset()  # ... of which those the association was made for
        # Contexts a new association also proposes (the ZIP's so far), so the next instances need no other one.
        self.wider: tuple[Context, ...] = ()
        self.accepted: dict[str, dict[str, int]] = {}  # SOP class -> syntax -> context ID
        self.last_used = 0.0
        self.message_id = 0
        self.associations = 0  # associations made
        self.answered = 0  # C-STORE responses on the current association
        self.answered_ever = 0  # ... on any association of this connection
        self.first_request_aborts = 0  # associations in a row that ended at their first C-STORE

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, abort: bool = False) -> None:
        """Release the association, if one is open (abort it when `abort`)."""
        if self.lane is not None:
            self.lane.let_go(abort=abort)
            self.lane = None
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None

    def store(
        self, instances: Sequence[Instance], on_result: Callable[[StoreResult], None] | None = None
    ) -> list[StoreResult]:
        """C-STORE the instances, at most 128 contexts per association; return results in input order.

        Raise PeerUnavailable when the first association cannot be made; when a later one cannot, the
        instances not yet answered are returned as TRANSIENT. An instance during which the peer aborts is put
        aside and the others go on a new association; sent again alone at the end, a second abort is its
        verdict (PERMANENT), so one instance cannot hold the rest hostage. Two associations in a row aborted
        at their first request mean the peer, not an instance: everything left is TRANSIENT.
        """
        results: dict[int, StoreResult] = {}
        aborted: dict[int, str] = {}  # instances put aside: index -> how the association ended

        def record(index: int, result: StoreResult) -> None:
            results[index] = result
            aborted.pop(index, None)
            LOGGER.debug("%s %s: %s", result.instance.sop_instance_uid, result.outcome.value, result.detail)
            if on_result is not None:
                on_result(result)

        groups = plan_groups(instances, policy=self.peer.decompress)
        retries = [Group((i,), g.contexts) for g in groups for i in g.indices]  # each instance alone, if needed
        try:
            for group in groups:
                self._store_all(instances, group, record, results, aborted)
            for group in retries:
                if group.indices[0] in aborted:
                    self._store_all(instances, group, record, results, aborted)
        except _PeerWide as exc:
            _give_up(instances, results, record, str(exc))
        except PeerUnavailable as exc:
            if not results and not aborted:
                raise
            _give_up(instances, results, record, str(exc))
        return [results[i] for i in range(len(instances))]

    def _store_all(
        self,
        instances: Sequence[Instance],
        group: Group,
        record: Callable[[int, StoreResult], None],
        results: dict[int, StoreResult],
        aborted: dict[int, str],
    ) -> None:
        """Send the group's instances not yet answered nor put aside, on as many associations as aborts need."""
        retry = len(group.indices) == 1 and group.indices[0] in aborted
        while todo := [i for i in group.indices if i not in results and (retry or i not in aborted)]:
            try:
                assoc = self._association_for(group)
            except NothingAccepted:
                for index in todo:
                    detail = no_context(instances[index], group, [], self.peer.decompress)
                    record(index, StoreResult(instances[index], Outcome.PERMANENT, None, detail))
                return
            try:
                _store_group(assoc, self.lane, instances, todo, group, record, self)
            except _Aborted as exc:
                self.close(abort=True)
                self._aborted(instances, exc, record, aborted)
            except _PeerWide:
                self.close(abort=True)
                raise
            self.last_used = time.monotonic()

    def _aborted(
        self,
        instances: Sequence[Instance],
        exc: _Aborted,
        record: Callable[[int, StoreResult], None],
        aborted: dict[int, str],
    ) -> None:
        """Put the instance in flight aside, give it its verdict on a second abort, or stop when the peer is at fault."""
        LOGGER.warning("association with %s ended: %s", self.peer.key, exc.why)
        self.first_request_aborts = self.first_request_aborts + 1 if exc.first_request else 0
        if self.first_request_aborts >= 2 and not self.answered_ever:
            # Nothing was ever answered: the peer refuses us, or this instance; the peer is the likelier.
            raise _PeerWide(refusal_diagnosis(self.peer, exc.why))
        if exc.index in aborted:
            why = f"the peer aborted the association twice while receiving this instance ({exc.why})"
            record(exc.index, StoreResult(instances[exc.index], Outcome.PERMANENT, None, why))
        else:
            aborted[exc.index] = exc.why
        if self.first_request_aborts >= 2:
            raise _PeerWide(f"the peer aborted two associations in a row at their first C-STORE ({exc.why})")

    def warm(self, group: Group, acse_timeout: float) -> str:
        """Open an association for the group's contexts ahead of its batches; return "" or why there is none.

        The association must be accepted within ``acse_timeout``: a peer that serves one association at a time
        keeps a further one waiting, and that is an answer too.
        """
        saved = self.peer
        self.peer = dataclasses.replace(saved, acse_timeout=acse_timeout)
        try:
            self._association_for(group)
        except PeerUnavailable as exc:
            return str(exc)
        finally:
            self.peer = saved
        self.last_used = time.monotonic()
        return ""

    def next_message_id(self) -> int:
        self.message_id = self.message_id % 65535 + 1
        return self.message_id

    def _covers(self, group: Group) -> bool:
        """Return True when the association serves the group: each context proposed for itself, or accepted.

        A context the peer refused as an extra (proposed for the ZIP's later files) gets an association of its
        own before its verdict: a peer may accept alone what it refused among others.
        """
        for c in group.contexts:
            if c not in self.proposed:
                return False
            if c not in self.own and not any(
                ts in self.accepted.get(c.abstract_syntax, {}) for ts in c.transfer_syntaxes
            ):
                return False
        return True

    def _association_for(self, group: Group) -> Association:
        idle = time.monotonic() - self.last_used
        fresh = idle < min(REUSE_IDLE_SECONDS, self.peer.network_timeout / 2)
        assoc = self.assoc
        quiet = self.lane is None or not self.lane.peer_spoke()
        if assoc is not None and assoc.is_established and fresh and quiet and self._covers(group):
            return assoc
        self.close()
        proposal = group.contexts + tuple(c for c in self.wider if c not in group.contexts)
        proposal = proposal[: max(MAX_CONTEXTS, len(group.contexts))]
        contexts = [build_context(c.abstract_syntax, list(c.transfer_syntaxes)) for c in proposal]
        assoc = associate(self.peer, contexts)
        self.assoc, self.proposed, self.message_id, self.answered = assoc, frozenset(proposal), 0, 0
        self.own = frozenset(group.contexts)
        self.associations += 1
        try:
            self.lane = open_lane(assoc, assoc.dimse_timeout)
            if self.lane is not None:
                self.lane.hold()
        except LaneClosed as exc:  # the peer left right after accepting: unavailable, tried again later
            self.close(abort=True)
            raise PeerUnavailable(f"{self.peer.key}: {exc}") from exc
        self.accepted = accepted_contexts(assoc)
        refused = sorted({syntax_name(str(cx.abstract_syntax)) for cx in assoc.rejected_contexts})
        LOGGER.debug(
            "association with %s: %d contexts accepted, %d refused%s",
            assoc.acceptor.ae_title,
            len(assoc.accepted_contexts),
            len(assoc.rejected_contexts),
            f" ({', '.join(refused)})" if refused else "",
        )
        return assoc


def _give_up(
    instances: Sequence[Instance],
    results: dict[int, StoreResult],
    record: Callable[[int, StoreResult], None],
    detail: str,
) -> None:
    for index, instance in enumerate(instances):
        if index not in results:
            record(index, StoreResult(instance, Outcome.TRANSIENT, None, detail))


class _Aborted(Exception):
    """The association ended while ``index`` was sent (``first_request``: before any response on it)."""

    def __init__(self, index: int, why: str, first_request: bool):
        super().__init__(why)
        self.index, self.why, self.first_request = index, why, first_request


class _PeerWide(Exception):
    """The peer, not one instance, ends the associations: nothing more is sent in this attempt."""


# Exceptions that mean a bug of this program, not something wrong with the file: never a verdict on it.
_BUGS = (TypeError, AttributeError, NameError, AssertionError, ImportError, RecursionError)


def _store_group(
    assoc: Association,
    lane: Lane | None,
    instances: Sequence[Instance],
    todo: Sequence[int],
    group: Group,
    record: Callable[[int, StoreResult], None],
    connection: Connection,
) -> None:
    """Send these instances of the group over `assoc`; raise _Aborted when the association ends."""
    accepted, policy = connection.accepted, connection.peer.decompress
    for index in todo:
        instance = instances[index]
        mode = choose(instance, accepted, policy)
        if mode is None:
            detail = no_context(instance, group, accepted.get(instance.sop_class_uid, []), policy)
            record(index, StoreResult(instance, Outcome.PERMANENT, None, detail))
            continue
        first_request = connection.answered == 0
        began = time.monotonic()
        try:
            with logcontext.about(instance.path):  # what pydicom or pynetdicom log meanwhile names this entry
                code, comment = _send_one(assoc, lane, instance, mode, connection.next_message_id())
        except LaneClosed as exc:
            if isinstance(exc.__cause__, TimeoutError):  # a peer that stalls is struggling: stop, retry later
                record(index, StoreResult(instance, Outcome.TRANSIENT, None, str(exc)))
                raise _PeerWide("association aborted") from exc
            raise _Aborted(index, str(exc), first_request) from exc
        except OSError as exc:  # this machine: a file locked or removed, too many open files
            why = f"cannot read the file ({mode.value}): {exc.strerror or exc}"
            record(index, StoreResult(instance, Outcome.TRANSIENT, None, why))
            continue
        except Exception as exc:
            if lane is None and not assoc.is_established:  # send_c_store() refuses a dead association
                raise _Aborted(index, "the peer ended the association", first_request) from exc
            if isinstance(exc, _BUGS):
                record(index, StoreResult(instance, Outcome.TRANSIENT, None, f"unexpected error: {type(exc).__name__}"))
                raise  # the attempt stops; the ZIP stays pending and the traceback is logged once
            # pydicom cannot read, decode or encode this file: a verdict on the file
            detail = f"cannot send ({mode.value}): {type(exc).__name__}: {exc}"
            record(index, StoreResult(instance, Outcome.PERMANENT, None, detail))
            continue
        if code is None and lane is None:  # pynetdicom's send_c_store() returns no status, aborted or timed out
            if time.monotonic() - began >= (assoc.dimse_timeout or 0):  # a peer that stalls: stop, retry later
                why = f"no response within {assoc.dimse_timeout:g} s (dimse_timeout)"
                record(index, StoreResult(instance, Outcome.TRANSIENT, None, why))
                raise _PeerWide("association aborted")
            raise _Aborted(index, "the peer aborted the association (no response)", first_request)
        connection.answered += 1
        connection.answered_ever += 1
        connection.first_request_aborts = 0
        record(index, result_of(instance, code, comment, mode))


def _send_one(
    assoc: Association, lane: Lane | None, instance: Instance, mode: Mode, message_id: int
) -> tuple[int | None, str]:
    """C-STORE one instance; return the response's status (None when none came) and error comment."""
    if lane is None:  # pynetdicom's own send_c_store(), when a lane cannot hold the socket
        status = assoc.send_c_store(payload(instance, mode), msg_id=message_id)
        return (int(status.Status) if "Status" in status else None), str(status.get("ErrorComment") or "")
    if mode is Mode.STREAM:
        response = lane.store_file(
            instance.sop_class_uid,
            instance.sop_instance_uid,
            instance.transfer_syntax,
            instance.path,
            instance.data_offset,
            instance.data_end,
            message_id,
        )
        return response.status, response.error_comment
    dataset = payload(instance, mode)
    assert isinstance(dataset, Dataset)
    own = str(dataset.file_meta.TransferSyntaxUID)
    # Little endian data sets may change between explicit and implicit VR, as the peer accepted.
    candidates = (own, *UNCOMPRESSED) if own in LITTLE_ENDIAN else (own,)
    syntax = next((ts for ts in candidates if lane.context_id(instance.sop_class_uid, ts) is not None), own)
    response = lane.store_dataset(dataset, syntax, message_id)
    return response.status, response.error_comment
