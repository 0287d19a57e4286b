"""The quality report's data and pictures: tables from the SQL views, and
the pictures of frames (thumbnails, previews, mosaics of detectors) as
0..1 arrays and PNG files. The pages themselves are drawn by :mod:`web`."""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, select, text

from archive.db import transaction
from archive.models import Exposure, File, Root
from processing.quality import QualityError

GRADE_COLOURS = {"great": "#1a9850", "ok": "#91cf60", "marginal": "#fc8d59", "bad": "#d73027", None: "#999999"}
THUMBNAIL_PX = 256


def summary_rows(engine: Engine) -> list[dict]:
    """Counts of science frames per night, band and grade (view ``quality_summary``)."""
    with transaction(engine) as conn:
        rows = conn.execute(text("SELECT night, band, grade, exposures FROM quality_summary ORDER BY night, band, grade"))
        return [dict(row._mapping) for row in rows]


def frame_counts(engine: Engine, ids: list[int] | None = None) -> dict[str, dict[str, int]]:
    """What the quality page shows (every exposure, or ``ids``, as
    :func:`frame_rows`), counted per frame type and per instrument, most first."""
    with transaction(engine) as conn:
        rows = conn.execute(select(Exposure.id, Exposure.frame_type, Exposure.instrument)).all()
    wanted = set(ids) if ids is not None else None
    kept = [row for row in rows if wanted is None or row[0] in wanted]
    counts = {}
    for name, index in (("frame_type", 1), ("instrument", 2)):
        counted = Counter(row[index] or "unknown" for row in kept)
        counts[name] = dict(sorted(counted.items(), key=lambda item: (-item[1], item[0])))
    return counts


def frame_rows(engine: Engine, ids: list[int] | None = None) -> list[dict]:
    """Metrics and current flag of frames (view ``exposure_quality``) with their paths."""
    with transaction(engine) as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM exposure_quality ORDER BY night, band, date_obs, exposure_id"))]
        paths = dict(conn.execute(select(File.id, Root.path + "/" + File.relpath).join(Root, Root.id == File.root_id)).all())
    wanted = set(ids) if ids is not None else None
    result = []
    for row in rows:
        if wanted is not None and row["exposure_id"] not in wanted:
            continue
        row["path"] = paths.get(row["exposure_id"])
        if isinstance(row["date_obs"], str):  # SQLite returns a view's times as text
            row["date_obs"] = datetime.fromisoformat(row["date_obs"])
        result.append(row)
    return result


# -- pictures ------------------------------------------------------------------


STRETCHES = ("zscale", "minmax", "percentile", "asinh")


def downsample_factor(shape: tuple[int, ...], size: int) -> int:
    """The block size :func:`downsample` averages an image of ``shape`` by."""
    return max(1, math.ceil(max(shape) / size))


def downsample(data: np.ndarray, size: int) -> np.ndarray:
    """A block-averaged copy of ``data`` no larger than ``size`` pixels a side."""
    factor = downsample_factor(data.shape, size)
    ny, nx = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(data[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor), axis=(1, 3))


def stretch(data: np.ndarray, how: str = "zscale") -> np.ndarray:
    """``data`` scaled to 0..1: astropy's zscale interval, the full range, the
    0.5-99.5 percentiles, or those percentiles through an asinh stretch."""
    from astropy.visualization import AsinhStretch, MinMaxInterval, PercentileInterval, ZScaleInterval

    finite = data[np.isfinite(data)]
    if finite.size == 0:
        raise QualityError("no finite pixels to show")
    if how not in STRETCHES:
        raise QualityError(f"unknown stretch {how!r}; use one of {', '.join(STRETCHES)}")
    interval = {"zscale": ZScaleInterval(), "minmax": MinMaxInterval()}.get(how, PercentileInterval(99.0))
    low, high = interval.get_limits(finite)
    scaled = np.clip((data - low) / (high - low or 1.0), 0.0, 1.0)
    return AsinhStretch()(scaled) if how == "asinh" else scaled


def thumbnail(data: np.ndarray, size: int = THUMBNAIL_PX) -> np.ndarray:
    """A block-averaged copy of ``data`` no larger than ``size`` pixels, scaled
    to 0..1 with astropy's zscale interval."""
    return stretch(downsample(data, size), "zscale")


def detector_images(path: str | Path, chunk_planes: int = 32) -> list[tuple[int, str | None, np.ndarray]]:
    """Every image of a file as (HDU index, EXTNAME, image): each detector of a
    multi-extension file (by the catalog's rule, :func:`archive.detectors.is_detector`:
    masks, variance and coverage planes are not detectors), a cube as its
    white-light image."""
    from astropy.io import fits

    from processing.detectors import detectors_of
    from processing.quality import _image_of

    images = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                for detector in detectors_of(hdul):
                    hdu = hdul[detector.hdu_index]
                    images.append((detector.hdu_index, hdu.header.get("EXTNAME"), _image_of(hdu, chunk_planes)))
    except (OSError, FileNotFoundError) as exc:
        raise QualityError(f"{path}: cannot read: {exc}") from exc
    if not images:
        raise QualityError(f"{path}: no HDU with image data")
    return images


def picture(path: str | Path, size: int = THUMBNAIL_PX, how: str = "zscale", hdu: int | None = None) -> np.ndarray:
    """A 0..1 picture of a file for people: its one image, or one detector
    (``hdu``), or a mosaic of all its detectors side by side in a grid."""
    images = detector_images(path)
    if hdu is not None:
        images = [item for item in images if item[0] == hdu]
        if not images:
            raise QualityError(f"{path}: HDU {hdu} has no image")
    if len(images) == 1:
        return stretch(downsample(images[0][2], size), how)
    columns = math.ceil(math.sqrt(len(images)))
    tiles = [downsample(data, size // columns) for _, _, data in images]
    return stretch(_mosaic(tiles, columns), how)


def picture_points(xy: np.ndarray, shape: tuple[int, int], size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Where 0-based image pixels ``xy`` fall on the :func:`picture` of one
    image of ``shape`` (numpy order), in its PNG's pixels (y down, since the
    PNG is drawn with FITS y up), and the PNG's (width, height)."""
    factor = downsample_factor(shape, size)
    width, height = shape[1] // factor, shape[0] // factor
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    # a pixel's centre is 0.5 into it; blocks start at pixel 0
    return np.column_stack([(xy[:, 0] + 0.5) / factor, height - (xy[:, 1] + 0.5) / factor]), (width, height)


def _mosaic(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    height, width = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    rows = math.ceil(len(tiles) / columns)
    canvas = np.full((rows * (height + 2), columns * (width + 2)), np.nan, dtype=np.float32)
    for i, tile in enumerate(tiles):  # bottom-up, as origin="lower" draws them
        y, x = (i // columns) * (height + 2), (i % columns) * (width + 2)
        canvas[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return canvas


def write_png(picture_: np.ndarray, target: str | Path) -> None:
    """Save a 0..1 picture as a grey PNG (NaN black), written atomically."""
    from matplotlib.image import imsave

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        imsave(partial, np.nan_to_num(picture_, nan=0.0), cmap="gray", vmin=0.0, vmax=1.0, origin="lower", format="png")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def write_thumbnail(task: tuple[str, str]) -> str | None:
    """Write the thumbnail of one file to a PNG; the reason when it cannot."""
    source, target = task
    try:
        write_png(picture(source), target)
    except (QualityError, ValueError) as exc:
        return str(exc)
    return None
