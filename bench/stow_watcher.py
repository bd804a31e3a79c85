"""The watcher running, default configuration, one destination: C-STORE (dimse) beside STOW-RS, same Orthanc.

    python bench/stow_watcher.py [--rtt 0,40] [--runs 3]

bench/stow.py times the STOW-RS transport alone; this times the whole path as a clinic runs it: the watcher is
started, the corpus ZIP is renamed into incoming/, and the time runs until it is in archive/ (clients.RunningWatcher),
against a fresh tuned Orthanc with Debian's DICOMweb plugin behind a delay line in front of its DICOM or HTTP port.
Prints the medians of files/s; figures, not tests.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import corpora  # noqa: E402
import yaml  # noqa: E402
from clients import RunningWatcher, supported_keys  # noqa: E402
from corpora import Corpus  # noqa: E402
from delayline import DelayLine  # noqa: E402
from receivers import Receiver  # noqa: E402
from stow import DicomWebOrthanc  # noqa: E402

KINDS = ("dimse", "stowrs")


class _Through(Receiver):
    """The Orthanc as clients.RunningWatcher sees it: the line's port, the Orthanc's count."""

    def __init__(self, orthanc: DicomWebOrthanc, port: int):
        self.orthanc, self.port = orthanc, port

    def received(self) -> int:
        return self.orthanc.received()


class _Watcher(RunningWatcher):
    def __init__(self, stow_url: str | None):
        super().__init__()
        self.stow_url = stow_url

    def prepare(self, run_dir: Path, corpus: Corpus, receiver: Receiver, keys: set[str]) -> Path:
        config = super().prepare(run_dir, corpus, receiver, keys)
        if self.stow_url:
            raw = yaml.safe_load(config.read_text(encoding="utf-8"))
            raw["destinations"] = [{"name": "web", "kind": "stowrs", "url": self.stow_url}]
            config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        return config


def run_one(kind: str, corpus: Corpus, rtt_ms: int, root: Path) -> float | None:
    """Deliver the corpus once; return files/s, or None unless every instance arrived and the ZIP was archived."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    orthanc = DicomWebOrthanc(root / "orthanc")
    orthanc.start()
    line = DelayLine(orthanc.http_port if kind == "stowrs" else orthanc.port, rtt_ms / 2000, lifetime_s=600).start()
    try:
        url = f"http://127.0.0.1:{line.port}/dicom-web" if kind == "stowrs" else None
        m = _Watcher(url).run(root / "watcher", corpus, _Through(orthanc, line.port), supported_keys())
        return corpus.count / m.seconds if m.ok and m.seconds else None
    finally:
        line.stop()
        orthanc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", default="0,40", help="round-trip times in ms (default 0,40)")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell, median reported (default 3)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/zip2pacs-bench"))
    args = parser.parse_args()
    rtts = [int(x) for x in args.rtt.split(",")]
    print("| corpus | RTT ms | C-STORE files/s | STOW-RS files/s | STOW/C-STORE |")
    print("|---|---|---|---|---|")
    for spec in corpora.WAN:
        corpus = corpora.build(spec, args.workdir / "corpora")  # generated once, then reused
        for rtt in rtts:
            medians = {}
            for kind in KINDS:
                rates = [
                    run_one(kind, corpus, rtt, args.workdir / "stow-watcher" / f"{kind}-{i}") for i in range(args.runs)
                ]
                good = [r for r in rates if r]
                medians[kind] = statistics.median(good) if good else None
            d, s = medians["dimse"], medians["stowrs"]
            ratio = f"{s / d:.2f}x" if d and s else "n/a"
            print(f"| {spec.name} | {rtt} | {d or 0:.1f} | {s or 0:.1f} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
