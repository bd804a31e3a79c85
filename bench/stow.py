"""STOW-RS beside C-STORE: the WAN corpora sent to one Orthanc with the DICOMweb plugin, through a delay line.

    python bench/stow.py [--rtt 0,40] [--out docs/benchmarks.md]

Per corpus, RTT and sender: a fresh tuned Orthanc (TCP_NODELAY=1) with Debian's DICOMweb plugin, a delay line in
front of its HTTP port and another in front of its DICOM port; then, timed in this process from the first byte to
the last answer, zip2pacs.stowrs (one HTTP session, up to 100 instances a request) or zip2pacs.sender.store (a
fresh Peer), and dcmtk storescu with TCP_NODELAY=1 (a process: its start-up is in its time). The files are
detected (zip2pacs.sniff.detect) before the clock starts. One round; prints a table, appends it with --out.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

import corpora  # noqa: E402
from clients import STORESCU_BIN  # noqa: E402
from delayline import DelayLine  # noqa: E402
from receivers import AET, TunedOrthanc, default_env  # noqa: E402

from zip2pacs.peer import Peer  # noqa: E402
from zip2pacs.sender import store  # noqa: E402
from zip2pacs.sniff import Instance, Kind, detect  # noqa: E402
from zip2pacs.stowrs import StowConnection, StowSettings  # noqa: E402
from zip2pacs.verdicts import Outcome  # noqa: E402

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
SENDERS = ("STOW-RS", "C-STORE (sender.store)", "dcmtk storescu NODELAY")


class DicomWebOrthanc(TunedOrthanc):
    """The tuned Orthanc with the DICOMweb plugin at /dicom-web/ (plain HTTP, no authentication)."""

    name = "orthanc-tuned-dicomweb"

    def config(self) -> dict[str, object]:
        return dict(super().config(), Plugins=[PLUGIN], DicomWeb={"Enable": True, "Root": "/dicom-web/"})


def instances_of(corpus: corpora.Corpus) -> list[Instance]:
    """Return the corpus's extracted files as Instances, as the watcher would detect them."""
    out = []
    for path in sorted(p for p in corpus.files_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found = detect(path, hashlib.sha256(data).hexdigest(), len(data))
        if found.kind is Kind.INSTANCE and found.instance is not None:
            out.append(found.instance)
    return out


def _stow(port: int, instances: list[Instance]) -> int:
    with StowConnection(StowSettings(base_url=f"http://127.0.0.1:{port}/dicom-web")) as conn:
        return sum(r.outcome is Outcome.STORED for r in conn.store(instances))


def _cstore(port: int, instances: list[Instance]) -> int:
    return sum(r.outcome is Outcome.STORED for r in store(Peer(port=port, ae_title=AET), instances))


def _storescu(port: int, corpus: corpora.Corpus) -> int:
    cmd = [STORESCU_BIN, "-aec", AET, "-R", "+sd", "+r", "127.0.0.1", str(port), str(corpus.files_dir)]
    env = dict(default_env(), TCP_NODELAY="1")
    return 0 if subprocess.run(cmd, capture_output=True, env=env, check=False).returncode == 0 else -1


def run_one(sender: str, corpus: corpora.Corpus, instances: list[Instance], rtt_ms: int, root: Path) -> float | None:
    """Time one sender on a fresh Orthanc behind a delay line; return files/s, or None unless all arrived."""
    orthanc = DicomWebOrthanc(root)
    orthanc.start()
    target = orthanc.http_port if sender == "STOW-RS" else orthanc.port
    line = DelayLine(target, rtt_ms / 2000, lifetime_s=600).start()
    send: dict[str, Callable[[], int]] = {
        "STOW-RS": lambda: _stow(line.port, instances),
        "C-STORE (sender.store)": lambda: _cstore(line.port, instances),
        "dcmtk storescu NODELAY": lambda: _storescu(line.port, corpus),
    }
    try:
        started = time.perf_counter()
        send[sender]()
        seconds = time.perf_counter() - started
        received = orthanc.received()
    finally:
        line.stop()
        orthanc.stop()
    ok = received == corpus.count
    print(f"{corpus.spec.name} rtt={rtt_ms} {sender}: {seconds:.2f} s, {received}/{corpus.count}", flush=True)
    return corpus.count / seconds if ok else None


def table(rates: dict[tuple[str, int, str], float | None], names: list[str], rtts: list[int], commit: str) -> str:
    """Return the Markdown table: files/s per sender and STOW-RS over C-STORE, per corpus and RTT."""

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    lines = [
        "| corpus | RTT ms | " + " | ".join(f"{s} files/s" for s in SENDERS) + " | STOW/C-STORE | commit |",
        "|" + "---|" * (len(SENDERS) + 4),
    ]
    for name in names:
        for rtt in rtts:
            row = [rates.get((name, rtt, s)) for s in SENDERS]
            stow, cstore = row[0], row[1]
            ratio = f"{stow / cstore:.2f}x" if stow and cstore else "n/a"
            lines.append(f"| {name} | {rtt} | " + " | ".join(fmt(v) for v in row) + f" | {ratio} | {commit} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt", default="0,40", help="round-trip times in ms, comma-separated")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/zip2pacs-bench"))
    parser.add_argument("--out", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    if not Path(PLUGIN).exists():
        print(f"no DICOMweb plugin at {PLUGIN}", file=sys.stderr)
        return 1
    rtts = [int(r) for r in args.rtt.split(",")]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    sets = [corpora.build(spec, args.workdir / "corpora") for spec in reversed(corpora.WAN)]  # small-wan first
    rates: dict[tuple[str, int, str], float | None] = {}
    for corpus in sets:
        instances = instances_of(corpus)
        for rtt in rtts:
            for sender in SENDERS:
                root = args.workdir / "run" / "stow-orthanc"
                rates[(corpus.spec.name, rtt, sender)] = run_one(sender, corpus, instances, rtt, root)
    out = table(rates, [c.spec.name for c in sets], rtts, commit.stdout.strip())
    print(out)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n" + out + "\n")
    return 0 if all(v is not None for v in rates.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
