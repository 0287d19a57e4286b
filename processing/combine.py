"""Combining frames within a memory budget, calibrating, resampling.

Pure array code: paths and arrays in, arrays out. Combining reads a band of
rows from every frame at a time (``hdu.section``), so memory is bounded by
``memory_bytes`` however many and however large the frames are.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archive.exceptions import ObsarchError, UsageError

METHODS = ("median", "mean", "sigclip", "sigclip-median")  # sigclip: sigma-clipped mean
DEFAULT_MEMORY = "2GB"
# Working copies of a band (in its own precision) while reducing it, measured
# (with NaN gaps, the worst case): median 3.8, mean 2.4, sigma-clipped mean
# 7.4; plus the band. A median without gaps partitions the band in place.
# The sigma-clipped median measured 5.0 (5 to 30 frames, gaps or not), but
# 6.0 overran test_combine_stays_within_its_memory (8.3 of 8 MiB): 7.0.
_WORK_COPIES = {"median": 4.8, "mean": 3.4, "sigclip": 8.4, "sigclip-median": 7.0}


class CombineError(ObsarchError):
    pass


def least_memory(frames: int, shape: tuple[int, ...], method: str, work_itemsize: int = 4, output_itemsize: int = 4) -> int:
    """The fewest bytes :func:`combine_files` combines ``frames`` images of
    ``shape`` in: the output, and one row of every frame with its working copies."""
    return int(np.prod(shape)) * output_itemsize + int(frames * shape[-1] * work_itemsize * _WORK_COPIES[method])


def parse_memory(text: str | int) -> int:
    """``2GB``, ``500MB``, ``1.5GiB`` or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)\s*([kKmMgGtT]?i?[bB]?)\s*", str(text))
    if not match or float(match[1]) <= 0:
        raise UsageError(f"--memory {text!r}: give a size such as 2GB or 500MB")
    number, unit = float(match[1]), match[2].upper().rstrip("B").rstrip("I")
    factor = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[unit]
    if "I" in match[2].upper():
        factor = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit]
    return int(number * factor)


@dataclass
class _Frame:
    path: Path
    hdul: object
    hdu: object


def _open(path: Path, hdu: int | str | None = None) -> _Frame:
    """The file's image to combine: HDU ``hdu`` (index or EXTNAME), or the first 2D image."""
    from astropy.io import fits

    hdul = fits.open(path, memmap=False, lazy_load_hdus=True)
    try:
        if hdu is not None:  # one detector of a multi-detector file
            try:
                chosen = hdul[hdu]
            except (KeyError, IndexError):
                raise CombineError(f"{path}: no HDU {hdu!r}") from None
            if not isinstance(chosen, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) or len(chosen.shape) != 2 \
                    or 0 in chosen.shape:
                raise CombineError(f"{path}: HDU {hdu!r} is not a 2D image")
            return _Frame(path, hdul, chosen)
        for candidate in hdul:
            if isinstance(candidate, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and len(candidate.shape) == 2 \
                    and 0 not in candidate.shape:
                return _Frame(path, hdul, candidate)
    except BaseException:
        hdul.close()
        raise
    hdul.close()
    raise CombineError(f"{path}: no 2D image to combine")


def _work_dtype(frames: list[_Frame], dtype, subtract: np.ndarray | None) -> type:
    """float32 when every input fits it exactly (16-bit integers, float32) and
    the result is float32: half the memory traffic of float64, so bands twice
    as tall and a median twice as fast; float64 otherwise."""
    if np.dtype(dtype).itemsize > 4 or (subtract is not None and np.asarray(subtract).dtype.itemsize > 4):
        return np.float64
    for frame in frames:
        bitpix = frame.hdu.header.get("BITPIX")
        scaled = frame.hdu.header.get("BSCALE", 1) not in (1, 1.0)
        if bitpix not in (8, 16, -32) or scaled:
            return np.float64
    return np.float32


def combine_files(
    paths: list[Path | str],
    *,
    method: str = "median",
    sigma: float = 3.0,
    scales: list[float] | None = None,
    subtract: np.ndarray | None = None,
    dark: tuple[np.ndarray, Sequence[float]] | None = None,
    memory_bytes: int = parse_memory(DEFAULT_MEMORY),
    dtype=np.float32,
    coverage: np.ndarray | None = None,
    hdu: int | str | list | tuple | None = None,
) -> np.ndarray:
    """Combine same-shaped images by median, mean, sigma-clipped mean
    (``sigclip``: values farther than ``sigma`` standard deviations from the
    mean left out, then the mean) or sigma-clipped median (``sigclip-median``:
    farther from the median, then the median), one clipping pass each.

    ``hdu`` (index or EXTNAME, or a list of one per path) picks one detector
    of multi-extension files; by default the first 2D image of each file.

    ``subtract`` (an image) comes off each image, and ``dark`` (an image,
    and a factor per image) that image times each image's factor, then ``scales`` multiply
    each (flats normalized to 1); NaN pixels are left out, and ``coverage``,
    if given, receives the number of images that had a value. The images
    are read a band of rows at a time so that the working memory stays
    within ``memory_bytes`` (the output itself, one image of ``dtype``,
    counts too). ``hdu`` (index or EXTNAME) picks one detector of
    multi-extension files; by default the first 2D image of each file.
    """
    if method not in METHODS:
        raise CombineError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    clip_reaches(method, sigma, len(paths))
    if not paths:
        raise CombineError("nothing to combine")
    each = hdu if isinstance(hdu, (list, tuple)) else [hdu] * len(paths)
    frames: list[_Frame] = []
    try:
        for p, h in zip(paths, each):
            frames.append(_open(Path(p), h))
        shape = frames[0].hdu.shape
        for frame in frames[1:]:
            if frame.hdu.shape != shape:
                raise CombineError(f"{frame.path}: shape {frame.hdu.shape} differs from {frames[0].path}'s {shape}")
        output = np.empty(shape, dtype=dtype)
        work = _work_dtype(frames, dtype, subtract)
        budget = memory_bytes - output.nbytes
        per_row = least_memory(len(frames), shape, method, np.dtype(work).itemsize, output.itemsize) - output.nbytes
        rows = budget // per_row
        if rows < 1:
            raise CombineError(
                f"--memory {_size(memory_bytes)} is too small: {len(frames)} frames of {shape[1]}x{shape[0]} need at least "
                f"{_size(output.nbytes + per_row)}"
            )
        factors = np.asarray(scales if scales is not None else np.ones(len(frames)), dtype=work)
        band = np.empty((len(frames), min(rows, shape[0]), shape[1]), dtype=work)
        for start in range(0, shape[0], band.shape[1]):
            stop = min(start + band.shape[1], shape[0])
            stack = band[:, : stop - start]
            for i, frame in enumerate(frames):
                stack[i] = frame.hdu.section[start:stop, :]
            if subtract is not None:
                stack -= subtract[start:stop]
            if dark is not None:  # each image's own dark: twilight flats differ in exposure time
                for i, factor in enumerate(dark[1]):
                    stack[i] -= dark[0][start:stop] * factor
            if scales is not None:
                stack *= factors[:, None, None]
            if coverage is not None:
                coverage[start:stop] = np.isfinite(stack).sum(axis=0)
            output[start:stop] = _reduce(stack, method, sigma)
        return output
    finally:
        for frame in frames:
            frame.hdul.close()


@contextmanager
def quiet_numpy() -> Iterator[None]:
    """numpy's RuntimeWarnings (an all-NaN slice, inf - inf, an overflow to
    float32) silenced: the values they warn of are what the product holds,
    and a frame that cannot be used is refused with its reason, in one line;
    a warning's two lines of source would reach the user's terminal."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def clip_reaches(method: str, sigma: float, n: int, option: str | None = None) -> None:
    """Refuse a clip that cannot leave out any value of ``n`` frames. One
    pass with the frames' own standard deviation, the outlier's included,
    puts no value farther than sqrt(n - 1) of them from the mean
    (Samuelson's inequality), nor :func:`_median_reach` from the median: at
    3 sigma a clipped mean of 10 frames, or a clipped median of 7, is the
    plain mean or median, whatever a cosmic ray adds, while its header said
    CLIPSIG = 3. ``option``: the command's option of the clip, named in the
    message of a usage error (a command checks before it reads a pixel)."""
    if not method.startswith("sigclip") or n < 2:
        return
    center, reach = ("mean", math.sqrt(n - 1)) if method == "sigclip" else ("median", _median_reach(n))
    if sigma >= reach:
        error = UsageError if option else CombineError
        raise error(
            f"a clip at {sigma:g} sigma leaves out nothing of {n} frames: one pass puts no value farther than "
            f"{reach:.2f} of their standard deviations from their {center}; clip below {reach:.2f} sigma"
            f"{f' ({option})' if option else ''}, combine more frames, or use the median")


def clip_minimum(method: str, sigma: float, most: int = 100_000) -> int | None:
    """The fewest values a clip at ``sigma`` can leave one of out (see
    :func:`clip_reaches`): where fewer frames overlap (a stack's edges) the
    clipped mean is the plain mean. None when no method clips, or when
    even ``most`` frames would not do."""
    if not method.startswith("sigclip"):
        return None
    reach = (lambda n: math.sqrt(n - 1)) if method == "sigclip" else _median_reach
    low, high = 2, most
    if reach(high) <= sigma:
        return None
    while low < high:  # each reach grows with n
        middle = (low + high) // 2
        if reach(middle) > sigma:
            high = middle
        else:
            low = middle + 1
    return low


def _median_reach(n: int) -> float:
    """The farthest any of ``n`` values can lie from their median, in their
    standard deviations: the values below the median at it, those above but
    the farthest at 1 / (n - q) of its distance (q of them), which makes
    their spread least."""
    if n < 3:
        return 1.0
    q = n - n // 2 - 2
    a = 1 / (n - q)
    total, squares = q * a + 1, q * a * a + 1
    return 1 / math.sqrt(squares / n - (total / n) ** 2)


def _reduce(stack: np.ndarray, method: str, sigma: float) -> np.ndarray:
    """Combine a band of frames (the band is scratch: it may be reordered)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        gaps = bool(np.isnan(stack).any())
        if method == "median":
            return np.nanmedian(stack, axis=0) if gaps else _median_in_place(stack)
        if method == "mean":
            return np.nanmean(stack, axis=0) if gaps else np.mean(stack, axis=0)
        from astropy.stats import sigma_clip
        from astropy.utils.exceptions import AstropyUserWarning

        warnings.simplefilter("ignore", AstropyUserWarning)  # NaN gaps (stack edges) are meant
        if method == "sigclip-median":  # as ccdproc's Combiner: clip about the median, then its median
            clipped = sigma_clip(stack, sigma=sigma, maxiters=1, cenfunc="median", stdfunc="std", axis=0, masked=False,
                                 copy=False)  # clipped values become NaN in the band itself
            return np.nanmedian(clipped, axis=0)
        clipped = sigma_clip(stack, sigma=sigma, maxiters=1, cenfunc="mean", stdfunc="std", axis=0, masked=True)
        return np.ma.mean(clipped, axis=0).filled(np.nan)


def _median_in_place(stack: np.ndarray) -> np.ndarray:
    """``np.median(stack, axis=0)`` by partitioning the band in place around
    its middle frame(s): numpy's median also partitions, but on a copy, and
    for floating point around one more element to look for NaN; with no NaN
    (checked by the caller) this is the same value 3-4x faster and needs no
    second band's memory."""
    n = stack.shape[0]
    half = n // 2
    if n % 2:
        stack.partition(half, axis=0)
        return stack[half].copy()
    stack.partition((half - 1, half), axis=0)
    return (stack[half - 1] + stack[half]) / 2


def calibrate_array(
    data: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    dark: np.ndarray | None = None,
    dark_exptime: float | None = None,
    exptime: float | None = None,
    flat: np.ndarray | None = None,
    flat_mean: float | None = None,
) -> np.ndarray:
    """(data - bias - dark * exptime / dark_exptime) / (flat / mean(flat)).

    The dark is a bias-subtracted master scaled by exposure time (seconds);
    the flat is normalized by its mean, as ccdproc's ``flat_correct`` does
    (``flat_mean``: the mean of the whole flat, when the arrays are a band of rows).
    """
    result = np.asarray(data, dtype=np.float64).copy()
    if bias is not None:
        result -= bias
    if dark is not None:
        if not dark_exptime or exptime is None:
            raise CombineError("a dark needs both exposure times to be scaled (EXPTIME of the frame and the dark)")
        result -= dark * (exptime / dark_exptime)
    if flat is not None:
        flat = np.asarray(flat, dtype=np.float64)
        normalized = flat / (np.nanmean(flat) if flat_mean is None else flat_mean)
        with np.errstate(divide="ignore", invalid="ignore"):
            result /= normalized
    return result


def resample(data: np.ndarray, transform, shape: tuple[int, int], order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A frame resampled onto the reference's pixel grid by its transform
    (frame -> reference); returns the image (NaN where the frame does not
    reach) and its coverage (1 where it does).

    A spline reaches past its pixel: a gap (NaN: masked, unflattenable)
    filled with 0 rang through its neighbours (up to 60% of the level one
    pixel away, and counted as covered), and so did the zeros beyond the
    frame's edge. A gap takes its nearest value instead, the image beyond
    the edge its edge, and an output pixel is kept only where the frame's
    pixels within one of where it falls all have a value."""
    from scipy.ndimage import affine_transform, binary_dilation, distance_transform_edt

    inverse = np.linalg.inv(transform.matrix)
    # scipy works in (row, column) = (y, x) order
    matrix = inverse[:2, :2][::-1, ::-1]
    offset = inverse[:2, 2][::-1]
    finite = np.isfinite(data)
    if not finite.any():
        return np.full(shape, np.nan), np.zeros(shape, dtype=np.float32)
    if finite.all():
        filled, usable = np.asarray(data, dtype=np.float64), finite
    else:
        nearest = distance_transform_edt(~finite, return_distances=False, return_indices=True)
        filled = np.asarray(data, dtype=np.float64)[tuple(nearest)]
        usable = ~binary_dilation(~finite, structure=np.ones((3, 3), dtype=bool))
    image = affine_transform(filled, matrix, offset=offset, output_shape=shape, order=order, mode="nearest")
    # bilinear weight of usable pixels: 1 only where every pixel around the point is usable and inside the frame
    weight = affine_transform(usable.astype(np.float32), matrix, offset=offset, output_shape=shape, order=1,
                              mode="constant", cval=0.0)
    covered = weight >= 1 - 1e-4
    image[~covered] = np.nan
    return image, covered.astype(np.float32)
