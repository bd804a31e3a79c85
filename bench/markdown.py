"""docs/benchmarks.md: machine, versions, method, the table, the targets and the console output of the run."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from clients import REPO, tool_versions
from corpora import Corpus
from receivers import DiscardingStoreSCP, Orthanc, TunedOrthanc
from report import Results, markdown_table
from targets import Check, markdown_checks


@dataclass(frozen=True)
class Run:
    rounds: int
    cap: float
    elapsed: float  # seconds
    argv: list[str]

    @property
    def command(self) -> str:
        return " ".join(["python bench/run.py", *self.argv])


SECTION = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n.*?<!-- /bench:(?P=name) -->\n", re.DOTALL)


def put_section(out: Path, name: str, body: str) -> None:
    """Replace the section ``name`` of ``out`` (between its markers) with ``body``, or append it."""
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    block = f"<!-- bench:{name} -->\n{body.rstrip()}\n<!-- /bench:{name} -->\n"
    found = [m for m in SECTION.finditer(text) if m.group("name") == name]
    if found:
        text = text[: found[0].start()] + block + text[found[0].end() :]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def kept_sections(out: Path) -> list[str]:
    """Return the marked sections of ``out`` (other scenarios' results), which a full run keeps."""
    return [m.group(0) for m in SECTION.finditer(out.read_text(encoding="utf-8"))] if out.exists() else []


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def machine() -> list[str]:
    """Return Markdown bullet lines describing this machine and the software measured."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = tool_versions()
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else ""
    root = Path("/tmp")  # version() does not start the receivers
    return [
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {os.cpu_count()} CPUs (nproc), {cpu}, {mem_gb:.0f} GB RAM, {platform.platform()}",
        f"- Commit: {_git('rev-parse', '--short', 'HEAD')}{dirty}",
        f"- Python {versions['python']}, pydicom {versions['pydicom']}, pynetdicom {versions['pynetdicom']}",
        f"- {Orthanc(root).version()}; {versions['dcmtk']}; {DiscardingStoreSCP(root).version()}",
    ]


METHOD = """\
- Corpora: `zip2pacs.synth.write_study` from fixed seeds (realistic CT headers, one patient per study, nested
  STUDY/SERIES folders, every other file without extension), then `zip_folder` (deflate). The pixel data is
  random, so the ZIP hardly compresses; real CT deflates about 2:1, which costs more inflation time.
  Generated once under the work folder and reused while the spec is unchanged.
- Receivers, started fresh on 127.0.0.1 for every single run (new storage, new port), so nothing is a duplicate
  on the receiver: {receivers}.
- Senders: our `dicom_zip_watcher.py CONFIG --once` from a fresh copy of the ZIP in a fresh `incoming/`, with a
  fresh ledger (`wait_zip_complete_seconds: 0`, `min_free_disk_mb: 0`, other keys default) and
  `dicom.max_associations` 1, 2, 4; dcmtk `storescu -aec AET -R +sd +r` on the extracted folder (every file
  whatever its name, only the contexts the files need), in the default environment and with `TCP_NODELAY=1`
  (dcmtk disables Nagle's algorithm only when that variable is set); pynetdicom's storescu app
  (`python -m pynetdicom storescu ADDR PORT PATH -r -aec AET`) through `bench/pynetdicom_storescu_nodelay.py`,
  which sets TCP_NODELAY on its socket.
- Time: wall clock from launch to exit, interpreter start-up included; peak RSS from `/usr/bin/time -v`
  (largest resident set of the process and its children). Every run must end with every instance counted at the
  receiver (Orthanc `/statistics`, storescp's log) and, for the watcher, the ZIP in `archive/`.
- Rounds: the first round measures every cell; later rounds repeat, in a shifted order, the cells the targets
  use. Medians over the good runs. A baseline run with Nagle's algorithm on at one end (dcmtk storescu in the
  default environment, or any baseline against the stock Orthanc) waits on a delayed ACK for every instance; when
  still running after {cap:g} s it is stopped and rated on the instances received so far (marked `capped`, time
  `*` extrapolated), and measured once, being steady. Every other run goes to its end.
- The re-run target: after the watcher ma=1 run on the tuned Orthanc, the same ZIP is copied into `incoming/`
  again with the same ledger and the run timed again (every instance is then a duplicate).
- Files are in the page cache for every sender (the ZIP copy was just written; the extracted files were read in
  the previous runs)."""


def write(out: Path, sets: list[Corpus], results: Results, found: list[Check], console: list[str], run: Run) -> None:
    """Write the Markdown report to ``out``, keeping its marked sections from other scenarios at the end."""
    receivers = "; ".join(f"`{r.name}`: {r.description}" for r in (Orthanc, TunedOrthanc, DiscardingStoreSCP))
    corpus_lines = [
        f"- `{c.spec.name}`: {c.spec.label}: {c.count} files, {c.mb:.0f} MB, ZIP {c.zip_bytes / 1e6:.0f} MB"
        for c in sets
    ]
    text = "\n".join(
        [
            "# Benchmarks",
            "",
            f"Generated by `{run.command}` ({run.rounds} rounds, {run.elapsed / 60:.1f} min). Figures, not tests: nothing in the",
            "test suite asserts a timing. Regenerate with `python bench/run.py` (see bench/README.md).",
            "",
            "## Machine",
            "",
            *machine(),
            "",
            "## Corpora",
            "",
            *corpus_lines,
            "",
            "## Targets of the performance issue",
            "",
            markdown_checks(found),
            "",
            "## Results",
            "",
            "`vs dcmtk` is the sender's files/s divided by dcmtk storescu's (default environment) on the same receiver and",
            "corpus; `vs dcmtk NODELAY` the same against dcmtk storescu with `TCP_NODELAY=1`. `runs` is good/total runs.",
            "",
            markdown_table(results),
            "",
            "## Method",
            "",
            METHOD.format(receivers=receivers, cap=run.cap),
            "",
            "## Console output of this run",
            "",
            "```",
            *console,
            "```",
            "",
        ]
    )
    kept = kept_sections(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "".join("\n" + k for k in kept), encoding="utf-8")
