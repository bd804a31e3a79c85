"""STOW-RS into a real Orthanc with Debian's DICOMweb plugin, over HTTPS with Basic auth; checked through its REST API.

HTTPS is a TLS proxy in front of Orthanc (tests/integration/conftest.py says why); Basic auth and every answer
are Orthanc's own.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import tracemalloc
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.certificates import Pki
from tests.factories import make_dataset, write_dicom
from tests.integration.conftest import (
    DICOMWEB_PASSWORD,
    DICOMWEB_REFUSED_SERIES,
    DICOMWEB_USER,
    DicomWebOrthanc,
    TlsProxy,
)
from zip2pacs.sniff import Instance, detect
from zip2pacs.stowrs import DestinationUnavailable, StowConnection, StowSettings, check
from zip2pacs.verdicts import Outcome

pytestmark = pytest.mark.integration


def settings(https: TlsProxy, pki: Pki, **changes: object) -> StowSettings:
    given: dict[str, object] = {
        "base_url": f"{https.url}/dicom-web",
        "name": "dicomweb-orthanc",
        "ca_file": pki.ca_file,
        "username": DICOMWEB_USER,
        "password": DICOMWEB_PASSWORD,
        **changes,
    }
    return StowSettings(**given)  # type: ignore[arg-type]


def instance(path: Path) -> Instance:
    found = detect(path, "0" * 64, path.stat().st_size).instance
    assert found is not None
    return found


def study(folder: Path, n: int, rows: int = 8, **tags: object) -> list[Instance]:
    """Write n instances of one study and series; the pixels are made once (making them is slow in Python)."""
    ds = make_dataset(study_uid=generate_uid(), series_uid=generate_uid(), rows=rows, cols=rows, **tags)
    instances = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        instances.append(instance(write_dicom(folder / f"IM{i:04d}", ds)))
    return instances


def stored_file(orthanc: DicomWebOrthanc, uid: str) -> bytes:
    """Return the file Orthanc keeps for a SOP Instance UID."""
    (match,) = json.loads(orthanc.raw("POST", "/tools/lookup", uid.encode()))  # the body is the UID, not JSON
    return orthanc.raw("GET", f"/instances/{match['ID']}/file")


def test_instances_sent_over_https_with_basic_auth_arrive_byte_for_byte(
    tmp_path, dicomweb_orthanc, dicomweb_https, dicomweb_pki
):
    instances = study(tmp_path / "a", 5) + study(tmp_path / "b", 3)
    bare = write_dicom(tmp_path / "bare", make_dataset(), preamble=False)  # no file meta: one is added
    instances.append(instance(bare))
    with StowConnection(settings(dicomweb_https, dicomweb_pki, max_instances=4)) as connection:
        results = connection.store(instances)
    assert [r.outcome for r in results] == [Outcome.STORED] * 9
    assert dicomweb_orthanc.instances_uids() == {i.sop_instance_uid for i in instances}
    for sent in instances[:8]:
        assert stored_file(dicomweb_orthanc, sent.sop_instance_uid) == sent.path.read_bytes()
    assert stored_file(dicomweb_orthanc, instances[8].sop_instance_uid).endswith(bare.read_bytes())


def test_check_proves_the_endpoint_and_our_credentials_over_https_and_stores_nothing(
    dicomweb_orthanc, dicomweb_https, dicomweb_pki
):
    result = check(settings(dicomweb_https, dicomweb_pki))
    assert result.ok and result.status == 200
    assert "verified against" in result.proven and "took our credentials" in result.proven
    assert dicomweb_orthanc.instance_count() == 0


def test_a_wrong_password_is_destination_unavailable_and_nothing_is_stored(
    tmp_path, dicomweb_orthanc, dicomweb_https, dicomweb_pki
):
    wrong = settings(dicomweb_https, dicomweb_pki, password="not-the-password")
    with pytest.raises(DestinationUnavailable, match="dicomweb-orthanc: the server refuses our credentials") as raised:
        StowConnection(wrong).store(study(tmp_path, 3))
    assert "not-the-password" not in str(raised.value)
    with pytest.raises(DestinationUnavailable, match="HTTP 401"):
        check(wrong)
    assert dicomweb_orthanc.instance_count() == 0


def test_a_server_certificate_we_do_not_trust_is_destination_unavailable(
    tmp_path, dicomweb_orthanc, dicomweb_https, dicomweb_pki
):
    untrusting = settings(dicomweb_https, dicomweb_pki, ca_file=dicomweb_pki.other_ca_file)
    with pytest.raises(DestinationUnavailable, match="TLS with 127.0.0.1:.* failed: .*certificate verify failed"):
        StowConnection(untrusting).store(study(tmp_path, 1))
    with pytest.raises(DestinationUnavailable, match="TLS"):
        check(untrusting)
    with pytest.raises(DestinationUnavailable, match="system CA store"):
        check(settings(dicomweb_https, dicomweb_pki, ca_file=None))  # our test CA is in no system store


def _not_dicom(path: Path) -> Path:
    path.write_bytes(bytes(128) + b"DICM" + b"no data set follows" * 30)
    return path


def _without_sop_instance_uid(path: Path) -> Path:
    ds = make_dataset()
    del ds.SOPInstanceUID
    return write_dicom(path, ds)


@pytest.mark.parametrize("make_bad", [_not_dicom, _without_sop_instance_uid], ids=["not DICOM", "no SOP Instance UID"])
def test_a_part_orthanc_cannot_take_is_refused_for_good_and_the_others_are_stored(
    tmp_path, dicomweb_orthanc, dicomweb_https, dicomweb_pki, make_bad
):
    good = study(tmp_path, 6)
    # Detection would never pass these; they stand for what a server refuses without naming it.
    bad = Instance(
        make_bad(tmp_path / "bad"), CTImageStorage, generate_uid(), ExplicitVRLittleEndian, good[0].study_uid,
        good[0].series_uid, "0" * 64, 700, False, 0,
    )  # fmt: skip
    sent = [*good[:3], bad, *good[3:]]
    with StowConnection(settings(dicomweb_https, dicomweb_pki)) as connection:
        results = connection.store(sent)
    assert [r.outcome for r in results] == [Outcome.STORED] * 3 + [Outcome.PERMANENT] + [Outcome.STORED] * 3
    assert "HTTP 400" in results[3].detail and "alone" in results[3].detail
    assert dicomweb_orthanc.instances_uids() == {i.sop_instance_uid for i in good}


def test_an_instance_orthanc_fails_to_store_stays_unknown_and_the_others_are_stored(
    tmp_path, dicomweb_orthanc, dicomweb_https, dicomweb_pki
):
    good = study(tmp_path / "good", 4)
    refused = dataclasses.replace(
        study(tmp_path / "refused", 1, SeriesDescription=DICOMWEB_REFUSED_SERIES)[0], study_uid=good[0].study_uid
    )
    with StowConnection(settings(dicomweb_https, dicomweb_pki)) as connection:
        results = connection.store([good[0], refused, *good[1:]])
    # Orthanc 1.7 answers 200 and stops at the failing instance: the rest go again, the failing one stays unknown.
    assert [r.outcome for r in results] == [Outcome.STORED, Outcome.TRANSIENT] + [Outcome.STORED] * 3
    assert dicomweb_orthanc.instances_uids() == {i.sop_instance_uid for i in good}


def test_instances_sent_again_are_stored_again(tmp_path, dicomweb_orthanc, dicomweb_https, dicomweb_pki):
    instances = study(tmp_path, 3)
    with StowConnection(settings(dicomweb_https, dicomweb_pki)) as connection:
        first, second = connection.store(instances), connection.store(instances)
    assert [r.outcome for r in first + second] == [Outcome.STORED] * 6
    assert dicomweb_orthanc.instance_count() == 3


def _rss_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def test_a_50_mb_request_is_streamed_from_disk_not_held_in_memory(
    tmp_path, dicomweb_orthanc, dicomweb_https, dicomweb_pki
):
    instances = study(tmp_path, 25, rows=1024)  # 2 MB each, one study: one request of 50 MB
    total = sum(i.size for i in instances)
    assert total > 50 * 10**6
    with StowConnection(settings(dicomweb_https, dicomweb_pki)) as connection:
        connection.store(study(tmp_path / "warm", 1))  # imports, TLS and pools set up before measuring
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS (VmHWM) starts again from now
        rss_before = _rss_kb("VmRSS")
        tracemalloc.start()
        try:
            results = connection.store(instances)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        rss_growth = (_rss_kb("VmHWM") - rss_before) / 1024
    print(
        f"\nSTOW-RS of {total / 1e6:.1f} MB in one request: peak Python allocations {peak / 1e6:.2f} MB, "
        f"peak RSS {rss_growth:.1f} MB above where it was (the TLS proxy in this process included)"
    )
    assert [r.outcome for r in results] == [Outcome.STORED] * 25
    assert peak < 8 * 10**6 and rss_growth < 25  # a few 256 KB pieces in flight, not the 50 MB
    assert stored_file(dicomweb_orthanc, instances[-1].sop_instance_uid) == instances[-1].path.read_bytes()


def test_a_client_certificate_opens_a_service_that_asks_for_one(
    tmp_path, dicomweb_orthanc, dicomweb_mutual_tls, dicomweb_pki
):
    instances = study(tmp_path, 2)
    with_certificate = settings(
        dicomweb_mutual_tls, dicomweb_pki, cert_file=dicomweb_pki.client_cert, key_file=dicomweb_pki.client_key
    )
    assert check(with_certificate).ok
    assert [r.outcome for r in StowConnection(with_certificate).store(instances)] == [Outcome.STORED] * 2
    with pytest.raises(DestinationUnavailable, match="dicomweb-orthanc: "):
        StowConnection(settings(dicomweb_mutual_tls, dicomweb_pki)).store(instances)
    assert dicomweb_orthanc.instance_count() == 2
