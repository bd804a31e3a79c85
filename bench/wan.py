"""The remote-PACS scenario: a fresh receiver behind a delay line (bench/delayline.py), its table and its targets."""

from __future__ import annotations

from pathlib import Path

from corpora import Corpus
from delayline import DelayLine
from receivers import Receiver
from report import DCMTK_NODELAY, Cell, Results
from targets import Check

WATCHERS = ("watcher default", "watcher running", "watcher ma=1", "watcher ma=2", "watcher ma=4")
BASELINE = DCMTK_NODELAY
TARGET_RTT_MS = (40, 80)
TARGET_RATIO = {"small": 5.0, "ct": 3.0}  # the issue's: default config vs dcmtk storescu files/s, at RTT 40 and 80


def label(receiver: str, rtt_ms: int) -> str:
    """Return the receiver's name in the results: the receiver and the round-trip time in front of it."""
    return f"{receiver} rtt={rtt_ms}ms"


class DelayedReceiver(Receiver):
    """A fresh receiver reached through a delay line of ``rtt_ms`` (each way half of it), optionally rate-capped."""

    def __init__(self, inner: type[Receiver], rtt_ms: int, rate_mbit: float | None, root: Path):
        super().__init__(root)
        self.inner = inner(root)
        self.rtt_ms, self.rate_mbit = rtt_ms, rate_mbit
        self.name = label(self.inner.name, rtt_ms)
        self.line: DelayLine | None = None

    def start(self) -> DelayedReceiver:
        """Start the receiver, then the line in front of it; ``port`` is the line's."""
        self.inner.start()
        rate = self.rate_mbit * 1e6 / 8 if self.rate_mbit else None
        self.line = DelayLine(self.inner.port, self.rtt_ms / 2000, rate_bytes_per_s=rate, lifetime_s=3600).start()
        self.port = self.line.port
        return self

    def received(self) -> int:
        return self.inner.received()

    def stop(self) -> None:
        if self.line is not None:
            self.line.stop()
        self.inner.stop()

    def version(self) -> str:
        return self.inner.version()


def _kind(corpus: Corpus) -> str:
    return corpus.spec.name.split("-")[0]  # ct-wan -> ct, small-wan -> small


def _rate(cell: Cell | None) -> float | None:
    return None if cell is None or cell.na else cell.files_per_s


def _rows(results: Results, sets: list[Corpus], receiver: str, rtts: list[int]) -> list[list[str]]:
    rows = []
    for corpus in sets:
        for rtt in rtts:
            base = _rate(results.get(corpus, label(receiver, rtt), BASELINE))
            row = [corpus.spec.name, str(rtt), "n/a" if base is None else f"{base:.1f}"]
            for name in WATCHERS:
                rate = _rate(results.get(corpus, label(receiver, rtt), name))
                ratio = f" ({rate / base:.2f}x)" if rate is not None and base else ""
                row.append("n/a" if rate is None else f"{rate:.1f}{ratio}")
            rows.append(row)
    return rows


def header() -> list[str]:
    """Return the WAN table's column names."""
    return ["corpus", "RTT ms", f"{BASELINE} files/s", *(f"{w} files/s (vs dcmtk)" for w in WATCHERS)]


def markdown_table(results: Results, sets: list[Corpus], receiver: str, rtts: list[int]) -> str:
    """Return files/s and ratio to dcmtk storescu NODELAY per corpus and RTT, in Markdown."""
    lines = ["| " + " | ".join(header()) + " |", "|" + "---|" * len(header())]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(results, sets, receiver, rtts)]
    return "\n".join(lines)


def text_table(results: Results, sets: list[Corpus], receiver: str, rtts: list[int]) -> str:
    """Return the same table aligned for a terminal."""
    table = [header(), *_rows(results, sets, receiver, rtts)]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in table)


def checks(results: Results, sets: list[Corpus], receiver: str, rtts: list[int]) -> list[Check]:
    """Return the issue's WAN targets: default config >= 5x (small) / 3x (CT) dcmtk storescu's files/s.

    Checked for one run per ZIP (``--once``, start-up included) and for a watcher already running.
    """
    out = []
    for corpus in sets:
        need = TARGET_RATIO.get(_kind(corpus))
        for rtt, who in ((r, w) for r in TARGET_RTT_MS if r in rtts for w in ("watcher default", "watcher running")):
            target = f"{corpus.spec.name}: RTT {rtt} ms, {who} >= {need:g}x {BASELINE}'s files/s"
            base = _rate(results.get(corpus, label(receiver, rtt), BASELINE))
            rate = _rate(results.get(corpus, label(receiver, rtt), who))
            if need is None or base is None or rate is None:
                out.append(Check(target, "n/a", "not measured"))
                continue
            ratio = rate / base
            figures = f"{rate:.1f} vs {base:.1f} files/s = {ratio:.2f}x"
            out.append(Check(target, "met" if ratio >= need else "not met", figures))
    return out
