"""Combining at instrument scale: one detector of multi-extension files,
16-bit frames in float32, the median by partition in place."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from astropy.io import fits

from processing.combine import CombineError, _median_in_place, combine_files


def _mef(directory, rng, n: int, detectors: int = 3, shape=(60, 50)) -> list:
    """n files of ``detectors`` 16-bit extensions CHAN01..., as MUSE writes them."""
    paths = []
    for i in range(n):
        hdus = [fits.PrimaryHDU()]
        for d in range(detectors):
            data = np.rint(rng.normal(1000 + 100 * d, 4, shape)).astype(np.uint16)
            hdus.append(fits.ImageHDU(data, name=f"CHAN{d + 1:02d}"))
        hdus.append(fits.BinTableHDU.from_columns([fits.Column("x", "E", array=np.zeros(3))], name="TABLE"))
        path = directory / f"bias{i:02d}.fits"
        fits.HDUList(hdus).writeto(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("n", [7, 8])  # odd and even: one middle frame, or the mean of two
@pytest.mark.parametrize("hdu", ["CHAN02", 3])
def test_one_detector_of_16_bit_files_is_numpys_median(tmp_path, rng, n, hdu):
    paths = _mef(tmp_path, rng, n)
    cube = np.stack([fits.getdata(p, ext=hdu if isinstance(hdu, int) else None, extname=hdu if isinstance(hdu, str) else None)
                     for p in paths])
    expected = np.median(cube, axis=0)
    for memory in (10**8, 40_000):  # one band, and bands of a few rows
        got = combine_files(paths, hdu=hdu, memory_bytes=memory)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_the_default_is_the_first_image_extension(tmp_path, rng):
    paths = _mef(tmp_path, rng, 3)
    np.testing.assert_array_equal(combine_files(paths), combine_files(paths, hdu="CHAN01"))


@pytest.mark.parametrize(
    "hdu, message",
    [("CHAN09", r"bias00.fits: no HDU 'CHAN09'"), ("TABLE", r"bias00.fits: HDU 'TABLE' is not a 2D image"),
     (0, r"bias00.fits: HDU 0 is not a 2D image"), (17, r"no HDU 17")],
)
def test_a_detector_that_is_not_there_is_named(tmp_path, rng, hdu, message):
    paths = _mef(tmp_path, rng, 2)
    with pytest.raises(CombineError, match=message):
        combine_files(paths, hdu=hdu)


def test_16_bit_detectors_stay_within_memory(tmp_path, rng):
    paths = _mef(tmp_path, rng, 9, detectors=2, shape=(400, 400))
    limit = 4 * 2**20  # the 9 frames alone: 5.8 MB as float32
    tracemalloc.start()
    combine_files(paths, hdu="CHAN02", memory_bytes=limit)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < limit


@pytest.mark.parametrize("n", [1, 2, 5, 6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_in_place_is_numpys_median(rng, n, dtype):
    stack = rng.normal(0, 1, (n, 7, 9)).astype(dtype)
    expected = np.median(stack, axis=0)
    np.testing.assert_array_equal(_median_in_place(stack.copy()), expected)


def test_gaps_still_take_the_median_of_what_is_there(tmp_path, rng):
    paths = []
    frames = rng.normal(100, 5, (5, 20, 30)).astype(np.float32)
    frames[1, 3:6, 4:9] = np.nan
    for i, frame in enumerate(frames):
        fits.PrimaryHDU(frame).writeto(tmp_path / f"g{i}.fits")
        paths.append(tmp_path / f"g{i}.fits")
    np.testing.assert_allclose(combine_files(paths), np.nanmedian(frames, axis=0), rtol=1e-6)
