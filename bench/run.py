#!/usr/bin/env python3
"""The benchmark, one command: `python bench/run.py` (see bench/README.md); writes docs/benchmarks.md."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

import corpora  # noqa: E402
import markdown  # noqa: E402
import plans  # noqa: E402
import remote_report  # noqa: E402
import wan  # noqa: E402
from clients import Measurement, Watcher, supported_keys  # noqa: E402
from plans import Planned  # noqa: E402
from receivers import DiscardingStoreSCP  # noqa: E402
from report import Results, text_table  # noqa: E402
from targets import TUNED, checks, realistic_checks, text_checks  # noqa: E402

MA_KEY = "dicom.max_associations"
CONSOLE: list[str] = []  # everything printed, for the report's copy of the output


def say(line: str = "") -> None:
    """Print a line at once and keep it for docs/benchmarks.md."""
    print(line, flush=True)
    CONSOLE.append(line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small corpora, one round: a sanity run of a minute or two"
    )
    parser.add_argument("--big", action="store_true", help="also time the watcher on a 3 GB ZIP for its peak RSS")
    parser.add_argument(
        "--wan",
        action="store_true",
        help="the remote-PACS scenario: the tuned Orthanc behind a delay line at each --rtt",
    )
    parser.add_argument(
        "--rtt", type=_ms_list, default=[0, 10, 40, 80], help="round-trip times in ms for --wan (default 0,10,40,80)"
    )
    parser.add_argument("--rate", type=float, default=None, help="bandwidth cap of the delay line in Mbit/s (none)")
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="the phantom corpora (deflate like real CT) on loopback, stock and tuned",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds (default 3, 1 with --quick; 0 with --big: the 3 GB ZIP only)",
    )
    parser.add_argument(
        "--cap",
        type=float,
        default=None,
        help="seconds after which a Nagle-bound baseline run is stopped (default 20, 8 with --quick)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/zip2pacs-bench"), help="corpora and run folders")
    parser.add_argument(
        "--out", type=Path, default=None, help="Markdown report (default docs/benchmarks.md; none with --quick)"
    )
    return parser.parse_args(argv)


def _ms_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def measure(p: Planned, results: Results, keys: set[str], workdir: Path, cap: float) -> None:
    """Time one run of one cell against a freshly started receiver and record it."""
    cell = results.cell(p.corpus, p.receiver, p.client.name, p.client.source)
    if isinstance(p.client, Watcher) and (p.client.max_associations or 1) > 1 and MA_KEY not in keys:
        cell.na = f"n/a: no {MA_KEY}"
        return
    if cell.capped:
        return  # a capped baseline is latency-bound: one run says it
    receiver = p.make_receiver(workdir / "receiver")
    receiver.start()
    try:
        run_dir = workdir / "run"
        m = p.client.run(run_dir, p.corpus, receiver, keys, cap=cap if p.nagle_bound else None)
        cell.runs.append(m)
        _say(p, m)
        if isinstance(p.client, Watcher) and p.rerun and m.ok:
            again = p.client.rerun(run_dir, p.corpus, receiver)
            results.reruns.setdefault(p.corpus.spec.name, []).append(again)
            say(f"    re-run of the same ZIP (all duplicates): {again.seconds:.2f} s {again.note}".rstrip())
    finally:
        receiver.stop()


def _say(p: Planned, m: Measurement) -> None:
    rate = (m.received if m.capped else p.corpus.count) / m.seconds
    flag = "" if m.ok else "  FAILED: "
    say(
        f"  {p.corpus.spec.name:<11} {p.receiver:<24} {p.client.name:<28} {m.seconds:7.2f} s"
        f" {rate:8.1f} files/s  RSS {m.peak_rss_mb:5.0f} MB  {flag}{m.note}"
    )


def run_big(results: Results, keys: set[str], workdir: Path) -> None:
    """Deliver the 3 GB ZIP once to the discarding storescp and record the watcher's peak RSS."""
    big = corpora.build(corpora.BIG, workdir / "corpora")
    watcher = Watcher(2 if MA_KEY in keys else 1)
    receiver = DiscardingStoreSCP(workdir / "receiver").start()
    try:
        m = watcher.run(workdir / "run", big, receiver, keys)
    finally:
        receiver.stop()
    say(f"  big: {watcher.name}, {big.count} instances: {m.seconds:.1f} s, peak RSS {m.peak_rss_mb:.0f} MB {m.note}")
    results.big = (big, receiver.name, m)


def _corpora(args: argparse.Namespace, workdir: Path) -> dict[str, list[corpora.Corpus]]:
    """Build (or reuse) the corpora each chosen scenario needs, by scenario."""
    if args.wan or args.realistic:
        specs = {"realistic": corpora.REALISTIC if args.realistic else (), "wan": corpora.WAN if args.wan else ()}
    else:
        specs = {"loopback": corpora.QUICK if args.quick else corpora.FULL}
    say(f"Corpora in {workdir} (generated once per spec, then reused):")
    sets = {k: [corpora.build(spec, workdir) for spec in v] for k, v in specs.items()}
    for c in (c for v in sets.values() for c in v):
        say(
            f"  {c.spec.name}: {c.count} files, {c.mb:.0f} MB; ZIP {c.zip_bytes / 1e6:.0f} MB ({c.deflated:.0%} of the files)"
        )
    return sets


def run_rounds(cells: list[Planned], rounds: int, results: Results, keys: set[str], workdir: Path, cap: float) -> None:
    """Measure every cell in round 1, then the every-round cells again, each round in a shifted order."""
    for number in range(1, rounds + 1):
        todo = [p for p in cells if number == 1 or p.every_round]
        shift = (number - 1) * 5 % len(todo)  # a different order each round, so no sender always runs first
        say(f"Round {number}/{rounds}: {len(todo)} runs")
        for p in todo[shift:] + todo[:shift]:
            measure(p, results, keys, workdir, cap)


def main(argv: list[str] | None = None) -> int:
    """Build the corpora, run the interleaved rounds, print the table and write the Markdown report."""
    args = parse_args(argv)
    remote = args.wan or args.realistic
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    cap = args.cap if args.cap is not None else (8.0 if args.quick else 20.0)
    out = args.out or (None if args.quick else REPO / "docs" / "benchmarks.md")
    started = time.monotonic()
    keys = supported_keys()
    sets = _corpora(args, args.workdir / "corpora")
    results = Results()
    if remote:
        cells = plans.realistic(sets["realistic"]) + plans.wan(sets["wan"], args.rtt, args.rate)
    else:
        cells = plans.loopback(sets["loopback"])
    run_rounds(cells, rounds, results, keys, args.workdir, cap)
    if args.big:
        run_big(results, keys, args.workdir)
    if remote:
        found = realistic_checks(sets["realistic"], results) + wan.checks(results, sets["wan"], TUNED, args.rtt)
    else:
        found = checks(sets["loopback"], results)
    elapsed = time.monotonic() - started
    say()
    say(text_table(results))
    if args.wan:
        say()
        say(wan.text_table(results, sets["wan"], TUNED, args.rtt))
    for line in ("", text_checks(found), "", f"Total {elapsed / 60:.1f} min."):
        say(line)
    if out is not None:
        run = markdown.Run(rounds=rounds, cap=cap, elapsed=elapsed, argv=sys.argv[1:] if argv is None else argv)
        if remote:
            remote_report.write(out, sets, results, found, CONSOLE, run, args.rtt, args.rate)
        else:
            markdown.write(out, sets["loopback"], results, found, CONSOLE, run)
        print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
