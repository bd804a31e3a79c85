"""The benchmark corpora: synthetic CT studies from fixed seeds, as extracted files and as a deflated ZIP.

``random`` pixels hardly deflate; ``phantom`` pixels (bench/phantom.py) deflate like real CT, to about 45%.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import phantom

from zip2pacs.synth import write_study, zip_folder


@dataclass(frozen=True)
class Spec:
    name: str
    label: str
    studies: int
    series: int  # per study
    per_series: int
    rows: int
    cols: int
    seed: int  # study i uses seed + i
    pixels: str = "random"  # random | phantom (a noisy body phantom that deflates like real CT)

    @property
    def count(self) -> int:
        return self.studies * self.series * self.per_series


@dataclass(frozen=True)
class Corpus:
    spec: Spec
    files_dir: Path  # the extracted files, what storescu (dcmtk and pynetdicom) sends
    zip_path: Path  # the same files, deflated: what the watcher delivers
    count: int
    total_bytes: int  # sum of the instance files' sizes
    zip_bytes: int

    @property
    def mb(self) -> float:
        return self.total_bytes / 1e6

    @property
    def deflated(self) -> float:
        """Return the ZIP's size over the files' (headers and directory included)."""
        return self.zip_bytes / self.total_bytes


FULL = (
    Spec("ct", "1,000 CT slices, 512x512 16-bit (0.5 MB each)", 1, 4, 250, 512, 512, 1000),
    Spec("small", "5,000 small instances, 64x64 16-bit", 25, 2, 100, 64, 64, 2000),
)
QUICK = (
    Spec("ct-quick", "100 CT slices, 512x512 16-bit (quick)", 1, 2, 50, 512, 512, 1000),
    Spec("small-quick", "500 small instances, 64x64 16-bit (quick)", 5, 2, 50, 64, 64, 2000),
)
# Deflated ZIPs that look like real exports: the loopback targets of the remote-PACS issue, and the WAN runs.
REALISTIC = (
    Spec(
        "ct-real", "500 CT slices, 512x512, body phantom (deflates like real CT)", 1, 2, 250, 512, 512, 4000, "phantom"
    ),
    Spec("small-real", "2,000 small instances, 64x64, body phantom", 10, 2, 100, 64, 64, 5000, "phantom"),
)
WAN = (
    Spec("ct-wan", "100 CT slices, 512x512, body phantom", 1, 2, 50, 512, 512, 6000, "phantom"),
    Spec("small-wan", "300 small instances, 64x64, body phantom", 3, 2, 50, 64, 64, 7000, "phantom"),
)
BIG = Spec("big", "6,000 CT slices, 512x512 16-bit (3 GB ZIP)", 6, 4, 250, 512, 512, 3000)


def _write_one(args: tuple[Path, int, Spec]) -> None:
    folder, seed, spec = args
    patient = (f"BENCH^{spec.name.upper()}{seed}", f"B{seed}")
    write = phantom.write_study if spec.pixels == "phantom" else write_study
    write(folder, seed, spec.series, spec.per_series, spec.rows, spec.cols, patient)


def build(spec: Spec, cache: Path, workers: int = 2) -> Corpus:
    """Return the corpus under ``cache``, generating files and ZIP unless an identical spec was built before."""
    root = cache / spec.name
    manifest = root / "manifest.json"
    files_dir, zip_path = root / "files", root / f"{spec.name}.zip"
    if manifest.exists() and zip_path.exists():
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        if saved.get("spec") == asdict(spec):
            return _corpus(spec, files_dir, zip_path, saved)
    shutil.rmtree(root, ignore_errors=True)
    files_dir.mkdir(parents=True)
    jobs = [(files_dir, spec.seed + i, spec) for i in range(spec.studies)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_write_one, jobs))
    zip_folder(files_dir, zip_path)
    files = [p for p in files_dir.rglob("*") if p.is_file()]
    saved = {"spec": asdict(spec), "count": len(files), "total_bytes": sum(p.stat().st_size for p in files)}
    if saved["count"] != spec.count:
        raise RuntimeError(f"corpus {spec.name}: wrote {saved['count']} files, expected {spec.count}")
    manifest.write_text(json.dumps(saved, indent=2), encoding="utf-8")
    return _corpus(spec, files_dir, zip_path, saved)


def _corpus(spec: Spec, files_dir: Path, zip_path: Path, saved: dict) -> Corpus:  # type: ignore[type-arg]
    return Corpus(spec, files_dir, zip_path, saved["count"], saved["total_bytes"], zip_path.stat().st_size)
