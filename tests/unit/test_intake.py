"""Intake: which names are ZIPs, when a ZIP is complete, and which observer fits the folder."""

import os
import threading
from pathlib import Path

from zip2pacs.intake import (
    ReadyZip,
    StabilityTracker,
    choose_observer,
    filesystem_type,
    is_candidate,
    list_zips,
    start_observer,
)

MOUNTINFO = """\
22 1 8:32 / / rw,relatime shared:1 - ext4 /dev/sdc rw,discard,errors=remount-ro
60 22 0:53 / /mnt/c rw,noatime shared:28 - 9p C:\\134 rw,dirsync,aname=drvfs;path=C:\\;uid=1000
61 22 0:54 / /mnt/e rw,noatime shared:29 - 9p E:\\134 rw,aname=drvfs;path=E:\\
62 22 0:55 / /srv/share rw,relatime - cifs //nas/share rw
63 22 0:56 / /mnt/with\\040space rw - nfs4 nas:/x rw
"""


def test_zip_names_in_any_case_are_candidates_but_temporary_names_are_not():
    assert is_candidate("study.zip") and is_candidate("STUDY.ZIP") and is_candidate("a.Zip")
    for name in ("study.zip.partial", "study.tmp", "~$study.zip", ".hidden.zip", "study.zip.crdownload", "x.dcm"):
        assert not is_candidate(name), name


def test_list_zips_returns_oldest_first_and_ignores_folders(tmp_path):
    for i, name in enumerate(["b.zip", "a.ZIP", "c.zip"]):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (1000 + i, 1000 + (2 - i)))
    (tmp_path / "folder.zip").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert [z.path.name for z in list_zips(tmp_path)] == ["c.zip", "a.ZIP", "b.zip"]


def test_missing_watch_folder_lists_nothing(tmp_path):
    assert list_zips(tmp_path / "absent") == []


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_zip_is_ready_only_after_size_and_mtime_hold_still():
    clock = Clock()
    tracker = StabilityTracker(5.0, clock)
    z = ReadyZip(Path("/in/a.zip"), 100, 1.0)
    assert tracker.stable([z]) == []
    assert tracker.seconds_to_next() == 5.0
    clock.now = 4.9
    assert tracker.stable([z]) == []
    clock.now = 5.0
    assert tracker.stable([z]) == [z]


def test_changed_mtime_with_same_size_restarts_the_wait():
    # Windows Explorer sets the final size first, then the bytes arrive.
    clock = Clock()
    tracker = StabilityTracker(5.0, clock)
    tracker.stable([ReadyZip(Path("/in/a.zip"), 100, 1.0)])
    clock.now = 4.0
    moved = ReadyZip(Path("/in/a.zip"), 100, 2.0)
    assert tracker.stable([moved]) == []
    clock.now = 8.0
    assert tracker.stable([moved]) == []
    clock.now = 9.0
    assert tracker.stable([moved]) == [moved]


def test_vanished_zip_is_forgotten():
    clock = Clock()
    tracker = StabilityTracker(1.0, clock)
    tracker.stable([ReadyZip(Path("/in/a.zip"), 1, 1.0)])
    tracker.stable([])
    assert tracker.seconds_to_next() is None


def test_zero_wait_makes_a_zip_ready_at_once():
    z = ReadyZip(Path("/in/a.zip"), 1, 1.0)
    assert StabilityTracker(0.0).stable([z]) == [z]


def test_filesystem_type_takes_the_longest_mount_point():
    assert filesystem_type(Path("/mnt/e/exames/incoming"), MOUNTINFO) == "9p"
    assert filesystem_type(Path("/home/user/in"), MOUNTINFO) == "ext4"
    assert filesystem_type(Path("/srv/share/in"), MOUNTINFO) == "cifs"
    assert filesystem_type(Path("/mnt/with space/in"), MOUNTINFO) == "nfs4"
    assert filesystem_type(Path("/mnt/elsewhere"), MOUNTINFO) == "ext4"


def test_auto_observer_polls_on_windows_drives_and_network_shares():
    kind, why = choose_observer(Path("/mnt/e/exames"), "auto", MOUNTINFO)
    assert kind == "polling" and "9p" in why
    assert choose_observer(Path("/srv/share"), "auto", MOUNTINFO)[0] == "polling"
    assert choose_observer(Path("/home/u"), "auto", MOUNTINFO)[0] == "native"
    assert choose_observer(Path("/mnt/e/exames"), "native", MOUNTINFO)[0] == "native"
    assert choose_observer(Path("/home/u"), "polling", MOUNTINFO)[0] == "polling"


def test_observer_wakes_on_a_new_zip_but_not_on_other_files(tmp_path):
    for mode in ("native", "polling"):
        folder = tmp_path / mode
        folder.mkdir()
        wake = threading.Event()
        observer = start_observer(folder, wake, mode, poll_seconds=0.1)
        try:
            (folder / "notes.txt").write_text("x")
            assert not wake.wait(0.5)
            (folder / "study.zip").write_bytes(b"PK")
            assert wake.wait(5), mode
        finally:
            observer.stop()
            observer.join(5)
