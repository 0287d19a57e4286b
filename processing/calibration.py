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
from archive.query import Node, compare, is_null, one_of
from processing.executor import Progress
from processing.machinery import Input, Item, Step, StepResult, Writer, run_step
from processing.runs import params_hash, write_product
from processing.steps import Frame, choose_master, inherited, mjd_of, nearest, one_value, resolve, safe_name

ALGORITHM = "calibration-1"
KINDS = ("bias", "dark", "flat")
_COPIED = ("INSTRUME", "TELESCOP", "READOUTM", "FILTER", "XBINNING", "YBINNING", "CCDSUM", "GAIN", "RDNOISE")


@dataclass(frozen=True)
class MasterParams:
    method: str = "median"
    sigma: float = 3.0
    memory: str = DEFAULT_MEMORY


def _kind_condition(kind: str) -> Node:
    return one_of("frame_type", ("flat", "twilight")) if kind == "flat" else compare("frame_type", "==", kind)


def _master_inputs(engine, kind: str, selection, band: str | None, count: int | None, to: str | None) -> tuple[list[Frame], str | None]:
    """The raw frames a master combines, and why they are fewer than asked (if they are)."""
    conditions = [_kind_condition(kind), is_null("product"), compare("band", "==", band) if band is not None else None]
    candidates = resolve(engine, selection, *conditions)
    if not candidates:
        raise ObsarchError(f"no raw {kind} frames match {_shown(selection)}" + (f" in band {band}" if band else ""))
    short = None
    if count is not None:
        if to is None:
            raise ObsarchError("--nearest needs --to: a date, a time, an MJD, a frame number or a selection")
        if len(candidates) < count:
            short = f"--nearest {count} asked, only {len(candidates)} {kind} frames match"
        candidates = nearest(candidates, count, mjd_of(engine, to))
    one_value(candidates, "readout_mode", kind)
    if kind == "flat":
        one_value(candidates, "band", kind)
    if kind == "dark":
        one_value(candidates, "exptime", kind)
    return sorted(candidates, key=lambda f: f.mjd or 0), short


def _shown(selection) -> str:
    return repr(selection) if isinstance(selection, str) else "the catalog" if selection is None else "the selection"


def master_name(kind: str, inputs: list[Frame], params: MasterParams, masters: dict[str, Frame]) -> str:
    """``master_KIND_MODE[_BAND][_EXPs]_NIGHT_METHOD_DIGEST.fits``: the night is
    the middle night of the inputs; the digest stands for the parameters, the
    inputs and the masters used, so a master made otherwise never takes the
    name (and the file) of another."""
    values = inherited(inputs, kind)
    parts = [f"master_{kind}", safe_name(values["readout_mode"])]
    if kind == "flat":
        parts.append(safe_name(values["band"]))
    if kind == "dark":
        parts.append(f"{safe_name(values['exptime'])}s")
    parts += [values.get("night") or "unknown-night", params.method]
    digest = params_hash(kind, {**asdict(params), "inputs": sorted(f.file_id for f in inputs),
                                "masters": {k: m.file_id for k, m in masters.items()}}, ALGORITHM)[:8]
    return "_".join(parts + [digest]) + ".fits"


def _check_frame(path: str) -> tuple[int, ...]:
    """The image shape of one input: reading it now finds a corrupt frame
    before it spoils the combination. Runs in a worker."""
    from processing.quality import load_image

    return load_image(path)[0].shape


class MasterStep(Step):
    """A master of ``kind`` from raw frames: each frame is checked in a
    worker (one unreadable frame costs only itself), then combined."""

    algorithm, item_runs, whole = ALGORITHM, False, True
    work = staticmethod(_check_frame)

    def __init__(self, engine, kind, selection, band, count, to, params: MasterParams, out_dir: Path):
        if kind not in KINDS:
            raise ObsarchError(f"unknown master {kind!r}; use bias, dark or flat")
        self.name, self.kind, self.master_params = f"master-{kind}", kind, params
        self.inputs, self.shortfall = _master_inputs(engine, kind, selection, band, count, to)
        first = self.inputs[0]
        masters = {}
        if kind in ("dark", "flat"):
            masters["bias"] = choose_master(engine, "bias", first)
        if kind == "flat":
            masters["dark"] = choose_master(engine, "dark", first)
        self.masters = {k: v for k, v in masters.items() if v is not None}
        self.target = (Path(out_dir) / master_name(kind, self.inputs, params, self.masters)).resolve()

    def params(self) -> dict:
        return {"kind": self.kind, **asdict(self.master_params), "masters": {k: m.file_id for k, m in self.masters.items()},
                "master_contents": {k: m.content for k, m in self.masters.items()}, "out": str(self.target)}

    def items(self, engine) -> list[Item]:
        return [Item(f.path, f.path, [Input(f.file_id, "frame", f.content)], data=f) for f in self.inputs]

    def finish(self, out: Writer, done, failed) -> str | None:
        used = [item.data for item, _ in done]
        shapes = {shape for _, shape in done}
        if len(shapes) > 1:
            raise ObsarchError(f"the {self.kind} frames have different shapes ({', '.join(map(str, sorted(shapes)))})")
        out.inputs([Input(m.file_id, k, m.content) for k, m in self.masters.items()])
        data = _combine_master(self.kind, used, self.masters, self.master_params)
        header = _master_header(self.kind, used, self.masters, self.master_params)
        write_product(self.target, lambda tmp: fits.PrimaryHDU(data.astype(np.float32), header).writeto(tmp))
        out.product(self.target, f"master_{self.kind}", inherited(used, self.kind))
        if failed:
            return f"made from {len(used)} of {len(used) + len(failed)} selected {self.kind} frames"
        return self.shortfall


def make_master(
    engine, kind: str, selection=None, *, band: str | None = None, nearest_count: int | None = None,
    to: str | None = None, params: MasterParams = MasterParams(), out_dir: Path = Path("masters"), force: bool = False,
    executor: str = "serial", workers: int | None = None,
) -> StepResult:
    """Combine raw frames of ``kind`` into a master, bias-subtracted for darks
    and flats (and dark-subtracted for flats) when such masters exist.
    ``selection``: a tree, or a person's text."""
    step = MasterStep(engine, kind, selection, band, nearest_count, to, params, out_dir)
    return run_step(engine, step, force=force, executor=executor, workers=workers)


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
    values = inherited(inputs, kind)
    if values["readout_mode"] is not None:  # whatever keyword the inputs had it in
        header["READOUTM"] = (values["readout_mode"], "read-out mode of the combined frames")
    if values.get("mjd") is not None:
        header["MJD-OBS"] = (values["mjd"], "middle of the combined frames")
    if values.get("night"):
        header["DAY-OBS"] = (values["night"].replace("-", ""), "middle night of the combined frames")
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


def _calibrate_one(task: tuple) -> str:
    """Calibrate one frame and write its product (atomically). Runs in a worker."""
    frame, masters, target = task
    from processing.quality import load_image

    data, _, hdu_index = load_image(frame.path)
    loaded = {k: _read(m.path) for k, m in masters.items()}
    for kind, master in loaded.items():
        if master.shape != data.shape:
            raise ObsarchError(f"the master {kind} {Path(masters[kind].path).name} is {master.shape}, the frame {data.shape}")
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
    return target


class CalibrateStep(Step):
    """Bias, dark and flat correction of raw science frames, one product each."""

    name, algorithm, item_runs = "calibrate", ALGORITHM, True
    work = staticmethod(_calibrate_one)

    def __init__(self, selection, use: tuple[str, ...], out_dir: Path):
        self.selection, self.use, self.out_dir = selection, use, Path(out_dir)

    def items(self, engine) -> list[Item]:
        science = resolve(engine, self.selection, compare("frame_type", "==", "science"), is_null("product"))
        if not science:
            raise ObsarchError(f"no raw science frames match {_shown(self.selection)}")
        return [self._item(engine, frame) for frame in science]

    def _item(self, engine, frame: Frame) -> Item:
        masters, missing = {}, []
        for kind in self.use:
            master = choose_master(engine, kind, frame, same_band=kind == "flat")
            if master is not None:
                masters[kind] = master
            elif kind != "dark":  # dark current is often negligible: a dark is used when there is one
                missing.append(kind)
        target = (self.out_dir / f"{Path(frame.path).name.split('.')[0]}_cal.fits").resolve()
        inputs = [Input(frame.file_id, "frame", frame.content)] + [Input(m.file_id, k, m.content) for k, m in masters.items()]
        error = None
        if missing:
            error = (f"no master {' or '.join(missing)} in read-out mode {frame.readout_mode}"
                     + (f" and band {frame.band}" if "flat" in missing else "") + f"; run `obsarch calib {missing[0]}` first")
        return Item(frame.path, (frame, masters, target), inputs,
                    {"masters": {k: m.file_id for k, m in masters.items()}, "out": str(target)}, error, frame)

    def write(self, out: Writer, item: Item, result) -> None:
        out.product(result, "calibrated", inherited([item.data], "science"))


def calibrate(
    engine, selection, *, use: tuple[str, ...] = KINDS, out_dir: Path = Path("calibrated"),
    workers: int | None = None, executor: str = "pool", scheduler: str | None = None, force: bool = False,
    progress: Progress | None = None,
) -> StepResult:
    """Bias, dark and flat correction of every raw science frame of
    ``selection`` (a tree, or a person's text), with masters chosen by rule
    (same read-out mode; same band for flats; nearest in time). A frame
    lacking its bias or flat is reported, and the others go on."""
    return run_step(engine, CalibrateStep(selection, use, out_dir), force=force, executor=executor, workers=workers,
                    scheduler=scheduler, progress=progress)
