"""Calibration masters (bias, dark, flat) and calibrated science frames,
detector by detector.

Masters are made the way observers make them: one read-out mode, the N
frames nearest in time to a night, flats of one band each scaled to a median
of 1. Every detector of the inputs (``--hdu``: the ones named) is combined
and written one after another, one HDU each with its EXTNAME and header, so
``--memory`` bounds the step whatever the number of detectors. Which master
calibrates which frame is decided by the declared rules of
:mod:`processing.calib_rules`, apart from applying it here; a frame that no
master fits fails with the rule that refused each candidate. Each product
is written atomically, catalogued, and linked to its inputs; a step whose
inputs, parameters and code are unchanged is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from astropy.io import fits

from archive.db import transaction
from archive.detectors import Detector, detectors_of_files, select_detectors
from archive.exceptions import ObsarchError, UsageError
from archive.keywords import load_maps
from archive.query import Node, compare, is_null, one_of
from processing import detectors as pixels
from processing.calib_rules import DEFAULT_RULES, Calib, CalibrationRule, Choice, choose_all
from processing.combine import (
    DEFAULT_MEMORY,
    METHODS,
    _size,
    calibrate_array,
    clip_reaches,
    combine_files,
    parse_memory,
    quiet_numpy,
)
from processing.executor import Progress
from processing.machinery import Input, Item, Step, StepResult, Writer, run_step, unusable_files
from processing.quality import raw_saturation_level
from processing.runs import done_before, identity, output_directory, params_hash, what_is_at, write_product
from processing.steps import Frame, inherited, leave_out_bad, mjd_of, nearest, one_value, resolve, safe_name, without_images

ALGORITHM = "calibration-2"  # 2: per detector, masters chosen by declared rules
# 3: pixels the master flat cannot flat-field are NaN, and the flat's level is
# the mean of the others (masters keep calibration-2: their pixels are as before)
CALIBRATED_ALGORITHM = "calibration-3"
KINDS = ("bias", "dark", "flat")
_COPIED = ("INSTRUME", "TELESCOP", "READOUTM", "FILTER", "XBINNING", "YBINNING", "CCDSUM", "GAIN", "RDNOISE")
# the keywords normalized columns come from: a master copies them from its
# first input, so that its headers say what its catalog row says
_SOURCED = ("instrument", "telescope", "band", "xbinning", "ybinning", "binning", "gain")


@dataclass(frozen=True)
class MasterParams:
    method: str = "median"
    sigma: float = 3.0
    memory: str = DEFAULT_MEMORY

    def __post_init__(self):  # refused before any step runs or is found up to date
        if self.method not in METHODS:
            raise UsageError(f"--method {self.method!r}: use {', '.join(METHODS)}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise UsageError(f"--sigma {self.sigma:g}: give a number above 0")
        parse_memory(self.memory)


# how much memory a master is made in does not change a pixel of it
EXECUTION = {"memory": DEFAULT_MEMORY}


def _kind_condition(kind: str) -> Node:
    return one_of("frame_type", ("flat", "twilight")) if kind == "flat" else compare("frame_type", "==", kind)


def raw_frames(engine, selection, *conditions: Node | None) -> list[Frame]:
    """The frames of ``selection`` (and ``conditions``) that calibration treats:
    raw ones only. A product (a master, a calibrated frame) is left out: it is
    calibrated already, or calibrates others. Masters, ``calibrate`` and
    ``calib explain`` all select through this, so they agree on every frame."""
    return resolve(engine, selection, *conditions, is_null("product"))


def explain(engine, selection, kinds: tuple[str, ...] = KINDS, rules: dict[str, CalibrationRule] = DEFAULT_RULES,
            hdus: tuple[str, ...] | None = None) -> list[Choice]:
    """The rules' choice of a master of each of ``kinds`` for every raw frame
    of ``selection``: the frames ``calibrate`` (for science frames) and the
    masters (for their first input) would calibrate."""
    frames = raw_frames(engine, selection)
    if not frames:
        raise ObsarchError(f"no raw frames match {_shown(selection)} (products are not calibrated again)")
    choices = choices_by_frame(engine, frames, kinds, rules, hdus, bias_too=True)  # as calibrate, which takes a bias
    return [choice for frame in frames for choice in choices[frame.exposure_id]]


def choices_by_frame(engine, frames: list[Frame], kinds: tuple[str, ...], rules: dict[str, CalibrationRule],
                     hdus: tuple[str, ...] | None, bias_too: bool = False) -> dict[int, list[Choice]]:
    """The rules' choices of each frame (exposure id -> one per kind). A frame
    the rules do not see, its file unreadable since the last ingest, gets the
    reason instead of a master, kind by kind."""
    choices: dict[int, list[Choice]] = {}
    for choice in choose_all(engine, [f.exposure_id for f in frames], kinds, rules, hdus, bias_too):
        choices.setdefault(choice.frame.exposure_id, []).append(choice)
    unseen = [f for f in frames if f.exposure_id not in choices]
    why = unusable_files(engine, [f.file_id for f in unseen]) if unseen else {}
    for f in unseen:
        frame = Calib(f.exposure_id, f.file_id, f.path, f.content, mjd=f.mjd, frame_number=f.frame_number)
        problem = why.get(f.file_id, f"{f.path}: not readable as the catalog stands (obsarch errors)")
        choices[f.exposure_id] = [Choice(frame, kind, None, [], rules[kind], problem=problem) for kind in kinds]
    return choices


def _master_inputs(engine, kind: str, selection, band: str | None, count: int | None, to: str | None,
                   include_bad: bool = False) -> tuple[list[Frame], str | None, list[str]]:
    """The raw frames a master combines, why they are fewer than asked (if
    they are), and what to say of the frames of the selection graded bad: left out (unless
    ``include_bad``) before the nearest are picked, as ``stack`` leaves them
    out, so that ``--nearest N`` takes the N nearest frames fit to use."""
    if count is not None and count < 1:
        raise UsageError(f"--nearest {count}: give how many frames, 1 or more")
    if count is not None and to is None:
        raise UsageError("--nearest needs --to: a date, a time, an MJD, a frame number or a selection")
    conditions = [is_null("product"), _kind_condition(kind), compare("band", "==", band) if band is not None else None]
    candidates, bad, said = leave_out_bad(engine, selection, *conditions, include_bad=include_bad, kind=kind)
    where = f"{_shown(selection)}" + (f" in band {band}" if band else "")
    if not candidates and not bad:
        raise ObsarchError(f"no raw {kind} frames match {where}")
    if not candidates:
        raise ObsarchError(f"no raw {kind} frames to combine in {where}: the {len(bad)} that match are graded bad "
                           "and left out (--include-bad keeps them)")
    short = None
    if count is not None:
        if len(candidates) < count:
            short = f"--nearest {count} asked, only {len(candidates)} {kind} frames match" + (
                "" if include_bad or not bad else f" once {len(bad)} graded bad are left out")
        candidates = nearest(candidates, count, mjd_of(engine, to))
    one_value(candidates, "readout_mode", kind)
    if kind == "flat":
        one_value(candidates, "band", kind)
    if kind == "dark":
        one_value(candidates, "exptime", kind)
    return sorted(candidates, key=lambda f: f.mjd or 0), short, said


def _shown(selection) -> str:
    return repr(selection) if isinstance(selection, str) else "the catalog" if selection is None else "the selection"


def master_name(kind: str, inputs: list[Frame], params: MasterParams, masters: dict[str, Frame],
                include_bad: bool = False) -> str:
    """``master_KIND_MODE[_BAND][_EXPs]_NIGHT_METHOD_DIGEST.fits``: the night is
    the middle night of the inputs; the digest stands for the parameters, the
    inputs and the masters used, so a master made otherwise never takes the
    name (and the file) of another. ``include_bad`` enters the digest only
    when set: a master made by default keeps the name it had before bad
    frames were left out."""
    values = inherited(inputs, kind)
    parts = [f"master_{kind}", safe_name(values["readout_mode"])]
    if kind == "flat":
        parts.append(safe_name(values["band"]))
    if kind == "dark":
        parts.append(f"{safe_name(values['exptime'])}s")
    parts += [values.get("night") or "unknown-night", params.method]
    digest = params_hash(kind, {**identity(asdict(params), EXECUTION), "inputs": sorted(f.file_id for f in inputs),
                                "masters": {k: m.file_id for k, m in masters.items()},
                                **({"include_bad": True} if include_bad else {})}, ALGORITHM)[:8]
    return "_".join(parts + [digest]) + ".fits"


@dataclass(frozen=True)
class Inspection:
    """What a worker checks a master's input by: the detector names of the
    first input (in the order of each input's HDUs); for a flat, to measure
    its level, the masters subtracted (role -> path) and the input's own
    exposure time (s), to which the master dark is scaled."""

    names: tuple[str, ...]
    flat: bool = False
    masters: tuple[tuple[str, str], ...] = ()
    exptime: float | None = None


def _check_frame(task: tuple) -> tuple[tuple[tuple[int, ...], ...], tuple[float, ...] | None]:
    """The shape of each detector of one input, read one at a time: reading
    finds a corrupt frame before it spoils the combination; and for a flat
    the median of each detector once the master bias and dark are off, which
    scales it to 1. A detector with no finite pixel, and a flat without
    light, fail the frame alone (not the master). Runs in a worker."""
    path, hdu_indices, inspection = task
    shapes, levels = [], []
    with quiet_numpy(), pixels.opened(path) as hdul:
        for position, index in enumerate(hdu_indices):
            data = hdul[index].data
            if data is None:
                raise ObsarchError(f"{path}: HDU {index} has no data")
            shapes.append(tuple(data.shape))
            name = inspection.names[position]
            where = f"{path}: " + (f"detector {name}: " if len(hdu_indices) > 1 else "")
            if not np.isfinite(data).any():
                raise ObsarchError(f"{where}no finite pixel (all NaN or inf)")
            if inspection.flat:
                levels.append(_flat_level(where, data, inspection, name))
            del data
    return tuple(shapes), (tuple(levels) if inspection.flat else None)


_OFFSETS: dict[tuple, tuple] = {}  # in a worker: every 4th row of the bias and the dark of each detector, by masters


def _sampled_offset(inspection: Inspection, name: str) -> np.ndarray | None:
    """Every 4th row of :func:`_offset` for detector ``name``, read once per
    worker and masters (not once per flat: a 4k x 4k flat took 4.3 s and
    620 MB re-reading its masters)."""
    key = (inspection.masters, inspection.names, name)
    if key not in _OFFSETS:
        if any(k[0] != inspection.masters for k in _OFFSETS):  # other masters: a new master flat
            _OFFSETS.clear()
        masters = dict(inspection.masters)
        bias, dark = (_master_image(masters.get(role), inspection.names, name) for role in ("bias", "dark"))
        seconds = _exptime(masters["dark"]) if dark is not None else None
        _OFFSETS[key] = (None if bias is None else bias[::4].copy(), None if dark is None else dark[::4].copy(), seconds)
    bias, dark, seconds = _OFFSETS[key]
    if dark is None:
        return bias
    scaled = dark * ((inspection.exptime or 0.0) / seconds)  # each flat's own exposure time: twilight flats differ
    return scaled if bias is None else bias + scaled


def _flat_level(where: str, data: np.ndarray, inspection: Inspection, name: str) -> float:
    """The median of a flat's detector once the masters are off (every 4th
    row: a median needs no more), refused when the flat has no light:
    constant data (all zero), or a level not above 0."""
    low, high = float(np.nanmin(data)), float(np.nanmax(data))
    if low == high:
        raise ObsarchError(f"{where}every pixel is {low:g}: no light in this flat")
    offset = _sampled_offset(inspection, name)
    value = float(np.nanmedian(np.asarray(data[::4], dtype=np.float64) - (offset if offset is not None else 0.0)))
    if not value > 0:
        roles = tuple(role for role, _ in inspection.masters)
        off = {("bias",): " once the master bias is subtracted", ("dark",): " once the master dark is subtracted",
               ("bias", "dark"): " once the master bias and dark are subtracted"}.get(roles, "")
        raise ObsarchError(f"{where}median {value:.4g}{off}: no light in this flat (its level must be above 0)")
    return value


def detector_values(detectors: list[Detector]) -> dict:
    """The catalog's detector columns of a product with these detectors."""
    shapes = {d.shape_text for d in detectors}
    return {"n_detectors": len(detectors), "detector_shape": shapes.pop() if len(shapes) == 1 else None}


def _own_detectors(wanted: list[Detector], found: list[Detector], first: str) -> tuple[list[Detector], str | None]:
    """An input's detectors matching the first input's by name and shape (one
    detector each: with each other), or why it has none of them."""
    by_name = {d.name: d for d in found}
    if len(wanted) == 1 and len(found) == 1:
        by_name = {wanted[0].name: found[0]}
    own = []
    for detector in wanted:
        mine = by_name.get(detector.name)
        if mine is None:
            return [], f"no detector {detector.name}, which {first} has"
        if mine.shape != detector.shape:
            return [], f"detector {detector.name} is {mine.shape_text}, {first}'s is {detector.shape_text}"
        own.append(mine)
    return own, None


class MasterStep(Step):
    """A master of ``kind`` from raw frames, one HDU per detector: each frame
    is checked in a worker (one unreadable frame, or one without the first
    frame's detectors, costs only itself), then combined detector by detector.
    Frames graded bad are left out unless ``include_bad``; a master of fewer
    frames than asked, or than its rule's ``min_inputs``, is short."""

    algorithm, item_runs, whole = ALGORITHM, False, True
    execution = EXECUTION
    work = staticmethod(_check_frame)

    def __init__(self, engine, kind, selection, band, count, to, params: MasterParams, out_dir: Path,
                 hdus: tuple[str, ...] | None = None, rules: dict[str, CalibrationRule] = DEFAULT_RULES,
                 include_bad: bool = False, force: bool = False):
        if kind not in KINDS:
            raise ObsarchError(f"unknown master {kind!r}; use bias, dark or flat")
        self.name, self.kind, self.master_params, self.include_bad = f"master-{kind}", kind, params, include_bad
        self.force = force
        self.inputs, self.shortfall, self.said = _master_inputs(engine, kind, selection, band, count, to, include_bad)
        self.min_inputs = rules.get(kind, DEFAULT_RULES[kind]).min_inputs
        first = self.inputs[0]
        with transaction(engine) as conn:
            self.found = detectors_of_files(conn, [f.file_id for f in self.inputs])
        try:
            self.detectors = select_detectors(self.found[first.file_id], hdus)
        except ObsarchError as exc:  # --hdu names no detector of it: say which file
            raise ObsarchError(f"{first.path}: {exc}") from None
        if not self.detectors:
            raise ObsarchError(f"{first.path}: no detector (image HDU with data) to combine")
        clip_reaches(params.method, params.sigma, len(self.inputs), "--sigma")  # before a pixel is read
        needed = {"dark": ("bias",), "flat": ("bias", "dark")}.get(kind, ())
        self.masters = _masters_for(engine, first, needed, rules, hdus)
        out = output_directory(out_dir)
        self.target = out / master_name(kind, self.inputs, params, self.masters, include_bad)

    def params(self) -> dict:
        # include_bad only when set, as in the name: masters made before it existed keep their fingerprint
        return {"kind": self.kind, **asdict(self.master_params), **({"include_bad": True} if self.include_bad else {}),
                "masters": {k: m.file_id for k, m in self.masters.items()},
                "master_contents": {k: m.content for k, m in self.masters.items()}, "out": str(self.target),
                "detectors": [d.name for d in self.detectors]}

    def claims(self) -> list[Path]:
        return [self.target]

    def items(self, engine) -> list[Item]:
        # asked with the master claimed (before any work): another run may have stored it since this one began
        if why := what_is_at(engine, self.target).refusal(f"master_{self.kind}", force=self.force):
            raise ObsarchError(why)
        first = Path(self.inputs[0].path).name
        inspection = Inspection(tuple(d.name for d in self.detectors), self.kind == "flat",
                                tuple((k, m.path) for k, m in self.masters.items()))
        items = []
        for frame in self.inputs:
            # a flat's level is measured with its own dark off: twilight flats differ in exposure time
            inspection = replace(inspection, exptime=frame.exptime)
            own, error = _own_detectors(self.detectors, self.found[frame.file_id], first)
            items.append(Item(frame.path, (frame.path, tuple(d.hdu_index for d in own), inspection),
                              [Input(frame.file_id, "frame", frame.content)], error=error, data=(frame, own)))
        return items

    def up_to_date(self, engine, items: list[Item], prints: dict[str, str]) -> set[str]:
        current = super().up_to_date(engine, items, prints)
        if "*" in current:  # the master its run made, which is named by the frames it could use
            from sqlalchemy import select

            from archive.models import Product

            with transaction(engine) as conn:
                made = conn.execute(select(Product.path).where(Product.run_id == done_before(engine, prints["*"]))
                                    .order_by(Product.id.desc()).limit(1)).scalar()
            self.target = Path(made) if made else self.target
        return current

    def finish(self, out: Writer, done, failed) -> str | None:
        used = [item.data[0] for item, _ in done]
        hdus = {item.data[0].file_id: [d.hdu_index for d in item.data[1]] for item, _ in done}
        levels = {item.data[0].file_id: checked[1] for item, checked in done}
        out.inputs([Input(m.file_id, k, m.content) for k, m in self.masters.items()])
        combine = _detector_combiner(self.kind, used, hdus, self.detectors, self.masters, self.master_params, levels)
        header = _master_header(self.kind, used, self.masters, self.master_params)
        with pixels.opened(used[0].path) as hdul:
            own = dict(zip((d.name for d in self.detectors), done[0][0].data[1]))
            headers = {name: pixels.detector_header(hdul, d) for name, d in own.items()}
        # named by the frames it is made of: when some failed, not the name (and
        # the file) of the master of them all, which an earlier run may have made
        target = self.target if not failed else self.target.with_name(
            master_name(self.kind, used, self.master_params, self.masters, self.include_bad))
        if why := what_is_at(out.conn, target).refusal(f"master_{self.kind}", force=self.force):
            raise ObsarchError(why)
        uses: dict[str, FlatUse] = {}

        def made(detector: Detector) -> tuple[np.ndarray, fits.Header]:
            image = combine(detector)
            if self.kind == "flat":
                uses[detector.name] = use = flat_use(lambda: (image,))
                headers[detector.name]["FLATBAD"] = (use.unusable, FLAT_CARD)
            return image, headers[detector.name]

        with quiet_numpy():
            write_product(target, lambda tmp: pixels.write_detectors(tmp, header, self.detectors, made))
        values = {**inherited(used, self.kind), **detector_values(self.detectors)}
        out.product(target, f"master_{self.kind}", values)
        if note := flat_note(target.name, uses):
            out.note(note)
        return self._short(len(used), len(used) + len(failed))

    def short_of(self, engine, run_id: int | None, items: list[Item]) -> str | None:
        """What the master that run made falls short of: the frames it could
        use (one may have failed then), and this command's --nearest and
        min_inputs."""
        from sqlalchemy import func, select

        from archive.models import RunInput

        with transaction(engine) as conn:
            used = conn.execute(select(func.count()).select_from(RunInput)
                                .where(RunInput.run_id == run_id, RunInput.role == "frame")).scalar_one()
        return self._short(used, len(items))

    def _short(self, used: int, selected: int) -> str | None:
        """Why a master of ``used`` of ``selected`` frames falls short, or None."""
        made = f"made from {used} of {selected} selected {self.kind} frames" if used < selected else None
        return "; ".join(r for r in (made, self.shortfall, self._too_few(used)) if r) or None

    def _too_few(self, used: int) -> str | None:
        if used >= self.min_inputs:
            return None
        # the rules would refuse it to every frame: said, not silently made
        return (f"{used} {self.kind} frame{'s' if used > 1 else ''} combined, fewer than min_inputs "
                f"{self.min_inputs} of [calibration.{self.kind}]: calibrate will not use it")


def _masters_for(engine, frame: Frame, kinds: tuple[str, ...], rules, hdus) -> dict[str, Frame]:
    """The masters the rules choose for ``frame`` (a master's own first input).
    Without any master of a kind in the catalog, a dark or flat is made without
    it; masters that are there but all refused by the rules are an error (a
    flat silently left with its bias would be wrong)."""
    masters = {}
    for choice in choices_by_frame(engine, [frame], kinds, rules, hdus)[frame.exposure_id]:
        if choice.chosen is not None:
            m = choice.chosen.master
            masters[choice.kind] = Frame(m.exposure_id, m.file_id, m.path, m.content, exptime=m.exptime, mjd=m.mjd)
        elif choice.verdicts or choice.problem:
            raise ObsarchError(f"{Path(frame.path).name}, the first input: {choice.reason} "
                               f"(see `obsarch calib explain`, or [calibration.{choice.kind}] in obsarch.toml)")
    return masters


def make_master(
    engine, kind: str, selection=None, *, band: str | None = None, nearest_count: int | None = None,
    to: str | None = None, params: MasterParams = MasterParams(), out_dir: Path = Path("masters"), force: bool = False,
    executor: str = "serial", workers: int | None = None, hdus: tuple[str, ...] | None = None,
    rules: dict[str, CalibrationRule] = DEFAULT_RULES, include_bad: bool = False, on_wait=None,
) -> StepResult:
    """Combine raw frames of ``kind`` into a master with one HDU per detector
    (``hdus``: only those), bias-subtracted for darks and flats (and
    dark-subtracted for flats) by the masters ``rules`` choose for its first
    input. ``selection``: a tree, or a person's text. Frames graded bad are
    left out, and the result's notes say how many, unless ``include_bad``.
    Another run making the same master is waited for (``on_wait(path)`` is
    told first); its master is then up to date."""
    step = MasterStep(engine, kind, selection, band, nearest_count, to, params, out_dir, hdus, rules, include_bad, force)
    return run_step(engine, step, force=force, executor=executor, workers=workers, on_wait=on_wait)


def _master_image(path: str | None, names, name: str) -> np.ndarray | None:
    """Detector ``name`` (one of ``names``, the first input's) of the master
    at ``path``, which comes off a dark or a flat; None without one."""
    if path is None:
        return None
    with pixels.opened(path) as hdul:
        return pixels.read(hdul, pixels.paired(hdul, list(names), single=True)[name])


def _detector_combiner(kind: str, inputs: list[Frame], hdus: dict[int, list[int]], detectors: list[Detector],
                       masters: dict[str, Frame], params: MasterParams, levels: dict[int, tuple[float, ...] | None]):
    """``combine(detector) -> image`` for one detector (of the first input);
    the arrays held beside the combination (bias, dark) come off the budget.
    A flat is scaled by its ``levels`` (file id -> each detector's median
    once the masters are off, measured by :func:`_check_frame`)."""
    memory = parse_memory(params.memory)
    names = [d.name for d in detectors]
    position = {d.name: i for i, d in enumerate(detectors)}
    paths = [f.path for f in inputs]
    subtracted = {role: m.path for role, m in masters.items()}

    def combine(detector: Detector) -> np.ndarray:
        own = [hdus[f.file_id][position[detector.name]] for f in inputs]
        offset = _master_image(subtracted.get("bias"), names, detector.name) if kind in ("dark", "flat") else None
        dark = None
        if kind == "flat" and "dark" in subtracted:  # each flat's dark scaled to its own exposure time, not the first's
            seconds = _exptime(subtracted["dark"])
            dark = (_master_image(subtracted["dark"], names, detector.name), [(f.exptime or 0.0) / seconds for f in inputs])
        budget = memory - sum(image.nbytes for image in (offset, dark[0] if dark else None) if image is not None)
        if budget <= 0:
            raise ObsarchError(f"--memory {params.memory} cannot even hold the master bias of detector {detector.name}")
        if kind == "flat":
            scales = [1.0 / levels[f.file_id][position[detector.name]] for f in inputs]
            return combine_files(paths, method=params.method, sigma=params.sigma, memory_bytes=budget, scales=scales,
                                 subtract=offset, dark=dark, hdu=own)
        combined = combine_files(paths, method=params.method, sigma=params.sigma, memory_bytes=budget, hdu=own)
        # combining is linear in a constant: the bias comes off the combined darks
        return combined - offset if offset is not None else combined

    return combine


def _exptime(path: str) -> float:
    header = fits.getheader(path)
    value = header.get("EXPTIME")
    if not isinstance(value, (int, float)) or value <= 0:
        raise ObsarchError(f"{path}: the master dark has no usable EXPTIME to scale by")
    return float(value)


def _first_header(path: str) -> fits.Header:
    """The primary header of a file with the cards of its extensions that it
    lacks (LCO keeps the observation's cards in the SCI extension)."""
    with pixels.opened(path) as hdul:
        header = hdul[0].header.copy()
        for hdu in hdul[1:]:
            for card in hdu.header.cards:
                if card.keyword and card.keyword not in header and card.keyword not in pixels.STRUCTURE:
                    header.append(card)
    return header


def _master_header(kind: str, inputs: list[Frame], masters: dict[str, Frame], params: MasterParams) -> fits.Header:
    first_header = _first_header(inputs[0].path)
    header = fits.Header()
    maps = load_maps()
    for key in (*_COPIED, *(k for field in _SOURCED for k in maps.sources.get(field, ()))):
        name = f"HIERARCH {key}" if len(key) > 8 or " " in key else key
        if name in first_header and name not in header:
            header.append(first_header.cards[name])
    header["IMAGETYP"] = (f"MASTER_{kind.upper()}", "made by obsarch")
    if kind == "dark":
        header["EXPTIME"] = (inputs[0].exptime, "[s] of the combined darks")
    elif "EXPTIME" in first_header:
        header["EXPTIME"] = first_header["EXPTIME"]
    values = inherited(inputs, kind)
    if values["readout_mode"] is not None:  # whatever keyword the inputs had it in
        header["READOUTM"] = (values["readout_mode"], "read-out mode of the combined frames")
    if values.get("ccd_temp") is not None:  # what the catalog says of the master, whatever keyword the inputs had
        header["CCD-TEMP"] = (round(values["ccd_temp"], 4), "[C] mean of the combined frames")
    if values.get("mjd") is not None:
        header["MJD-OBS"] = (values["mjd"], "middle of the combined frames")
    if values.get("night"):
        header["DAY-OBS"] = (values["night"].replace("-", ""), "middle night of the combined frames")
    header["NCOMBINE"] = (len(inputs), "frames combined")
    header["COMBMETH"] = (params.method, "combine method")
    for role, master in masters.items():
        _file_card(header, f"{role.upper()[:4]}FILE", master.path, f"master {role} subtracted")
    for frame in inputs:  # the full paths are in the catalog's provenance
        header.add_history(f"obsarch input: {Path(frame.path).name}")
    return header


# -- calibrating science frames ---------------------------------------------------------


_CALIBRATE_COPIES = 4  # float64 rows held per master and frame row: the frame, its result, the normalized flat, a temporary


# A master flat's pixel that is not finite, or at or below this fraction of
# the flat's level, cannot flat-field: a dead column (no light, so the flat
# is the bias level) is 0 or a little below once the bias is off, and
# dividing by it wrote inf and sign-flipped pixels (-45315 on a sky of 500).
# Such a pixel is NaN in the calibrated frame, unknown as it is (ccdproc's
# min_value, IRAF's minreplace, BANZAI's mask); 5% keeps any real vignetting
# and divides no pixel by less than 1/20 of the level.
FLAT_FLOOR = 0.05
FLAT_UNUSABLE_LIMIT = 0.5  # more of a detector unusable than this, and its flat is refused
FLAT_CARD = f"pixels not finite or <= {FLAT_FLOOR:g} x level"  # FLATBAD of a master flat
CALIBRATED_CARD = f"NaN: master flat not finite or <= {FLAT_FLOOR:g} x level"  # and of a frame it calibrated


@dataclass(frozen=True)
class FlatUse:
    """What one detector of a master flat can flat-field: its ``level`` (the
    mean of its usable pixels, by which it is normalized), the ``floor`` at
    or below which a pixel is unusable, and how many of its pixels are."""

    level: float
    floor: float
    unusable: int
    pixels: int

    def usable(self, flat: np.ndarray) -> np.ndarray:
        """``flat`` (a float array, changed in place: no row more than
        ``--memory`` allows for) with NaN where it cannot flat-field, so that
        the frame is NaN there."""
        with np.errstate(invalid="ignore"):
            flat[~(np.isfinite(flat) & (flat > self.floor))] = np.nan
        return flat

    def refused(self) -> bool:
        return self.unusable > FLAT_UNUSABLE_LIMIT * self.pixels

    def said(self) -> str:
        return f"{self.unusable} of {self.pixels} pixels ({100 * self.unusable / self.pixels:.3g}%)"


def flat_use(bands: Callable[[], Iterable[np.ndarray]]) -> FlatUse:
    """How much of a master flat's detector can flat-field. ``bands()`` yields
    its rows a band at a time; they are read twice: the mean of the pixels
    above 0 sets the floor, the mean of those above the floor is the level,
    so a dead column does not pull the level (and the sky) down."""
    rough, _, _ = _mean_above(bands(), 0.0)
    floor = FLAT_FLOOR * rough if rough is not None else math.inf
    level, usable, pixels = _mean_above(bands(), floor)
    return FlatUse(level if level is not None else math.nan, floor, pixels - usable, pixels)


def _mean_above(bands: Iterable[np.ndarray], floor: float) -> tuple[float | None, int, int]:
    """The mean of the finite pixels above ``floor`` (None without one),
    how many they are, and how many pixels there are."""
    total, count, pixels = 0.0, 0, 0
    for band in bands:
        band = np.asarray(band, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            good = np.isfinite(band) & (band > floor)
        total, count, pixels = total + float(band[good].sum()), count + int(good.sum()), pixels + band.size
    return (total / count if count else None), count, pixels


def flat_note(name: str, uses: dict[str, FlatUse]) -> str | None:
    """What a person should know of a master flat with unusable pixels (None
    without any): how many, per detector, and what calibrate does there."""
    named = len(uses) > 1
    said = [(f"detector {d} " if named else "") + use.said() + (" (more than half: calibrate refuses it)" if use.refused() else "")
            for d, use in uses.items() if use.unusable]
    if not said:
        return None
    return (f"the master flat {name}: {', '.join(said)} are not finite or at or below {FLAT_FLOOR:g} x its level: "
            "NaN in the frames it calibrates (header card FLATBAD)")


def _calibrate_one(task: tuple) -> tuple[str, dict[str, FlatUse]]:
    """Calibrate one frame detector by detector, a band of rows at a time
    within ``memory_bytes``, and write its product (atomically): one HDU per
    detector, then the frame's masks. Returns the product and what the master
    flat could flat-field, per detector. A detector whose master flat is
    mostly unusable fails the frame. Runs in a worker."""
    frame, detectors, masters, target, memory_bytes, single = task
    names = [d.name for d in detectors]
    uses: dict[str, FlatUse] = {}
    dark_exptime = _exptime(masters["dark"].path) if "dark" in masters else None
    with ExitStack() as stack:
        stack.enter_context(quiet_numpy())
        hdul = stack.enter_context(pixels.opened(frame.path))
        opened = {k: stack.enter_context(pixels.opened(m.path)) for k, m in masters.items()}
        pairs = {k: pixels.paired(h, names, single=single) for k, h in opened.items()}

        def make(detector: Detector) -> tuple[np.ndarray, fits.Header]:
            own = {k: opened[k][pairs[k][detector.name].hdu_index] for k in opened}
            for kind, hdu in own.items():  # the rules checked the catalog; the files must agree
                if tuple(hdu.shape) != detector.shape:
                    raise ObsarchError(f"the master {kind} {Path(masters[kind].path).name} is {tuple(hdu.shape)}, "
                                       f"detector {detector.name} {detector.shape}")
            output = np.empty(detector.shape, dtype=np.float32)
            rows = _rows_within(memory_bytes - output.nbytes, detector, len(own))
            use = _flat_use_of(own["flat"], rows, masters["flat"], detector, len(detectors) > 1) if "flat" in own else None
            raw_header = pixels.detector_header(hdul, detector)
            raw_level, levels = raw_saturation_level(hdul, detector.hdu_index, rows), []
            for start in range(0, detector.shape[0], rows):
                band = slice(start, min(start + rows, detector.shape[0]))
                read = {k: np.asarray(hdu.section[band], dtype=np.float64) for k, hdu in own.items()}
                data = np.asarray(hdul[detector.hdu_index].section[band], dtype=np.float64)
                options = dict(bias=read.get("bias"), dark=read.get("dark"), dark_exptime=dark_exptime, exptime=frame.exptime,
                               flat=use.usable(read["flat"]) if use else None, flat_mean=use.level if use else None)
                output[band] = calibrate_array(data, **options)
                if raw_level is not None:  # where the raw saturation level lands, pixel by pixel (every 4th pixel each way)
                    sample = {k: v[::4, ::4] if isinstance(v, np.ndarray) else v for k, v in options.items()}
                    landed = calibrate_array(np.full(data[::4, ::4].shape, raw_level), **sample)
                    levels.append(landed[np.isfinite(landed)].ravel())
            header = _calibrated_header(raw_header, frame, masters)
            header.remove("SATURATE", ignore_missing=True)  # a raw frame's, in raw units
            landed = np.concatenate(levels) if levels else np.empty(0)
            if landed.size:
                # the 1st percentile: below it lie the hot pixels of the dark (one set the least at 6717 on a sky of 6213,
                # and every star was 'saturated'), above it the pixels a saturated star's core lands on once calibrated
                header["SATURATE"] = (float(np.percentile(landed, SATURATE_PERCENTILE)),
                                      f"raw saturation level once calibrated ({SATURATE_PERCENTILE:g}st pct)")
            if use is not None:
                uses[detector.name] = use
                header["FLATBAD"] = (use.unusable, CALIBRATED_CARD)
            return output, header

        def masks():
            for index in pixels.companions_of(hdul):
                yield fits.ImageHDU(hdul[index].data, pixels.header_only(hdul[index].header), name=hdul[index].name)

        primary = hdul[0].header if detectors[0].hdu_index != 0 else fits.Header()
        write_product(target, lambda tmp: pixels.write_detectors(tmp, primary, detectors, make, masks))
    return target, uses


SATURATE_PERCENTILE = 1.0  # of a calibrated frame's pixels, where its raw saturation level lands (its SATURATE)


def _rows_within(budget: int, detector: Detector, masters: int) -> int:
    """Rows of a detector calibrated at once within ``budget`` bytes."""
    per_row = int(np.prod(detector.shape[1:])) * 8 * (masters + _CALIBRATE_COPIES)
    if budget < per_row:
        need = int(np.prod(detector.shape)) * 4 + per_row
        raise ObsarchError(f"--memory is too small: detector {detector.name} of {detector.shape_text} needs at least "
                           f"{_size(need)} per worker")
    return int(budget // per_row)


def _flat_use_of(hdu, rows: int, master: Frame, detector: Detector, named: bool) -> FlatUse:
    """What a master flat's detector can flat-field, read a band of rows at
    a time; refused (the frame fails) when most of it cannot: what is left
    is no flat-field of that detector."""
    use = flat_use(lambda: (hdu.section[start : start + rows] for start in range(0, hdu.shape[0], rows)))
    if use.refused():
        where = f", detector {detector.name}" if named else ""
        raise ObsarchError(f"the master flat {Path(master.path).name}{where}: {use.said()} are not finite or at or below "
                           f"{FLAT_FLOOR:g} x its level, more than {FLAT_UNUSABLE_LIMIT:.0%}: it cannot flat-field")
    return use


def _file_card(header: fits.Header, key: str, path: str, comment: str) -> None:
    """A card naming a master: its comment only where the card has room
    (master names are long; astropy would warn as it cut the comment)."""
    name = Path(path).name
    header[key] = (name, comment) if len(name) + len(comment) <= 62 else name


def _calibrated_header(header: fits.Header, frame: Frame, masters: dict[str, Frame]) -> fits.Header:
    for role, master in masters.items():
        _file_card(header, f"{role.upper()[:4]}FILE", master.path, f"master {role} used by obsarch")
    header.add_history(f"obsarch calibrated {Path(frame.path).name}: " + ", ".join(f"{k} {Path(m.path).name}" for k, m in masters.items()))
    return header


def plan(choices: list[Choice]) -> tuple[dict[str, Frame], str | None]:
    """The masters of one frame's choices, or why it cannot be calibrated. A
    dark is optional (dark current is often negligible) when the catalog has
    no master dark at all; darks that the rules all refuse are a reason."""
    chosen, reasons = {}, []
    for choice in choices:
        if choice.chosen is not None:
            m = choice.chosen.master
            chosen[choice.kind] = Frame(m.exposure_id, m.file_id, m.path, m.content, exptime=m.exptime, mjd=m.mjd)
        elif choice.kind != "dark" or choice.verdicts or choice.problem:
            reasons.append(choice.reason)
    return chosen, ("; ".join(dict.fromkeys(reasons)) or None)


def fits_stem(path: str) -> str:
    """The file name without its FITS and compression suffixes: MUSE names
    (``MUSE.2014-07-27T23:01:00.123.fits``) are full of dots."""
    name = Path(path).name
    for suffix in (".gz", ".fz", ".bz2"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    for suffix in (".fits", ".fit", ".fts"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return name


def calibrated_paths(conn, frames: list[Frame], out: Path, force: bool = False) -> dict[int, tuple[Path, str | None]]:
    """Where each frame's calibrated product goes (exposure id -> path, and
    why it may not be written there, or None). ``STEM_cal.fits`` when that
    is free, or already this frame's; ``STEM_eID_cal.fits`` (the exposure
    id) when another frame has it, or takes it in this run: cameras restart
    their numbering, so raw frames of two nights share file names, and each
    must keep a file and a lineage of its own. A file that is no calibration
    of the frame is never replaced but with ``force``, a raw file never
    (see :meth:`processing.runs.Occupant.refusal`)."""
    plain = {f.exposure_id: out / f"{fits_stem(f.path)}_cal.fits" for f in frames}
    found = {path: what_is_at(conn, path) for path in set(plain.values())}

    def others(occupant, frame: Frame) -> bool:
        return occupant.what == "product" and occupant.kind == "calibrated" and occupant.frames != {frame.file_id}

    def mine(frame: Frame) -> bool:
        occupant = found[plain[frame.exposure_id]]
        return occupant.what == "product" and occupant.kind == "calibrated" and not others(occupant, frame)

    claimed: set[Path] = set()
    targets = {}
    for frame in sorted(frames, key=lambda f: not mine(f)):  # a name stays with the frame that has it
        path = plain[frame.exposure_id]
        occupant = found[path]
        if path in claimed or others(occupant, frame):
            path = out / f"{fits_stem(frame.path)}_e{frame.exposure_id}_cal.fits"
            occupant = what_is_at(conn, path)
            if path in claimed or others(occupant, frame):
                targets[frame.exposure_id] = (path, f"{path} is the calibration of another frame")
                continue
        claimed.add(path)
        targets[frame.exposure_id] = (path, occupant.refusal("calibrated", {frame.file_id}, force))
    return targets


class CalibrateStep(Step):
    """Bias, dark and flat correction of raw science frames, one product each
    with one HDU per detector, by the masters the declared rules choose."""

    name, algorithm, item_runs = "calibrate", CALIBRATED_ALGORITHM, True
    work = staticmethod(_calibrate_one)
    # the detectors asked for (--hdu) decide no product by themselves: each
    # item's params name the detectors they resolve to, so `--hdu PRIMARY`
    # on single-detector frames finds the frames calibrated without it current
    execution = {"hdus": []}

    def __init__(self, selection, use: tuple[str, ...], out_dir: Path, rules: dict[str, CalibrationRule] = DEFAULT_RULES,
                 hdus: tuple[str, ...] | None = None, worker_memory: int = parse_memory(DEFAULT_MEMORY), force: bool = False):
        self.selection, self.use, self.out_dir, self.rules, self.hdus = selection, use, Path(out_dir), rules, hdus
        self.worker_memory, self.force = worker_memory, force
        self.noted: set[str] = set()  # a master flat's unusable pixels are said once, not once per frame

    def params(self) -> dict:
        return {"hdus": list(self.hdus or ())}

    def items(self, engine) -> list[Item]:
        science = raw_frames(engine, self.selection, compare("frame_type", "==", "science"))
        if not science:
            raise ObsarchError(f"no raw science frames match {_shown(self.selection)}")
        imageless = len(science)
        science, self.said = without_images(science)  # an event list has nothing to calibrate: no failure of its own
        if not science:
            raise ObsarchError(f"nothing to calibrate: the {imageless} science exposure{'s' if imageless > 1 else ''} "
                               f"of {_shown(self.selection)} hold no image")
        out = output_directory(self.out_dir)
        with transaction(engine) as conn:
            targets = calibrated_paths(conn, science, out, self.force)
        choices = choices_by_frame(engine, science, self.use, self.rules, self.hdus)
        return [self._item(frame, choices[frame.exposure_id], *targets[frame.exposure_id]) for frame in science]

    def _item(self, frame: Frame, choices: list[Choice], target: Path, refused: str | None) -> Item:
        masters, error = plan(choices)
        error = error or refused
        detectors: list[Detector] = []
        if error is None:
            try:
                detectors = select_detectors(choices[0].frame.detectors, self.hdus)
            except ObsarchError as exc:
                error = str(exc)
        single = len(choices[0].frame.detectors) == 1  # pairs with a master's detector whatever its name
        inputs = [Input(frame.file_id, "frame", frame.content)] + [Input(m.file_id, k, m.content) for k, m in masters.items()]
        return Item(frame.path, (frame, detectors, masters, target, self.worker_memory, single), inputs,
                    {"masters": {k: m.file_id for k, m in masters.items()}, "out": str(target),
                     "detectors": [d.name for d in detectors]}, error, (frame, detectors, masters))

    def write(self, out: Writer, item: Item, result) -> None:
        frame, detectors, masters = item.data
        target, uses = result
        out.product(target, "calibrated", {**inherited([frame], "science"), **detector_values(detectors)})
        note = flat_note(Path(masters["flat"].path).name, uses) if "flat" in masters else None
        if note is not None and note not in self.noted:
            self.noted.add(note)
            out.note(note)


def calibrate(
    engine, selection, *, use: tuple[str, ...] = KINDS, out_dir: Path = Path("calibrated"),
    workers: int | None = None, executor: str = "pool", scheduler: str | None = None, force: bool = False,
    progress: Progress | None = None, rules: dict[str, CalibrationRule] = DEFAULT_RULES, hdus: tuple[str, ...] | None = None,
    memory: str = DEFAULT_MEMORY,
) -> StepResult:
    """Bias, dark and flat correction of every raw science frame of
    ``selection`` (a tree, or a person's text), detector by detector
    (``hdus``: only those), with the masters ``rules`` choose (see
    :mod:`processing.calib_rules`). A frame that no master fits is reported
    with the rule that refused each candidate, and the others go on.
    ``memory`` bounds the step: each of the workers calibrates a band of
    rows of one detector at a time within its share."""
    import os

    processes = 1 if executor == "serial" else (workers or os.cpu_count() or 1)
    step = CalibrateStep(selection, use, out_dir, rules, hdus, parse_memory(memory) // processes, force)
    return run_step(engine, step, force=force, executor=executor, workers=workers, scheduler=scheduler, progress=progress)
