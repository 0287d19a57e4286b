"""Calibration masters (bias, dark, flat) and calibrated science frames.

Masters are chosen the way observers choose them: one read-out mode, the N
frames nearest in time to a night, flats of one band each scaled to a median
of 1. Each product is written atomically, ingested, and linked to its inputs;
a step whose inputs, parameters and code are unchanged is skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from archive.db import transaction
from archive.detectors import Detector, detectors_of_files, select_detectors
from archive.exceptions import ObsarchError
from archive.keywords import load_maps
from processing import detectors as pixels
from processing.calib_rules import DEFAULT_RULES, CalibrationRule, Choice, choose_all
from processing.combine import DEFAULT_MEMORY, calibrate_array, combine_files, parse_memory
from processing.executor import Progress, parallel_map
from processing.runs import (
    add_product,
    done_before,
    fingerprint,
    record_inputs,
    recorded_run,
    set_fingerprint,
    write_product,
)
from processing.steps import Frame, StepSummary, frames, mjd_of, nearest, one_value, safe_name

ALGORITHM = "calibration-2"  # 2: per detector, masters chosen by declared rules
KINDS = ("bias", "dark", "flat")
_COPIED = ("INSTRUME", "TELESCOP", "READOUTM", "FILTER", "XBINNING", "YBINNING", "CCDSUM", "GAIN", "RDNOISE")
# the keywords normalized columns come from: a master copies them from its
# first input so that it is catalogued with the same mode, binning, gain...
_SOURCED = ("instrument", "telescope", "readout_mode", "band", "xbinning", "ybinning", "binning", "gain", "ccd_temp",
            "detector")


@dataclass(frozen=True)
class MasterParams:
    method: str = "median"
    sigma: float = 3.0
    memory: str = DEFAULT_MEMORY


def _master_inputs(engine, kind: str, selection: str | None, band: str | None, count: int | None, to: str | None) -> list[Frame]:
    types = "frame_type in ('flat', 'twilight')" if kind == "flat" else f"frame_type == '{kind}'"
    extra = [types, "product is null"]
    if band is not None:
        extra.append(f"band == '{band}'")
    candidates = frames(engine, selection, *extra)
    if not candidates:
        raise ObsarchError(f"no raw {kind} frames match {selection or 'the catalog'}" + (f" in band {band}" if band else ""))
    if count is not None:
        if to is None:
            raise ObsarchError("--nearest needs --to, the date or time the frames should be nearest to")
        candidates = nearest(candidates, count, mjd_of(to))
    one_value(candidates, "readout_mode", kind)
    if kind == "flat":
        one_value(candidates, "band", kind)
    if kind == "dark":
        one_value(candidates, "exptime", kind)
    return sorted(candidates, key=lambda f: f.mjd or 0)


def make_master(
    engine, kind: str, selection: str | None = None, *, band: str | None = None, nearest_count: int | None = None,
    to: str | None = None, params: MasterParams = MasterParams(), out_dir: Path = Path("masters"), force: bool = False,
    hdus: tuple[str, ...] | None = None, rules: dict[str, CalibrationRule] = DEFAULT_RULES,
) -> StepSummary:
    """Combine raw frames of ``kind`` into a master with one HDU per detector
    (``hdus``: only those), bias-subtracted for darks and flats (and
    dark-subtracted for flats) by the masters ``rules`` choose for its first
    input. ``params.memory`` bounds the whole step: detectors are combined
    and written one after another."""
    if kind not in KINDS:
        raise ObsarchError(f"unknown master {kind!r}; use bias, dark or flat")
    inputs = _master_inputs(engine, kind, selection, band, nearest_count, to)
    first = inputs[0]
    detectors = _common_detectors(engine, inputs, hdus)
    masters = _masters_for(engine, first, ("bias",) if kind == "dark" else ("bias", "dark") if kind == "flat" else (),
                           rules, hdus)
    night = first.night or "unknown-night"
    name = f"master_{kind}_{safe_name(first.readout_mode)}" + (f"_{safe_name(first.band)}" if kind == "flat" else "")
    name += f"_{safe_name(first.exptime) + 's_' if kind == 'dark' else ''}{night}.fits"
    target = (Path(out_dir) / name).resolve()
    contents = [f.content for f in inputs] + [m.content for m in masters.values()]
    run_params = {"kind": kind, **asdict(params), "inputs": [f.file_id for f in inputs],
                  "masters": {k: m.file_id for k, m in masters.items()}, "out": str(target),
                  "detectors": [d.name for d in detectors[first.file_id]]}
    print_ = fingerprint(f"master-{kind}", run_params, ALGORITHM, contents)
    summary = StepSummary()
    if not force and done_before(engine, print_):
        summary.skipped.append(str(target))
        return summary
    with recorded_run(engine, f"master-{kind}", run_params, ALGORITHM) as run:
        set_fingerprint(engine, run.id, print_)
        record_inputs(engine, run.id, [(f.file_id, "frame", f.content) for f in inputs]
                      + [(m.file_id, k, m.content) for k, m in masters.items()])
        header = _master_header(kind, inputs, masters, params)
        combine = _detector_combiner(kind, inputs, detectors, masters, params)
        with pixels.opened(first.path) as hdul:
            headers = {d.name: pixels.detector_header(hdul, d) for d in detectors[first.file_id]}
        write_product(target, lambda tmp: pixels.write_detectors(
            tmp, header, detectors[first.file_id], lambda d: (combine(d), headers[d.name])))
        add_product(engine, run.id, target, f"master_{kind}")
        run.summary = {"product": str(target), "frames": len(inputs), "detectors": len(detectors[first.file_id])}
    summary.made.append(str(target))
    return summary


def _common_detectors(engine, inputs: list[Frame], hdus: tuple[str, ...] | None) -> dict[int, list[Detector]]:
    """The detectors to combine, per input: those of the first input (``hdus``:
    only those), found by name and shape in every other input."""
    with transaction(engine) as conn:
        found = detectors_of_files(conn, [f.file_id for f in inputs])
    wanted = select_detectors(found[inputs[0].file_id], hdus)
    if not wanted:
        raise ObsarchError(f"{inputs[0].path}: no detector (image HDU with data) to combine")
    result = {}
    for frame in inputs:
        by_name = {d.name: d for d in found[frame.file_id]}
        if len(wanted) == 1 and len(by_name) == 1:
            by_name = {wanted[0].name: next(iter(by_name.values()))}
        chosen = []
        for detector in wanted:
            own = by_name.get(detector.name)
            if own is None:
                raise ObsarchError(f"{frame.path}: no detector {detector.name}, which {Path(inputs[0].path).name} has")
            if own.shape != detector.shape:
                raise ObsarchError(f"{frame.path}: detector {detector.name} is {own.shape_text}, "
                                   f"{Path(inputs[0].path).name}'s is {detector.shape_text}")
            chosen.append(own)
        result[frame.file_id] = chosen
    return result


def _masters_for(engine, frame: Frame, kinds: tuple[str, ...], rules, hdus) -> dict[str, Frame]:
    """The masters the rules choose for ``frame`` (a master's own first input)."""
    masters = {}
    for choice in choose_all(engine, [frame.exposure_id], kinds, rules, hdus):
        if choice.chosen is not None:
            m = choice.chosen.master
            masters[choice.kind] = Frame(m.exposure_id, m.file_id, m.path, m.content, exptime=m.exptime, mjd=m.mjd)
    return masters


def _detector_combiner(kind: str, inputs: list[Frame], detectors: dict[int, list[Detector]],
                       masters: dict[str, Frame], params: MasterParams):
    """``combine(detector) -> image`` for one detector of the first input; the
    arrays held beside the combine (bias, dark) come off the memory budget."""
    memory = parse_memory(params.memory)
    names = [d.name for d in detectors[inputs[0].file_id]]
    position = {d.name: i for i, d in enumerate(detectors[inputs[0].file_id])}

    def subtrahend(detector: Detector) -> np.ndarray | None:
        offset = None
        for role in ("bias", "dark"):
            if role not in masters:
                continue
            with pixels.opened(masters[role].path) as hdul:
                image = pixels.read(hdul, pixels.paired(hdul, names, single=True)[detector.name])
            if role == "dark":
                image = image * ((inputs[0].exptime or 0.0) / _exptime(masters["dark"].path))
            offset = image if offset is None else offset + image
        return offset

    def combine(detector: Detector) -> np.ndarray:
        hdus = [detectors[f.file_id][position[detector.name]].hdu_index for f in inputs]
        paths = [f.path for f in inputs]
        offset = subtrahend(detector) if kind in ("dark", "flat") else None
        held = offset.nbytes if offset is not None else 0
        budget = memory - held
        if budget <= 0:
            raise ObsarchError(f"--memory {params.memory} is too small to hold the master bias/dark of detector {detector.name}")
        if kind == "flat":
            scales = [1.0 / _median_after(p, h, offset) for p, h in zip(paths, hdus)]
            return combine_files(paths, method=params.method, sigma=params.sigma, memory_bytes=budget, scales=scales,
                                 subtract=offset, hdus=hdus)
        combined = combine_files(paths, method=params.method, sigma=params.sigma, memory_bytes=budget, hdus=hdus)
        # combining is linear in a constant: the bias comes off the combined darks
        return combined - offset if offset is not None else combined

    return combine


def _median_after(path: str, hdu_index: int, offset: np.ndarray | None) -> float:
    with pixels.opened(path) as hdul:
        data = np.asarray(hdul[hdu_index].section[::4, :], dtype=np.float64)
    value = float(np.nanmedian(data - (offset[::4] if offset is not None else 0.0)))
    if not np.isfinite(value) or value == 0:
        raise ObsarchError(f"{path}: median {value} cannot normalize a flat")
    return value


def _exptime(path: str) -> float:
    header = fits.getheader(path)
    value = header.get("EXPTIME")
    if not isinstance(value, (int, float)) or value <= 0:
        raise ObsarchError(f"{path}: the master dark has no usable EXPTIME to scale by")
    return float(value)


def _master_header(kind: str, inputs: list[Frame], masters: dict[str, Frame], params: MasterParams) -> fits.Header:
    with pixels.opened(inputs[0].path) as hdul:
        first_header = hdul[0].header.copy()
        for hdu in hdul[1:]:  # LCO: the observation's cards are in the SCI extension
            for card in hdu.header.cards:
                if card.keyword and card.keyword not in first_header and card.keyword not in pixels.STRUCTURE:
                    first_header.append(card)
    header = fits.Header()
    maps = load_maps()
    sourced = [k for field in _SOURCED for k in maps.sources.get(field, ())]
    for key in (*_COPIED, *sourced):
        if key in first_header and key not in header:
            header.append(first_header.cards[key])
    header["IMAGETYP"] = (f"MASTER_{kind.upper()}", "made by obsarch")
    if kind == "dark":
        header["EXPTIME"] = (inputs[0].exptime, "[s] of the combined darks")
    elif "EXPTIME" in first_header:
        header["EXPTIME"] = first_header["EXPTIME"]
    times = [f.mjd for f in inputs if f.mjd is not None]
    if times:
        header["MJD-OBS"] = (float(np.mean(times)), "mean of the combined frames")
    if inputs[0].night:
        header["DAY-OBS"] = inputs[0].night.replace("-", "")
    header["NCOMBINE"] = (len(inputs), "frames combined")
    header["COMBMETH"] = (params.method, "combine method")
    for role, master in masters.items():
        header[f"{role.upper()[:4]}FILE"] = (Path(master.path).name, f"master {role} subtracted")
    for frame in inputs:  # the full paths are in the catalog's provenance
        header.add_history(f"obsarch input: {Path(frame.path).name}")
    return header


# -- calibrating science frames ---------------------------------------------------------


def _calibrate_one(task: tuple) -> tuple[int, str | None, str | None]:
    """Calibrate one frame, detector by detector, and write its product
    (atomically) with one HDU per detector and its masks. Runs in a worker."""
    frame, detectors, masters, target = task
    try:
        names = [d.name for d in detectors]
        dark_exptime = _exptime(masters["dark"].path) if "dark" in masters else None
        with pixels.opened(frame.path) as hdul:
            opened = {k: pixels.opened(m.path) for k, m in masters.items()}
            master_hduls = {k: cm.__enter__() for k, cm in opened.items()}
            try:
                pairs = {k: pixels.paired(h, names, single=True) for k, h in master_hduls.items()}

                def make(detector: Detector) -> tuple[np.ndarray, fits.Header]:
                    loaded = {k: pixels.read(master_hduls[k], pairs[k][detector.name]) for k in master_hduls}
                    result = calibrate_array(pixels.read(hdul, detector), bias=loaded.get("bias"), dark=loaded.get("dark"),
                                             dark_exptime=dark_exptime, exptime=frame.exptime, flat=loaded.get("flat"))
                    return result, _calibrated_header(pixels.detector_header(hdul, detector), frame, masters)

                def companions():
                    for index in pixels.companions_of(hdul):
                        yield fits.ImageHDU(hdul[index].data, pixels.header_only(hdul[index].header), name=hdul[index].name)

                primary = hdul[0].header if detectors[0].hdu_index != 0 else fits.Header()
                write_product(target, lambda tmp: pixels.write_detectors(tmp, primary, detectors, make, companions))
            finally:
                for cm in opened.values():
                    cm.__exit__(None, None, None)
        return frame.exposure_id, target, None
    except (ObsarchError, OSError, ValueError) as exc:
        return frame.exposure_id, None, f"{frame.path}: {exc}"


def _calibrated_header(header: fits.Header, frame, masters: dict) -> fits.Header:
    for role, master in masters.items():
        header[f"{role.upper()[:4]}FILE"] = (Path(master.path).name, f"master {role} used by obsarch")
    header.add_history(f"obsarch calibrated {Path(frame.path).name}: " + ", ".join(f"{k} {Path(m.path).name}" for k, m in masters.items()))
    return header


def _plan(choices: list[Choice]) -> tuple[dict[str, Choice], str | None]:
    """The masters of one frame's choices, or why it cannot be calibrated. A
    dark is optional (dark current is often negligible) when the catalog has
    no master dark at all; one refused by the rules is a reason."""
    chosen, reasons = {}, []
    for choice in choices:
        if choice.chosen is not None:
            chosen[choice.kind] = choice
        elif choice.kind != "dark" or choice.verdicts:
            reasons.append(choice.reason)
    return chosen, ("; ".join(reasons) or None)


def calibrate(
    engine, selection: str | None, *, use: tuple[str, ...] = KINDS, out_dir: Path = Path("calibrated"),
    workers: int | None = None, executor: str = "pool", scheduler: str | None = None, force: bool = False,
    progress: Progress | None = None, rules: dict[str, CalibrationRule] = DEFAULT_RULES, hdus: tuple[str, ...] | None = None,
) -> StepSummary:
    """Bias, dark and flat correction of every raw science frame of
    ``selection``, detector by detector (``hdus``: only those), with the
    masters ``rules`` choose (see :mod:`processing.calib_rules`). A frame
    that no master fits is reported with the rule that refused each
    candidate, and the others go on."""
    summary = StepSummary()
    science = frames(engine, selection, "frame_type == 'science'", "product is null")
    if not science:
        raise ObsarchError(f"no raw science frames match {selection or 'the catalog'}")
    by_id = {f.exposure_id: f for f in science}
    choices: dict[int, list[Choice]] = {}
    for choice in choose_all(engine, list(by_id), use, rules, hdus):
        choices.setdefault(choice.frame.exposure_id, []).append(choice)
    tasks, plans = [], {}
    for exposure_id, frame_choices in choices.items():
        frame = by_id[exposure_id]
        chosen, reason = _plan(frame_choices)
        if reason:
            summary.failed.append((frame.path, reason))
            continue
        try:
            detectors = select_detectors(frame_choices[0].frame.detectors, hdus)
        except ObsarchError as exc:
            summary.failed.append((frame.path, str(exc)))
            continue
        masters = {k: Frame(c.chosen.master.exposure_id, c.chosen.master.file_id, c.chosen.master.path, c.chosen.master.content)
                   for k, c in chosen.items()}
        target = (Path(out_dir) / f"{Path(frame.path).name.split('.')[0]}_cal.fits").resolve()
        params = {"masters": {k: m.file_id for k, m in masters.items()}, "out": str(target),
                  "detectors": [d.name for d in detectors]}
        print_ = fingerprint("calibrate", params, ALGORITHM, [frame.content] + [m.content for m in masters.values()])
        if not force and done_before(engine, print_):
            summary.skipped.append(str(target))
            continue
        plans[frame.exposure_id] = (frame, masters, params, print_)
        tasks.append((frame, detectors, masters, target))
    for _, (exposure_id, target, error) in parallel_map(_calibrate_one, tasks, workers=workers, executor=executor,
                                                        scheduler=scheduler, progress=progress):
        frame, masters, params, print_ = plans[exposure_id]
        if error:
            summary.failed.append((frame.path, error))
            continue
        with recorded_run(engine, "calibrate", params, ALGORITHM) as run:
            set_fingerprint(engine, run.id, print_)
            record_inputs(engine, run.id, [(frame.file_id, "frame", frame.content)]
                          + [(m.file_id, k, m.content) for k, m in masters.items()])
            add_product(engine, run.id, target, "calibrated")
        summary.made.append(str(target))
    return summary
