"""Extraction safety: traversal, links, collisions, limits, corrupt and nested ZIPs, all on real ZIP files."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zip2pacs.unzip import (
    ArchiveError,
    CorruptArchive,
    DiskSpaceLow,
    ExtractedFile,
    Limits,
    UnsafeArchive,
    extract_zip,
)

NO_DISK_MINIMUM = Limits(min_free_bytes=0)


def make_zip(path: Path, entries: Iterable[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED):
    """Write a ZIP with zipfile itself; a ZipInfo entry keeps its crafted name and attributes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests want
        with zipfile.ZipFile(path, "w", method) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, where the mode lives in the high 16 bits of external_attr
    info.external_attr = mode << 16
    return info


@dataclass
class Raw:
    """One entry written byte by byte, for what zipfile refuses to write (lies, flags, methods, raw names)."""

    name: bytes
    payload: bytes  # as stored, i.e. already compressed
    crc: int
    size: int
    method: int = zipfile.ZIP_STORED
    flags: int = 0


def stored(name: bytes, data: bytes, flags: int = 0) -> Raw:
    return Raw(name, data, zlib.crc32(data), len(data), flags=flags)


def write_raw_zip(path: Path, entries: list[Raw]) -> Path:
    body, central = bytearray(), bytearray()
    for e in entries:
        offset = len(body)
        fields = (e.flags, e.method, 0, 0x21, e.crc, len(e.payload), e.size, len(e.name))
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, *fields, 0) + e.name + e.payload
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x031E, 20, *fields, 0, 0, 0, 0, 0, offset) + e.name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def deflated_zeros(name: bytes, mib: int, declared_size: int | None = None) -> Raw:
    """Return an entry of ``mib`` MiB of zeros, built in a blink by repeating one position-independent block."""
    block = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH)
    repeated = c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH)  # refers only to earlier zeros, so it can repeat
    payload = first + repeated * (mib - 1) + c.flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    size = mib << 20 if declared_size is None else declared_size
    return Raw(name, payload, crc, size, method=zipfile.ZIP_DEFLATED)


def files_under(root: Path) -> set[Path]:
    return {
        Path(d, f) for d, dirs, files in os.walk(root) for f in files + [x for x in dirs if Path(d, x).is_symlink()]
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_nested_folders_round_trip_with_sha256_and_on_file_in_entry_order(tmp_path):
    contents = {"study/series1/IM0001": b"one" * 1000, "study/series2/IM0002": os.urandom(5000), "README.txt": b""}
    zip_path = make_zip(tmp_path / "export.zip", [("study/", b""), *contents.items()])
    seen: list[ExtractedFile] = []

    def on_file(f: ExtractedFile) -> None:
        assert hashlib.sha256(f.path.read_bytes()).hexdigest() == f.sha256  # complete and closed when reported
        seen.append(f)

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM, on_file=on_file)

    assert result.root == tmp_path / "out"
    assert [f.arcname for f in result.files] == list(contents)
    assert seen == list(result.files)
    for f in result.files:
        assert f.path == tmp_path / "out" / f.arcname
        assert (f.size, f.sha256) == (len(contents[f.arcname]), sha(contents[f.arcname]))
    assert result.skipped == ()


@pytest.mark.parametrize(
    ("name", "lands_at"),
    [
        ("../x", "x"),
        ("/etc/x", "etc/x"),
        ("C:\\x", "x"),
        ("C:x", "x"),
        ("..\\..\\x", "x"),
        ("a/../../x", "a/x"),
        ("\\\\server\\share\\x", "server/share/x"),
        ("./.../a/./x", "a/x"),
    ],
)
def test_traversal_names_land_inside_the_destination(tmp_path, name, lands_at):
    sandbox = tmp_path / "sandbox"
    dest = sandbox / "deep" / "er" / "dest"
    zip_path = make_zip(tmp_path / "evil.zip", [(zipfile.ZipInfo(name), b"payload")])

    result = extract_zip(zip_path, dest, NO_DISK_MINIMUM)

    assert [f.path for f in result.files] == [dest / lands_at]
    assert files_under(sandbox) == {dest / lands_at}


def test_symbolic_link_entry_is_skipped_and_no_link_is_created(tmp_path):
    zip_path = make_zip(tmp_path / "link.zip", [(entry("passwd", stat.S_IFLNK | 0o777), b"/etc/passwd")])

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert result.files == ()
    assert result.skipped == (("passwd", "symbolic link (links are never extracted)"),)
    assert files_under(tmp_path / "out") == set()


def test_a_folder_of_the_destination_that_is_a_link_outside_gets_no_file_however_many_entries_go_there(tmp_path):
    outside, dest = tmp_path / "outside", tmp_path / "work"
    outside.mkdir()
    dest.mkdir()
    (dest / "CD").symlink_to(outside)  # left there by someone else: extraction must not follow it
    zp = make_zip(tmp_path / "a.zip", [("CD/IM1", b"one"), ("CD/IM2", b"two"), ("OK/IM3", b"three")])
    result = extract_zip(zp, dest)
    assert [arc for arc, _ in result.skipped] == ["CD/IM1", "CD/IM2"]
    assert all("outside the extraction folder" in why for _, why in result.skipped)
    assert list(outside.iterdir()) == [] and [f.arcname for f in result.files] == ["OK/IM3"]


def test_fifo_and_device_entries_are_skipped(tmp_path):
    zip_path = make_zip(
        tmp_path / "special.zip",
        [(entry("fifo", stat.S_IFIFO | 0o644), b""), (entry("disk", stat.S_IFBLK | 0o600), b""), ("ok", b"1")],
    )

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert [f.arcname for f in result.files] == ["ok"]
    assert [name for name, _ in result.skipped] == ["fifo", "disk"]
    assert files_under(tmp_path / "out") == {tmp_path / "out" / "ok"}


def test_directory_entries_are_neither_files_nor_skipped(tmp_path):
    zip_path = make_zip(tmp_path / "dirs.zip", [("a/", b""), (entry("b", stat.S_IFDIR | 0o755), b"")])

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert (result.files, result.skipped) == ((), ())


def test_duplicate_names_are_both_kept_under_unique_names(tmp_path):
    zip_path = make_zip(tmp_path / "dup.zip", [("s/IM1.dcm", b"first"), ("s/IM1.dcm", b"second"), ("s/IM1", b"3")])

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    out = tmp_path / "out" / "s"
    assert [(f.path, f.arcname, f.path.read_bytes()) for f in result.files] == [
        (out / "IM1.dcm", "s/IM1.dcm", b"first"),
        (out / "IM1~1.dcm", "s/IM1.dcm", b"second"),
        (out / "IM1", "s/IM1", b"3"),
    ]


def test_names_differing_only_by_case_get_distinct_names_and_folders_are_shared(tmp_path):
    entries = [("Scan.DCM", b"a"), ("scan.dcm", b"b"), ("DIR/x", b"c"), ("dir/y", b"d"), ("dir/X", b"e")]
    zip_path = make_zip(tmp_path / "case.zip", entries)

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    rel = [f.path.relative_to(tmp_path / "out").as_posix() for f in result.files]
    assert rel == ["Scan.DCM", "scan~1.dcm", "DIR/x", "DIR/y", "DIR/X~1"]
    assert len({r.casefold() for r in rel}) == len(rel)  # safe on a case-insensitive file system too
    assert [f.path.read_bytes() for f in result.files] == [b"a", b"b", b"c", b"d", b"e"]


def test_a_file_and_a_folder_with_the_same_name_do_not_clash(tmp_path):
    zip_path = make_zip(tmp_path / "clash.zip", [("a", b"file"), ("A/b", b"inside")])

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert [f.path.relative_to(tmp_path / "out").as_posix() for f in result.files] == ["a", "A~1/b"]


def test_windows_invalid_characters_and_reserved_names_are_made_safe(tmp_path):
    zip_path = make_zip(
        tmp_path / "win.zip", [('a<b>:c"|?*.dcm', b"1"), ("CON", b"2"), ("nul.txt", b"3"), ("x. ", b"4")]
    )

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert [f.path.name for f in result.files] == ["a_b__c____.dcm", "_CON", "_nul.txt", "x"]


def test_cp437_names_and_utf8_names_without_the_flag_are_decoded(tmp_path):
    zip_path = write_raw_zip(
        tmp_path / "names.zip",
        [
            stored("caf\x82.dcm".encode("latin-1"), b"1"),
            stored("ré.dcm".encode(), b"2"),
            stored("ü.dcm".encode(), b"3", 0x800),
        ],
    )

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert [f.arcname for f in result.files] == ["café.dcm", "ré.dcm", "ü.dcm"]
    assert [f.path.name for f in result.files] == ["café.dcm", "ré.dcm", "ü.dcm"]


def test_too_many_entries_are_refused_before_anything_is_written(tmp_path):
    zip_path = make_zip(tmp_path / "many.zip", [(f"f{i}", b"x") for i in range(5)])
    seen: list[ExtractedFile] = []

    with pytest.raises(UnsafeArchive, match="5 entries"):
        extract_zip(zip_path, tmp_path / "out", Limits(max_entries=4, min_free_bytes=0), on_file=seen.append)

    assert seen == []
    assert not (tmp_path / "out").exists()


def test_total_size_above_the_limit_is_refused_and_the_output_removed(tmp_path):
    zip_path = make_zip(tmp_path / "big.zip", [(f"f{i}", os.urandom(1 << 20)) for i in range(3)], zipfile.ZIP_STORED)

    with pytest.raises(UnsafeArchive, match="limit of 2500000 bytes"):
        extract_zip(zip_path, tmp_path / "out", Limits(max_total_bytes=2_500_000, min_free_bytes=0))

    assert not (tmp_path / "out").exists()


def test_compression_ratio_above_the_limit_is_refused(tmp_path):
    zip_path = make_zip(tmp_path / "ratio.zip", [("zeros", bytes(4 << 20))])

    with pytest.raises(UnsafeArchive, match="ratio above 100"):
        extract_zip(zip_path, tmp_path / "out", Limits(max_ratio=100, min_free_bytes=0))

    assert not (tmp_path / "out").exists()


def test_small_entries_that_compress_well_are_not_judged_by_ratio(tmp_path):
    zip_path = make_zip(tmp_path / "small.zip", [("zeros", bytes(512 * 1024))])

    result = extract_zip(zip_path, tmp_path / "out", Limits(max_ratio=10, min_free_bytes=0))

    assert [f.size for f in result.files] == [512 * 1024]


@pytest.mark.parametrize("limits", [Limits(max_total_bytes=50_000_000, min_free_bytes=0), NO_DISK_MINIMUM])
def test_zip_bomb_is_refused_and_leaves_nothing_behind(tmp_path, limits):
    zip_path = write_raw_zip(tmp_path / "bomb.zip", [stored(b"ok", b"fine"), deflated_zeros(b"zeros.dcm", 512)])

    with pytest.raises(UnsafeArchive, match="zip bomb"):
        extract_zip(zip_path, tmp_path / "out", limits)

    assert not (tmp_path / "out").exists()


def test_header_understating_the_size_cannot_make_extraction_write_more(tmp_path):
    zip_path = write_raw_zip(tmp_path / "liar.zip", [deflated_zeros(b"zeros", 64, declared_size=1 << 20)])

    with pytest.raises(CorruptArchive, match="CRC"):
        extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert not (tmp_path / "out").exists()


def test_too_little_free_disk_space_is_refused(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("a", b"1")])

    with pytest.raises(DiskSpaceLow, match="must stay free"):
        extract_zip(zip_path, tmp_path / "out", Limits(min_free_bytes=1 << 62))

    assert not (tmp_path / "out").exists()


def test_encrypted_entry_is_reported_as_corrupt(tmp_path):
    zip_path = write_raw_zip(tmp_path / "enc.zip", [stored(b"IM1", b"x" * 24, flags=0x1)])

    with pytest.raises(CorruptArchive, match=r"entry 'IM1' is encrypted \(password-protected ZIPs are not supported\)"):
        extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)


def test_unsupported_compression_method_is_named_in_the_error(tmp_path):
    zip_path = write_raw_zip(tmp_path / "d64.zip", [Raw(b"IM1", b"\x00" * 10, 0, 100, method=9)])

    with pytest.raises(CorruptArchive, match=r"entry 'IM1' uses compression method 9 \(Deflate64\)"):
        extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_every_method_python_supports_extracts(tmp_path, method):
    data = os.urandom(3000) + bytes(3000)
    zip_path = make_zip(tmp_path / "m.zip", [("IM1", data)], method)

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert [(f.size, f.sha256) for f in result.files] == [(len(data), sha(data))]


def test_truncated_zip_is_corrupt(tmp_path):
    whole = make_zip(tmp_path / "whole.zip", [("IM1", os.urandom(10000))]).read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])

    with pytest.raises(CorruptArchive, match="not a readable ZIP"):
        extract_zip(tmp_path / "cut.zip", tmp_path / "out", NO_DISK_MINIMUM)

    assert not (tmp_path / "out").exists()


def test_damaged_data_is_corrupt_and_leaves_nothing_behind(tmp_path):
    zip_path = make_zip(tmp_path / "bad.zip", [("good", b"fine"), ("IM1", b"a" * 1000)], zipfile.ZIP_STORED)
    data = bytearray(zip_path.read_bytes())
    data[data.index(b"a" * 1000) + 500] = ord("b")
    zip_path.write_bytes(bytes(data))

    with pytest.raises(CorruptArchive, match="entry 'IM1' cannot be read: Bad CRC-32"):
        extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_zip_is_corrupt(tmp_path):
    (tmp_path / "notes.zip").write_bytes(b"just some text, not a zip\n" * 10)

    with pytest.raises(CorruptArchive):
        extract_zip(tmp_path / "notes.zip", tmp_path / "out", NO_DISK_MINIMUM)


def test_empty_zip_gives_an_empty_extraction(tmp_path):
    zip_path = make_zip(tmp_path / "empty.zip", [])

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert (result.files, result.skipped) == ((), ())
    assert (tmp_path / "out").is_dir()


def test_nested_zip_is_extracted_into_a_contents_folder(tmp_path):
    inner = make_zip(tmp_path / "inner.zip", [("a/IM1", b"one"), ("deeper.zip", b"not opened at this depth")])
    zip_path = make_zip(tmp_path / "outer.zip", [("IM0", b"zero"), ("x/Inner.ZIP", inner.read_bytes())])
    out = tmp_path / "out"

    result = extract_zip(zip_path, out, NO_DISK_MINIMUM)

    assert [(f.arcname, f.path) for f in result.files] == [
        ("IM0", out / "IM0"),
        ("x/Inner.ZIP/a/IM1", out / "x/Inner.ZIP.contents/a/IM1"),
        ("x/Inner.ZIP/deeper.zip", out / "x/Inner.ZIP.contents/deeper.zip"),
    ]
    assert files_under(out) == {f.path for f in result.files}  # the inner ZIP itself is gone


def test_nested_zip_is_a_plain_file_when_depth_is_zero(tmp_path):
    inner = make_zip(tmp_path / "inner.zip", [("IM1", b"one")])
    zip_path = make_zip(tmp_path / "outer.zip", [("inner.zip", inner.read_bytes())])

    result = extract_zip(zip_path, tmp_path / "out", Limits(nested_zip_depth=0, min_free_bytes=0))

    assert [(f.arcname, f.sha256) for f in result.files] == [("inner.zip", sha(inner.read_bytes()))]


def test_corrupt_nested_zip_is_kept_as_a_file_for_detection_to_judge(tmp_path):
    zip_path = make_zip(tmp_path / "outer.zip", [("broken.zip", b"PK\x03\x04 but not really"), ("IM1", b"1")])

    result = extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM)

    assert [f.arcname for f in result.files] == ["broken.zip", "IM1"]
    assert result.skipped == ()  # counted once, by detection, not also as a skipped entry


def test_limits_apply_to_the_total_across_nested_zips(tmp_path):
    inner = make_zip(tmp_path / "inner.zip", [("IM1", os.urandom(3 << 20))], zipfile.ZIP_STORED)
    zip_path = make_zip(tmp_path / "outer.zip", [("inner.zip", inner.read_bytes())], zipfile.ZIP_STORED)

    with pytest.raises(UnsafeArchive):
        extract_zip(zip_path, tmp_path / "out", Limits(max_total_bytes=5 << 20, min_free_bytes=0))

    assert not (tmp_path / "out").exists()


def test_an_error_raised_by_on_file_leaves_the_output_to_the_caller(tmp_path):
    zip_path = make_zip(tmp_path / "a.zip", [("IM1", b"1")])

    def on_file(f: ExtractedFile) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        extract_zip(zip_path, tmp_path / "out", NO_DISK_MINIMUM, on_file=on_file)

    # Not a verdict on the ZIP: files already handed to senders must stay until the caller is done.
    assert (tmp_path / "out" / "IM1").exists()


_PARTS = st.one_of(st.sampled_from(["..", ".", "", "C:", "c:x", "a", "A", "x.zip", " .", "con"]), st.text(max_size=6))
_SEPARATORS = st.sampled_from(["/", "\\", "//"])
_MODES = st.sampled_from([0, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o644, stat.S_IFDIR | 0o755])


@st.composite
def _names(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_PARTS, min_size=1, max_size=6))
    name = "".join(p + draw(_SEPARATORS) for p in parts[:-1]) + parts[-1]
    return (draw(st.sampled_from(["", "/", "\\", "C:\\"])) + name).replace("\x00", "")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_names(), _MODES, st.binary(max_size=64)), max_size=6))
def test_nothing_ever_lands_outside_the_destination(entries):
    with tempfile.TemporaryDirectory() as zips, tempfile.TemporaryDirectory() as sandbox:
        infos = []
        for name, mode, data in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            infos.append((info, data))
        zip_path = make_zip(Path(zips, "random.zip"), infos)
        dest = Path(sandbox, "a", "b", "dest")

        try:
            result = extract_zip(zip_path, dest, NO_DISK_MINIMUM)
        except ArchiveError:
            result = None

        found = files_under(Path(sandbox))
        assert all(p.is_relative_to(dest) and not p.is_symlink() for p in found)
        if result is not None:
            assert found == {f.path for f in result.files}


def test_zip64_archive_with_more_than_65535_entries_extracts(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for n in range(65_600):
            zf.writestr(zipfile.ZipInfo(f"d{n}/"), b"")  # folder entries: cheap to write, nothing to extract
        zf.writestr("last/IM1", b"payload")
        zf.writestr(zipfile.ZipInfo("big/IM2"), b"x" * 10, compress_type=zipfile.ZIP_DEFLATED)
    assert b"PK\x06\x06" in path.read_bytes()[-200:], "the archive must use the ZIP64 end of central directory"
    result = extract_zip(path, tmp_path / "out")
    assert sorted(f.arcname for f in result.files) == ["big/IM2", "last/IM1"]
    assert (tmp_path / "out" / "last" / "IM1").read_bytes() == b"payload"


def test_entry_with_zip64_extra_field_extracts(tmp_path: Path) -> None:
    path = tmp_path / "z64.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("IM1", "w", force_zip64=True) as entry:
        entry.write(b"DICM" * 1000)
    result = extract_zip(path, tmp_path / "out")
    assert [f.size for f in result.files] == [4000]
