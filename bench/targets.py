"""The performance issue's targets, checked against the measured medians: figures to report, not assertions."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from corpora import Corpus
from report import DCMTK, DCMTK_NODELAY, PYNETDICOM, Cell, Results

STOCK, TUNED = "orthanc-stock", "orthanc-tuned"
RERUN_LIMIT_S = 3.0


@dataclass(frozen=True)
class Check:
    target: str
    verdict: str  # met | not met | n/a
    figures: str


def _watchers(results: Results, corpus: Corpus, receiver: str) -> list[Cell]:
    return [
        c
        for c in results.cells.values()
        if c.corpus is corpus and c.receiver == receiver and c.client.startswith("watcher") and c.files_per_s
    ]


def _verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def _speedup(corpus: Corpus, results: Results, watcher: str | None = None) -> Check:
    """Compare the best watcher (or the one named) with dcmtk storescu on the stock Orthanc."""
    who = f"{watcher} " if watcher else "watcher "
    target = f"{corpus.spec.name}: stock Orthanc, {who}from the ZIP >= 8x dcmtk storescu's files/s"
    dcmtk = results.get(corpus, STOCK, DCMTK)
    watchers = _watchers(results, corpus, STOCK)
    if not watchers or dcmtk is None or not dcmtk.files_per_s:
        return Check(target, "n/a", "not measured")
    named = [c for c in watchers if c.client == watcher] if watcher else watchers
    if not named:
        return Check(target, "n/a", "not measured")
    best = max(named, key=lambda c: c.files_per_s or 0.0)
    ratio = (best.files_per_s or 0.0) / dcmtk.files_per_s
    each = ", ".join(f"{c.client.split()[-1]}: {(c.files_per_s or 0) / dcmtk.files_per_s:.2f}x" for c in watchers)
    figures = f"{'' if watcher else 'best '}{best.client} {best.files_per_s:.1f} files/s vs dcmtk {dcmtk.files_per_s:.1f} files/s = {ratio:.2f}x ({each})"
    return Check(target, _verdict(ratio >= 8), figures)


def _end_to_end(corpus: Corpus, results: Results, limit: float, baseline: str, who: str = "watcher ma=2") -> Check:
    target = f"{corpus.spec.name}: tuned Orthanc, {who} time <= {limit:g}x {baseline}'s time"
    watcher = results.get(corpus, TUNED, who)
    base = results.get(corpus, TUNED, baseline)
    if watcher is None or watcher.na or base is None or not watcher.seconds or not base.seconds:
        return Check(target, "n/a", watcher.na if watcher is not None and watcher.na else "not measured")
    ratio = watcher.seconds / base.seconds
    figures = (
        f"{watcher.seconds:.2f} s vs {base.seconds:.2f} s{' (extrapolated)' if base.capped else ''} = {ratio:.2f}x"
    )
    return Check(target, _verdict(ratio <= limit), figures)


def _versus_pynetdicom(corpus: Corpus, results: Results) -> Check:
    target = f"{corpus.spec.name}: tuned Orthanc, watcher ma=1 >= 1.5x pynetdicom storescu (NODELAY) files/s"
    watcher = results.get(corpus, TUNED, "watcher ma=1")
    base = results.get(corpus, TUNED, PYNETDICOM)
    if watcher is None or base is None or not watcher.files_per_s or not base.files_per_s:
        return Check(target, "n/a", "not measured")
    ratio = watcher.files_per_s / base.files_per_s
    figures = f"{watcher.files_per_s:.1f} vs {base.files_per_s:.1f} files/s = {ratio:.2f}x"
    return Check(target, _verdict(ratio >= 1.5), figures)


def _rerun(corpus: Corpus, results: Results) -> Check:
    target = f"{corpus.spec.name}: re-run of the same ZIP (every instance a duplicate) < {RERUN_LIMIT_S:g} s"
    runs = [m for m in results.reruns.get(corpus.spec.name, []) if m.ok]
    if not runs:
        return Check(target, "n/a", "not measured")
    median = statistics.median(m.seconds for m in runs)
    figures = f"median {median:.2f} s over {len(runs)} runs, peak RSS {max(m.peak_rss_mb for m in runs):.0f} MB"
    return Check(target, _verdict(median < RERUN_LIMIT_S), figures)


def checks(corpora: list[Corpus], results: Results) -> list[Check]:
    """Return every target's verdict with its figures, for each corpus (CT corpus first)."""
    out = [_speedup(c, results) for c in corpora]
    for corpus, limit in zip(corpora, (1.25, 2.0), strict=True):
        out.append(_end_to_end(corpus, results, limit, DCMTK))
        out.append(_end_to_end(corpus, results, limit, DCMTK_NODELAY))
    out += [_versus_pynetdicom(c, results) for c in corpora]
    out.append(_rerun(corpora[-1], results))
    if results.big is not None:
        big, receiver, m = results.big
        figures = f"{big.zip_bytes / 1e9:.2f} GB ZIP, {big.count} instances to {receiver}: {m.seconds:.1f} s, peak RSS {m.peak_rss_mb:.0f} MB"
        out.append(
            Check(
                "big: peak RSS of the watcher on a 3 GB ZIP (no threshold set)", "figure" if m.ok else "failed", figures
            )
        )
    else:
        out.append(Check("big: peak RSS of the watcher on a 3 GB ZIP", "n/a", "not run (use --big)"))
    return out


def realistic_checks(corpora: list[Corpus], results: Results) -> list[Check]:
    """Return the remote-PACS issue's loopback targets: the default config, stock >= 8x, tuned <= 1.25x the time."""
    out = [_speedup(c, results, "watcher default") for c in corpora]
    out += [_end_to_end(c, results, 1.25, DCMTK_NODELAY, "watcher default") for c in corpora]
    return out


def text_checks(found: list[Check]) -> str:
    """Return one line per target."""
    return "\n".join(f"[{c.verdict:>7}] {c.target}: {c.figures}" for c in found)


def markdown_checks(found: list[Check]) -> str:
    """Return the targets as a Markdown table."""
    lines = ["| target | verdict | figures |", "|---|---|---|"]
    lines += [f"| {c.target} | **{c.verdict}** | {c.figures} |" for c in found]
    return "\n".join(lines)
