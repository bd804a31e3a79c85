#!/usr/bin/env python3
"""Where the watcher's CPU goes: one `--once` run on a corpus into a fresh tuned Orthanc, sampled by py-spy.

    python bench/cpu_profile.py [--corpus ct-real] [--rate 250] [--top 12]

Prints the functions where the watcher's threads were found running (self time: the innermost Python frame, C
code counted in the function that called it), the packages and a few pipeline stages (inclusive), each as a
share of all active samples, and the CPU seconds the watcher and Orthanc used. Needs `pip install py-spy`.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import corpora  # noqa: E402
from clients import WATCHER, Watcher, supported_keys  # noqa: E402
from receivers import TunedOrthanc  # noqa: E402

SPECS = {s.name: s for s in (*corpora.FULL, *corpora.QUICK, *corpora.REALISTIC, *corpora.WAN)}
# Modules whose frames are on the stack (C code such as zlib or hashlib never is: it counts in its caller).
STAGES = ("unzip", "sniff", "elements", "dimse", "delivery", "ledger", "zipfile", "pydicom", "pynetdicom")


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stacks(raw: Path) -> collections.Counter[tuple[str, ...]]:
    """Return py-spy's raw (collapsed) stacks as frame tuples, outermost first, with their sample counts."""
    out: collections.Counter[tuple[str, ...]] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out[tuple(f for f in stack.split(";") if " (" in f)] += int(count)
    return out


def _share(counter: collections.Counter[str], total: int, top: int) -> list[str]:
    return [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]


def report(found: collections.Counter[tuple[str, ...]], top: int) -> list[str]:
    """Return the self-time, package and stage tables, as lines."""
    total = sum(found.values()) or 1
    leaf: collections.Counter[str] = collections.Counter()
    package: collections.Counter[str] = collections.Counter()
    stage: collections.Counter[str] = collections.Counter()
    for frames, n in found.items():
        if not frames:
            continue
        leaf[frames[-1]] += n
        package[frames[-1].split("(", 1)[1].split("/")[0].rstrip(")")] += n
        for name in {s for f in frames for s in STAGES if s in f.split("(", 1)[1]}:
            stage[name] += n
    return [
        f"{total} active samples",
        "Self (innermost Python frame):",
        *_share(leaf, total, top),
        "By file of the innermost frame:",
        *_share(package, total, top),
        "Inclusive, by module on the stack:",
        *_share(stage, total, len(STAGES)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/cpu_profile.py", description=__doc__)
    parser.add_argument("--corpus", default="ct-real", choices=sorted(SPECS))
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/zip2pacs-bench"))
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        print("Error: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    corpus = corpora.build(SPECS[args.corpus], args.workdir / "corpora")
    receiver = TunedOrthanc(args.workdir / "receiver").start()
    raw = args.workdir / "profile.txt"
    try:
        config = Watcher(None).prepare(args.workdir / "run", corpus, receiver, supported_keys())
        assert receiver.proc is not None
        orthanc_before, started = cpu_seconds(receiver.proc.pid), time.monotonic()
        # --nonblocking: the watcher is never paused; (--native would pause it and count its waits as work.)
        cmd = ["py-spy", "record", "--nonblocking", "--format", "raw", "--nolineno", "--rate", str(args.rate)]
        cmd += ["-o", str(raw), "--", sys.executable, str(WATCHER), str(config), "--once"]
        subprocess.run(cmd, check=True, timeout=1800, capture_output=True)
        seconds, orthanc = time.monotonic() - started, cpu_seconds(receiver.proc.pid) - orthanc_before
        received = receiver.received()
    finally:
        receiver.stop()
    children = os.times().children_user + os.times().children_system
    print(f"{corpus.spec.name}: {received}/{corpus.count} instances in {seconds:.2f} s (sampled, {args.rate}/s)")
    print(f"CPU: watcher and py-spy {children:.2f} s, Orthanc {orthanc:.2f} s")
    print("\n".join(report(stacks(raw), args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
