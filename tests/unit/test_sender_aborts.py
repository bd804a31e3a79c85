"""A peer that aborts: one instance must not hold the rest hostage, and a peer that refuses us is named."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.peers import vanishing_peer
from tests.unit.test_sender import UNCOMPRESSED, make_dicom, way  # noqa: F401 - both ways: lane and fallback
from zip2pacs.association import Peer, PeerUnavailable
from zip2pacs.sender import Outcome, store


class AbortingScp:
    """Aborts the association on every C-STORE of a poisoned SOP Instance UID (or of any, with ``abort_all``)."""

    def __init__(self) -> None:
        self.poison: set[str] = set()
        self.abort_all = False
        self.stored: list[str] = []
        self.associations = 0
        self.lock = threading.Lock()
        ae = AE(ae_title="STORESCP")
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage, UNCOMPRESSED)
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_ESTABLISHED, self.on_established)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def on_established(self, event: evt.Event) -> None:
        with self.lock:
            self.associations += 1

    def on_store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if self.abort_all or uid in self.poison:
            event.assoc.abort()
            return 0xC000
        with self.lock:
            self.stored.append(uid)
        return 0x0000

    def peer(self) -> Peer:
        return Peer(port=self.port, ae_title="STORESCP", acse_timeout=5, dimse_timeout=5, network_timeout=5)


@pytest.fixture
def aborting() -> Iterator[AbortingScp]:
    scp = AbortingScp()
    yield scp
    scp.server.shutdown()


def test_an_instance_that_makes_the_peer_abort_twice_gets_its_own_verdict_and_the_rest_are_stored(
    tmp_path: Path, aborting: AbortingScp
) -> None:
    instances = [make_dicom(tmp_path, CTImageStorage) for _ in range(6)]
    poison = instances[1].sop_instance_uid
    aborting.poison = {poison}

    results = store(aborting.peer(), instances)

    assert [r.outcome for r in results] == [Outcome.STORED] + [Outcome.PERMANENT] + [Outcome.STORED] * 4
    assert "aborted the association twice" in results[1].detail
    assert sorted(aborting.stored) == sorted(i.sop_instance_uid for i in instances if i.sop_instance_uid != poison)


def test_a_peer_that_aborts_every_first_c_store_is_named_as_refusing_our_ae_title(
    tmp_path: Path, aborting: AbortingScp
) -> None:
    instances = [make_dicom(tmp_path, CTImageStorage) for _ in range(20)]
    aborting.abort_all = True

    results = store(aborting.peer(), instances)

    assert {r.outcome for r in results} == {Outcome.TRANSIENT}
    assert "does not allow our AE title ZIPWATCHER to store" in results[-1].detail
    assert "DicomModalities" in results[-1].detail and "DicomAlwaysAllowStore" in results[-1].detail
    assert aborting.associations == 2  # two tries tell, not one association per instance


def test_a_peer_that_leaves_right_after_accepting_is_unavailable_not_a_bug(tmp_path: Path) -> None:
    instances = [make_dicom(tmp_path, CTImageStorage)]
    with vanishing_peer() as (peer, go):
        go.set()  # it hangs up as soon as the association is accepted
        try:
            results = store(peer, instances)
        except PeerUnavailable:  # the lane sees it at once
            return
    assert [r.outcome for r in results] == [Outcome.TRANSIENT]  # pynetdicom's send_c_store() sees it later
