"""`--demo`: the real pipeline against an embedded Storage SCP, in a throw-away workspace."""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from .config import Config, parse_config
from .daemon import run_once
from .synth import write_study, zip_folder


@dataclass
class Received:
    """What the embedded SCP stored, by SOP Instance UID."""

    folder: Path
    uids: list[str] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle_store(self, event: evt.Event) -> int:
        ds: Dataset = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(self.folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        with self.lock:
            self.uids.append(str(ds.SOPInstanceUID))
            self.studies.add(str(ds.StudyInstanceUID))
        return 0x0000


def start_scp(received: Received, ae_title: str = "DEMOPACS"):
    """Start a Storage SCP on a free loopback port; return the server (``server.server_address[1]`` is the port)."""
    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    return ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, received.handle_store)])


def demo_config(root: Path, port: int) -> Config:
    """Return a configuration for a workspace under ``root`` that sends to the embedded SCP."""
    raw = {
        "dicom": {"peer_host": "127.0.0.1", "peer_port": port, "peer_ae_title": "DEMOPACS"},
        "behavior": {"wait_zip_complete_seconds": 0.5, "poll_interval_seconds": 1},
        "logging": {"file": "logs/uploader.log"},
    }
    return parse_config(raw, root / "config.yaml")


def run_demo(root: Path | None = None, studies: int = 3, keep: bool = False) -> tuple[bool, Received, Config]:
    """Write a few generated studies as ZIPs, deliver them to the embedded SCP, and clean up unless ``keep``."""
    root = root or Path(tempfile.mkdtemp(prefix="dicom-zip-watcher-demo-"))
    received = Received(root / "pacs")
    received.folder.mkdir(parents=True, exist_ok=True)
    server = start_scp(received)
    try:
        config = demo_config(root, server.server_address[1])
        for seed in range(studies):
            source = root / "source" / f"study{seed}"
            write_study(source, seed=seed, n_series=2, per_series=4, patient=(f"DEMO^PATIENT{seed}", f"DEMO{seed:04d}"))
            zip_folder(source, config.watch_dir / f"demo_study_{seed}.zip")
        shutil.rmtree(root / "source")
        delivered = run_once(config)
    finally:
        server.shutdown()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return delivered, received, config
