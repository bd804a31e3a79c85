"""Progress: totals from the ZIP's central directory from the start, and rates that agree with the final line."""

from __future__ import annotations

import io
import logging

from tests.unit.test_pipeline import RecordingSCP, make_config, scp, study_zip  # noqa: F401
from zip2pacs.ledger import Ledger
from zip2pacs.pipeline import Pipeline
from zip2pacs.progress import LogProgress, Progress, TerminalProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_terminal_progress_rewrites_one_line_with_share_of_bytes_rates_and_eta():
    stream, clock = io.StringIO(), Clock()
    progress = TerminalProgress(stream, clock)
    progress.start("a.zip", 4, 4_000_000)
    clock.now = 1.0
    progress.update(2, 2_000_000, sent=2)
    assert stream.getvalue().endswith("a.zip: 2/4 entries (50%), 2 sent, 2 files/s, 2.0 MB/s, ETA 1 s")
    clock.now = 1.1
    progress.update(1, 1_000_000)  # too soon: not redrawn
    assert stream.getvalue().count("\r") == 1
    clock.now = 2.0
    progress.update(1, 1_000_000, sent=1)
    progress.finish()
    assert stream.getvalue().endswith("a.zip: 4/4 entries (100%), 3 sent, 2 files/s, 2.0 MB/s, ETA 0 s\n")


def test_log_progress_logs_at_most_once_per_interval(caplog):
    clock = Clock()
    progress = LogProgress(interval=10, clock=clock)
    progress.start("a.zip", 100, 100)
    with caplog.at_level(logging.INFO, logger="zip2pacs.progress"):
        for second in range(1, 26):
            clock.now = float(second)
            progress.update(1, 1)
    assert [r.getMessage().split(":")[1].split()[0] for r in caplog.records] == ["10/100", "20/100"]


class Recording(Progress):
    """Keeps (done, total, done_bytes, total_bytes) at every update."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int, int, int]] = []

    def show(self, final: bool) -> None:
        self.seen.append((self.done, self.total, self.done_bytes, self.total_bytes))


def test_the_total_is_the_whole_zip_from_the_first_update_and_ends_at_100_percent(tmp_path, scp):  # noqa: F811
    config = make_config(tmp_path, scp.port, send_batch_size=1)
    zip_path, uids = study_zip(tmp_path, "study.zip", seed=35, n_series=2, per_series=5)  # 10 instances + 2 junk
    progress = Recording()
    with Ledger(config.state_db) as ledger:
        Pipeline(config, ledger, progress=progress).process_zip(next(iter(_ready(config))))

    totals = {(total, total_bytes) for _, total, _, total_bytes in progress.seen}
    assert len(totals) == 1 and next(iter(totals))[0] == 12  # known before the first file was extracted
    done, total, done_bytes, total_bytes = progress.seen[-1]
    assert (done, done_bytes) == (total, total_bytes)


def _ready(config):
    from zip2pacs.intake import list_zips

    return list_zips(config.watch_dir)
