"""sender.py against real pynetdicom SCPs started in-process on loopback."""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from zip2pacs import association, sender
from zip2pacs.association import Peer, PeerUnavailable
from zip2pacs.cli import main
from zip2pacs.contexts import LOSSLESS_COMPRESSED, Context, Decompress, needed_contexts, plan_groups
from zip2pacs.dimse import Lane, open_lane
from zip2pacs.probe import PROBE_CATALOGUE, echo, probe
from zip2pacs.sender import Outcome, StoreResult, store
from zip2pacs.sniff import Instance, detect

PRIVATE_ROOT = "1.2.826.0.1.3680043.9.9999."
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


@dataclass
class Received:
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    data: bytes


@dataclass
class Scp:
    """What the in-process SCP answers, and what it saw, for one test."""

    port: int
    status: int = 0x0000
    comment: str = ""
    release: threading.Event | None = None
    reject_after: int | None = None
    abort_at: int | None = None  # the SCP aborts the association on this C-STORE (1-based)
    abort_idle: bool = False  # the SCP aborts the association just after answering the first C-STORE
    received: list[Received] = field(default_factory=list)
    associations: int = 0

    def peer(self, **kwargs: object) -> Peer:
        timeouts = {"acse_timeout": 5.0, "dimse_timeout": 5.0, "network_timeout": 5.0}
        return Peer(port=self.port, ae_title="STORESCP", **{**timeouts, **kwargs})  # type: ignore[arg-type]


@dataclass
class Way:
    """How this run of the module sends: on the lane, or through pynetdicom's send_c_store()."""

    name: str
    lanes: list[Lane | None]  # what open_lane() gave the sender for each association (None: send_c_store())


@pytest.fixture(autouse=True, params=["lane", "fallback"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Way]:
    """Run every test of the module twice: C-STOREs on the lane, then through send_c_store() as when none can be had."""
    if request.param == "fallback":
        monkeypatch.setenv(association.LANE_SWITCH, "0")
    else:
        monkeypatch.delenv(association.LANE_SWITCH, raising=False)
    taken = Way(request.param, [])

    def recorded(assoc: Association, timeout: float | None) -> Lane | None:
        taken.lanes.append(open_lane(assoc, timeout))
        return taken.lanes[-1]

    monkeypatch.setattr(sender, "open_lane", recorded)
    yield taken
    assert all((lane is not None) == (taken.name == "lane") for lane in taken.lanes), f"not sent the {taken.name} way"


@pytest.fixture(scope="module")
def scp_server() -> Iterator[tuple[AE, ThreadedAssociationServer, list[Scp]]]:
    """One Storage SCP for the module (a server takes 0.5 s to stop); tests reconfigure it."""
    ae = AE(ae_title="STORESCP")
    ae.add_supported_context(Verification)
    current: list[Scp] = []

    def on_requested(event: evt.Event) -> None:
        scp = current[-1]
        scp.associations += 1
        if scp.reject_after is not None and scp.associations > scp.reject_after:
            ae.require_calling_aet = ["SOMEONE_ELSE"]  # pynetdicom then rejects in words

    def on_store(event: evt.Event) -> Dataset:
        scp = current[-1]
        if scp.release is not None:
            scp.release.wait(10)
        if scp.abort_at is not None and len(scp.received) + 1 == scp.abort_at:
            scp.abort_at = None
            event.assoc.abort()
            return Dataset()
        request = event.request
        if scp.abort_idle and not scp.received:
            threading.Timer(0.1, event.assoc.abort).start()
        scp.received.append(
            Received(
                str(request.AffectedSOPClassUID),
                str(request.AffectedSOPInstanceUID),
                str(event.context.transfer_syntax),
                request.DataSet.getvalue(),
            )
        )
        rsp = Dataset()
        rsp.Status = scp.status
        if scp.comment:
            rsp.ErrorComment = scp.comment
        return rsp

    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_REQUESTED, on_requested)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    yield ae, server, current
    server.shutdown()


@pytest.fixture
def start_scp(scp_server: tuple[AE, ThreadedAssociationServer, list[Scp]]) -> Callable[..., Scp]:
    """Configure the SCP: supported contexts (none: only with `unrestricted`), answer, behaviour."""
    ae, server, current = scp_server

    def start(contexts: dict[str, list[str]] | None = None, max_pdu: int = 16382, **behaviour: Any) -> Scp:
        ae.maximum_pdu_size = max_pdu
        ae.require_calling_aet = []
        ae.supported_contexts = []
        ae.add_supported_context(Verification)
        for sop_class, syntaxes in (contexts or {}).items():
            ae.add_supported_context(sop_class, syntaxes)
        server.contexts = ae.supported_contexts  # a server keeps its own copy
        port = server.socket.getsockname()[1]
        current.append(Scp(port=port, **behaviour))
        return current[-1]

    return start


@pytest.fixture
def unrestricted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the in-process SCP accept any SOP class, private ones included."""
    monkeypatch.setattr(_config, "UNRESTRICTED_STORAGE_SERVICE", True)


def instance_of(path: Path, faithful: bool | None = None) -> Instance:
    """Build the Instance that detect() would give for a file (tests must not depend on detect)."""
    ds = dcmread(path, force=True)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    syntax = meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)
    if faithful is None:
        faithful = (
            meta.get("MediaStorageSOPClassUID") == ds.SOPClassUID
            and meta.get("MediaStorageSOPInstanceUID") == ds.SOPInstanceUID
        )
    data = path.read_bytes()
    offset = split_dataset(path)[1] if faithful else 0
    return Instance(
        path=path,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax=str(syntax),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        faithful=faithful,
        data_offset=offset,
    )


def sample(tmp_path: Path, name: str) -> Instance:
    """Copy a pydicom test file into the test's folder and describe it."""
    target = tmp_path / name
    shutil.copyfile(get_testdata_file(name), target)
    return instance_of(target)


def make_dicom(
    tmp_path: Path, sop_class: str, syntax: str = ExplicitVRLittleEndian, file_meta: bool = True
) -> Instance:
    """Write a tiny data set of the given SOP class; without file meta it is not faithful."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientID = "TEST-1"
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    if file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
        return instance_of(path)
    ds.save_as(path, implicit_vr=True, little_endian=True)
    return instance_of(path, faithful=False)


def dataset_bytes(path: Path) -> bytes:
    """The file's bytes after its file meta: what a streamed C-STORE must carry."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_peer() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        try:
            while True:
                accepted.append(listener.accept()[0])
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    listener.close()
    for conn in accepted:
        conn.close()
    thread.join(5)


def test_store_delivers_every_sop_class_and_syntax_and_streams_faithful_files_unchanged(
    tmp_path: Path, start_scp, unrestricted: None, way: Way
) -> None:
    instances = [
        sample(tmp_path, "CT_small.dcm"),
        sample(tmp_path, "MR_small_implicit.dcm"),
        sample(tmp_path, "SC_rgb_jpeg_dcmtk.dcm"),
        sample(tmp_path, "JPEG2000.dcm"),
        sample(tmp_path, "rtplan.dcm"),
        make_dicom(tmp_path, PRIVATE_ROOT + "1"),
        make_dicom(tmp_path, PRIVATE_ROOT + "2", ImplicitVRLittleEndian),
    ]
    scp = start_scp()
    seen = []

    results = store(scp.peer(), instances, on_result=seen.append)

    assert [r.outcome for r in results] == [Outcome.STORED] * len(instances)
    assert [r.instance for r in results] == instances
    assert sorted(r.instance.sop_instance_uid for r in seen) == sorted(i.sop_instance_uid for i in instances)
    assert sorted(r.sop_instance for r in scp.received) == sorted(i.sop_instance_uid for i in instances)
    by_uid = {r.sop_instance: r for r in scp.received}
    for instance in instances:
        got = by_uid[instance.sop_instance_uid]
        assert got.sop_class == instance.sop_class_uid
        assert got.transfer_syntax == instance.transfer_syntax
        if instance.faithful:
            assert got.data == dataset_bytes(instance.path)
    plan = next(r for r in results if r.instance.path.name == "rtplan.dcm")
    assert not plan.instance.faithful  # its file meta names another SOP Instance UID
    assert "re-encoded" in plan.detail
    assert all("streamed" in r.detail for r in results if r.instance.faithful)
    assert way.lanes and all((lane is not None) == (way.name == "lane") for lane in way.lanes)


def test_a_peer_with_a_small_maximum_pdu_gets_every_byte_in_fragments(tmp_path: Path, start_scp) -> None:
    instances = [sample(tmp_path, "CT_small.dcm"), make_dicom(tmp_path, CTImageStorage, ImplicitVRLittleEndian)]
    scp = start_scp({CTImageStorage: UNCOMPRESSED}, max_pdu=4096)

    results = store(scp.peer(), instances)

    assert [r.outcome for r in results] == [Outcome.STORED] * 2
    by_uid = {r.sop_instance: r.data for r in scp.received}
    assert by_uid[instances[0].sop_instance_uid] == dataset_bytes(instances[0].path)  # 39 KB in 4 KB PDUs
    assert len(by_uid[instances[0].sop_instance_uid]) > 8 * 4096


def test_a_peer_that_aborts_once_mid_batch_gets_the_rest_on_a_new_association_and_that_instance_again(
    tmp_path: Path, start_scp
) -> None:
    instances = [make_dicom(tmp_path, CTImageStorage) for _ in range(4)]
    scp = start_scp({CTImageStorage: UNCOMPRESSED}, abort_at=2)

    results = store(scp.peer(), instances)

    assert [r.outcome for r in results] == [Outcome.STORED] * 4
    uids = [i.sop_instance_uid for i in instances]
    assert [r.sop_instance for r in scp.received] == [uids[0], uids[2], uids[3], uids[1]]  # the aborted one last
    assert scp.associations == 2  # the one it aborted, and one for the rest and the instance again


def test_store_sends_the_data_set_uid_of_a_detected_file_whose_meta_disagrees(
    tmp_path: Path, start_scp, unrestricted: None
) -> None:
    # Streaming trusts detection: rtplan.dcm's file meta names another instance, so it must not be faithful.
    shutil.copyfile(get_testdata_file("rtplan.dcm"), tmp_path / "plan.dcm")
    path = tmp_path / "plan.dcm"
    plan = detect(path, "x", path.stat().st_size).instance
    assert plan is not None and not plan.faithful
    scp = start_scp()

    [result] = store(scp.peer(), [plan])

    assert result.outcome is Outcome.STORED
    assert [r.sop_instance for r in scp.received] == [plan.sop_instance_uid]


def test_store_re_encodes_files_that_are_not_faithful_or_deflated(tmp_path: Path, start_scp) -> None:
    loose = make_dicom(tmp_path, CTImageStorage, file_meta=False)
    deflated = sample(tmp_path, "image_dfl.dcm")
    scp = start_scp({CTImageStorage: UNCOMPRESSED, SecondaryCaptureImageStorage: UNCOMPRESSED})

    results = store(scp.peer(), [loose, deflated])

    assert [r.outcome for r in results] == [Outcome.STORED, Outcome.STORED]
    assert all("re-encoded" in r.detail for r in results)
    assert {r.sop_instance for r in scp.received} == {
        loose.sop_instance_uid,
        deflated.sop_instance_uid,
    }
    deflated_rx = next(r for r in scp.received if r.sop_instance == deflated.sop_instance_uid)
    assert deflated_rx.transfer_syntax != DeflatedExplicitVRLittleEndian


def assert_arrived_decompressed(result: StoreResult, scp: Scp, instance: Instance) -> None:
    """The instance was stored uncompressed, with exactly the pixels of the compressed original."""
    assert result.outcome is Outcome.STORED, result.detail
    assert "decompressed" in result.detail
    [got] = scp.received
    assert got.sop_instance == instance.sop_instance_uid
    assert got.transfer_syntax in UNCOMPRESSED
    assert np.array_equal(received_pixels(got), dcmread(instance.path).pixel_array)


def received_pixels(got: Received) -> np.ndarray:
    """Decode the data set an SCP received in an uncompressed syntax."""
    implicit = got.transfer_syntax == ImplicitVRLittleEndian
    ds = read_dataset(BytesIO(got.data), is_implicit_VR=implicit, is_little_endian=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = got.transfer_syntax
    return ds.pixel_array


@pytest.mark.parametrize(
    "name",
    ["SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"],
)
def test_lossless_files_go_decompressed_with_the_same_pixels_when_the_peer_takes_only_uncompressed(
    tmp_path: Path, start_scp, name: str
) -> None:
    instance = sample(tmp_path, name)
    assert instance.transfer_syntax in LOSSLESS_COMPRESSED
    scp = start_scp({instance.sop_class_uid: UNCOMPRESSED})

    [result] = store(scp.peer(), [instance])  # behavior.decompress defaults to lossless

    assert_arrived_decompressed(result, scp, instance)


def test_a_lossy_file_is_a_permanent_failure_under_lossless_naming_the_sop_class_and_syntaxes(
    tmp_path: Path, start_scp
) -> None:
    jpeg = sample(tmp_path, "SC_rgb_jpeg_dcmtk.dcm")
    assert jpeg.transfer_syntax == JPEGBaseline8Bit
    ct = make_dicom(tmp_path, CTImageStorage)
    scp = start_scp({SecondaryCaptureImageStorage: UNCOMPRESSED, CTImageStorage: UNCOMPRESSED})

    results = store(scp.peer(decompress=Decompress.LOSSLESS), [jpeg, ct])

    assert [r.outcome for r in results] == [Outcome.PERMANENT, Outcome.STORED]
    assert results[0].detail == (
        "peer accepted no presentation context for Secondary Capture Image Storage in JPEG Baseline (Process 1) "
        "(accepted for this SOP class: none); not sent decompressed: "
        "it is lossy and behavior.decompress is 'lossless' (set 'lossy' to allow)"
    )
    assert [r.sop_instance for r in scp.received] == [ct.sop_instance_uid]


def test_a_batch_whose_every_context_is_refused_fails_permanently_not_as_an_unavailable_peer(
    tmp_path: Path, start_scp
) -> None:
    jpeg = sample(tmp_path, "SC_rgb_jpeg_dcmtk.dcm")
    scp = start_scp({SecondaryCaptureImageStorage: UNCOMPRESSED})

    [result] = store(scp.peer(), [jpeg])  # the peer answers, refusing the only context proposed

    assert result.outcome is Outcome.PERMANENT
    assert "Secondary Capture Image Storage in JPEG Baseline (Process 1)" in result.detail
    assert scp.received == []


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "JPEGLSNearLossless_08.dcm"])
def test_lossy_files_go_decompressed_under_lossy(tmp_path: Path, start_scp, name: str) -> None:
    instance = sample(tmp_path, name)
    scp = start_scp({instance.sop_class_uid: UNCOMPRESSED})

    [result] = store(scp.peer(decompress=Decompress.LOSSY), [instance])

    assert_arrived_decompressed(result, scp, instance)


def test_never_sends_nothing_decompressed_even_lossless(tmp_path: Path, start_scp) -> None:
    rle = sample(tmp_path, "MR_small_RLE.dcm")
    scp = start_scp({MRImageStorage: UNCOMPRESSED})

    [result] = store(scp.peer(decompress=Decompress.NEVER), [rle])

    assert result.outcome is Outcome.PERMANENT
    assert result.detail.endswith("not sent decompressed: behavior.decompress is 'never'")
    assert scp.received == []


def test_the_uncompressed_fallback_context_is_proposed_only_when_the_policy_allows_decoding() -> None:
    fallback = Context(CTImageStorage, tuple(UNCOMPRESSED))

    assert fallback in needed_contexts(CTImageStorage, RLELossless, Decompress.LOSSLESS)
    assert fallback not in needed_contexts(CTImageStorage, RLELossless, Decompress.NEVER)
    assert fallback not in needed_contexts(CTImageStorage, JPEGBaseline8Bit, Decompress.LOSSLESS)
    assert fallback in needed_contexts(CTImageStorage, JPEGBaseline8Bit, Decompress.LOSSY)
    assert needed_contexts(CTImageStorage, DeflatedExplicitVRLittleEndian, Decompress.NEVER) == (fallback,)


def test_store_reports_a_sop_class_the_peer_does_not_support_as_permanent(tmp_path: Path, start_scp) -> None:
    ct = sample(tmp_path, "CT_small.dcm")
    mr = sample(tmp_path, "MR_small_implicit.dcm")
    scp = start_scp({CTImageStorage: ALL_TRANSFER_SYNTAXES})

    results = store(scp.peer(), [mr, ct])

    assert [r.outcome for r in results] == [Outcome.PERMANENT, Outcome.STORED]
    assert results[0].status is None
    assert results[0].detail.startswith(
        "peer accepted no presentation context for MR Image Storage in Implicit VR Little Endian"
    )
    assert [r.sop_instance for r in scp.received] == [ct.sop_instance_uid]
    assert MRImageStorage not in {r.sop_class for r in scp.received}


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0xA700, Outcome.TRANSIENT),
        (0xA7FE, Outcome.TRANSIENT),
        (0xA900, Outcome.PERMANENT),
        (0xC000, Outcome.PERMANENT),
        (0x0122, Outcome.PERMANENT),
        (0xB000, Outcome.WARNING),
        (0xB007, Outcome.WARNING),
        (0x0107, Outcome.WARNING),
    ],
)
def test_store_maps_the_peer_status_to_an_outcome_and_keeps_its_error_comment(
    tmp_path: Path, start_scp, status: int, outcome: Outcome
) -> None:
    instance = make_dicom(tmp_path, CTImageStorage)
    scp = start_scp({CTImageStorage: UNCOMPRESSED}, status=status, comment="disk said no")

    [result] = store(scp.peer(), [instance])

    assert result.outcome is outcome
    assert result.status == status
    assert f"0x{status:04X}" in result.detail
    assert "disk said no" in result.detail


def test_store_splits_more_than_128_contexts_over_several_associations(
    tmp_path: Path, start_scp, unrestricted: None
) -> None:
    instances = [make_dicom(tmp_path, f"{PRIVATE_ROOT}{n}") for n in range(1, 141)]
    scp = start_scp()

    results = store(scp.peer(), instances)

    assert [r.outcome for r in results] == [Outcome.STORED] * 140
    assert sorted(r.sop_instance for r in scp.received) == sorted(i.sop_instance_uid for i in instances)
    assert scp.associations == len(plan_groups(instances)) == 3  # 64 classes (2 single-syntax contexts each) a time


def test_store_keeps_results_already_stored_when_a_later_association_is_refused(
    tmp_path: Path, start_scp, unrestricted: None
) -> None:
    instances = [make_dicom(tmp_path, f"{PRIVATE_ROOT}{n}") for n in range(1, 141)]
    scp = start_scp(reject_after=1)
    seen = []

    results = store(scp.peer(), instances, on_result=seen.append)

    stored = [r for r in results if r.outcome is Outcome.STORED]
    transient = [r for r in results if r.outcome is Outcome.TRANSIENT]
    assert len(stored) == len(scp.received) == 64
    assert len(transient) == 76
    assert "Calling AE title not recognised" in transient[0].detail
    assert len(seen) == 140


def test_store_raises_peer_unavailable_when_nothing_listens(tmp_path: Path) -> None:
    instance = make_dicom(tmp_path, CTImageStorage)

    with pytest.raises(PeerUnavailable, match="connection refused"):
        store(Peer(port=free_port(), acse_timeout=2), [instance])


def test_store_gives_up_on_a_peer_that_accepts_tcp_and_never_answers(tmp_path: Path, silent_peer: int) -> None:
    instance = make_dicom(tmp_path, CTImageStorage)
    started = time.monotonic()

    with pytest.raises(PeerUnavailable, match="acse_timeout"):
        store(Peer(port=silent_peer, acse_timeout=1, dimse_timeout=1), [instance])

    assert time.monotonic() - started < 5


def test_store_marks_the_batch_transient_when_a_response_never_comes(tmp_path: Path, start_scp) -> None:
    instances = [make_dicom(tmp_path, CTImageStorage) for _ in range(3)]
    release = threading.Event()
    scp = start_scp({CTImageStorage: UNCOMPRESSED}, release=release)
    started = time.monotonic()
    try:
        results = store(scp.peer(dimse_timeout=1), instances)
    finally:
        release.set()

    assert time.monotonic() - started < 5
    assert [r.outcome for r in results] == [Outcome.TRANSIENT] * 3
    assert [r.status for r in results] == [None] * 3
    assert "no response" in results[0].detail
    assert results[1].detail == results[2].detail == "association aborted"


def test_a_connection_reuses_its_association_while_the_contexts_fit_and_it_is_not_idle_long(
    tmp_path: Path, start_scp, monkeypatch: pytest.MonkeyPatch
) -> None:
    scp = start_scp({CTImageStorage: UNCOMPRESSED, MRImageStorage: UNCOMPRESSED})
    ct = [make_dicom(tmp_path, CTImageStorage) for _ in range(4)]
    mr = make_dicom(tmp_path, MRImageStorage)

    with sender.Connection(scp.peer()) as connection:
        connection.store(ct[:2])
        connection.store(ct[2:])
        assert scp.associations == 1
        connection.store([mr])  # another SOP class: contexts the association was not made with
        assert scp.associations == 2
        monkeypatch.setattr(sender, "REUSE_IDLE_SECONDS", 0.0)
        connection.store([make_dicom(tmp_path, MRImageStorage)])  # idle too long: not reused
        assert scp.associations == 3

    assert len(scp.received) == 6


def test_an_association_the_peer_aborted_while_idle_is_not_reused(tmp_path: Path, start_scp, way: Way) -> None:
    scp = start_scp({CTImageStorage: UNCOMPRESSED}, abort_idle=True)
    instances = [make_dicom(tmp_path, CTImageStorage) for _ in range(2)]

    with sender.Connection(scp.peer()) as connection:
        assert [r.outcome for r in connection.store(instances[:1])] == [Outcome.STORED]
        lane, assoc = connection.lane, connection.assoc
        assert assoc is not None

        def abort_seen() -> bool:  # on the lane the A-ABORT waits unread on the socket; else pynetdicom reads it
            return lane.peer_spoke() if lane is not None else not assoc.is_established

        deadline = time.monotonic() + 5
        while not abort_seen() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert abort_seen()

        assert [r.outcome for r in connection.store(instances[1:])] == [Outcome.STORED]

    assert scp.associations == 2
    assert len(scp.received) == 2


def test_store_of_nothing_opens_no_association(start_scp) -> None:
    scp = start_scp({CTImageStorage: UNCOMPRESSED})

    assert store(scp.peer(), []) == []
    assert scp.associations == 0


def test_echo_succeeds_and_times_the_round_trip(start_scp) -> None:
    scp = start_scp()

    result = echo(scp.peer())

    assert result.ok
    assert 0 < result.seconds < 5
    assert "0x0000" in result.detail


def test_echo_raises_peer_unavailable_when_nothing_listens() -> None:
    with pytest.raises(PeerUnavailable, match="connection refused"):
        echo(Peer(port=free_port(), acse_timeout=2))


def test_echo_explains_a_rejected_association_in_words(start_scp) -> None:
    scp = start_scp(reject_after=0)

    with pytest.raises(PeerUnavailable) as raised:
        echo(scp.peer())

    assert "association rejected (Rejected Permanent, by Service User: Calling AE title not recognised): " in str(
        raised.value
    )
    assert str(raised.value).endswith("or set dicom.local_ae_title to one it knows")


def test_associations_disable_nagle_and_bind_the_configured_local_port(start_scp) -> None:
    scp = start_scp()
    local_port = free_port()

    assoc = association.associate(scp.peer(local_port=local_port), [build_context(Verification)])
    try:
        raw = assoc.dul.socket.socket
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert raw.getsockname()[1] == local_port
    finally:
        assoc.release()


def test_a_response_taken_by_the_pynetdicom_reactor_is_handed_back_to_the_sender(start_scp) -> None:
    scp = start_scp()
    assoc = association.associate(scp.peer(), [build_context(Verification)])
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = generate_uid()
    rsp.Status = 0x0000
    try:
        assoc._serve_request(rsp, 1)  # what pynetdicom 3.0.4's reactor does when it wins the race

        assert assoc.dimse.get_msg(block=True) == (1, rsp)
    finally:
        assoc.release()


def test_probe_reports_echo_and_the_syntaxes_accepted_per_storage_sop_class(start_scp) -> None:
    scp = start_scp({CTImageStorage: [ExplicitVRLittleEndian], MRImageStorage: UNCOMPRESSED + [JPEGBaseline8Bit]})

    result = probe(scp.peer())

    assert result.echo.ok and 0 < result.echo.seconds < 5
    assert 0 < result.association_seconds < 5
    assert not result.tls
    accepted = {c.sop_class: c.accepted for c in result.classes if c.accepted}
    assert accepted == {
        CTImageStorage: (ExplicitVRLittleEndian,),
        MRImageStorage: (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit),
    }
    assert len(result.classes) == len(PROBE_CATALOGUE) >= 15
    assert 1 + sum(len(c.proposed) for c in result.classes) <= 128


def test_check_prints_the_echo_time_the_sop_classes_and_the_storage_caveat(tmp_path: Path, start_scp, capsys) -> None:
    scp = start_scp({CTImageStorage: UNCOMPRESSED})
    config = tmp_path / "config.yaml"
    config.write_text(f"dicom: {{peer_port: {scp.port}, peer_ae_title: STORESCP, acse_timeout: 5}}\n")

    code = main([str(config), "--check"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "over plain TCP (no TLS)" in out
    assert "C-ECHO OK: round trip " in out
    assert "Storage SOP classes accepted: 1 of " in out
    lines = {line.split("  ")[1].strip(): line.rsplit("  ", 1)[1] for line in out.splitlines() if line.startswith("  ")}
    assert lines["CT Image Storage"] == "explicit LE, implicit LE"
    assert lines["MR Image Storage"] == "REFUSED"
    assert "does not prove the peer will store from this AE title (ZIPWATCHER)" in out


def test_check_fails_when_the_peer_accepts_no_storage_sop_class(tmp_path: Path, start_scp, capsys) -> None:
    scp = start_scp({})
    config = tmp_path / "config.yaml"
    config.write_text(f"dicom: {{peer_port: {scp.port}, peer_ae_title: STORESCP, acse_timeout: 5}}\n")

    assert main([str(config), "--check"]) == 1
    assert "the peer accepts none of the common storage SOP classes" in capsys.readouterr().out
