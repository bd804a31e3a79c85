"""bench/phantom.py: CT slices that deflate like real CT, stored in 12 bits, written as valid Part 10 files."""

from __future__ import annotations

import zlib

import numpy as np
import pydicom

from bench.phantom import body_slice, write_study


def test_a_512_slice_deflates_to_between_40_and_60_percent_of_its_size():
    pixels = body_slice(np.random.default_rng(1), 512, 512, z=0.5)
    assert len(pixels) == 512 * 512 * 2
    assert 0.40 <= len(zlib.compress(pixels, 6)) / len(pixels) <= 0.60


def test_every_stored_value_fits_in_12_bits_and_the_padding_outside_the_field_of_view_is_zero():
    values = np.frombuffer(body_slice(np.random.default_rng(2), 128, 128, z=0.9), dtype="<u2").reshape(128, 128)
    assert values.max() < 4096
    assert values[0, 0] == values[0, -1] == values[-1, 0] == values[-1, -1] == 0
    assert values[64, 64] > 24 + 500  # the middle of the body is tissue, not air (-1000 HU is stored as 24)


def test_the_same_seed_writes_the_same_study_and_each_file_reads_back_with_its_pixels(tmp_path):
    first = write_study(tmp_path / "a", 5, 1, 3, 64, 64, ("BENCH^A", "B5"))
    second = write_study(tmp_path / "b", 5, 1, 3, 64, 64, ("BENCH^A", "B5"))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    ds = pydicom.dcmread(first[1])
    assert (ds.Rows, ds.Columns, ds.BitsStored) == (64, 64, 12)
    assert ds.pixel_array.shape == (64, 64)
