"""Registering frames: the similarity transform of each frame onto a reference.

``(x_ref, y_ref) = scale * R(rotation) (x, y) + (dx, dy)``, pixels 0-based,
rotation in degrees counter-clockwise.

Methods:

* ``stars``: stars are detected in both frames and matched with no starting
  guess. Triangles of each star and its nearest neighbours are described by
  two side ratios that do not change with shift, rotation or scale; equal
  descriptions propose a transform, the proposal that maps the most stars
  wins, and a least-squares fit over all matched stars, with outliers
  clipped, gives the transform, its uncertainties and the residual.
* ``centroid``: a 2D Gaussian centroid of one star in a box, the manual way.
* ``wcs``: from the two frames' celestial WCS.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, insert, select

from archive.db import rows_in, transaction, utcnow
from archive.exceptions import ObsarchError, UsageError
from archive.formats import counted
from archive.models import Exposure, Group, Offset
from archive.query import is_null
from processing.executor import Progress
from processing.machinery import Input, Item, Step, StepResult, Writer, run_step, unusable_files
from processing.quality import QualityParams, load_image, saturation_level
from processing.stars import DetectionError, detect_stars, unsaturated
from processing.steps import resolve, some_names, without_images

ALGORITHM = "offsets-3"  # 3: stars found by SEP (processing.stars)
MAX_SHIFT_ARCSEC = 120.0  # align catalogs: of one list against the other, about their common centre


class MatchError(ObsarchError):
    """A frame that cannot be registered; the message says why."""


@dataclass(frozen=True)
class Transform:
    dx: float
    dy: float
    rotation: float = 0.0  # degrees, counter-clockwise
    scale: float = 1.0
    dx_err: float | None = None
    dy_err: float | None = None
    rotation_err: float | None = None
    scale_err: float | None = None
    nmatched: int | None = None
    residual: float | None = None
    # (x, y, x_ref, y_ref) of the stars the fit used, for people to see the
    # match; not part of the transform's value, so equality ignores it
    matched: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def matrix(self) -> np.ndarray:
        angle = math.radians(self.rotation)
        c, s = self.scale * math.cos(angle), self.scale * math.sin(angle)
        return np.array([[c, -s, self.dx], [s, c, self.dy], [0.0, 0.0, 1.0]])

    def apply(self, xy: np.ndarray) -> np.ndarray:
        xy = np.atleast_2d(np.asarray(xy, dtype=float))
        return xy @ self.matrix[:2, :2].T + self.matrix[:2, 2]

    def then(self, outer: Transform) -> Transform:
        """This transform followed by ``outer`` (frame -> group reference ->
        global reference); uncertainties add in quadrature."""
        matrix = outer.matrix @ self.matrix
        def quad(a, b):
            return None if a is None or b is None else math.hypot(a, b)
        return Transform(
            dx=float(matrix[0, 2]), dy=float(matrix[1, 2]),
            rotation=math.degrees(math.atan2(matrix[1, 0], matrix[0, 0])),
            scale=float(math.hypot(matrix[0, 0], matrix[1, 0])),
            dx_err=quad(self.dx_err, outer.dx_err), dy_err=quad(self.dy_err, outer.dy_err),
            rotation_err=quad(self.rotation_err, outer.rotation_err), scale_err=quad(self.scale_err, outer.scale_err),
            nmatched=min(x for x in (self.nmatched, outer.nmatched) if x is not None) if self.nmatched or outer.nmatched else None,
            residual=quad(self._residual_or_exact(), outer._residual_or_exact()),
        )

    def _residual_or_exact(self) -> float | None:
        """The residual; 0 for an exact transform (a reference onto itself:
        every uncertainty 0, no stars fitted), so that a group's reference
        composed onto the global one keeps the link's residual."""
        exact = self.residual is None and (self.dx_err, self.dy_err, self.rotation_err, self.scale_err) == (0.0, 0.0, 0.0, 0.0)
        return 0.0 if exact else self.residual


@dataclass(frozen=True)
class MatchParams:
    """max_stars: brightest stars used; neighbours: of each star, for its
    triangles; invariant_tol: on the two side ratios; match_px: distance
    within which a star is matched; min_matched: fewer matched stars is a
    failure; scale_range: plausible scales."""

    max_stars: int = 60
    neighbours: int = 6
    invariant_tol: float = 0.01
    match_px: float = 3.0
    min_matched: int = 5
    scale_range: tuple[float, float] = (0.8, 1.25)
    max_rotation: float | None = None  # degrees; None: any (a meridian flip turns frames by 180)
    max_candidates: int = 400


# -- stars ---------------------------------------------------------------------------


def find_stars(data: np.ndarray, header: dict | None = None, limit: int = 200, detect_sigma: float = 5.0) -> np.ndarray:
    """Centroids (x, y, 0-based) of the brightest unsaturated sources, brightest first."""
    try:
        field = detect_stars(data, detect_sigma=detect_sigma)
    except DetectionError as exc:
        raise MatchError(str(exc)) from exc
    stars = field.stars
    keep = np.isfinite(stars["x"]) & np.isfinite(stars["y"]) & (stars["flux"] > 0)
    keep &= unsaturated(stars, saturation_level(header or {}, data=data))
    return field.xy[keep][:limit]


# -- matching ------------------------------------------------------------------------

# Below this many point pairs, distances by numpy beat a k-d tree, and spare
# a registration worker scipy.spatial's import (~0.3 s of CPU, as much as
# registering four frames).
_BRUTE_FORCE_PAIRS = 1_000_000


def _tree(points: np.ndarray, queries: int):
    """Nearest-neighbour queries on ``points`` (scipy's cKDTree interface)."""
    if len(points) * max(queries, 1) <= _BRUTE_FORCE_PAIRS:
        return _Pairwise(points)
    from scipy.spatial import cKDTree

    return cKDTree(points)


class _Pairwise:
    """cKDTree's ``query`` and ``query_ball_point`` by all pairwise distances."""

    def __init__(self, points: np.ndarray):
        self.points = np.asarray(points, dtype=float).reshape(len(points), -1)

    def _distances(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=float).reshape(len(queries), -1)
        return np.sqrt(((queries[:, None, :] - self.points[None, :, :]) ** 2).sum(axis=2))

    def query(self, queries: np.ndarray, k: int = 1, distance_upper_bound: float = np.inf):
        distances = self._distances(queries)
        count = min(k, len(self.points))
        index = np.argsort(distances, axis=1, kind="stable")[:, :count]
        nearest = np.take_along_axis(distances, index, axis=1)
        if count < k:  # cKDTree pads missing neighbours with inf and n
            pad = k - count
            nearest = np.pad(nearest, ((0, 0), (0, pad)), constant_values=np.inf)
            index = np.pad(index, ((0, 0), (0, pad)), constant_values=len(self.points))
        beyond = nearest > distance_upper_bound
        nearest[beyond], index[beyond] = np.inf, len(self.points)
        return (nearest[:, 0], index[:, 0]) if k == 1 else (nearest, index)

    def query_ball_point(self, queries: np.ndarray, r: float) -> list[list[int]]:
        within = self._distances(queries) <= r
        return [np.flatnonzero(row).tolist() for row in within]


def triangles(xy: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Triangles of each star with pairs of its nearest neighbours.

    Returns their invariants (longest/middle side, middle/shortest side) and
    their vertices ordered by the side opposite each (shortest first), so that
    equal invariants give corresponding vertices.
    """
    n = len(xy)
    if n < 3:
        return np.empty((0, 2)), np.empty((0, 3), dtype=int)
    k = min(neighbours, n - 1)
    _, near = _tree(xy, n).query(xy, k=k + 1)
    seen = set()
    for i in range(n):
        for j, k in itertools.combinations(near[i, 1:], 2):
            seen.add(tuple(sorted((i, int(j), int(k)))))
    vertices = np.array(sorted(seen), dtype=int)
    p = xy[vertices]  # (m, 3, 2)
    # side opposite vertex v
    opposite = np.stack([
        np.linalg.norm(p[:, 1] - p[:, 2], axis=1),
        np.linalg.norm(p[:, 0] - p[:, 2], axis=1),
        np.linalg.norm(p[:, 0] - p[:, 1], axis=1),
    ], axis=1)
    order = np.argsort(opposite, axis=1)
    sides = np.take_along_axis(opposite, order, axis=1)
    good = sides[:, 0] > 1e-6
    invariants = np.column_stack([sides[good, 2] / sides[good, 1], sides[good, 1] / sides[good, 0]])
    return invariants, np.take_along_axis(vertices, order, axis=1)[good]


def fit_similarity(source: np.ndarray, target: np.ndarray) -> tuple[Transform, np.ndarray]:
    """Least-squares similarity transform source -> target, with the
    uncertainties of its parameters; returns it and the residuals (pixels)."""
    n = len(source)
    x, y = source[:, 0], source[:, 1]
    a_matrix = np.zeros((2 * n, 4))
    a_matrix[0::2] = np.column_stack([x, -y, np.ones(n), np.zeros(n)])
    a_matrix[1::2] = np.column_stack([y, x, np.zeros(n), np.ones(n)])
    b = target.reshape(-1)
    params, *_ = np.linalg.lstsq(a_matrix, b, rcond=None)
    a, bb, c, d = params
    residuals = (a_matrix @ params - b).reshape(-1, 2)
    distance = np.hypot(residuals[:, 0], residuals[:, 1])
    dof = max(1, 2 * n - 4)
    variance = float((residuals**2).sum() / dof)
    try:
        covariance = variance * np.linalg.inv(a_matrix.T @ a_matrix)
        errors = np.sqrt(np.clip(np.diag(covariance), 0, None))
    except np.linalg.LinAlgError:
        errors = np.full(4, np.nan)
    scale = math.hypot(a, bb)
    transform = Transform(
        dx=float(c), dy=float(d), rotation=math.degrees(math.atan2(bb, a)), scale=float(scale),
        dx_err=float(errors[2]), dy_err=float(errors[3]),
        rotation_err=math.degrees(float(math.hypot(errors[0], errors[1])) / scale / math.sqrt(2)),
        scale_err=float(math.hypot(errors[0], errors[1]) / math.sqrt(2)),
        nmatched=n, residual=float(np.sqrt(np.mean(distance**2))),
    )
    return transform, distance


def _pairs(source: np.ndarray, target: np.ndarray, transform: Transform, radius: float) -> np.ndarray:
    """Mutual nearest neighbours within ``radius`` after the transform."""
    moved = transform.apply(source)
    d_forward, forward = _tree(target, len(moved)).query(moved, distance_upper_bound=radius)
    _, backward = _tree(moved, len(target)).query(target, distance_upper_bound=radius)
    pairs = [(i, j) for i, (dist, j) in enumerate(zip(d_forward, forward))
             if np.isfinite(dist) and j < len(target) and backward[j] == i]
    return np.array(pairs, dtype=int).reshape(-1, 2)


def match_stars(source: np.ndarray, target: np.ndarray, params: MatchParams = MatchParams()) -> Transform:
    """The transform of star list ``source`` onto ``target``, with no starting
    guess. Raises :class:`MatchError` when too few stars can be matched."""
    all_source, all_target = source, target
    source, target = source[: params.max_stars], target[: params.max_stars]
    if len(source) < 3 or len(target) < 3:
        raise MatchError(f"too few stars to match ({len(source)} in the frame, {len(target)} in the reference)")
    inv_s, tri_s = triangles(source, params.neighbours)
    inv_t, tri_t = triangles(target, params.neighbours)
    if not len(inv_s) or not len(inv_t):
        raise MatchError("no triangles of stars to match")
    candidates = _tree(inv_t, len(inv_s)).query_ball_point(inv_s, r=params.invariant_tol)
    proposals = [(i, j) for i, js in enumerate(candidates) for j in js]
    if not proposals:
        raise MatchError("no triangle of stars in the frame matches one in the reference")
    if len(proposals) > params.max_candidates:
        step = len(proposals) / params.max_candidates
        proposals = [proposals[int(k * step)] for k in range(params.max_candidates)]
    target_tree = _tree(target, len(source))
    best, best_count = None, 0
    enough = max(params.min_matched, int(0.6 * min(len(source), len(target))))
    for i, j in proposals:
        guess, _ = fit_similarity(source[tri_s[i]], target[tri_t[j]])
        if not params.scale_range[0] <= guess.scale <= params.scale_range[1]:
            continue
        if params.max_rotation is not None and abs(guess.rotation) > params.max_rotation:
            continue
        distances, _ = target_tree.query(guess.apply(source), distance_upper_bound=params.match_px)
        count = int(np.isfinite(distances).sum())
        if count > best_count:
            best, best_count = guess, count
            if count >= enough:
                break
    if best is None or best_count < params.min_matched:
        raise MatchError(
            f"no transform maps {params.min_matched} or more stars (best: {best_count} of {len(source)}); "
            "a different field, or too few stars?"
        )
    # Matched on the brightest stars; fitted on every star both frames share.
    return _refine(all_source, all_target, best, params)


def _refine(source: np.ndarray, target: np.ndarray, transform: Transform, params: MatchParams) -> Transform:
    """Least squares over mutual nearest neighbours, clipping pairs farther
    than 3 robust sigmas (from the median distance, so that a few wrong
    pairs cannot inflate it) until the transform settles."""
    radius = params.match_px
    used = None
    for _ in range(8):
        pairs = _pairs(source, target, transform, radius)
        if len(pairs) < params.min_matched:
            raise MatchError(f"only {len(pairs)} stars matched after refining (need {params.min_matched})")
        fitted, distance = fit_similarity(source[pairs[:, 0]], target[pairs[:, 1]])
        sigma = float(np.median(distance)) / 1.1774  # the median of a 2D Gaussian distance is 1.1774 sigma
        keep = distance <= max(3.0 * sigma, 0.02)
        used = pairs
        if keep.sum() >= params.min_matched and not keep.all():
            used = pairs[keep]
            fitted, _ = fit_similarity(source[used[:, 0]], target[used[:, 1]])
        settled = abs(fitted.dx - transform.dx) < 1e-4 and abs(fitted.dy - transform.dy) < 1e-4
        transform = fitted
        radius = min(params.match_px, max(0.5, 4.0 * sigma))
        if settled:
            break
    return replace(transform, matched=np.column_stack([source[used[:, 0]], target[used[:, 1]]]))


# -- the manual way and the WCS way -----------------------------------------------------


def parse_box(text: str) -> tuple[slice, slice]:
    """``x1:x2,y1:y2`` (1-based, inclusive, x first, as IRAF sections) -> numpy slices (rows, columns)."""
    try:
        xs, ys = text.split(",")
        x1, x2 = (int(v) for v in xs.split(":"))
        y1, y2 = (int(v) for v in ys.split(":"))
    except ValueError as exc:
        raise UsageError(f"--box {text!r}: give x1:x2,y1:y2 in 1-based pixels, e.g. 437:485,1171:1204") from exc
    if x2 - x1 < 4 or y2 - y1 < 4 or x1 < 1 or y1 < 1:
        raise UsageError(f"--box {text!r}: the box must be at least 5x5 pixels inside the image")
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def centroid_in_box(data: np.ndarray, box: tuple[slice, slice]) -> tuple[float, float]:
    """(x, y) of the star in ``box`` by photutils ``centroid_2dg``, 0-based."""
    x, y, _ = star_in_box(data, box)
    return x, y


def star_in_box(data: np.ndarray, box: tuple[slice, slice]) -> tuple[float, float, float]:
    """(x, y) of the star in ``box`` (see :func:`centroid_in_box`) and its
    peak: the brightest 3x3 mean above the box's median."""
    from photutils.centroids import centroid_2dg

    rows, cols = box
    if rows.stop > data.shape[0] or cols.stop > data.shape[1]:
        raise MatchError(f"the box runs outside the {data.shape[1]}x{data.shape[0]} image")
    cutout = np.asarray(data[rows, cols], dtype=float)
    cutout = cutout - np.nanmedian(cutout)
    peak = _star_in(cutout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = centroid_2dg(cutout)
    height, width = cutout.shape
    if not (math.isfinite(x) and math.isfinite(y)) or not (1 <= x <= width - 2 and 1 <= y <= height - 2):
        raise MatchError("no star in the box (its centroid is at the box's edge): did it move out?")
    return cols.start + float(x), rows.start + float(y), peak


STAR_SIGMA = 5.0  # a star's peak, averaged over 3x3 pixels, above the box's median in the noise of that average


def _star_in(cutout: np.ndarray) -> float:
    """Refuse a box with no star: a 2D Gaussian fitted to noise alone finds
    a 'centroid' somewhere inside (2 of 5 boxes of pure noise; a star drifted
    140 px out of the box gave an offset of 4 px, stored as ok). A star is
    a 3x3 mean at least STAR_SIGMA of its noise (the box's robust sigma / 3)
    above the median."""
    from astropy.stats import mad_std
    from scipy.ndimage import uniform_filter

    finite = np.nan_to_num(cutout, nan=0.0)
    noise = mad_std(cutout, ignore_nan=True) / 3
    peak = float(uniform_filter(finite, 3, mode="nearest").max())
    if noise > 0 and peak < STAR_SIGMA * noise:
        raise MatchError(f"no star in the box (its brightest 3x3 pixels are {peak / noise:.1f} sigma above its median, "
                         f"a star {STAR_SIGMA:g}): did it move out?")
    return peak


# The star in a frame's box is the reference's when its peak is within this factor of it
# (seeing and thin cloud change it a little; a star 100x fainter is another star)
PEAK_FACTOR = 10.0


def transform_from_wcs(header: dict, reference_header: dict, shape: tuple[int, int]) -> Transform:
    """The transform implied by two celestial WCS, fitted over a grid of the frame."""
    from processing.wcs import celestial_wcs

    def wcs_of(cards: dict):
        wcs = celestial_wcs(cards)
        if wcs is None:
            raise MatchError("no celestial WCS in the header")
        return wcs

    frame_wcs, reference_wcs = wcs_of(header), wcs_of(reference_header)
    ny, nx = shape
    xs, ys = np.meshgrid(np.linspace(0, nx - 1, 7), np.linspace(0, ny - 1, 7))
    grid = np.column_stack([xs.ravel(), ys.ravel()])
    sky = frame_wcs.all_pix2world(grid, 0)
    mapped = reference_wcs.all_world2pix(sky, 0)
    transform, _ = fit_similarity(grid, mapped)
    return transform


# -- one more try: a pure shift by phase correlation ---------------------------------------


def phase_shift(data: np.ndarray, reference: np.ndarray, stars: np.ndarray, reference_stars: np.ndarray,
                params: MatchParams = MatchParams()) -> Transform:
    """The pure shift of a frame onto the reference by phase correlation
    (scikit-image), accepted only when the shifted stars land on the
    reference's: at least ``min_matched`` of them and a third of the fewer
    list (chance coincidences are far fewer). Raises :class:`MatchError`."""
    from skimage.registration import phase_cross_correlation

    if len(stars) == 0 or len(reference_stars) == 0:
        raise MatchError("phase correlation: no stars to confirm its shift")
    rows, cols = min(data.shape[0], reference.shape[0]), min(data.shape[1], reference.shape[1])
    frame = np.nan_to_num(np.asarray(data[:rows, :cols], dtype=np.float64) - np.nanmedian(data))
    target = np.nan_to_num(np.asarray(reference[:rows, :cols], dtype=np.float64) - np.nanmedian(reference))
    with warnings.catch_warnings():  # its error estimate on a blank image warns; the stars judge the shift here
        warnings.simplefilter("ignore")
        (shift_y, shift_x), _, _ = phase_cross_correlation(target, frame, upsample_factor=20)
    guess = Transform(float(shift_x), float(shift_y))
    pairs = _pairs(stars, reference_stars, guess, params.match_px)
    needed = max(params.min_matched, math.ceil(min(len(stars), len(reference_stars)) / 3))
    if len(pairs) < needed:
        raise MatchError(f"phase correlation's shift ({shift_x:+.1f}, {shift_y:+.1f}) puts only {len(pairs)} stars on the "
                         f"reference's (need {needed})")
    moved = stars[pairs[:, 0]] - reference_stars[pairs[:, 1]]
    dx, dy = -moved.mean(axis=0)
    residual = np.hypot(*(moved + [dx, dy]).T)
    error = float(np.sqrt(np.mean(residual**2)) / math.sqrt(len(pairs)))
    return Transform(float(dx), float(dy), 0.0, 1.0, error, error, 0.0, 0.0, int(len(pairs)), float(np.sqrt(np.mean(residual**2))))


# -- over the catalog ------------------------------------------------------------------

METHODS = ("stars", "centroid", "wcs")


@dataclass(frozen=True)
class CurrentOffset:
    """An exposure's current offset (see :func:`archive.query.current_offset`)."""

    offset_id: int
    reference_id: int
    ok: bool
    error: str | None
    transform: Transform | None

    @property
    def identity(self) -> str:
        """What a product made with this offset depends on."""
        t = self.transform
        return f"offset {self.offset_id}" + (f": {t.dx:.4f} {t.dy:.4f} {t.rotation:.5f} {t.scale:.6f}" if t else " failed")


def current_offsets(engine: Engine, ids: list[int]) -> dict[int, CurrentOffset]:
    """The current offset of each exposure of ``ids`` that has one (asked
    500 ids at a time: PostgreSQL refuses more than 65,535 parameters, SQLite
    more than 32,766 in most builds)."""
    from archive.query import current_offset

    with transaction(engine) as conn:
        rows = rows_in(conn, select(Offset).where(Offset.id == current_offset(Offset.exposure_id)), Offset.exposure_id, ids)
    return {
        row.exposure_id: CurrentOffset(row.id, row.reference_id, row.status == "ok", row.error, Transform(
            row.dx, row.dy, row.rotation or 0.0, row.scale or 1.0, row.dx_err, row.dy_err, row.rotation_err, row.scale_err,
            row.nmatched, row.residual) if row.status == "ok" else None)
        for row in rows
    }


def _stars_of(path: str) -> tuple[np.ndarray, dict, tuple[int, int]]:
    data, header, _ = load_image(path, QualityParams().chunk_planes)
    return find_stars(data, header), header, data.shape


def register(task: tuple) -> tuple[Transform, str]:
    """Register one frame onto the reference: (transform, method used). Runs in a worker."""
    path, method, reference, reference_path, params = task
    if method == "reference":
        return Transform(0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0), reference
    if method == "stars":
        data, header, _ = load_image(path, QualityParams().chunk_planes)
        stars = find_stars(data, header)
        try:
            return match_stars(stars, reference, params), "stars"
        except MatchError as first:
            try:
                return phase_shift(data, load_image(reference_path)[0], stars, reference, params), "phase"
            except MatchError as second:
                raise MatchError(f"{first}; {second}") from None
    if method == "centroid":
        box, (x_ref, y_ref, peak_ref, time_ref) = reference
        data, header, _ = load_image(path)
        x, y, peak = star_in_box(data, box)
        _same_star(peak, _exposure_time(header), peak_ref, time_ref)
        return Transform(dx=x_ref - x, dy=y_ref - y, nmatched=1), "centroid"
    data, header, _ = load_image(path)
    return transform_from_wcs(header, reference, data.shape), "wcs"


def chain_step(task: tuple) -> tuple[float, float] | str:
    """The shift of a frame onto another (stars, else phase correlation), or
    why neither registers it. Runs in a worker; never raises (nor warns:
    scikit-image's warnings on a blank frame would reach the terminal)."""
    import warnings

    path, other, params = task
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stars, _, _ = _stars_of(other)
            transform, _ = register((path, "stars", stars, other, params))
        return transform.dx, transform.dy
    except (ObsarchError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def _reference_input(path: str, method: str, box: tuple | None):
    if method == "stars":
        stars, _, _ = _stars_of(path)
        if len(stars) < 3:
            raise MatchError(f"the reference {path} has only {len(stars)} stars to match against")
        return stars
    data, header, _ = load_image(path)
    if method == "centroid":
        if box is None:
            raise UsageError("the centroid method needs --box x1:x2,y1:y2 around one star")
        return box, (*star_in_box(data, box), _exposure_time(header))
    return header


def _exposure_time(cards: dict) -> float | None:
    value = cards.get("EXPTIME", cards.get("EXPOSURE"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _same_star(peak: float, seconds: float | None, peak_ref: float, seconds_ref: float | None) -> None:
    """Refuse a star in the box that is not the reference's: its peak per
    second (per frame when an exposure time is unknown) beyond PEAK_FACTOR of
    the reference's (a 120 s frame of a 10 s reference's star is the same star)."""
    timed = seconds is not None and seconds_ref is not None
    rate, rate_ref = (peak / seconds, peak_ref / seconds_ref) if timed else (peak, peak_ref)
    if rate_ref <= 0 or rate <= 0 or rate_ref / PEAK_FACTOR <= rate <= rate_ref * PEAK_FACTOR:
        return
    ratio = f"{rate_ref / rate:.0f}x fainter" if rate < rate_ref else f"{rate / rate_ref:.0f}x brighter"
    unit = " per second" if timed else ""
    raise MatchError(f"the star in the box is {ratio}{unit} than the reference's (peak {peak:.0f} against {peak_ref:.0f} "
                     "above the median): another star; did the reference's move out?")


def check_method(method: str, box: str | None) -> None:
    """Refuse a method or a box that cannot be used, before any frame is read
    (a command checks it before it chooses a reference)."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; use stars, centroid or wcs")
    if method == "centroid" and box is None:
        raise UsageError("the centroid method needs --box x1:x2,y1:y2 around one star")
    if box is not None:
        parse_box(box)


class OffsetsStep(Step):
    """Register exposures onto a reference; every result is stored (a
    failure with its reason, never numbers)."""

    algorithm = ALGORITHM

    def __init__(self, ids: list[int], reference_id: int, method: str, box: str | None, group_id: int | None,
                 params: MatchParams, stage: int = 1):
        check_method(method, box)
        self.name = f"offsets-{method}"
        self.ids, self.reference_id, self.method, self.box = ids, reference_id, method, box
        self.group_id, self.match, self.stage = group_id, params, stage
        self.stored: dict[int, tuple[int, Transform]] = {}  # exposure -> (offset row id, transform)

    def params(self) -> dict:
        return {"method": self.method, "box": self.box, "reference": self.reference_id, "match": asdict(self.match)}

    def items(self, engine) -> list[Item]:
        frames = {f.exposure_id: f for f in resolve(engine, None, ids=sorted({*self.ids, self.reference_id}))}
        if self.reference_id not in frames:
            raise ObsarchError(f"reference exposure {self.reference_id} is not in the catalog (or its file is missing)")
        if frames[self.reference_id].n_detectors == 0:
            raise ObsarchError(f"reference exposure {self.reference_id} ({frames[self.reference_id].path}) "
                               "holds no image to register onto")
        kept, self.said = without_images(list(frames.values()))  # an event list is no failure of registration
        several = sorted(Path(f.path).name for f in kept if (f.n_detectors or 0) > 1)
        if several:  # measured on one detector: said, since the others are not looked at
            listed = some_names(several, 5)
            self.said = [*self.said, f"registered on its first image HDU, the other detectors not measured: "
                                     f"{len(several)} exposure{'s' if len(several) > 1 else ''} of several detectors ({listed})"]
        imageless = set(frames) - {f.exposure_id for f in kept}
        # the reference is read here, before the machinery checks the items' inputs
        unusable = unusable_files(engine, [frames[self.reference_id].file_id])  # cut or rewritten since the last ingest
        if unusable:
            raise ObsarchError(f"the reference: {unusable[frames[self.reference_id].file_id]}")
        reference_path = frames[self.reference_id].path
        reference = _reference_input(reference_path, self.method, parse_box(self.box) if self.box else None)
        reads = [Input(frames[self.reference_id].file_id, "reference", frames[self.reference_id].content)]
        items = [Item(reference_path, (reference_path, "reference", self.method, None, None), inputs=reads, data=self.reference_id)]
        for exposure_id in self.ids:
            frame = frames.get(exposure_id)
            if exposure_id == self.reference_id or exposure_id in imageless:
                continue
            if frame is None:
                items.append(Item(f"exposure {exposure_id}", error="its file is missing", data=exposure_id))
                continue
            items.append(Item(frame.path, (frame.path, self.method, reference, reference_path, self.match),
                              inputs=[Input(frame.file_id, "frame", frame.content), *reads], data=exposure_id))
        return items

    work = staticmethod(register)

    def write(self, out: Writer, item: Item, result) -> None:
        transform, method = result
        self._store(out, item.data, transform, None, method)

    def record_failure(self, out: Writer, item: Item, reason: str) -> None:
        self._store(out, item.data, None, reason, self.method)

    def _store(self, out: Writer, exposure_id: int, transform, error, method) -> None:
        if exposure_id == self.reference_id and exposure_id not in self.ids:
            # a reference from outside the frames registered (--reference, or a group's link onto the
            # global reference) keeps its own current offset and the group it was measured in
            return
        row = _offset_row(exposure_id, self.reference_id, transform, error, method, self.stage, self.group_id, out.run_id)
        row_id = out.conn.execute(insert(Offset).values(**row).returning(Offset.id)).scalar_one()
        if transform is not None:
            self.stored[exposure_id] = (row_id, transform)


def compute_offsets(
    engine: Engine, ids: list[int], reference_id: int, *, method: str = "stars", box: str | None = None,
    group_id: int | None = None, params: MatchParams = MatchParams(), workers: int | None = None,
    executor: str = "pool", progress: Progress | None = None,
) -> OffsetsResult:
    """Register exposures ``ids`` onto ``reference_id`` and store every result
    (a failure with its reason). A frame the star matcher cannot register
    gets one more try for a pure shift by phase correlation."""
    step = OffsetsStep(ids, reference_id, method, box, group_id, params)
    result = run_step(engine, step, executor=executor, workers=workers, progress=progress)
    return OffsetsResult(result, reference_id, {e: t for e, (_, t) in step.stored.items()},
                         {e: row for e, (row, _) in step.stored.items()})


@dataclass
class OffsetsResult:
    """A :class:`StepResult` with the transforms stored, by exposure."""

    step: StepResult
    reference_id: int
    offsets: dict[int, Transform]
    row_ids: dict[int, int]
    reference_reason: str | None = None

    @property
    def run_id(self):
        return self.step.run_id

    @property
    def measured(self) -> int:
        return len(self.offsets) - (1 if self.reference_id in self.offsets else 0)

    @property
    def failed(self) -> list[tuple[str, str]]:
        return self.step.failed


def choose_reference(engine: Engine, ids: list[int], *, workers: int | None = None, executor: str = "pool") -> tuple[int, str]:
    """The best frame of ``ids`` to register onto, and why: not graded bad,
    the smallest FWHM, then the most stars. Frames without quality metrics
    are measured first."""
    from archive.query import FIELDS

    def rows():
        with transaction(engine) as conn:
            return rows_in(conn, select(Exposure.id, Exposure.frame_number, FIELDS["fwhm"].expression().label("fwhm"),
                                        FIELDS["nstars"].expression().label("nstars"), FIELDS["grade"].expression().label("grade")),
                           Exposure.id, ids)

    found = rows()
    unmeasured = [r.id for r in found if r.fwhm is None]
    if unmeasured:
        from processing.quality import compute

        compute(engine, ids=unmeasured, workers=workers, executor=executor)
        found = rows()
    candidates = [r for r in found if r.grade != "bad" and r.fwhm is not None]
    if not candidates:
        raise ObsarchError("no frame of the selection can be the reference (none measured with stars, or all graded bad); "
                           "give --reference")
    best = min(candidates, key=lambda r: (r.fwhm, -(r.nstars or 0), r.id))
    name = f"frame {best.frame_number}" if best.frame_number is not None else f"exposure {best.id}"
    return best.id, (f"reference: {name} (id {best.id}): FWHM {best.fwhm:.2f} px, {best.nstars} stars; the smallest FWHM "
                     f"of {counted(len(candidates), 'frame')} not graded bad" + (f", {len(unmeasured)} measured first" if unmeasured else ""))


def _offset_row(exposure_id, reference_id, transform, error, method, stage, group_id, run_id, chain=None) -> dict:
    values = asdict(transform) if transform else {}
    return {
        "exposure_id": exposure_id, "reference_id": reference_id, "group_id": group_id, "method": method,
        "stage": stage, "status": "failed" if error else "ok", "error": error,
        **{k: values.get(k) for k in ("dx", "dy", "rotation", "scale", "dx_err", "dy_err", "rotation_err", "scale_err",
                                      "nmatched", "residual")},
        "chain_json": json.dumps(chain) if chain else None, "run_id": run_id, "created_at": utcnow(),
        "matched_json": _matched_json(transform.matched if transform else None),
    }


MAX_MATCHED_STORED = 200  # pairs kept for the frame page; enough to see the match, small in the row


def _matched_json(matched: np.ndarray | None) -> str | None:
    """Compact JSON of the first pairs (brightest first), 0.01 px."""
    if matched is None or not len(matched):
        return None
    return json.dumps(np.round(matched[:MAX_MATCHED_STORED], 2).tolist(), separators=(",", ":"))


def matched_stars(engine: Engine, exposure_id: int) -> np.ndarray:
    """(x, y, x_ref, y_ref) pixel pairs (0-based) of the exposure's current
    offset's matched stars; empty when none were stored."""
    from archive.query import current_offset

    with transaction(engine) as conn:
        text = conn.execute(select(Offset.matched_json).where(
            Offset.exposure_id == exposure_id, Offset.id == current_offset(Offset.exposure_id))).scalar()
    return np.array(json.loads(text), dtype=float).reshape(-1, 4) if text else np.empty((0, 4))


def compute_multistage(
    engine: Engine, group_names: list[str], global_reference: int, *, params: MatchParams = MatchParams(),
    workers: int | None = None, executor: str = "pool",
) -> dict[str, OffsetsResult]:
    """Register each group's members onto the group's reference member (stage 1),
    each group reference onto ``global_reference``, and store the composed
    transform of every member onto the global reference (stage 2, its chain
    of offset ids recorded): the composed offsets are then the current ones."""
    from processing.grouping import group_members

    results = {}
    for name in group_names:
        group_id, members = group_members(engine, name)
        ids = [e for e, _ in members]
        group_reference, why = next((e for e, role in members if role == "reference"), None), None
        if group_reference is None:  # the best frame, not graded bad, as for a selection (it was the lowest id)
            group_reference, why = choose_reference(engine, ids, workers=workers, executor=executor)
        inner = compute_offsets(engine, ids, group_reference, group_id=group_id, params=params, workers=workers, executor=executor)
        inner.reference_reason = why and f"{name}: {why}"
        results[name] = inner
        if group_reference == global_reference:
            continue  # its members are already on the global reference
        outer = compute_offsets(engine, [group_reference], global_reference, group_id=group_id, params=params, workers=1,
                                executor="serial")
        link = outer.offsets.get(group_reference)
        if link is None:
            inner.step.failed.append((f"group {name}", f"its reference could not be registered onto {global_reference}: "
                                      + "; ".join(why for _, why in outer.failed)))
            continue
        rows = [
            _offset_row(member, global_reference, transform.then(link), None, "composed", 2, group_id, inner.run_id,
                        chain=[inner.row_ids[member], outer.row_ids[group_reference]])
            for member, transform in inner.offsets.items()
        ]
        with transaction(engine, write=True) as conn:
            conn.execute(insert(Offset), rows)
    return results


def offsets_table(engine: Engine, ids: list[int] | None = None, group: str | None = None) -> list[dict]:
    """The current offset of each exposure (its latest registration, the one
    selections' ``dx``/``dy`` and ``stack`` use), with the group it was measured
    for (``measured_in``: a group's name, or ``selection``), the reference's
    frame number and MUSE's derotator angle when the header has one.

    With ``group``, every member of the group is listed, whichever run measured
    its current offset: a later run over another group that re-measured some
    members makes theirs current, and ``own`` is False for them (a member never
    registered has status ``none``). An unknown group raises, naming the known ones.
    """
    from archive.models import HeaderCard, aliased
    from archive.query import current_offset

    reference, measured = aliased(Exposure, "reference"), aliased(Group, "measured")
    statement = (
        select(Exposure.id.label("exposure_id"), Exposure.frame_number, Offset.reference_id,
               reference.frame_number.label("reference_frame"), Offset.method, Offset.stage, Offset.status, Offset.dx,
               Offset.dy, Offset.rotation, Offset.scale, Offset.dx_err, Offset.dy_err, Offset.nmatched, Offset.residual,
               Offset.error, Offset.id, Offset.group_id, measured.name.label("measured_in"))
    )
    group_id = None
    if group:  # every member: driven by the members, their offsets joined when they have one
        group_id, members = _members(engine, group)
        ids = members if ids is None else sorted(set(members) & set(ids))
        statement = statement.select_from(Exposure).join(
            Offset, (Offset.exposure_id == Exposure.id) & (Offset.id == current_offset(Exposure.id)), isouter=True)
    else:  # only exposures with offsets: driven by the offsets
        statement = statement.select_from(Offset).join(Exposure, Exposure.id == Offset.exposure_id).where(
            Offset.id == current_offset(Offset.exposure_id))
    statement = (
        statement.join(reference, reference.id == Offset.reference_id, isouter=True)
        .join(measured, measured.id == Offset.group_id, isouter=True)
    )
    with transaction(engine) as conn:  # the ids 500 at a time: PostgreSQL takes at most 65,535 parameters
        rows = sorted(rows_in(conn, statement, Exposure.id, ids), key=lambda row: row.exposure_id)
        posang = dict(conn.execute(
            select(HeaderCard.file_id, HeaderCard.value_num).where(HeaderCard.keyword == "ESO INS DROT POSANG")
        ).all())
    return [_table_row(row._asdict(), group_id, posang) for row in rows]


def _members(engine: Engine, group: str) -> tuple[int, list[int]]:
    from processing.grouping import group_members

    group_id, members = group_members(engine, group)
    return group_id, [e for e, _ in members]


def _table_row(row: dict, group_id: int | None, posang: dict) -> dict:
    """One row of :func:`offsets_table`: where its offset was measured, and
    whether that is the asked group's own measurement."""
    measured = row.pop("group_id")
    if row["id"] is None:  # a member never registered
        row.update(status="none", measured_in=None)
    elif measured is None:
        row["measured_in"] = "selection"
    row["own"] = None if group_id is None or row["id"] is None else measured == group_id
    return {**row, "drot_posang": posang.get(row["exposure_id"])}


def select_ids(engine: Engine, selection, *, products: bool = False) -> list[int]:
    """Ids of the exposures of ``selection`` (a tree or a person's text): raw
    exposures only unless ``products``."""
    return [f.exposure_id for f in resolve(engine, selection, None if products else is_null("product"))]


def group_exposures(engine: Engine, name: str) -> tuple[int, list[int], int | None]:
    """(group id, member ids, reference member) of a group."""
    from processing.grouping import group_members

    group_id, members = group_members(engine, name)
    ids = [e for e, _ in members]
    # None when no member is the reference (groups by pointing or values): the caller chooses
    # the best frame, as for a selection (the lowest id was taken, even one graded bad, and not said)
    return group_id, ids, next((e for e, role in members if role == "reference"), None)


# -- two source lists on the sky ------------------------------------------------------------

_RA_NAMES = ("ra", "raj2000", "ra_deg", "_raj2000", "alpha")
_DEC_NAMES = ("dec", "dej2000", "decj2000", "dec_deg", "_dej2000", "delta")
_BRIGHTNESS = (("flux", -1), ("net_counts", -1), ("counts", -1), ("mag", 1), ("magnitude", 1))


class NotSignificant(ObsarchError):
    """A match of two source lists no better than chance: no transform is given."""


@dataclass
class CatalogAlignment:
    transform: Transform  # of list A onto list B, on the tangent plane, arcsec
    pairs: list[dict]
    n_a: int
    n_b: int
    centre: tuple[float, float]
    chance: float = 0.0  # matches expected by chance with this tolerance
    log10_p: float = 0.0  # log10 of the probability of as many matches by chance, over every transform tried
    method: str = "triangles"


def read_sources(path: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """RA, Dec (degrees) of a source list (CSV, ECSV, FITS table...), brightest
    first when it has a flux or magnitude column (then the third value is True)."""
    from astropy.table import Table

    try:
        table = Table.read(path, format="ascii.csv" if str(path).lower().endswith(".csv") else None)
    except Exception as exc:  # astropy raises many kinds for unreadable tables
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # not the table of every format it tried
        raise ObsarchError(f"{path}: cannot read a table: {first}") from exc
    names = {name.lower(): name for name in table.colnames}
    ra = next((names[n] for n in _RA_NAMES if n in names), None)
    dec = next((names[n] for n in _DEC_NAMES if n in names), None)
    if ra is None or dec is None:
        raise ObsarchError(f"{path}: no RA/Dec columns (looked for {', '.join(_RA_NAMES[:3])} and {', '.join(_DEC_NAMES[:3])})")
    ordered = False
    for name, sign in _BRIGHTNESS:
        if name in names:
            table.sort(names[name], reverse=sign < 0)
            ordered = True
            break
    try:
        ra_deg, dec_deg = (np.ma.filled(np.ma.asarray(table[c], dtype=float), np.nan) for c in (ra, dec))
    except (TypeError, ValueError):
        raise ObsarchError(f"{path}: the columns {ra} and {dec} must hold degrees (numbers); they hold "
                           f"{str(table[ra][0])!r}, {str(table[dec][0])!r}...") from None
    good = np.isfinite(ra_deg) & np.isfinite(dec_deg)
    off_sky = good & ((ra_deg < -180) | (ra_deg > 360) | (np.abs(dec_deg) > 90))
    if off_sky.any():
        row = int(np.argmax(off_sky))  # the table may have been sorted by brightness: name the values
        raise ObsarchError(f"{path}: a source at RA {ra_deg[row]:g}, Dec {dec_deg[row]:g} is not on the sky "
                           f"(RA -180 to 360, Dec -90 to 90 degrees)")
    ra_deg = np.mod(ra_deg, 360.0)
    if good.sum() < 3:
        raise ObsarchError(f"{path}: fewer than 3 sources with RA and Dec")
    return ra_deg[good], dec_deg[good], ordered


def _tangent(ra: np.ndarray, dec: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """Gnomonic projection about ``centre``, arcsec (x towards east)."""
    ra0, dec0 = np.radians(centre)
    ra_r, dec_r = np.radians(ra), np.radians(dec)
    cos_c = np.sin(dec0) * np.sin(dec_r) + np.cos(dec0) * np.cos(dec_r) * np.cos(ra_r - ra0)
    x = np.cos(dec_r) * np.sin(ra_r - ra0) / cos_c
    y = (np.cos(dec0) * np.sin(dec_r) - np.sin(dec0) * np.cos(dec_r) * np.cos(ra_r - ra0)) / cos_c
    return np.degrees(np.column_stack([x, y])) * 3600.0


def align_catalogs(path_a: str, path_b: str, *, tolerance_arcsec: float = 2.0, fit_scale: bool = False,
                   max_log10_p: float = -3.0, max_shift_arcsec: float = MAX_SHIFT_ARCSEC) -> CatalogAlignment:
    """Shift and rotation (and scale with ``fit_scale``) that take source list
    A onto B, found with no starting guess and any rotation, with the matched
    pairs, their residuals and the match's significance.

    Lists of similar depth are matched by triangles of neighbours; a short
    list against a long one (150 X-ray sources against 3,000 stars), or
    lists the triangles cannot match, by voting over rotations for the shift
    that puts most sources on one another. The shift, about the lists' common
    centre, is searched within ``max_shift_arcsec``. A transform is given only when its
    matches are unlikely by chance (probability below 10**max_log10_p, counting
    every transform tried); otherwise :class:`NotSignificant` says how many
    matched and how many chance would give.
    """
    ra_a, dec_a, _ = read_sources(path_a)
    ra_b, dec_b, bright_b = read_sources(path_b)
    vector = np.array([np.cos(np.radians(dec_b)) * np.cos(np.radians(ra_b)),
                       np.cos(np.radians(dec_b)) * np.sin(np.radians(ra_b)), np.sin(np.radians(dec_b))]).sum(axis=1)
    centre = (math.degrees(math.atan2(vector[1], vector[0])) % 360, math.degrees(math.atan2(vector[2], math.hypot(vector[0], vector[1]))))
    a, b = _tangent(ra_a, dec_a, centre), _tangent(ra_b, dec_b, centre)
    best = None
    votes = functools.partial(_by_votes, max_shift=max_shift_arcsec)
    for method, search in (("triangles", _by_triangles), ("votes", votes)):
        try:
            found = search(a, b, tolerance_arcsec, bright_b)
        except MatchError:
            continue
        if fit_scale:
            transform = _refine(a, b, found, _catalog_params(tolerance_arcsec))
        else:  # twice: a guess a little off loses the farthest pairs the first time
            transform = _without_scale(a, b, _without_scale(a, b, found, tolerance_arcsec), tolerance_arcsec)
        chance, log10_p = _significance(a, b, transform, tolerance_arcsec)
        if best is None or log10_p < best[2]:
            best = (transform, chance, log10_p, method)
        if log10_p <= max_log10_p:
            break
    if best is None:
        raise NotSignificant(f"no transform matches 4 or more sources of {path_a} ({len(a)}) to {path_b} ({len(b)}) "
                             f"within {tolerance_arcsec}\"")
    transform, chance, log10_p, method = best
    if log10_p > max_log10_p:
        raise NotSignificant(
            f"the best match ({transform.nmatched} of {len(a)} sources within {tolerance_arcsec}\", shift {transform.dx:+.1f}\" "
            f"{transform.dy:+.1f}\", rotation {transform.rotation:+.2f} deg) is no better than chance ({chance:.1f} expected; "
            f"chance probability 10^{log10_p:.1f}); no transform given")
    pairs = _pairs(a, b, transform, min(tolerance_arcsec, max(0.5, 4 * (transform.residual or 0))))
    moved = transform.apply(a[pairs[:, 0]]) if len(pairs) else np.empty((0, 2))
    rows = [
        {"a": int(i), "b": int(j), "ra_a": float(ra_a[i]), "dec_a": float(dec_a[i]), "ra_b": float(ra_b[j]),
         "dec_b": float(dec_b[j]), "residual_arcsec": float(np.hypot(*(moved[k] - b[j])))}
        for k, (i, j) in enumerate(pairs)
    ]
    return CatalogAlignment(transform, rows, len(ra_a), len(ra_b), centre, chance, log10_p, method)


def _catalog_params(tolerance: float) -> MatchParams:
    return MatchParams(max_stars=200, match_px=tolerance, min_matched=4, max_rotation=None, scale_range=(0.98, 1.02))


def _by_triangles(a: np.ndarray, b: np.ndarray, tolerance: float, bright_b: bool) -> Transform:
    """Triangles of neighbours: lists of similar depth over the same field."""
    order_a, order_b = np.argsort(np.hypot(*a.T)), np.argsort(np.hypot(*b.T))
    return match_stars(a[order_a], b[order_b], _catalog_params(tolerance))


_NEAREST = 128  # sources of the long list each source of the short one votes with, at most
_COARSE_BIN = 8.0  # tolerances: the first grid's shift bins, rotations spaced so that no source moves more


def _by_votes(a: np.ndarray, b: np.ndarray, tolerance: float, bright_b: bool, max_shift: float = MAX_SHIFT_ARCSEC) -> Transform:
    """For each rotation of a grid, every source of the short list votes for
    the shifts that put it on a source of the long list no farther than
    ``max_shift`` away; rotations are spaced so that no source moves more
    than a shift bin between two of them. The best few rotations are
    searched again on finer grids. Works for a short list against a long one,
    where neighbours in one are not neighbours in the other."""
    from scipy.spatial import cKDTree

    short, long_, swapped = (a, b, False) if len(a) <= len(b) else (b, a, True)
    tree = cKDTree(long_)
    lever = float(np.max(np.hypot(*short.T))) or 1.0
    bin_size = _COARSE_BIN * tolerance
    step = math.degrees(bin_size / (2 * lever))
    votes = [_vote(short, long_, tree, angle, bin_size, max_shift) for angle in np.arange(-180.0, 180.0, step)]
    best = None
    for count, angle, shift in sorted(votes, key=lambda v: -v[0])[:3]:
        size, spacing = bin_size, step
        while size > tolerance * 1.01:
            size = max(tolerance, size / 4)
            fine = math.degrees(size / (2 * lever))
            count, angle, shift = max((_vote(short, long_, tree, x, size, max_shift)
                                       for x in np.arange(angle - spacing, angle + spacing + fine, fine)), key=lambda v: v[0])
            spacing = fine
        if best is None or count > best[0]:
            best = (count, angle, shift)
    _, angle, shift = best
    guess = Transform(float(shift[0]), float(shift[1]), float((angle + 180.0) % 360.0 - 180.0))
    if swapped:
        guess = _inverse(guess)
    if len(_pairs(a, b, guess, 2 * tolerance)) < 4:
        raise MatchError("voting found no shift that puts 4 sources on one another")
    return guess


def _vote(short: np.ndarray, long_: np.ndarray, tree, angle: float, bin_size: float, half: float) -> tuple[int, float, np.ndarray]:
    """(votes, angle, shift) of the best shift bin (2x2 bins, so that a peak
    split by a bin edge is whole) at one rotation, shifts within ``half``."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    rotated = short @ np.array([[c, s], [-s, c]])
    distance, near = tree.query(rotated, k=min(len(long_), _NEAREST), distance_upper_bound=half)
    found = np.isfinite(distance)
    if not found.any():
        return 0, float(angle), np.zeros(2)
    d = long_[near[found]] - np.broadcast_to(rotated[:, None, :], (*near.shape, 2))[found]
    d = d[np.all(np.abs(d) < half, axis=1)]
    bins = int(2 * half / bin_size) + 2
    index = ((d + half) / bin_size).astype(np.int64)
    grid = np.bincount(index[:, 0] * bins + index[:, 1], minlength=bins * bins).reshape(bins, bins)
    boxes = grid[:-1, :-1] + grid[1:, :-1] + grid[:-1, 1:] + grid[1:, 1:]
    row, col = divmod(int(boxes.argmax()), boxes.shape[1])
    centre = np.array([row + 1, col + 1]) * bin_size - half
    inside = d[np.all(np.abs(d - centre) <= bin_size, axis=1)]
    return int(boxes[row, col]), float(angle), np.median(inside, axis=0) if len(inside) else centre


def _inverse(t: Transform) -> Transform:
    m = np.linalg.inv(t.matrix)
    return Transform(float(m[0, 2]), float(m[1, 2]), math.degrees(math.atan2(m[1, 0], m[0, 0])), float(math.hypot(m[0, 0], m[1, 0])))


def _significance(a: np.ndarray, b: np.ndarray, transform: Transform, tolerance: float) -> tuple[float, float]:
    """(matches chance would give, log10 of the chance probability of as many
    as were found): sources of A that land within B's field, times B's
    density times the match area, Poisson; multiplied by the number of
    distinct transforms a search can try (shifts over the field, rotations)."""
    from scipy.stats import poisson

    moved = transform.apply(a)
    low, high = b.min(axis=0), b.max(axis=0)
    inside = np.all((moved >= low) & (moved <= high), axis=1).sum()
    area = float(np.prod(np.maximum(high - low, tolerance)))
    chance = float(inside * len(b) * math.pi * tolerance**2 / area)
    matched = len(_pairs(a, b, transform, tolerance))
    extent = float(np.max(np.hypot(*a.T)))
    trials = (area / (math.pi * tolerance**2)) * (360.0 / max(1e-3, math.degrees(tolerance / max(extent, tolerance))))
    log10_p = float(poisson.logsf(matched - 1, max(chance, 1e-12)) / math.log(10) + math.log10(max(trials, 1.0)))
    return chance, max(-300.0, min(0.0, log10_p))  # logsf reaches -inf for certainties


def _without_scale(a: np.ndarray, b: np.ndarray, transform: Transform, tolerance: float) -> Transform:
    """Refit shift and rotation only (Kabsch) over the matched pairs."""
    pairs = _pairs(a, b, transform, tolerance)
    source, target = a[pairs[:, 0]], b[pairs[:, 1]]
    ms, mt = source.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((source - ms).T @ (target - mt))
    rotation = (u @ vt).T
    if np.linalg.det(rotation) < 0:
        vt[-1] *= -1
        rotation = (u @ vt).T
    shift = mt - rotation @ ms
    residuals = np.hypot(*((source @ rotation.T + shift) - target).T)
    n = len(pairs)
    rms = float(np.sqrt(np.mean(residuals**2)))
    lever = float(np.sqrt(np.mean(np.sum((source - ms) ** 2, axis=1)))) or 1.0
    return Transform(
        dx=float(shift[0]), dy=float(shift[1]), rotation=math.degrees(math.atan2(rotation[1, 0], rotation[0, 0])), scale=1.0,
        dx_err=rms / math.sqrt(n), dy_err=rms / math.sqrt(n), rotation_err=math.degrees(rms / lever / math.sqrt(n)),
        scale_err=0.0, nmatched=n, residual=rms,
    )
