"""Quality of frames: image statistics, background, stars, FWHM, elongation,
and the flags that rules and people put on frames.

The pixel functions (:func:`load_image`, :func:`measure`) take arrays and
headers and return numbers; :func:`compute` and :func:`apply_rules` read and
write the catalog.
"""

from __future__ import annotations

import getpass
import math
import statistics
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, delete, insert, literal, select

from archive.db import bulk_insert, serialize, transaction, utcnow
from archive.exceptions import NotFoundError, ObsarchError, SelectionError, UsageError
from archive.models import DetectorMetric, Exposure, File, Flag, Metric, Root
from archive.query import FIELDS, GRADES, UNGRADED, Compiler, all_of, as_tree, current_flag, is_raw_frame, named, select_exposures, shared_frames
from archive.query import ids as query_ids
from processing.executor import Progress
from processing.machinery import Input, Item, ItemFailed, Step, StepResult, Writer, run_step
from processing.runs import file_content, identity, params_hash, recorded_run
from processing.stars import DetectionError, StarField, detect_stars, gaussian_fwhm, unsaturated
from processing.steps import refuse_ambiguous_frames, some_names, without_images

# Bump when the way a metric is computed changes: stored metrics are then
# recomputed on the next `quality compute`.
ALGORITHM = "quality-4"  # 3: every detector measured, the exposure summarized by their median; stars by SEP, FWHM by scipy; 4: repeats

REASONS = ("clouds", "tracking", "focus", "trail", "saturation", "manual", "other")
METRICS = (
    "min", "max", "mean", "median", "std", "background", "background_rms", "saturation_level",
    "saturated_fraction", "nstars", "fwhm", "fwhm_minor", "fwhm_arcsec", "elongation", "sharpness", "pixel_scale",
    "repeats",
)  # fmt: skip
INTEGER_METRICS = ("nstars", "repeats")
LARGEST_OVER_DETECTORS = ("repeats",)  # a jump moves every detector: one that shows it tells


MIN_FINITE_PIXELS, MIN_FINITE_FRACTION = 64, 0.01  # fewer finite pixels than an 8x8 image, or than 1%: not measured


class QualityError(ObsarchError):
    """A frame that cannot be measured; the message says why."""


@dataclass(frozen=True)
class QualityParams:
    """How frames are measured.

    detect_sigma : detection threshold, in background rms
    npixels : connected pixels a source needs
    box_size : background mesh size, pixels
    max_stars : brightest unsaturated stars used for FWHM and sharpness
    elongation_stars : brightest of those whose median elongation is reported
    repeat_stars : brightest unsaturated stars searched for copies at one offset (``repeats``)
    saturation : saturation level in data units (default: SATURATE, else the data type's range)
    chunk_planes : wavelength planes summed at a time for a cube's white-light image
    """

    detect_sigma: float = 5.0
    npixels: int = 5
    box_size: int = 128
    max_stars: int = 20
    elongation_stars: int = 5
    repeat_stars: int = 40
    saturation: float | None = None
    chunk_planes: int = 32

    @classmethod
    def from_config(cls, config: dict | None) -> QualityParams:
        _check_section(config)
        section = dict((config or {}).get("quality", {}))
        section.pop("rules", None)
        try:
            return cls(**section)
        except TypeError as exc:
            raise ObsarchError(f"[quality] in obsarch.toml: {exc}") from exc


def _check_section(config: dict | None) -> None:
    """Refuse an unknown key or a wrong type in [quality] (a configuration
    given as a dict rather than read by :func:`archive.config.load_config`)."""
    from archive.config import SCHEMA, check

    problem = check((config or {}).get("quality", {}), SCHEMA["quality"], "quality")
    if problem:
        raise ObsarchError(f"obsarch.toml: {problem}")


# -- reading the image -----------------------------------------------------------


def load_image(path: str | Path, chunk_planes: int = 32) -> tuple[np.ndarray, dict, int]:
    """The science image of a file: the primary HDU, else the first image
    extension with data (tile-compressed included). A cube (NAXIS=3) gives
    its white-light image, summed ``chunk_planes`` planes at a time so that
    memory stays near one chunk whatever the cube's size.

    Returns the image (float32), its header as a dict, and the HDU index.
    """
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise QualityError(f"{path}: file not found (gone since it was ingested? run `obsarch ingest`)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # No memmap: astropy cannot map scaled (BZERO) integers; a cube is
            # still read a chunk of planes at a time through `section`.
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                for index, hdu in enumerate(hdul):
                    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                        continue
                    shape = hdu.shape
                    if len(shape) < 2 or 0 in shape:
                        continue
                    header = _values(hdu.header)
                    header["__BITPIX__"] = hdu.header.get("BITPIX")
                    if index > 0:  # LCO: the observation's cards are in the primary or here
                        header = {**_values(hdul[0].header), **header}
                    return _image_of(hdu, chunk_planes), header, index
    except OSError as exc:
        raise QualityError(f"{path}: cannot read: {exc}") from exc
    raise QualityError(f"{path}: no HDU with image data")


def _values(header) -> dict:
    """A header's values by keyword (the first card of each; no COMMENT or
    HISTORY). A value astropy cannot parse (IRAF's unquoted ``AIRMASS =
    INDEF``, which the ingest keeps as text) is left out: it is no number to
    use, and reading it raised VerifyError for the whole file."""
    from astropy.io import fits

    values = {}
    for card in header.cards:
        keyword = card.keyword
        if not keyword or keyword in ("COMMENT", "HISTORY") or keyword in values:
            continue
        try:
            values[keyword] = card.value
        except (fits.VerifyError, ValueError):
            continue
    return values


def _image_of(hdu, chunk_planes: int) -> np.ndarray:
    if len(hdu.shape) == 2:
        return np.asarray(hdu.data, dtype=np.float32)
    if len(hdu.shape) != 3:
        raise QualityError(f"cannot measure a {len(hdu.shape)}-dimensional image")
    nplanes = hdu.shape[0]
    white = np.zeros(hdu.shape[1:], dtype=np.float64)
    for start in range(0, nplanes, chunk_planes):
        chunk = np.asarray(hdu.section[start : start + chunk_planes], dtype=np.float32)
        white += np.nansum(chunk, axis=0, dtype=np.float64)
        del chunk
    return white.astype(np.float32)


# -- measuring --------------------------------------------------------------------

_INTEGER_MAX = {8: 255, 16: 32767, 32: 2147483647}


def saturation_level(header: dict, configured: float | None = None, data: np.ndarray | None = None) -> float | None:
    """The level at which pixels saturate, in data units: the configured
    level, else SATURATE, else where integer ``data`` piles up below its
    type's top (:func:`piled_level`), else the top of the integer data
    type's range."""
    if configured is not None:
        return float(configured)
    for key in ("SATURATE", "SATLEVEL", "MAXLIN"):
        value = header.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    top = _type_top(header)
    if top is not None and data is not None:
        return piled_level(np.asarray(data), top) or top
    return top


def _type_top(header: dict) -> float | None:
    bitpix = header.get("__BITPIX__", header.get("BITPIX"))
    if bitpix not in _INTEGER_MAX:
        return None
    bzero, bscale = header.get("BZERO", 0) or 0, header.get("BSCALE", 1) or 1
    return float(_INTEGER_MAX[bitpix] * bscale + bzero)


# At least this many pixels at the very top of integer data, and more than
# twice as many as at each value of the 1% of its range just below (on
# average), make a clip: a 12-bit camera's 4095 in 16-bit data (166 pixels
# of the real MicroObservatory frame HATP-32171220013343, 2 in 4054-4094),
# an overexposed flat whose sky runs up to it, or 65520 where a camera
# shifts its 12 bits left. A star's peak is one pixel; a noise tail thins
# out toward its top.
PILEUP_MIN = 5


def piled_level(values: np.ndarray, top: float) -> float | None:
    """The level integer data (``values``, NaN allowed) is clipped at below
    its data type's ``top``, or None: a 12-bit camera's frames written as
    16-bit integers saturate at 4095, far below 65535, and stars clipped
    there were measured as unsaturated (their FWHM too wide)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all NaN: no level
        high = float(np.nanmax(values)) if values.size else math.nan
    if not high < top:  # NaN too
        return None
    at = int(np.count_nonzero(values == high))
    if at < PILEUP_MIN:
        return None
    window = max(1.0, 0.01 * abs(high))
    below = int(np.count_nonzero((values >= high - window) & (values < high)))
    return high if at > 2 * below / window else None  # per value of the window: an overexposed flat's sky runs up to it


# The highest values of each band that the clip search of a calibrated
# detector keeps: a clip has more pixels at its top than near it, so the top
# few thousand decide it.
_TOP_KEPT = 4096


def raw_saturation_level(hdul, index: int, rows: int | None = None) -> float | None:
    """:func:`saturation_level` of HDU ``index`` as ``quality compute`` reads
    it (the primary's cards under the HDU's, the integer type of its data,
    where its pixels pile up), reading ``rows`` rows at a time."""
    header = {**_values(hdul[0].header), **_values(hdul[index].header), "__BITPIX__": hdul[index].header.get("BITPIX")}
    level = saturation_level(header)
    hdu = hdul[index]
    if level is None or level != _type_top(header) or not hdu.header.get("NAXIS"):
        return level
    height = hdu.shape[0]
    step = rows or max(height, 1)
    tops = []  # each band's highest values, read once (a tile-compressed detector is decompressed once more, not thrice)
    for start in range(0, height, step):
        band = np.asarray(hdu.section[start : start + step], dtype=np.float64).ravel()
        band = band[np.isfinite(band)]
        tops.append(band if band.size <= _TOP_KEPT else np.partition(band, -_TOP_KEPT)[-_TOP_KEPT:])
    return piled_level(np.concatenate(tops), level) or level


def pixel_scale(header: dict) -> float | None:
    """Arcseconds per pixel from PIXSCALE-like cards or the celestial WCS."""
    for key in ("PIXSCALE", "PIXSCAL1", "SECPIX", "SECPIX1", "PLATESCL", "IM_SCALE"):  # IM_SCALE: MicroObservatory
        value = header.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 3600:
            return float(value)
    if str(header.get("CTYPE1", "")).startswith("RA"):
        from astropy.wcs.utils import proj_plane_pixel_scales

        from processing.wcs import celestial_wcs

        wcs = celestial_wcs(header)
        return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0) if wcs is not None else None
    return None


def measure(data: np.ndarray, header: dict | None = None, params: QualityParams = QualityParams()) -> dict:
    """Quality metrics of one image.

    Returns min, max, mean, median, std (data units), sigma-clipped
    background and its rms (photutils Background2D), saturation level and
    the fraction of pixels at or above it, the number of detected sources,
    the median FWHM of the brightest unsaturated stars (pixels, photutils
    ``fit_fwhm``; arcsec when the pixel scale is known), their median
    elongation (second moments, a/b) and sharpness (peak / flux), and
    ``repeats``: how many pairs of bright stars show one star twice (see
    :func:`repeats`). Raises :class:`QualityError` for images that cannot be measured.
    """
    header = header or {}
    if data.ndim != 2 or min(data.shape) < 8:
        raise QualityError(f"image of shape {data.shape} is too small to measure")
    finite = np.isfinite(data)
    values = data[finite] if not finite.all() else data.ravel()
    if values.size == 0:
        raise QualityError("no finite pixels (all NaN)")
    if values.size < max(MIN_FINITE_PIXELS, MIN_FINITE_FRACTION * data.size):  # a background of 2 pixels is no background
        raise QualityError(f"only {values.size} finite pixels of {data.size}: too few to measure")
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise QualityError(f"constant image (every pixel is {low:g})")
    result = {
        "min": low, "max": high, "mean": float(values.mean(dtype=np.float64)),
        "median": float(np.median(values)), "std": float(values.std(dtype=np.float64)),
    }
    level = saturation_level(header, params.saturation, values)
    result["saturation_level"] = level
    result["saturated_fraction"] = float(np.count_nonzero(values >= level) / values.size) if level else None
    result["pixel_scale"] = pixel_scale(header)
    result.update(_stars(data, ~finite, level, params))
    scale = result["pixel_scale"]
    result["fwhm_arcsec"] = result["fwhm"] * scale if scale and result["fwhm"] is not None else None
    return result


def _stars(data: np.ndarray, mask: np.ndarray, level: float | None, params: QualityParams) -> dict:
    try:
        field = detect_stars(data, mask=mask if mask.any() else None, detect_sigma=params.detect_sigma,
                             npixels=params.npixels, box_size=params.box_size)
    except DetectionError as exc:
        raise QualityError(str(exc)) from exc
    result = {
        "background": field.background, "background_rms": field.background_rms,
        "nstars": len(field.stars), "fwhm": None, "fwhm_minor": None, "elongation": None, "sharpness": None,
        "repeats": None,
    }
    stars = _pick_stars(field, level, data.shape, max(params.max_stars, params.repeat_stars))
    if not len(stars):
        return result
    result["repeats"] = repeats(stars[: params.repeat_stars])
    stars = stars[: params.max_stars]
    # Trails show best in the brightest stars: a faint star's trail breaks
    # into round blobs in the noise. Elongation is therefore the median of
    # the brightest few; a trail broken into dots is caught by ``repeats``.
    result["elongation"] = float(np.median(stars["elongation"][: params.elongation_stars]))
    result["sharpness"] = float(np.median(stars["peak"] / stars["flux"]))
    result["fwhm"], result["fwhm_minor"] = _fit_fwhm(field.subtracted, stars, mask)
    return result


_EDGE_PX = 20  # half the largest FWHM fitting box

# A copy of a star is at the same offset (within REPEAT_TOLERANCE_PX) and the
# same flux ratio (within REPEAT_RATIO_DEX) as the other copies. An
# offset so shared is a repeat only when chance would share it this often
# with a probability under REPEAT_FALSE_ALARM, all pairs considered.
REPEAT_TOLERANCE_PX = 3.0
REPEAT_RATIO_DEX = 0.3
REPEAT_FALSE_ALARM = 1e-4
_LOCAL_RADIUS_PX = 8 * REPEAT_TOLERANCE_PX  # the neighbourhood of offsets that says how crowded they are there


def repeats(stars: np.ndarray) -> int | None:
    """How many pairs of ``stars`` show one star twice: the largest number of
    pairs with one common offset and flux ratio, when chance cannot explain
    it (else 0; None with fewer than 4 round stars to compare).

    A telescope bumped or jumping during an exposure leaves every star at two
    or more places (UB17-033 of the real frames: each star and a dotted
    trail ~310 px away). Each copy is round, so elongation misses it; but
    the offset between a star and its copy is the same for every star, and
    so is their flux ratio. Unrelated stars share an offset by chance, the
    more so where they crowd (a cluster): the count is compared with the
    larger of two Poisson expectations, for stars scattered uniformly over
    the area they cover and for the density of the frame's own pair offsets
    around this one, with every pair tried as the offset. Only round
    sources of the stars' usual size take part, so hot columns, dust rings
    and blends do not. The two images of a jump need not look alike (UB17-033:
    the first is the head of a dotted trail, the last, where the telescope
    stayed, brighter and larger), so their sizes are not compared: an optical
    ghost as sharp as its star, at one offset, counts too (it is at the same
    offset in every frame of the night, where a jump's offset changes).
    """
    from scipy.spatial import cKDTree
    from scipy.stats import poisson

    if len(stars) < 4:
        return None
    size, elongation = stars["size"], stars["elongation"]
    typical = np.median(size)
    stars = stars[(elongation < 2) & (size > 0.5 * typical) & (size < 2 * typical) & (stars["flux"] > 0)]
    if len(stars) < 4:
        return None
    xy = np.column_stack([stars["x"], stars["y"]])
    first, second = np.triu_indices(len(stars), 1)
    offsets = xy[second] - xy[first]
    ratios = np.log10(stars["flux"][second] / stars["flux"][first])
    # A pair's offset has no sign: each is looked for as itself and reversed
    # (with its ratio inverted), so a jump along a column is not split in two.
    tree = cKDTree(np.vstack([offsets, -offsets]))
    signed_ratios = np.concatenate([ratios, -ratios])

    def alike(k: int, indices: list[int]) -> np.ndarray:
        indices = np.asarray(indices, dtype=int)
        return indices[np.abs(signed_ratios[indices] - ratios[k]) <= REPEAT_RATIO_DEX]

    counts = np.array([len(alike(k, near)) for k, near in enumerate(tree.query_ball_point(offsets, REPEAT_TOLERANCE_PX))])
    best = int(np.argmax(counts))
    count = int(counts[best])
    if count < 3:
        return 0
    area = np.pi * REPEAT_TOLERANCE_PX**2
    # Uniformly scattered points: offsets (dx, dy) of density
    # 2 (w - |dx|)(h - |dy|) / (w h)^2 per pair, either sign, in a w x h box
    # along the stars' own axes (a row of stars is one whatever its angle).
    axes = np.linalg.svd(xy - xy.mean(axis=0), full_matrices=False)[2].T
    along = xy @ axes
    width, height = np.ptp(along[:, 0]) + 1.0, np.ptp(along[:, 1]) + 1.0
    dx, dy = np.abs(offsets[best] @ axes)
    density = 2 * max(width - dx, 1.0) * max(height - dy, 1.0) / (width * height) ** 2
    same_ratio = np.mean(np.abs(ratios - ratios[best]) <= REPEAT_RATIO_DEX)
    uniform = (len(offsets) - 1) * density * area * same_ratio
    # The frame's own offsets of that ratio in a ring around this one.
    around = alike(best, tree.query_ball_point(offsets[best], _LOCAL_RADIUS_PX))
    ring = len(around) - count
    local = ring * area / (np.pi * _LOCAL_RADIUS_PX**2 - area)
    false_alarm = poisson.sf(count - 2, max(uniform, local)) * len(offsets)  # P(count - 1 others or more), every pair tried
    return count if false_alarm < REPEAT_FALSE_ALARM else 0


def _pick_stars(field: StarField, level: float | None, shape: tuple, limit: int) -> np.ndarray:
    """The brightest sources that are not saturated and not at the edge,
    with their elongation and moment FWHM."""
    from numpy.lib import recfunctions

    stars = recfunctions.append_fields(field.stars, ("elongation", "size"), (field.elongation, field.fwhm),
                                       usemask=False)
    x, y = stars["x"], stars["y"]
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(stars["size"]) & (stars["flux"] > 0)
    margin = _EDGE_PX
    keep &= (x >= margin) & (y >= margin) & (x <= shape[1] - 1 - margin) & (y <= shape[0] - 1 - margin)
    keep &= unsaturated(field.stars, level)
    return stars[keep][:limit]


def _fit_fwhm(subtracted: np.ndarray, stars: np.ndarray, mask: np.ndarray) -> tuple[float | None, float | None]:
    """Median FWHM of a circular Gaussian fit to each star, and median FWHM
    along the stars' minor axes (the fit's FWHM over the square root of the
    star's elongation: a circular fit to an elliptical star gives about the
    geometric mean of its axes). A trail stretches the first, not the second,
    so focus is judged on the second."""
    guess = float(np.median(stars["size"]))
    fit_shape = int(min(41, max(7, 2 * math.ceil(1.5 * guess) + 1)))
    xy = np.column_stack([stars["x"], stars["y"]])
    fwhm = gaussian_fwhm(subtracted, xy, fit_shape, mask if mask.any() else None)
    elongation = stars["elongation"]
    good = np.isfinite(fwhm) & (fwhm > 0) & np.isfinite(elongation)
    if not good.any():
        return None, None
    return float(np.median(fwhm[good])), float(np.median(fwhm[good] / np.sqrt(elongation[good])))


def measure_file(task: tuple) -> list[tuple[str, int, dict | None, str | None]]:
    """(detector, HDU index, metrics, error) of every detector of one file
    (``hdus``: the ones named), measured one at a time: a cube gives its
    white-light image; a detector that cannot be measured costs only itself.
    Runs in a worker."""
    from archive.detectors import select_detectors
    from processing import detectors as pixels

    path, params, *rest = task
    hdus = rest[0] if rest else None
    results = []
    with pixels.opened(path) as hdul:
        detectors = select_detectors(pixels.detectors_of(hdul), hdus)
        if not detectors:
            raise QualityError(f"{path}: no HDU with image data")
        primary = _values(hdul[0].header)  # a card astropy cannot parse (EXPTIME = NaN) is left out, not fatal
        for detector in detectors:
            try:
                hdu = hdul[detector.hdu_index]
                header = {**primary, **_values(hdu.header)}
                header["__BITPIX__"] = hdu.header.get("BITPIX")
                metrics = measure(_image_of(hdu, params.chunk_planes), header, params)
                results.append((detector.name, detector.hdu_index, metrics, None))
            except (OSError, ValueError, TypeError, KeyError, ObsarchError) as exc:  # a corrupt tile, say
                results.append((detector.name, detector.hdu_index, None, f"detector {detector.name}: {exc}"))
    return results


def summary_of(detectors: list[tuple[str, int, dict | None, str | None]]) -> tuple[int | None, dict | None, str | None]:
    """The exposure's metrics: the median over its detectors that were measured
    (a single detector's own), its HDU index when it has one detector, and
    an error only when no detector could be measured."""
    measured = [metrics for _, _, metrics, _ in detectors if metrics is not None]
    hdu_index = detectors[0][1] if len(detectors) == 1 else None
    if not measured:
        return hdu_index, None, "; ".join(error for *_, error in detectors if error)
    summary = {}
    for name in METRICS:
        values = [m[name] for m in measured if m.get(name) is not None]
        summary[name] = (max(values) if name in LARGEST_OVER_DETECTORS else float(np.median(values))) if values else None
    for name in INTEGER_METRICS:
        if summary.get(name) is not None:
            summary[name] = int(round(summary[name]))
    return hdu_index, summary, None


# -- computing over a selection ----------------------------------------------------


METRIC_COLUMNS = ("exposure_id", "run_id", "params_hash", "file_version", "hdu_index", "error", *METRICS)
DETECTOR_METRIC_COLUMNS = ("exposure_id", "detector", "hdu_index", "run_id", "error", *METRICS)


class QualityStep(Step):
    """Measure exposures; each one's metrics (or why it could not be
    measured) replace its earlier ones."""

    name, algorithm = "quality", ALGORITHM
    execution = {"chunk_planes": QualityParams().chunk_planes}  # a cube summed in more or fewer planes at a time
    work = staticmethod(measure_file)

    def __init__(self, selection, params: QualityParams, ids: list[int] | None = None, hdus: tuple[str, ...] | None = None):
        self.selection, self.quality, self.ids, self.hdus = selection, params, ids, hdus
        self.digest = params_hash("quality", {**identity(asdict(params), self.execution), **({"hdus": list(hdus)} if hdus else {})}, ALGORITHM)

    def params(self) -> dict:
        return asdict(self.quality)

    def items(self, engine) -> list[Item]:
        statement = select_exposures(
            all_of(self.selection, query_ids(self.ids) if self.ids is not None else None), engine.dialect.name,
            (Root.path + "/" + File.relpath).label("path"), File.id.label("file_id"), File.relpath, File.version, File.status,
            File.header_hash, File.size, File.mtime_ns, Exposure.n_detectors,
            Metric.params_hash, Metric.file_version.label("measured_version"), Metric.error.label("measure_error"),
        ).outerjoin(Metric, Metric.exposure_id == Exposure.id).order_by(Exposure.id)
        with transaction(engine) as conn:
            refuse_ambiguous_frames(conn, all_of(self.selection))
            rows = conn.execute(statement).all()
        if not rows and self.ids is None:  # as calibrate, offsets and stack say it: not "0 done", exit 0
            raise ObsarchError(f"no exposure matches {self.selection!r}" if isinstance(self.selection, str)
                               else "no exposure to measure: the catalog has none" if self.selection is None
                               else "no exposure matches the selection")
        kept, self.said = without_images(rows)
        if rows and not kept:
            raise ObsarchError(f"nothing to measure: the {len(rows)} exposure{'s' if len(rows) > 1 else ''} selected "
                               f"{'have' if len(rows) > 1 else 'has'} no image ({some_names([Path(r.path).name for r in rows])})")
        # the frame is the item's input: the machinery refuses one cut or rewritten since its ingest
        return [Item(row.path, (row.path, self.quality, self.hdus), data=row,
                     inputs=[] if row.status == "missing" else [Input(row.file_id, "frame", file_content(row))],
                     error=f"{row.path}: the file is missing" if row.status == "missing" else None)
                for row in kept]

    def up_to_date(self, engine, items, prints) -> set[str]:
        """Frames measured with these parameters from this version of their file
        (a frame that could not be measured is tried again: it is not done)."""
        return {item.key for item in items if item.data.params_hash == self.digest
                and item.data.measured_version == item.data.version and item.data.measure_error is None}

    def write(self, out: Writer, item: Item, result) -> None:
        hdu_index, metrics, error = summary_of(result)
        self._store(out, item, hdu_index, metrics, error, result)
        if error:  # no detector could be measured: the frame failed, with its reasons stored
            raise ItemFailed(error)
        failed = [why for *_, why in result if why]
        if failed:  # the exposure is the median of the others: said, not hidden in detector_metrics
            out.note(f"{Path(item.key).name}: {len(failed)} of {len(result)} detectors not measured, "
                     f"its metrics are the others': {'; '.join(failed[:3])}{' ...' if len(failed) > 3 else ''}")

    def record_failure(self, out: Writer, item: Item, reason: str) -> None:
        self._store(out, item, None, None, reason, [])

    def _store(self, out: Writer, item: Item, hdu_index, metrics, error, detectors) -> None:
        """The exposure's summary in ``metrics``, each detector's in ``detector_metrics``.

        A failure never replaces a measurement of the same version of the file:
        an --hdu its file lacks, or the file cut on disk since its ingest, erased
        the metrics of the version the catalog holds (a user trial). The failure
        is still reported; the metrics stay, and the note says so."""
        if metrics is None and item.data.measure_error is None and item.data.params_hash is not None \
                and item.data.measured_version == item.data.version:
            out.note(f"{Path(item.key).name}: its metrics of this version of the file are kept")
            return
        out.conn.execute(delete(Metric).where(Metric.exposure_id == item.data.id))
        out.conn.execute(delete(DetectorMetric).where(DetectorMetric.exposure_id == item.data.id))
        bulk_insert(out.conn, "metrics", METRIC_COLUMNS,
                    [_metric_row(item.data.id, out.run_id, self.digest, item.data.version, hdu_index, metrics, error)])
        rows = [(item.data.id, name, index, out.run_id, why, *(_plain((values or {}).get(m)) for m in METRICS))
                for name, index, values, why in detectors]
        if rows:
            bulk_insert(out.conn, "detector_metrics", DETECTOR_METRIC_COLUMNS, rows)


def compute(
    engine: Engine,
    selection=None,
    *,
    ids: list[int] | None = None,
    params: QualityParams = QualityParams(),
    force: bool = False,
    workers: int | None = None,
    executor: str = "pool",
    scheduler: str | None = None,
    progress: Progress | None = None,
    hdus: tuple[str, ...] | None = None,
) -> StepResult:
    """Measure every detector (``hdus``: the ones named) of every exposure of
    ``selection`` (a tree, or a person's text)
    and ``ids`` whose metrics are missing, were made with other parameters,
    or predate a change of its file; ``force`` measures them all again.
    Frames are measured in workers; one that cannot be measured is stored
    with its reason and costs only itself; the catalog is written in one
    transaction."""
    return run_step(engine, QualityStep(selection, params, ids, hdus), force=force, executor=executor, workers=workers,
                    scheduler=scheduler, progress=progress)


def _plain(value):
    """A numpy number as the Python number a database driver binds."""
    return value.item() if isinstance(value, np.generic) else value


def _metric_row(exposure_id, run_id, digest, version, hdu_index, metrics, error) -> tuple:
    values = metrics or {}
    return (exposure_id, run_id, digest, version, hdu_index, error, *(values.get(name) for name in METRICS))


# -- flags -------------------------------------------------------------------------


def _check_flag(grade: str, reason: str | None) -> None:
    if grade not in GRADES:
        raise UsageError(f"unknown grade {grade!r}; use one of {', '.join(GRADES)}")
    if reason is not None and reason not in REASONS:
        raise UsageError(f"unknown reason {reason!r}; use one of {', '.join(REASONS)}")


def flag(
    engine: Engine,
    selection: str,
    grade: str,
    *,
    reason: str | None = None,
    note: str | None = None,
    who: str | None = None,
) -> int:
    """A person's verdict on every exposure of ``selection``; returns how many.
    Earlier flags are kept as history."""
    _check_flag(grade, reason)
    named(selection, "flag set")
    with transaction(engine, write=True) as conn:
        _refuse_shared_frames(conn, selection)
        ids = conn.execute(select_exposures(selection, engine.dialect.name).order_by(Exposure.id)).scalars().all()
        if not ids:
            raise ObsarchError(f"no exposure matches {selection!r}; nothing flagged")
        _record_flags(conn, ids, grade, reason, note, who)
    return len(ids)


def _refuse_shared_frames(conn, selection: str) -> None:
    """A frame number that several raw exposures of the selection share
    names no one frame to judge: shared by instruments, refused as every
    command refuses it; by one instrument (a night ingested from two copies,
    a counter that started again), refused as ``obsarch show`` refuses it,
    with the files it names."""
    tree = as_tree(selection)
    shared = shared_frames(conn, tree)
    refuse_ambiguous_frames(conn, tree, shared)
    if shared:
        number, count, _ = shared[0]
        picked = select_exposures(tree, conn.dialect.name, Exposure.frame_number).where(
            Exposure.frame_number == number, is_raw_frame()).subquery()
        ids = select(picked.c.id).order_by(picked.c.id).limit(3)
        named_files = conn.execute(select(Exposure.id, Root.path, File.relpath).join(File, File.id == Exposure.file_id)
                                   .join(Root, Root.id == File.root_id).where(Exposure.id.in_(ids)).order_by(Exposure.id))
        files = ", ".join(f"{path}/{relpath} (id {i})" for i, path, relpath in named_files)
        more = f" and {len(shared) - 1} more frame numbers" if len(shared) > 1 else ""
        raise SelectionError(f"frame {number} is {count} exposures: {files}{more}; nothing flagged: "
                             "name one by its id (\"id == ...\") or path")


def flag_exposures(
    engine: Engine,
    ids: list[int],
    grade: str,
    *,
    reason: str | None = None,
    note: str | None = None,
    who: str | None = None,
) -> list[int]:
    """A person's verdict on the exposures ``ids``, recorded as :func:`flag`
    records it; returns the new flags' ids."""
    _check_flag(grade, reason)
    with transaction(engine, write=True) as conn:
        known = set(conn.execute(select(Exposure.id).where(Exposure.id.in_(ids))).scalars())
        missing = sorted(set(ids) - known)
        if missing:
            raise NotFoundError(f"no exposure with id {', '.join(map(str, missing[:10]))}; nothing flagged")
        return _record_flags(conn, sorted(known), grade, reason, note, who)


def person_reason(grade: str, reason: str | None) -> str | None:
    """The reason a person's flag is recorded with: the one given, else
    'manual' for a frame graded down (bad, marginal)."""
    return reason or ("manual" if grade in ("bad", "marginal") else None)


def _record_flags(conn, ids, grade, reason, note, who) -> list[int]:
    now = utcnow()
    rows = [
        {"exposure_id": i, "grade": grade, "reason": person_reason(grade, reason),
         "note": note, "source": "person", "who": who or getpass.getuser(), "created_at": now}
        for i in ids
    ]
    return list(conn.execute(insert(Flag).returning(Flag.id, sort_by_parameter_order=True), rows).scalars())


def retract_flags(engine: Engine, flag_ids: list[int], who: str) -> tuple[int, list[int]]:
    """Take back flags a person just made (an undo): only ``who``'s own
    flags; returns how many were removed, and the exposures they were of.
    The flags before them are current again, unless a later one is."""
    with transaction(engine, write=True) as conn:
        owned = dict(conn.execute(
            select(Flag.id, Flag.exposure_id).where(Flag.id.in_(flag_ids), Flag.source == "person", Flag.who == who)
        ).all())
        if len(owned) != len(set(flag_ids)):
            raise ObsarchError(f"flags {', '.join(map(str, sorted(set(flag_ids) - set(owned))))} are not {who}'s to take back")
        conn.execute(delete(Flag).where(Flag.id.in_(list(owned))))
    return len(owned), sorted(set(owned.values()))


def metrics_of(engine: Engine, exposure_id: int) -> dict | None:
    """The stored metrics of one exposure (with the run and the reason it
    could not be measured, if so), or None if never measured."""
    with transaction(engine) as conn:
        row = conn.execute(select(*Metric.__table__.columns).where(Metric.exposure_id == exposure_id)).first()
    return None if row is None else row._asdict()


def detector_metrics_of(engine: Engine, exposure_id: int) -> list[dict]:
    """The stored metrics of each detector of one exposure, in HDU order."""
    with transaction(engine) as conn:
        rows = conn.execute(select(*DetectorMetric.__table__.columns).where(DetectorMetric.exposure_id == exposure_id)
                            .order_by(DetectorMetric.hdu_index)).all()
    return [row._asdict() for row in rows]


def flag_history(engine: Engine, exposure_id: int) -> list[dict]:
    """Every flag of an exposure, oldest first, with which one is current."""
    with transaction(engine) as conn:
        rows = conn.execute(
            select(Flag.id, Flag.created_at, Flag.grade, Flag.reason, Flag.source, Flag.rule, Flag.value,
                   Flag.threshold, Flag.who, Flag.note)
            .where(Flag.exposure_id == exposure_id)
            .order_by(Flag.id)
        ).all()
        current = conn.execute(select(current_flag("id", literal(exposure_id)))).scalar()
    return [{**row._asdict(), "current": row.id == current} for row in rows]


# -- rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A metric above (or below) a threshold gives a grade and a reason.
    ``relative``: the threshold is a factor of the median of the frame's
    night and band (computed over frames with that metric, raw frames with
    raw frames and products with products of their kind)."""

    name: str
    metric: str
    grade: str
    reason: str
    above: float | None = None
    below: float | None = None
    relative: bool = False


# Among rules of the same grade the first broken one gives the reason. A
# frame mostly at its saturation level (dome lights, a twilight flat taken
# too late) comes first: its "background" is the saturation level, which
# the clouds rule would read as a bright sky. Focus is judged on the
# minor-axis FWHM, which trailing leaves alone, and comes before tracking:
# defocused stars blend, and blends look elongated.
DEFAULT_RULES = (
    Rule("overexposed", "saturated_fraction", "bad", "saturation", above=0.5),
    Rule("clouds", "background", "bad", "clouds", above=3.0, relative=True),
    Rule("focus", "fwhm_minor", "bad", "focus", above=1.5, relative=True),
    Rule("tracking", "elongation", "bad", "tracking", above=1.8),
    Rule("double", "repeats", "bad", "tracking", above=2),
    Rule("transparency", "nstars", "marginal", "clouds", below=0.4, relative=True),
    Rule("saturation", "saturated_fraction", "marginal", "saturation", above=0.01),
)
MIN_GROUP = 3  # a relative rule needs this many frames of the night and band
# Metrics that grow with the exposure time: a relative rule on one of them
# compares a frame only with those of its night and band whose exposure
# time is within SAME_EXPTIME of its own (a 300 s frame's sky is not clouds
# next to 30 s frames, nor a 30 s frame's fewer stars).
EXPTIME_SCALED = ("min", "max", "mean", "median", "std", "background", "background_rms", "saturated_fraction", "nstars")
SAME_EXPTIME = 1.1  # at most 10% apart: shutter times of one setting differ by milliseconds


def rules_from_config(config: dict | None) -> tuple[Rule, ...]:
    """``[quality.rules.NAME]`` tables of obsarch.toml replace the default of
    that name (``enabled = false`` removes it) or add a rule."""
    _check_section(config)
    rules = {rule.name: rule for rule in DEFAULT_RULES}
    for name, table in (config or {}).get("quality", {}).get("rules", {}).items():
        table = dict(table)
        if not table.pop("enabled", True):
            rules.pop(name, None)
            continue
        base = asdict(rules[name]) if name in rules else {"name": name}
        base.update(table)
        missing = [key for key in ("metric", "grade", "reason") if key not in base]
        if missing:
            raise ObsarchError(f"[quality.rules.{name}] in obsarch.toml: a new rule needs {', '.join(missing)} "
                               f"(the rules it could change are {', '.join(rules)})")
        rule = Rule(**base)
        if rule.metric not in METRICS:
            raise ObsarchError(f"[quality.rules.{name}]: unknown metric {rule.metric!r}; use one of {', '.join(METRICS)}")
        if (rule.above is None) == (rule.below is None):
            raise ObsarchError(f"[quality.rules.{name}]: give exactly one of 'above' or 'below'")
        _check_flag(rule.grade, rule.reason)
        rules[name] = rule
    return tuple(rules.values())


def _threshold(rule: Rule, medians: dict[str, float | None]) -> float | None:
    limit = rule.above if rule.above is not None else rule.below
    if not rule.relative:
        return limit
    median = medians.get(rule.metric)
    return None if median is None else limit * median


def evaluate(row: dict, rules: tuple[Rule, ...], medians: dict[str, float | None]) -> tuple[Rule, float, float] | None:
    """The worst rule a frame breaks (in rule order among equals), with the
    measured value and the threshold; None when it breaks none."""
    return assess(row, rules, medians).broken


@dataclass(frozen=True)
class Assessment:
    """What the rules say of one frame: the worst rule it breaks (with value
    and threshold), the rules that could be checked, and those that could
    not, each with why."""

    broken: tuple[Rule, float, float] | None
    checked: tuple[str, ...]
    skipped: tuple[tuple[str, str, str], ...]  # (rule, kind, why); kind: "unmeasured" or "small group"


def assess(row: dict, rules: tuple[Rule, ...], medians: dict[str, float | None]) -> Assessment:
    """Check every rule that can be checked on ``row``: a rule whose metric
    the frame lacks, or a relative rule whose night and band (and exposure
    time, for EXPTIME_SCALED metrics) have fewer than MIN_GROUP frames with
    that metric, is skipped with its reason."""
    broken, checked, skipped = [], [], []
    for rule in rules:
        value, threshold = row.get(rule.metric), _threshold(rule, medians)
        if value is None or threshold is None:
            skipped.append((rule.name, *_why_skipped(rule, value)))
            continue
        checked.append(rule.name)
        if (rule.above is not None and value > threshold) or (rule.below is not None and value < threshold):
            broken.append((GRADES.index(rule.grade), rule, value, threshold))
    worst = None
    if broken:
        grade = max(g for g, *_ in broken)
        worst = next(tuple(b[1:]) for b in broken if b[0] == grade)
    return Assessment(worst, tuple(checked), tuple(skipped))


def _why_skipped(rule: Rule, value) -> tuple[str, str]:
    if value is None:
        return "unmeasured", f"no {rule.metric}"
    if rule.metric in EXPTIME_SCALED:
        return "small group", f"fewer than {MIN_GROUP} frames of its night, band and exposure time with {rule.metric}"
    return "small group", f"fewer than {MIN_GROUP} frames of its night and band with {rule.metric}"


@dataclass
class RulesSummary:
    """``passed``: graded ok, ``partly_checked`` of them on only some rules;
    ``unchecked``: not graded because no rule could be checked, by kind of
    reason in ``unchecked_why`` (a frame counts once per kind)."""

    run_id: int
    evaluated: int = 0
    flagged: dict | None = None
    passed: int = 0
    partly_checked: int = 0
    unchecked: int = 0
    unchecked_why: dict | None = None
    kept_person: int = 0
    unchanged: int = 0


def apply_rules(engine: Engine, rules: tuple[Rule, ...] = DEFAULT_RULES, selection: str | None = None) -> RulesSummary:
    """Grade every measured science frame of ``selection`` by ``rules``.

    A frame that breaks a rule gets that rule's grade and reason, with the
    measured value and the threshold; one that breaks none of the rules that
    could be checked gets 'ok', its note naming the rules skipped and why.
    A frame on which no rule could be checked is not graded: it stays
    ungraded (a verdict of an earlier run is withdrawn by a flag 'ungraded').
    Frames a person has flagged are left alone, and a frame whose verdict is
    unchanged gets no new flag, so running the rules twice changes nothing.
    """
    params = {"rules": [asdict(r) for r in rules], "min_group": MIN_GROUP, "same_exptime": SAME_EXPTIME}
    measured = _measured(engine.dialect.name, selection)  # a selection that cannot be read records no run
    with recorded_run(engine, "quality-rules", params, ALGORITHM) as run, transaction(engine, write=True) as conn:
        # the frames read and their flags written in one transaction, one run at a time: two runs at once
        # both read the frames unflagged and both flagged them
        serialize(conn, "quality rules")
        groups: dict[tuple, list[dict]] = {}
        for row in (row._asdict() for row in conn.execute(measured)):
            # a raw frame is judged with raw frames, a product with products of its kind: a calibrated
            # frame's sky (bias taken off) is no median for a raw frame's (a user trial: every raw V frame
            # of the demo became "clouds" once its calibrated frames were measured)
            # and only with frames of its camera and binning: the relative rules compare pixels (FWHM in px,
            # sky per px), and a 1x1 frame among 2x2 ones of one seeing was "focus" (a review)
            key = (row["night"], row["band"], row["product"], row["instrument"], row["xbin"], row["ybin"])
            groups.setdefault(key, []).append(row)
        summary = RulesSummary(run.id, flagged={}, unchecked_why={})
        new_flags = []
        now = utcnow()
        for members in groups.values():
            for row, medians in _group_medians(members):
                summary.evaluated += 1
                if row["current_source"] == "person":
                    summary.kept_person += 1
                    continue
                assessment = assess(row, rules, medians)
                if not assessment.checked:
                    new_flags += _not_graded(row, assessment, summary, run.id, now)
                    continue
                flag_row = _rule_flag(row["id"], assessment, run.id, now)
                broken = assessment.broken[0] if assessment.broken else None
                if broken and broken.relative and broken.metric in EXPTIME_SCALED and _exptime_key(row["exptime"]) == ("unknown",):
                    flag_row["note"] += " (its exposure time is unknown: compared with the frames of its night and band whose exposure time is unknown too)"
                if _same_verdict(row, flag_row):
                    summary.unchanged += 1
                    continue
                new_flags.append(flag_row)
                if assessment.broken:
                    reason = assessment.broken[0].reason
                    summary.flagged[reason] = summary.flagged.get(reason, 0) + 1
                else:
                    summary.passed += 1
                    summary.partly_checked += bool(assessment.skipped)
        if new_flags:
            conn.execute(insert(Flag), new_flags)
        run.summary = asdict(summary)
    return summary


def _not_graded(row: dict, assessment: Assessment, summary: RulesSummary, run_id: int, now: datetime) -> list[dict]:
    """Count a frame on which no rule could be checked; the flag that
    withdraws an earlier run's verdict on it, if it has one."""
    summary.unchecked += 1
    for kind in dict.fromkeys(kind for _, kind, _ in assessment.skipped):
        summary.unchecked_why[kind] = summary.unchecked_why.get(kind, 0) + 1
    if row["current_source"] != "rule" or row["current_grade"] == UNGRADED:
        return []
    return [_rule_flag(row["id"], assessment, run_id, now)]


def _same_verdict(row: dict, flag_row: dict) -> bool:
    """Whether the current flag already says this: same grade and rule, and
    for a pass the same rules checked (its note)."""
    same = (row["current_grade"], row["current_rule"]) == (flag_row["grade"], flag_row["rule"])
    return same and (flag_row["rule"] != "passed" or row["current_note"] == flag_row["note"])


def _medians(members: list[dict], metrics: tuple[str, ...] = METRICS) -> dict[str, float | None]:
    medians = {}
    for metric in metrics:
        values = [m[metric] for m in members if m.get(metric) is not None]
        medians[metric] = statistics.median(values) if len(values) >= MIN_GROUP else None
    return medians


_EXPTIME_STEPS = 20  # SAME_EXPTIME in steps of log(exposure time): "within 10%" to half a percent


def _exptime_key(exptime) -> tuple:
    """Frames compare sky with frames of a key near theirs: an unknown (or NaN)
    exposure time with unknown ones, zero or negative with equal ones, and
    a positive one by its log, in steps of 1/_EXPTIME_STEPS of SAME_EXPTIME."""
    if exptime is None or not math.isfinite(exptime):
        return ("unknown",)
    if exptime <= 0:
        return ("exact", exptime)
    return ("log", round(math.log(exptime) / (math.log(SAME_EXPTIME) / _EXPTIME_STEPS)))


def _same_exptime(a: tuple, b: tuple) -> bool:
    if a[0] == b[0] == "log":
        return abs(a[1] - b[1]) <= _EXPTIME_STEPS
    return a == b


def _group_medians(members: list[dict]) -> Iterator[tuple[dict, dict[str, float | None]]]:
    """Each frame of one night and band with the medians it is judged
    against: of the whole group, and for EXPTIME_SCALED metrics of the
    frames with about its exposure time (within SAME_EXPTIME). The work
    grows with the distinct exposure times, not with the frames squared."""
    medians = _medians(members)
    by_key: dict[tuple, list[dict]] = {}
    for row in members:
        by_key.setdefault(_exptime_key(row["exptime"]), []).append(row)
    judged = {key: {**medians, **_medians([m for other, rows in by_key.items() if _same_exptime(key, other) for m in rows],
                                         EXPTIME_SCALED)}
              for key in by_key}
    for row in members:
        yield row, judged[_exptime_key(row["exptime"])]


def _rule_flag(exposure_id: int, assessment: Assessment, run_id: int, now: datetime) -> dict:
    base = {"exposure_id": exposure_id, "reason": None, "source": "rule", "value": None, "threshold": None,
            "who": "rules", "created_at": now, "run_id": run_id}
    skipped = "; ".join(f"{name} ({why})" for name, _, why in assessment.skipped)
    if assessment.broken is None and not assessment.checked:
        # Withdraws an earlier run's verdict: the frame is ungraded again.
        return {**base, "grade": UNGRADED, "rule": "unchecked", "note": f"no rule could be checked: {skipped}"}
    if assessment.broken is None:
        note = (f"passed {', '.join(assessment.checked)}; not checked: {skipped}" if skipped
                else "passed every rule")
        return {**base, "grade": "ok", "rule": "passed", "note": note}
    rule, value, threshold = assessment.broken
    comparison = ">" if rule.above is not None else "<"
    return {**base, "grade": rule.grade, "reason": rule.reason, "rule": rule.name, "value": float(value),
            "threshold": float(threshold), "note": f"{rule.metric} {value:.4g} {comparison} {threshold:.4g}"}


def _measured(dialect: str, selection: str | None):
    """SELECT the science frames with metrics, their night and band, and their current flag."""
    compiler = Compiler(dialect)
    statement = (
        select(
            Exposure.id, Exposure.night, Exposure.band, Exposure.exptime, Exposure.instrument, Exposure.xbin, Exposure.ybin,
            *[getattr(Metric, m) for m in METRICS],
            current_flag("source").label("current_source"), current_flag("grade").label("current_grade"),
            current_flag("rule").label("current_rule"), current_flag("note").label("current_note"),
            FIELDS["product"].expression().label("product"),
        )
        .select_from(Exposure)
        .join(Metric, Metric.exposure_id == Exposure.id)
        .join(File, File.id == Exposure.file_id)
        .join(Root, Root.id == File.root_id)
        # numbers of the file as it is now: a changed file waits for its new ones
        .where(Exposure.frame_type == "science", Metric.error.is_(None), Metric.file_version == File.version)
        .order_by(Exposure.id)
    )
    if (tree := as_tree(selection)) is not None:
        statement = statement.where(compiler(tree))
    return statement
