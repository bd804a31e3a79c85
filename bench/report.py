"""Medians, ratios and the issue's targets, as a text table for the console and Markdown for docs/benchmarks.md."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from clients import Measurement
from corpora import Corpus

DCMTK = "dcmtk storescu"
DCMTK_NODELAY = "dcmtk storescu NODELAY"
PYNETDICOM = "pynetdicom storescu NODELAY"


@dataclass
class Cell:
    """Every measurement of one sender against one receiver on one corpus."""

    corpus: Corpus
    receiver: str
    client: str
    source: str
    runs: list[Measurement] = field(default_factory=list)
    na: str = ""  # why the cell was not measured (e.g. a config key this checkout lacks)

    @property
    def good(self) -> list[Measurement]:
        return [m for m in self.runs if m.ok]

    @property
    def files_per_s(self) -> float | None:
        """Median rate over the good runs; a capped run counts the instances it got through."""
        rates = [(m.received if m.capped else self.corpus.count) / m.seconds for m in self.good]
        return statistics.median(rates) if rates else None

    @property
    def seconds(self) -> float | None:
        """Median wall time for the whole corpus (extrapolated from the rate when capped)."""
        rate = self.files_per_s
        if rate is None:
            return None
        full = [m.seconds for m in self.good if not m.capped]
        return statistics.median(full) if full else self.corpus.count / rate

    @property
    def mb_per_s(self) -> float | None:
        rate = self.files_per_s
        return None if rate is None else rate * self.corpus.mb / self.corpus.count

    @property
    def peak_rss_mb(self) -> float | None:
        return max((m.peak_rss_mb for m in self.good), default=None)

    @property
    def capped(self) -> bool:
        return any(m.capped for m in self.good)

    @property
    def failures(self) -> list[str]:
        return [m.note for m in self.runs if not m.ok]


class Results:
    """All cells, looked up by (corpus name, receiver, sender)."""

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str, str], Cell] = {}
        self.reruns: dict[str, list[Measurement]] = {}  # corpus name -> timed re-runs of the same ZIP
        self.big: tuple[Corpus, str, Measurement] | None = None

    def cell(self, corpus: Corpus, receiver: str, client: str, source: str) -> Cell:
        key = (corpus.spec.name, receiver, client)
        if key not in self.cells:
            self.cells[key] = Cell(corpus, receiver, client, source)
        return self.cells[key]

    def get(self, corpus: Corpus, receiver: str, client: str) -> Cell | None:
        return self.cells.get((corpus.spec.name, receiver, client))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(cell: Cell, base: Cell | None) -> str:
    if base is None or cell.files_per_s is None or base.files_per_s is None:
        return "-"
    return f"{cell.files_per_s / base.files_per_s:.2f}x"


HEADER = (
    "corpus",
    "receiver",
    "sender",
    "from",
    "runs",
    "median s",
    "files/s",
    "MB/s",
    "peak RSS MB",
    "vs dcmtk",
    "vs dcmtk NODELAY",
)


def rows(results: Results) -> list[tuple[str, ...]]:
    """Return one table row per cell, in the order they were first measured."""
    out = []
    for cell in results.cells.values():
        dcmtk = results.get(cell.corpus, cell.receiver, DCMTK)
        nodelay = results.get(cell.corpus, cell.receiver, DCMTK_NODELAY)
        runs = cell.na or f"{len(cell.good)}/{len(cell.runs)}" + (" capped" if cell.capped else "")
        secs = _fmt(cell.seconds) + ("*" if cell.capped and cell.seconds is not None else "")
        out.append(
            (
                cell.corpus.spec.name,
                cell.receiver,
                cell.client,
                cell.source,
                runs,
                secs,
                _fmt(cell.files_per_s),
                _fmt(cell.mb_per_s),
                _fmt(cell.peak_rss_mb, 0),
                _ratio(cell, dcmtk),
                _ratio(cell, nodelay),
            )
        )
    return out


def text_table(results: Results) -> str:
    """Return the table aligned for a terminal."""
    table = [HEADER, *rows(results)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(results: Results) -> str:
    """Return the table in Markdown."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    return "\n".join(lines)
