"""Fan-out to real servers, the command run as a subprocess: Orthancs and dcmtk storescp as the destinations.

Every check asks the servers. Each Orthanc here logs every instance it receives (a Lua ReceivedInstanceFilter,
which Orthanc calls before it looks for the instance, so a copy sent again is logged again though stored once);
each storescp writes every copy it receives to a file of its own (+uf). "Nothing sent twice" is thus counted on
the servers, not read from our ledger.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage
from pynetdicom import AE

from tests.conftest import Workspace
from tests.integration.conftest import Orthanc, StoreSCP
from tests.unit.test_destinations import mixed_zip
from tests.unit.test_pipeline import study_zip
from zip2pacs.synth import write_study

pytestmark = pytest.mark.integration

EVERY_COPY = "+uf"  # storescp: a file per received copy (its default file name is the UID: a copy overwrites)
ACCEPT_ALL = ["--accept-all", "--promiscuous", EVERY_COPY]
# A dcmtk association profile that takes CT and verification only: Secondary Capture is refused at negotiation.
# The refusing server is storescp, not Orthanc: Debian's Orthanc 1.10.1 answers 0x0000 (Success) to a C-STORE its
# Lua ReceivedInstanceFilter turns down, storing nothing, and its ReceivedCStoreInstanceFilter's code never reached
# the answer in our trials; only an error() in the filter gives a failure, 0xA700, which is transient.
CT_ONLY_PROFILE = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = OppositeEndianExplicit
TransferSyntax3 = LittleEndianImplicit

[[PresentationContexts]]
[CTOnly]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = CTImageStorage\\Uncompressed

[[Profiles]]
[CTOnly]
PresentationContexts = CTOnly
"""


@dataclass(frozen=True)
class WitnessOrthanc:
    """An Orthanc that logs the SOP Instance UID of every instance it receives, whether it had it or not."""

    server: Orthanc
    log: Path

    def received(self) -> list[str]:
        """Return every SOP Instance UID received, once per copy, sorted."""
        return sorted(self.log.read_text(encoding="utf-8").split())

    def stored(self) -> set[str]:
        return self.server.instances_uids()

    def reset(self) -> WitnessOrthanc:
        self.server.clear()
        self.log.write_text("", encoding="utf-8")
        return self


def start_witness(factory: Callable[[str, dict[str, object]], Orthanc], root: Path, name: str) -> WitnessOrthanc:
    """Start an Orthanc whose Lua filter appends each received instance's UID to ``root/received.log``."""
    log, script = root / "received.log", root / "witness.lua"
    log.write_text("", encoding="utf-8")
    script.write_text(
        "function ReceivedInstanceFilter(dicom, origin, info)\n"
        f"  local log = io.open('{log}', 'a')\n"
        "  log:write(dicom.SOPInstanceUID, '\\n')\n"
        "  log:close()\n"
        "  return true\n"
        "end\n",
        encoding="utf-8",
    )
    return WitnessOrthanc(factory(name, {"LuaScripts": [str(script)]}), log)


@pytest.fixture(scope="module")
def witnesses(configured_orthanc_factory, tmp_path_factory) -> tuple[WitnessOrthanc, WitnessOrthanc]:
    return (
        start_witness(configured_orthanc_factory, tmp_path_factory.mktemp("witness-local"), "local"),
        start_witness(configured_orthanc_factory, tmp_path_factory.mktemp("witness-backup"), "backup"),
    )


@pytest.fixture
def local(witnesses) -> WitnessOrthanc:
    """The first Orthanc, emptied, its log of receptions too."""
    return witnesses[0].reset()


@pytest.fixture
def backup(witnesses) -> WitnessOrthanc:
    """The second Orthanc, emptied, its log of receptions too."""
    return witnesses[1].reset()


def received(scp: StoreSCP) -> list[str]:
    """Return the SOP Instance UID of every copy a storescp received, sorted."""
    return sorted(str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in scp.files())


def dimse(name: str, port: int, ae_title: str) -> dict[str, object]:
    return {"name": name, "kind": "dimse", "peer_host": "127.0.0.1", "peer_port": port, "peer_ae_title": ae_title}


def at_orthanc(name: str, witness: WitnessOrthanc) -> dict[str, object]:
    return dimse(name, witness.server.dicom_port, witness.server.aet)


def at_storescp(name: str, scp: StoreSCP) -> dict[str, object]:
    return dimse(name, scp.port, scp.aet)


def destinations_config(workspace: Workspace, destinations: list[dict[str, object]], name: str) -> Path:
    """Write a config whose `destinations:` list is ``destinations``; the `dicom:` section keeps the common settings."""
    settings: dict[str, Any] = workspace.config_dict(104)
    for key in ("peer_host", "peer_port", "peer_ae_title"):
        del settings["dicom"][key]
    settings["behavior"]["wait_zip_complete_seconds"] = 0
    settings["destinations"] = destinations
    path = workspace.root / name
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def once(run_cli: Callable[..., subprocess.CompletedProcess[str]], config: Path, delivered: bool) -> None:
    """Run ``--once``: exit 0 when every ZIP was delivered, 1 when one was not; a traceback (also exit 1) fails."""
    proc = run_cli([config, "--once"])
    if proc.returncode != (0 if delivered else 1) or "Traceback" in proc.stderr:
        pytest.fail(f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}")


def zips(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.zip"))


def send_twice(port: int, aet: str, path: Path) -> None:
    ds = dcmread(path)
    ae = AE(ae_title="TWICE")
    ae.add_requested_context(CTImageStorage)
    for _ in range(2):
        assoc = ae.associate("127.0.0.1", port, ae_title=aet)
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()


def test_the_servers_show_a_copy_sent_twice_so_the_duplicate_checks_below_can_fail(local, storescp_factory, tmp_path):
    scp = storescp_factory(ACCEPT_ALL)
    [path] = write_study(tmp_path / "one", seed=70, n_series=1, per_series=1, rows=8, cols=8)
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    send_twice(local.server.dicom_port, local.server.aet, path)
    send_twice(scp.port, scp.aet, path)
    assert local.received() == [uid, uid] and local.stored() == {uid}
    assert received(scp) == [uid, uid]


def test_a_destination_down_then_up_gets_everything_next_run_and_the_other_is_sent_nothing_again(
    workspace, run_cli, local, storescp_factory
):
    tele = storescp_factory(ACCEPT_ALL)
    tele.stop()  # down: its port is known, nothing listens there until it starts again
    config = destinations_config(workspace, [at_orthanc("local", local), at_storescp("tele", tele)], "config.yaml")
    zip_path, uids = study_zip(workspace.root, "study.zip", seed=71)

    once(run_cli, config, delivered=False)
    assert local.received() == sorted(uids) and local.stored() == set(uids)
    assert zip_path.exists() and zips(workspace.archive) == [] and zips(workspace.failed) == []
    status = run_cli([config, "--status"]).stdout
    assert "study.zip -> tele (" in status and "study.zip -> local (" not in status, status

    tele.start()
    once(run_cli, config, delivered=True)
    assert received(tele) == sorted(uids)
    assert local.received() == sorted(uids), "the destination that had everything was sent something again"
    assert not zip_path.exists() and zips(workspace.archive) == ["study.zip"]


def test_a_destination_refusing_a_sop_class_sends_the_zip_to_failed_and_retry_failed_sends_only_what_it_lacks(
    workspace, run_cli, local, storescp_factory, tmp_path
):
    profile = tmp_path / "ct-only.cfg"
    profile.write_text(CT_ONLY_PROFILE, encoding="utf-8")
    strict = storescp_factory(["-xf", str(profile), "CTOnly", EVERY_COPY])
    config = destinations_config(workspace, [at_orthanc("local", local), at_storescp("strict", strict)], "config.yaml")
    zip_path, ct, sc = mixed_zip(workspace.root, "study.zip", seed=72)

    once(run_cli, config, delivered=False)
    assert local.received() == sorted(ct + sc) and local.stored() == set(ct + sc)
    assert received(strict) == sorted(ct)
    assert not zip_path.exists() and zips(workspace.failed) == ["study.zip"] and zips(workspace.archive) == []
    reason = json.loads((workspace.failed / "study.zip.error.json").read_text())
    assert reason["destination"] == "strict" and reason["reason"].startswith("strict: "), reason["reason"]
    assert [e["destination"] for e in reason["entries"]] == ["strict"] * len(sc)
    assert sorted(e["problem"].split(",")[0] for e in reason["entries"]) == sorted(f"SOP Instance UID {u}" for u in sc)
    refused = f"SOP Class {SecondaryCaptureImageStorage}: not sent: the peer accepted no presentation context for "
    assert all(refused + "Secondary Capture Image Storage in " in e["problem"] for e in reason["entries"]), reason
    assert {d["destination"]: d["state"] for d in reason["destinations"]} == {"local": "delivered", "strict": "failed"}

    strict.stop()  # the operator lets it take every SOP class, on the same port
    strict.options = ACCEPT_ALL
    strict.start()
    moved = run_cli([config, "--retry-failed"])
    assert moved.returncode == 0 and "study.zip" in moved.stdout, moved.stdout + moved.stderr
    once(run_cli, config, delivered=True)
    assert received(strict) == sorted(ct + sc), "the CT instances it had were sent again, or SC is missing"
    assert local.received() == sorted(ct + sc), "the destination that had everything was sent something again"
    assert zips(workspace.archive) == ["study.zip"] and zips(workspace.failed) == [] and not zip_path.exists()


def test_a_destination_added_later_gets_a_zip_dropped_again_and_the_first_is_sent_nothing_again(
    workspace, run_cli, local, backup
):
    # Before: the dicom: section alone, as every config was before destinations (the destination named "pacs").
    before = workspace.write_config(local.server.dicom_port, behavior={"wait_zip_complete_seconds": 0})
    zip_path, uids = study_zip(workspace.root, "study.zip", seed=73)
    once(run_cli, before, delivered=True)
    assert local.received() == sorted(uids) and backup.received() == []
    assert zips(workspace.archive) == ["study.zip"] and not zip_path.exists()

    shutil.copy2(workspace.archive / "study.zip", zip_path)  # dropped again
    # After: a list; the first is the same AE@host:port under another name, so the ledger knows what it has.
    after = destinations_config(workspace, [at_orthanc("local", local), at_orthanc("backup", backup)], "after.yaml")
    once(run_cli, after, delivered=True)
    assert backup.received() == sorted(uids) and backup.stored() == set(uids)
    assert local.received() == sorted(uids), "the first destination was sent the ZIP again"
    assert not zip_path.exists() and len(zips(workspace.archive)) == 2 and zips(workspace.failed) == []
