"""STOW-RS: answers read as real servers write them (Orthanc's captured, others' by the standard), requests as sent.

The HTTP tests run a small STOW-RS server in-process (http.server) that records every request's parts and
answers as each test says; Orthanc itself is in tests/integration/test_stowrs_orthanc.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from tests.factories import make_dataset, write_dicom
from zip2pacs.sniff import Instance, detect
from zip2pacs.stowrs import (
    CredentialsRefused,
    DestinationUnavailable,
    StowConnection,
    StowSettings,
    Throttled,
    check,
    plan_requests,
)
from zip2pacs.stowrs_response import Answer, Mention, Reply, judge, parse, verdict
from zip2pacs.verdicts import Outcome, StoreResult

STUDY = "1.2.826.0.1.3680043.8.498.1"
UID_A, UID_B, UID_C = (f"{STUDY}.1.{n}" for n in (1, 2, 3))

# --- Bodies captured from Debian's Orthanc 1.10.1 with orthanc-dicomweb 1.7 (JSON compacted, nothing else changed).

# POST of instances A and B: both stored.
ORTHANC_200 = '{"00080005":{"Value":["ISO_IR 100"],"vr":"CS"},"00081190":{"Value":["http://127.0.0.1:18042/dicom-web/studies/1.2.826.0.1.3680043.8.498.1"],"vr":"UR"},"00081198":{"vr":"SQ"},"00081199":{"Value":[{"00081150":{"Value":["1.2.840.10008.5.1.4.1.1.2"],"vr":"UI"},"00081155":{"Value":["1.2.826.0.1.3680043.8.498.1.1.1"],"vr":"UI"},"00081190":{"Value":["http://127.0.0.1:18042/dicom-web/studies/1.2.826.0.1.3680043.8.498.1/series/1.2.826.0.1.3680043.8.498.1.1/instances/1.2.826.0.1.3680043.8.498.1.1.1"],"vr":"UR"}},{"00081150":{"Value":["1.2.840.10008.5.1.4.1.1.2"],"vr":"UI"},"00081155":{"Value":["1.2.826.0.1.3680043.8.498.1.1.2"],"vr":"UI"},"00081190":{"Value":["http://127.0.0.1:18042/dicom-web/studies/1.2.826.0.1.3680043.8.498.1/series/1.2.826.0.1.3680043.8.498.1.1/instances/1.2.826.0.1.3680043.8.498.1.1.2"],"vr":"UR"}}],"vr":"SQ"}}'
# POST of A, a part that is no DICOM data set, and C: HTTP 400 (no Content-Type), A and C stored, the bad part unnamed.
ORTHANC_400_BAD_PART = '{"00080005":{"Value":["ISO_IR 100"],"vr":"CS"},"00081190":{"Value":["http://127.0.0.1:18042/dicom-web/studies/1.2.826.0.1.3680043.8.498.1"],"vr":"UR"},"00081198":{"vr":"SQ"},"00081199":{"Value":[{"00081150":{"Value":["1.2.840.10008.5.1.4.1.1.2"],"vr":"UI"},"00081155":{"Value":["1.2.826.0.1.3680043.8.498.1.1.1"],"vr":"UI"},"00081190":{"Value":["http://127.0.0.1:18042/dicom-web/studies/1.2.826.0.1.3680043.8.498.1/series/1.2.826.0.1.3680043.8.498.1.1/instances/1.2.826.0.1.3680043.8.498.1.1.1"],"vr":"UR"}},{"00081150":{"Value":["1.2.840.10008.5.1.4.1.1.2"],"vr":"UI"},"00081155":{"Value":["1.2.826.0.1.3680043.8.498.1.1.3"],"vr":"UI"},"00081190":{"Value":["http://127.0.0.1:18042/dicom-web/studies/1.2.826.0.1.3680043.8.498.1/series/1.2.826.0.1.3680043.8.498.1.1/instances/1.2.826.0.1.3680043.8.498.1.1.3"],"vr":"UR"}}],"vr":"SQ"}}'
# POST of an instance Orthanc failed to store (its Lua filter raised), then B: HTTP 200, nothing named, B not stored.
ORTHANC_200_STOPPED = '{"00080005":{"Value":["ISO_IR 100"],"vr":"CS"},"00081190":{"Value":["http://127.0.0.1:18042/dicom-web/studies/1.2.826.0.1.3680043.8.498.1"],"vr":"UR"},"00081198":{"vr":"SQ"},"00081199":{"vr":"SQ"}}'
# POST of the bad part alone: HTTP 400, nothing named.
ORTHANC_400_ALONE = '{"00080005":{"Value":["ISO_IR 100"],"vr":"CS"},"00081198":{"vr":"SQ"},"00081199":{"vr":"SQ"}}'
# POST of A and B with Accept: application/dicom+xml (note the stray <Value number="n" /> after each Item).
ORTHANC_XML = """<?xml version="1.0" encoding="utf-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM" xsi:schemaLocation="http://dicom.nema.org/PS3.19/models/NativeDICOM" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <DicomAttribute tag="00080005" vr="CS" keyword="SpecificCharacterSet">
    <Value number="1">ISO_IR 100</Value>
  </DicomAttribute>
  <DicomAttribute tag="00081190" vr="UR" keyword="RetrieveURL">
    <Value number="1">http://127.0.0.1:18042/dicom-web/studies/1.2.826.0.1.3680043.8.498.1</Value>
  </DicomAttribute>
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence" />
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081150" vr="UI" keyword="ReferencedSOPClassUID">
        <Value number="1">1.2.840.10008.5.1.4.1.1.2</Value>
      </DicomAttribute>
      <DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID">
        <Value number="1">1.2.826.0.1.3680043.8.498.1.1.1</Value>
      </DicomAttribute>
      <DicomAttribute tag="00081190" vr="UR" keyword="RetrieveURL">
        <Value number="1">http://127.0.0.1:18042/dicom-web/studies/1.2.826.0.1.3680043.8.498.1/series/1.2.826.0.1.3680043.8.498.1.1/instances/1.2.826.0.1.3680043.8.498.1.1.1</Value>
      </DicomAttribute>
    </Item>
    <Value number="1" />
    <Item number="2">
      <DicomAttribute tag="00081150" vr="UI" keyword="ReferencedSOPClassUID">
        <Value number="1">1.2.840.10008.5.1.4.1.1.2</Value>
      </DicomAttribute>
      <DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID">
        <Value number="1">1.2.826.0.1.3680043.8.498.1.1.2</Value>
      </DicomAttribute>
      <DicomAttribute tag="00081190" vr="UR" keyword="RetrieveURL">
        <Value number="1">http://127.0.0.1:18042/dicom-web/studies/1.2.826.0.1.3680043.8.498.1/series/1.2.826.0.1.3680043.8.498.1.1/instances/1.2.826.0.1.3680043.8.498.1.1.2</Value>
      </DicomAttribute>
    </Item>
    <Value number="2" />
  </DicomAttribute>
</NativeDicomModel>
"""

# --- Other servers' shapes, written by hand from PS3.18 Annex I.


def _item(uid: str, tag: str = "", code: int | None = None) -> dict[str, object]:
    item: dict[str, object] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }
    if code is not None:
        item[tag] = {"vr": "US", "Value": [code]}
    return item


def json_answer(stored: list[str] = (), failed: dict[str, int] | None = None, warned: dict[str, int] | None = None):  # type: ignore[assignment]
    """Return a Store Instances Response in DICOM JSON."""
    body: dict[str, object] = {}
    items = [_item(uid) for uid in stored] + [_item(u, "00081196", c) for u, c in (warned or {}).items()]
    if items:
        body["00081199"] = {"vr": "SQ", "Value": items}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_item(u, "00081197", c) for u, c in failed.items()]}
    return json.dumps(body).encode()


# A 202: one stored, one stored with a warning (0xB000 coercion), one out of resources, one not understood.
ACCEPTED_202 = json_answer(["1.2.3.1"], failed={"1.2.3.3": 0xA700, "1.2.3.4": 0xC000}, warned={"1.2.3.2": 0xB000})
# A 409 (dcm4chee, Azure): an unsupported SOP class, and Azure's "instance already exists" (45070).
CONFLICT_409 = json_answer(failed={"1.2.3.5": 0x0122, "1.2.3.6": 45070})
# XML without the namespace, values in decimal (dcm4chee's shape): C122 refused, B006 stored with a warning.
OTHER_XML = """<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel>
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID"><Value number="1">1.2.3.7</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US" keyword="FailureReason"><Value number="1">49442</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID"><Value number="1">1.2.3.8</Value></DicomAttribute>
      <DicomAttribute tag="00081196" vr="US" keyword="WarningReason"><Value number="1">45062</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>
"""


def outcomes(body: bytes | str) -> dict[str, tuple[Outcome, int | None]]:
    """Return each named instance's outcome and code."""
    raw = body.encode() if isinstance(body, str) else body
    return {m.sop_instance_uid: (verdict(m)[0], m.code) for m in parse(raw).mentions}


def test_orthanc_200_names_every_instance_it_stored():
    assert outcomes(ORTHANC_200) == {UID_A: (Outcome.STORED, None), UID_B: (Outcome.STORED, None)}


def test_orthanc_400_after_a_bad_part_names_the_instances_it_stored_and_not_the_bad_one():
    assert outcomes(ORTHANC_400_BAD_PART) == {UID_A: (Outcome.STORED, None), UID_C: (Outcome.STORED, None)}


def test_orthanc_200_that_stopped_at_a_failing_instance_names_none_but_is_a_readable_answer():
    answer = parse(ORTHANC_200_STOPPED.encode())
    assert answer == Answer((), True)


def test_orthanc_xml_answer_reads_as_its_json_one():
    assert outcomes(ORTHANC_XML) == outcomes(ORTHANC_200)


def test_a_202_with_failures_gives_each_instance_its_own_outcome():
    assert outcomes(ACCEPTED_202) == {
        "1.2.3.1": (Outcome.STORED, None),
        "1.2.3.2": (Outcome.WARNING, 0xB000),
        "1.2.3.3": (Outcome.TRANSIENT, 0xA700),
        "1.2.3.4": (Outcome.PERMANENT, 0xC000),
    }


def test_a_409_refuses_an_unsupported_sop_class_for_good_and_counts_an_instance_already_there_as_delivered():
    assert outcomes(CONFLICT_409) == {"1.2.3.5": (Outcome.PERMANENT, 0x0122), "1.2.3.6": (Outcome.STORED, 45070)}


def test_an_xml_answer_without_namespace_gives_failures_and_warnings():
    assert outcomes(OTHER_XML) == {"1.2.3.7": (Outcome.PERMANENT, 0xC122), "1.2.3.8": (Outcome.WARNING, 0xB006)}


def test_an_array_of_answers_one_per_study_is_read_whole():
    body = b"[" + json_answer(["1.2.3.1"]) + b"," + json_answer(failed={"1.2.3.2": 0x0110}) + b"]"
    assert outcomes(body) == {"1.2.3.1": (Outcome.STORED, None), "1.2.3.2": (Outcome.PERMANENT, 0x0110)}


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0xA700, Outcome.TRANSIENT),
        (0xA7FF, Outcome.TRANSIENT),
        (0x0213, Outcome.TRANSIENT),
        (0xA900, Outcome.PERMANENT),
        (0xA9AB, Outcome.PERMANENT),
        (0xC000, Outcome.PERMANENT),
        (0xC122, Outcome.PERMANENT),
        (0x0110, Outcome.PERMANENT),
        (0x0122, Outcome.PERMANENT),
        (0x0111, Outcome.STORED),
        (45070, Outcome.STORED),
    ],
)
def test_each_failure_reason_means_retry_refusal_or_delivered(code, outcome):
    assert verdict(Mention("1.2.3", True, code))[0] is outcome


@pytest.mark.parametrize(("text", "code"), [("49152", 0xC000), ("A700", 0xA700), ("0xC122", 0xC122), ("0110", 0x0110)])
def test_reason_codes_written_as_text_are_read_in_decimal_or_hex(text, code):
    body = json.dumps(
        {"00081198": {"vr": "SQ", "Value": [{"00081155": {"Value": ["1.2"]}, "00081197": {"Value": [text]}}]}}
    )
    assert parse(body.encode()).mentions == (Mention("1.2", True, code),)


@pytest.mark.parametrize("body", [b"", b"<html><body>502 Bad Gateway</body></html>", b"Internal error", b"{not json"])
def test_a_body_that_is_no_store_instances_response_names_nobody(body):
    assert parse(body).mentions == ()


# --- judge(): what one answer settles, and what goes again in a smaller request.


def reply(status: int, body: bytes | str) -> Reply:
    raw = body.encode() if isinstance(body, str) else body
    return Reply(status, parse(raw), f"HTTP {status}", False)


def test_instances_an_answer_to_several_does_not_name_are_sent_again():
    settled, again = judge([UID_A, "1.9.9", UID_C], reply(400, ORTHANC_400_BAD_PART))
    assert {p: v[0] for p, v in settled.items()} == {0: Outcome.STORED, 2: Outcome.STORED}
    assert again == [1]


def test_an_instance_refused_alone_without_detail_is_refused_for_good():
    settled, again = judge(["1.9.9"], reply(400, ORTHANC_400_ALONE))
    assert settled[0][0] is Outcome.PERMANENT and "HTTP 400" in settled[0][2] and again == []


def test_an_instance_alone_that_a_200_does_not_name_is_unknown_and_retried_later():
    settled, again = judge([UID_A], reply(200, ORTHANC_200_STOPPED))
    assert settled[0][0] is Outcome.TRANSIENT and "unknown" in settled[0][2] and again == []


def test_a_200_without_a_store_instances_response_is_not_split_but_retried_later():
    settled, again = judge([UID_A, UID_B], reply(200, b""))
    assert [v[0] for v in settled.values()] == [Outcome.TRANSIENT] * 2 and again == []


def test_a_failure_that_names_no_instance_is_the_verdict_on_the_one_instance_sent():
    body = json.dumps({"00081198": {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [0xA900]}}]}})
    settled, _ = judge([UID_A], reply(409, body))
    assert settled[0][:2] == (Outcome.PERMANENT, 0xA900)


def test_a_busy_answer_leaves_every_instance_for_later():
    settled, again = judge([UID_A, UID_B], Reply(429, Answer((), False), "the server is busy", True))
    assert [v[0] for v in settled.values()] == [Outcome.TRANSIENT] * 2 and again == []


# --- Requests: per study, capped, files as they are.


def instance(source: Path, **changes: object) -> Instance:
    found = detect(source, "0" * 64, source.stat().st_size).instance
    assert found is not None
    return dataclasses.replace(found, **changes)  # type: ignore[arg-type]


def study(folder: Path, n: int, study_uid: str = STUDY, **tags: object) -> list[Instance]:
    return [
        instance(write_dicom(folder / f"{study_uid}-{i}.dcm", make_dataset(study_uid=study_uid, **tags)))
        for i in range(n)
    ]


def test_requests_hold_one_study_each_and_keep_to_the_count_and_size(tmp_path):
    one, two = study(tmp_path, 5), study(tmp_path, 2, "1.2.3.999")
    mixed = [one[0], two[0], *one[1:], two[1]]
    assert plan_requests(mixed, 2, 10**9) == [[0, 2], [3, 4], [5], [1, 6]]
    most = max(i.size for i in one)  # generated UIDs differ in length by a byte or two
    assert plan_requests(mixed, 100, most * 3) == [[0, 2, 3], [4, 5], [1, 6]]
    assert plan_requests(mixed[:1], 100, 1) == [[0]]  # an instance larger than the cap goes alone


def test_two_copies_of_one_instance_never_share_a_request(tmp_path):
    first = study(tmp_path, 1)[0]
    copy = dataclasses.replace(first, path=tmp_path / "copy.dcm")
    assert plan_requests([first, copy], 100, 10**9) == [[0], [1]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    parts: list[bytes]
    status: int = 0  # what the server answered

    @property
    def uids(self) -> list[str]:
        return [str(dcmread(BytesIO(p), force=True, stop_before_pixels=True).SOPInstanceUID) for p in self.parts]


def _parts(body: bytes, content_type: str) -> list[bytes]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match and 'type="application/dicom"' in content_type
    parts = []
    for piece in body.split(b"--" + match.group(1).encode())[1:]:
        if piece.startswith(b"--"):
            break
        head, _, content = piece.partition(b"\r\n\r\n")
        assert b"Content-Type: application/dicom" in head and content.endswith(b"\r\n")
        parts.append(content[:-2])
    return parts


Answerer = Callable[[Seen], tuple[int, dict[str, str], bytes]]


class StowServer:
    """A STOW-RS server in-process: it records every request and answers with ``answer(request)``."""

    def __init__(self, answer: Answerer):
        self.answer, self.seen, self.release = answer, list[Seen](), threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers

            def do_POST(self) -> None:
                assert "Transfer-Encoding" not in self.headers  # the size is known: Content-Length
                body = self.rfile.read(int(self.headers["Content-Length"]))
                self._answer(Seen("POST", self.path, dict(self.headers), _parts(body, self.headers["Content-Type"])))

            def do_GET(self) -> None:
                self._answer(Seen("GET", self.path, dict(self.headers), []))

            def _answer(self, seen: Seen) -> None:
                server.seen.append(seen)
                status, headers, body = server.answer(seen)
                seen.status = status
                if status == 0:  # close without answering, as a server that dropped a kept-alive connection
                    self.close_connection = True
                    return
                self.send_response(status)
                for key, value in {"Content-Type": "application/dicom+json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def stores_everything(seen: Seen) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, json_answer(seen.uids)


@pytest.fixture
def stow_server() -> Iterator[Callable[[Answerer], StowServer]]:
    servers: list[StowServer] = []

    def start(answer: Answerer = stores_everything) -> StowServer:
        servers.append(StowServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def store(server: StowServer, instances: list[Instance], **settings: object) -> list[StoreResult]:
    with StowConnection(StowSettings(server.base_url, **settings)) as connection:  # type: ignore[arg-type]
        return connection.store(instances)


def test_each_part_is_the_file_as_it_is_and_the_instances_of_a_study_share_a_request(tmp_path, stow_server):
    server = stow_server()
    instances = study(tmp_path, 3) + study(tmp_path, 2, "1.2.3.999")
    results = store(server, instances)
    assert [r.outcome for r in results] == [Outcome.STORED] * 5 and [r.status for r in results] == [0] * 5
    assert [len(s.parts) for s in server.posts()] == [3, 2]
    assert [p for s in server.posts() for p in s.parts] == [i.path.read_bytes() for i in instances]
    post = server.posts()[0]
    assert post.path == "/dicom-web/studies" and post.headers["Accept"].startswith("application/dicom+json")


def test_a_bare_data_set_goes_with_a_file_meta_and_bytes_after_a_data_set_do_not_go(tmp_path, stow_server):
    server = stow_server()
    bare = write_dicom(tmp_path / "bare", make_dataset(transfer_syntax=ImplicitVRLittleEndian), preamble=False)
    big = write_dicom(tmp_path / "big", make_dataset(transfer_syntax=ExplicitVRBigEndian), preamble=False)
    padded = write_dicom(tmp_path / "padded.dcm", make_dataset())
    whole = padded.read_bytes()
    padded.write_bytes(whole + b"\0" * 64)  # what some CD burners leave after the data set
    headless = tmp_path / "headless"  # a file meta without the preamble
    headless.write_bytes(whole[132:])
    sent = [instance(bare), instance(big), instance(padded, data_end=len(whole)), instance(padded, path=headless)]
    results = store(server, sent)
    assert [r.outcome for r in results] == [Outcome.STORED] * 4
    parts = [p for s in server.posts() for p in s.parts]
    for part, source, syntax in ((parts[0], bare, ImplicitVRLittleEndian), (parts[1], big, ExplicitVRBigEndian)):
        ds = dcmread(BytesIO(part))
        assert part[128:132] == b"DICM" and part.endswith(source.read_bytes())
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID and ds.file_meta.TransferSyntaxUID == syntax
    assert parts[2] == whole
    assert parts[3] == bytes(128) + b"DICM" + whole[132:]


def test_one_instance_that_spoils_a_request_without_saying_which_is_found_and_refused_alone(tmp_path, stow_server):
    instances = study(tmp_path, 8)
    culprit = instances[5].sop_instance_uid

    def refuses_the_culprit(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        return (409, {"Content-Type": "text/plain"}, b"conflict") if culprit in seen.uids else stores_everything(seen)

    server = stow_server(refuses_the_culprit)
    results = store(server, instances)
    assert [r.outcome for r in results] == [Outcome.STORED] * 5 + [Outcome.PERMANENT] + [Outcome.STORED] * 2
    assert "HTTP 409" in results[5].detail and "alone" in results[5].detail
    assert [len(s.parts) for s in server.posts()] == [8, 4, 4, 2, 1, 1, 2]  # halves, down to the culprit alone
    assert sum(s.uids.count(culprit) for s in server.posts()) == 4


def test_an_instance_orthanc_stopped_at_stays_unknown_and_those_after_it_are_sent_again(tmp_path, stow_server):
    instances = study(tmp_path, 4)
    spoiler = instances[1].sop_instance_uid

    def stops_at_the_spoiler(seen: Seen) -> tuple[int, dict[str, str], bytes]:  # as Orthanc 1.7 does
        uids = seen.uids
        return 200, {}, json_answer(uids[: uids.index(spoiler)] if spoiler in uids else uids)

    server = stow_server(stops_at_the_spoiler)
    results = store(server, instances)
    assert [r.outcome for r in results] == [Outcome.STORED, Outcome.TRANSIENT, Outcome.STORED, Outcome.STORED]
    assert "unknown" in results[1].detail


def test_wrong_credentials_raise_destination_unavailable_naming_the_destination_and_no_secret(tmp_path, stow_server):
    server = stow_server(lambda seen: (401, {"WWW-Authenticate": 'Basic realm="x"'}, b""))
    instances = study(tmp_path, 2)
    with pytest.raises(DestinationUnavailable) as raised:
        store(server, instances, name="teleradiology", username="watcher", password="hunter2")
    assert "teleradiology" in str(raised.value) and "refuses our credentials" in str(raised.value)
    assert "hunter2" not in str(raised.value) and "watcher" in str(raised.value)
    token = tmp_path / "token"
    token.write_text("very-secret-token\n")
    with pytest.raises(DestinationUnavailable) as raised:
        store(server, instances, token_file=token)
    assert "very-secret-token" not in str(raised.value) and str(token) in str(raised.value)
    assert "hunter2" not in repr(StowSettings(server.base_url, username="u", password="hunter2"))


def test_the_bearer_token_is_read_before_each_store_so_a_renewed_token_is_used(tmp_path, stow_server, monkeypatch):
    server = stow_server()
    token = tmp_path / "token"
    token.write_text("first\n")
    instances = study(tmp_path, 1)
    with StowConnection(StowSettings(server.base_url, token_file=token)) as connection:
        connection.store(instances)
        token.write_text("second")
        connection.store(instances)
    monkeypatch.setenv("STOW_TOKEN", "from-the-environment")
    store(server, instances, token_env="STOW_TOKEN")
    assert [s.headers["Authorization"] for s in server.posts()] == [
        "Bearer first",
        "Bearer second",
        "Bearer from-the-environment",
    ]


def test_a_missing_token_is_a_destination_problem_that_names_where_it_was_looked_for(tmp_path, stow_server):
    server = stow_server()
    with pytest.raises(DestinationUnavailable, match="token file .*missing-token"):
        store(server, study(tmp_path, 1), token_file=tmp_path / "missing-token")
    assert server.seen == []


def test_busy_answers_are_transient_and_tell_how_long_to_wait(tmp_path, stow_server):
    server = stow_server(lambda seen: (429, {"Retry-After": "120"}, b""))
    with StowConnection(StowSettings(server.base_url)) as connection:
        results = connection.store(study(tmp_path, 2))
    assert [r.outcome for r in results] == [Outcome.TRANSIENT] * 2
    assert connection.retry_after == 120 and "retry after 120 s" in results[0].detail


def test_a_server_error_first_raises_but_after_some_results_leaves_the_rest_transient(tmp_path, stow_server):
    failing = stow_server(lambda seen: (503, {"Retry-After": "30"}, b"down"))
    with pytest.raises(DestinationUnavailable, match="HTTP 503") as raised:
        store(failing, study(tmp_path, 1))
    assert raised.value.retry_after == 30
    first = study(tmp_path, 2, "1.2.3.1000")
    server = stow_server(lambda seen: stores_everything(seen) if len(seen.parts) == 2 else (500, {}, b""))
    results = store(server, first + study(tmp_path, 1, "1.2.3.1001"))
    assert [r.outcome for r in results] == [Outcome.STORED, Outcome.STORED, Outcome.TRANSIENT]
    assert "HTTP 500" in results[2].detail


@pytest.mark.parametrize("status", [429, 503, 408])
def test_a_throttled_request_gives_way_with_what_it_did_not_store_when_another_connection_goes_on(
    tmp_path, stow_server, status
):
    first = study(tmp_path, 2, "1.2.3.2000")
    throttled = study(tmp_path, 3, "1.2.3.2001")
    server = stow_server(
        lambda seen: (
            stores_everything(seen)
            if seen.uids[0] in {i.sop_instance_uid for i in first}
            else (status, {"Retry-After": "7"}, b"")
        )
    )
    told: list[StoreResult] = []
    with StowConnection(StowSettings(server.base_url)) as connection:
        connection.may_yield = lambda: True
        with pytest.raises(Throttled, match=str(status)) as raised:
            connection.store(first + throttled, on_result=told.append)
        assert connection.retry_after == 7 and raised.value.retry_after == 7
    assert [r.outcome for r in raised.value.results] == [Outcome.STORED] * 2 and told == raised.value.results
    assert raised.value.rest == throttled  # not judged, not given to on_result: another connection sends them
    with StowConnection(StowSettings(server.base_url)) as alone:
        alone.may_yield = lambda: False  # the last connection sending: judged as before, left for a later attempt
        if status == 503:
            with pytest.raises(DestinationUnavailable, match="503"):
                alone.store(throttled)
        else:
            assert [r.outcome for r in alone.store(throttled)] == [Outcome.TRANSIENT] * 3


def test_credentials_refused_while_others_send_are_no_throttling(tmp_path, stow_server):
    server = stow_server(lambda seen: (401, {}, b""))
    with StowConnection(StowSettings(server.base_url)) as connection:
        connection.may_yield = lambda: True
        with pytest.raises(CredentialsRefused):
            connection.store(study(tmp_path, 1))


def test_a_redirect_is_not_followed_but_named_as_the_base_url_to_set(tmp_path, stow_server):
    server = stow_server(lambda seen: (301, {"Location": "https://pacs.example/dicom-web/studies"}, b""))
    with pytest.raises(DestinationUnavailable, match="redirects to https://pacs.example/dicom-web/studies"):
        store(server, study(tmp_path, 1))
    with pytest.raises(DestinationUnavailable, match="redirects to"):
        check(StowSettings(server.base_url))
    assert [s.method for s in server.seen] == ["POST", "GET"]


def test_nothing_to_store_sends_nothing(stow_server):
    server = stow_server()
    assert store(server, []) == [] and server.seen == []


def test_a_refused_connection_raises_destination_unavailable(tmp_path, stow_server):
    server = stow_server()
    server.close()
    with pytest.raises(DestinationUnavailable, match="cannot reach 127.0.0.1"):
        store(server, study(tmp_path, 1))


def test_no_answer_in_time_leaves_the_instances_for_later(tmp_path, stow_server):
    def never_answers(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        server.release.wait(30)  # set when the test ends, when the client is long gone
        return 0, {}, b""

    server = stow_server(never_answers)
    results = store(server, study(tmp_path, 2), timeout=0.5)
    assert [r.outcome for r in results] == [Outcome.TRANSIENT] * 2 and "no answer within 0.5 s" in results[0].detail


def test_a_kept_alive_connection_the_server_dropped_is_replaced_once(tmp_path, stow_server):
    answers = iter([stores_everything, lambda seen: (0, {}, b""), stores_everything])
    server = stow_server(lambda seen: next(answers)(seen))
    results = store(server, study(tmp_path, 1, "1.2.3.7") + study(tmp_path, 1, "1.2.3.8"))
    assert [r.outcome for r in results] == [Outcome.STORED] * 2 and len(server.posts()) == 3


def test_a_file_that_cannot_be_read_is_this_machines_problem_not_a_verdict(tmp_path, stow_server):
    server = stow_server()
    instances = study(tmp_path, 2)
    instances[1].path.unlink()
    with pytest.raises(OSError):
        store(server, instances)


def test_check_proves_the_service_and_credentials_without_storing_anything(tmp_path, stow_server):
    server = stow_server(lambda seen: (200, {}, b"[]"))
    result = check(StowSettings(server.base_url, username="watcher", password="pw"))
    assert result.ok and result.status == 200 and "took our credentials" in result.proven
    assert "plain HTTP" in result.proven and "may store" in result.unproven
    assert [(s.method, s.path) for s in server.seen] == [("GET", "/dicom-web/studies?limit=1")]
    no_qido = stow_server(lambda seen: (405, {}, b""))
    result = check(StowSettings(no_qido.base_url))
    assert not result.ok and "no QIDO-RS answer" in result.unproven
    refusing = stow_server(lambda seen: (403, {}, b""))
    with pytest.raises(DestinationUnavailable, match="HTTP 403"):
        check(StowSettings(refusing.base_url, username="watcher", password="pw"))


@pytest.mark.parametrize(
    "settings",
    [
        {"base_url": "ftp://pacs/dicom-web"},
        {"base_url": "https://user:pw@pacs/dicom-web"},
        {"base_url": "https://pacs/dicom-web", "username": "u"},
        {"base_url": "https://pacs/dicom-web", "username": "u", "password": "p", "token_env": "T"},
        {"base_url": "https://pacs/dicom-web", "key_file": Path("k.pem")},
        {"base_url": "https://pacs/dicom-web", "max_instances": 0},
    ],
)
def test_settings_that_cannot_work_are_refused_when_made(settings):
    with pytest.raises(ValueError, match="STOW-RS destination"):
        StowSettings(**settings)


def test_a_refusal_shuts_the_gate_so_nothing_is_sent_until_the_pause_is_over_and_another_answer_opens_it(
    tmp_path, stow_server
):
    from zip2pacs.pause import PAUSE_SECONDS, Gate
    from zip2pacs.stowrs import CredentialsRefused

    answers = iter([(403, {}, b""), (503, {}, b"down")])
    server = stow_server(lambda seen: next(answers))
    settings = StowSettings(server.base_url, name="web", username="watcher", password="pw")
    clock = [0.0]
    gate = Gate(settings, clock=lambda: clock[0])
    settings = dataclasses.replace(settings, gate=gate)
    instances = study(tmp_path, 2)

    def send() -> None:
        with StowConnection(settings) as connection:
            connection.store(instances)

    with pytest.raises(CredentialsRefused) as raised:
        send()
    assert raised.value.status == 403 and gate.refusal is not None and gate.refusal.status == 403
    with pytest.raises(DestinationUnavailable, match="web is paused: web: the server refuses our credentials"):
        send()
    assert len(server.posts()) == 1
    clock[0] += PAUSE_SECONDS  # one request tries again; a 503 is no refusal of our credentials
    with pytest.raises(DestinationUnavailable, match="HTTP 503"):
        send()
    assert len(server.posts()) == 2 and gate.refusal is None
