"""CT slices that compress like real CT: a noisy body phantom, 12 bits stored in 16, written as a study.

Random pixels (``zip2pacs.synth``) do not deflate at all; a real CT slice deflates to roughly half its size,
which makes the watcher spend its time inflating. The phantom is an elliptical body (skin, fat, soft tissue,
lungs, organs, spine, a table under it) in air, inside a circular field of view whose outside is padding stored
as 0, with Gaussian noise of a realistic sigma; its shape changes slowly from slice to slice.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from zip2pacs import synth

INTERCEPT = -1024  # stored = HU - INTERCEPT, as zip2pacs.synth's headers say (RescaleIntercept -1024)
NOISE_HU = 22.0  # quantum noise of a standard-dose abdomen slice: 10-30 HU in soft tissue


@functools.lru_cache(maxsize=4)
def _grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Return x, y in [-1, 1] (columns, rows), as float32."""
    y, x = np.mgrid[-1 : 1 : rows * 1j, -1 : 1 : cols * 1j].astype(np.float32)
    return x, y


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0


def body_hu(rows: int, cols: int, z: float) -> np.ndarray:
    """Return the noiseless phantom in HU (float32) at height ``z`` in [0, 1] (0 = pelvis, 1 = shoulders)."""
    x, y = _grid(rows, cols)
    hu = np.full((rows, cols), -1000.0, dtype=np.float32)  # air inside the field of view
    hu[(np.abs(y - 0.78) < 0.03) & (np.abs(x) < 0.8)] = 150.0  # the table
    width, depth = 0.78 + 0.06 * np.sin(3 * z), 0.55 + 0.05 * np.cos(2 * z)
    hu[_ellipse(x, y, 0, 0.1, width, depth)] = -100.0  # subcutaneous fat
    hu[_ellipse(x, y, 0, 0.1, width - 0.07, depth - 0.07)] = 40.0  # muscle and soft tissue
    lungs = max(0.0, z - 0.45) * 1.4  # lungs grow from mid-body to the shoulders
    for side in (-1, 1):
        if lungs > 0:
            hu[_ellipse(x, y, side * 0.32, 0.0, 0.25 * lungs + 0.02, 0.35 * lungs + 0.02)] = -850.0
        organ = (0.6 - 0.1 * side) * (1 - lungs)
        if organ > 0.1:
            hu[_ellipse(x, y, side * 0.28, 0.05, 0.22 * organ, 0.25 * organ)] = 60.0 + 10 * side  # liver, spleen
    hu[_ellipse(x, y, 0, 0.25, 0.06, 0.08)] = 700.0  # vertebral body
    hu[_ellipse(x, y, 0, 0.4, 0.03, 0.03)] = 30.0  # spinal canal
    hu[_ellipse(x, y, 0, -0.05, 0.05, 0.05)] = 200.0  # aorta with contrast
    hu[x**2 + y**2 > 1.0] = INTERCEPT  # outside the reconstruction circle: padding, stored as 0
    return hu


def body_slice(rng: np.random.Generator, rows: int, cols: int, z: float) -> bytes:
    """Return the pixel data of one slice: phantom plus Gaussian noise, 12-bit values in little-endian 16-bit."""
    hu = body_hu(rows, cols, z)
    noisy = hu + rng.standard_normal((rows, cols), dtype=np.float32) * NOISE_HU
    noisy[hu == INTERCEPT] = INTERCEPT  # padding carries no noise
    stored = np.clip(np.rint(noisy - INTERCEPT), 0, 4095).astype("<u2")
    return stored.tobytes()


def write_study(
    folder: Path,
    seed: int,
    n_series: int,
    per_series: int,
    rows: int,
    cols: int,
    patient: tuple[str, str],
) -> list[Path]:
    """Write one study as zip2pacs.synth.write_study does (same UIDs and layout), with phantom pixels."""
    pixels = np.random.default_rng(seed)
    return synth.write_study(
        folder,
        seed,
        n_series,
        per_series,
        rows,
        cols,
        patient,
        pixel_data=lambda i: body_slice(pixels, rows, cols, z=i / max(1, per_series - 1)),
    )
