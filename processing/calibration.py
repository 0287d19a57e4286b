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

from archive.exceptions import ObsarchError
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
from processing.steps import Frame, StepSummary, choose_master, frames, mjd_of, nearest, one_value, safe_name

ALGORITHM = "calibration-1"
KINDS = ("bias", "dark", "flat")
_COPIED = ("INSTRUME", "TELESCOP", "READOUTM", "FILTER", "XBINNING", "YBINNING", "CCDSUM", "GAIN", "RDNOISE")


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
) -> StepSummary:
    """Combine raw frames of ``kind`` into a master, bias-subtracted for darks
    and flats (and dark-subtracted for flats) when such masters exist."""
    if kind not in KINDS:
        raise ObsarchError(f"unknown master {kind!r}; use bias, dark or flat")
    inputs = _master_inputs(engine, kind, selection, band, nearest_count, to)
    first = inputs[0]
    masters = {}
    if kind in ("dark", "flat"):
        masters["bias"] = choose_master(engine, "bias", first)
    if kind == "flat":
        masters["dark"] = choose_master(engine, "dark", first)
    masters = {k: v for k, v in masters.items() if v is not None}
    night = first.night or "unknown-night"
    name = f"master_{kind}_{safe_name(first.readout_mode)}" + (f"_{safe_name(first.band)}" if kind == "flat" else "")
    name += f"_{safe_name(first.exptime) + 's_' if kind == 'dark' else ''}{night}.fits"
    target = (Path(out_dir) / name).resolve()
    contents = [f.content for f in inputs] + [m.content for m in masters.values()]
    run_params = {"kind": kind, **asdict(params), "inputs": [f.file_id for f in inputs],
                  "masters": {k: m.file_id for k, m in masters.items()}, "out": str(target)}
    print_ = fingerprint(f"master-{kind}", run_params, ALGORITHM, contents)
    summary = StepSummary()
    if not force and done_before(engine, print_):
        summary.skipped.append(str(target))
        return summary
    with recorded_run(engine, f"master-{kind}", run_params, ALGORITHM) as run:
        set_fingerprint(engine, run.id, print_)
        record_inputs(engine, run.id, [(f.file_id, "frame", f.content) for f in inputs]
                      + [(m.file_id, k, m.content) for k, m in masters.items()])
        data = _combine_master(kind, inputs, masters, params)
        header = _master_header(kind, inputs, masters, params)
        write_product(target, lambda tmp: fits.PrimaryHDU(data.astype(np.float32), header).writeto(tmp))
        add_product(engine, run.id, target, f"master_{kind}")
        run.summary = {"product": str(target), "frames": len(inputs)}
    summary.made.append(str(target))
    return summary


def _read(path: str) -> np.ndarray:
    from processing.quality import load_image

    return load_image(path)[0].astype(np.float64)


def _combine_master(kind: str, inputs: list[Frame], masters: dict[str, Frame], params: MasterParams) -> np.ndarray:
    memory = parse_memory(params.memory)
    if kind == "bias":
        return combine_files([f.path for f in inputs], method=params.method, sigma=params.sigma, memory_bytes=memory)
    bias = _read(masters["bias"].path) if "bias" in masters else None
    if kind == "dark":
        # combining is linear in a constant: the bias comes off the combined darks
        combined = combine_files([f.path for f in inputs], method=params.method, sigma=params.sigma, memory_bytes=memory)
        return combined - bias if bias is not None else combined
    offset = np.zeros(1)
    if bias is not None:
        offset = offset + bias
    if "dark" in masters:
        dark_exptime = _exptime(masters["dark"].path)
        offset = offset + _read(masters["dark"].path) * ((inputs[0].exptime or 0.0) / dark_exptime)
    scales = [1.0 / _median_after(f.path, offset) for f in inputs]
    return combine_files([f.path for f in inputs], method=params.method, sigma=params.sigma, memory_bytes=memory,
                         scales=scales, subtract=offset if offset.ndim == 2 else None)


def _median_after(path: str, offset: np.ndarray) -> float:
    data = _read(path)
    value = float(np.nanmedian(data[::4] - (offset[::4] if offset.ndim == 2 else offset)))
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
    first_header = fits.getheader(inputs[0].path, ext=_image_hdu(inputs[0].path))
    header = fits.Header()
    for key in _COPIED:
        if key in first_header:
            header[key] = first_header[key]
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


def _image_hdu(path: str) -> int:
    from processing.quality import load_image

    return load_image(path)[2]


# -- calibrating science frames ---------------------------------------------------------


def _calibrate_one(task: tuple) -> tuple[int, str | None, str | None]:
    """Calibrate one frame and write its product (atomically). Runs in a worker."""
    frame, masters, target = task
    try:
        from processing.quality import load_image

        data, _, hdu_index = load_image(frame.path)
        loaded = {k: _read(m.path) for k, m in masters.items()}
        result = calibrate_array(
            data, bias=loaded.get("bias"), dark=loaded.get("dark"),
            dark_exptime=_exptime(masters["dark"].path) if "dark" in masters else None, exptime=frame.exptime,
            flat=loaded.get("flat"),
        )
        header = fits.getheader(frame.path, ext=hdu_index)
        for key in ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE", "PCOUNT", "GCOUNT"):
            header.remove(key, ignore_missing=True, remove_all=True)
        for role, master in masters.items():
            header[f"{role.upper()[:4]}FILE"] = (Path(master.path).name, f"master {role} used by obsarch")
        header.add_history(f"obsarch calibrated {Path(frame.path).name}: " + ", ".join(f"{k} {Path(m.path).name}" for k, m in masters.items()))
        write_product(target, lambda tmp: fits.PrimaryHDU(result.astype(np.float32), header).writeto(tmp))
        return frame.exposure_id, target, None
    except (ObsarchError, OSError, ValueError) as exc:
        return frame.exposure_id, None, f"{frame.path}: {exc}"


def calibrate(
    engine, selection: str | None, *, use: tuple[str, ...] = KINDS, out_dir: Path = Path("calibrated"),
    workers: int | None = None, executor: str = "pool", scheduler: str | None = None, force: bool = False,
    progress: Progress | None = None,
) -> StepSummary:
    """Bias, dark and flat correction of every raw science frame of
    ``selection``, with masters chosen by rule (same read-out mode; same band
    for flats; nearest in time). A dark is used when a master dark exists
    (dark current is often negligible); a frame lacking its bias or flat is
    reported, and the others go on."""
    summary = StepSummary()
    science = frames(engine, selection, "frame_type == 'science'", "product is null")
    if not science:
        raise ObsarchError(f"no raw science frames match {selection or 'the catalog'}")
    tasks, plans = [], {}
    for frame in science:
        masters, missing = {}, []
        for kind in use:
            master = choose_master(engine, kind, frame, same_band=kind == "flat")
            if master is None and kind != "dark":
                missing.append(kind)
            elif master is None:
                continue
            else:
                masters[kind] = master
        target = (Path(out_dir) / f"{Path(frame.path).name.split('.')[0]}_cal.fits").resolve()
        if missing:
            summary.failed.append((frame.path, f"no master {' or '.join(missing)} in read-out mode {frame.readout_mode}"
                                   + (f" and band {frame.band}" if "flat" in missing else "")
                                   + f"; run `obsarch calib {missing[0]}` first"))
            continue
        params = {"masters": {k: m.file_id for k, m in masters.items()}, "out": str(target)}
        print_ = fingerprint("calibrate", params, ALGORITHM, [frame.content] + [m.content for m in masters.values()])
        if not force and done_before(engine, print_):
            summary.skipped.append(str(target))
            continue
        plans[frame.exposure_id] = (frame, masters, params, print_)
        tasks.append((frame, masters, target))
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
