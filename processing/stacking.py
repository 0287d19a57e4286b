"""Shift-and-stack: every frame resampled onto its reference by its current
offset, combined with rejection, written with a coverage map.

Frames of several detectors are stacked detector by detector (like with
like, paired by name), each detector shifted by its exposure's offset: exact
for the pure shifts of a dither, since every detector of a camera moves
with it. An offset that rotates or scales moves each detector differently;
such frames need a WCS to be mosaicked, and are refused with that reason.
A star fit's rotation and scale are never exactly none: within three times
their uncertainties of none, and moving no detector's corner by more than a
quarter pixel, they are taken for the shift the frame was dithered by.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from archive.detectors import select_detectors
from archive.exceptions import ObsarchError, UsageError
from archive.query import compare, is_null
from processing.calibration import detector_values
from processing.combine import (
    DEFAULT_MEMORY,
    METHODS,
    CombineError,
    _size,
    clip_minimum,
    clip_reaches,
    combine_files,
    least_memory,
    parse_memory,
    resample,
)
from processing.detectors import write_detectors
from processing.executor import Progress
from processing.machinery import Input, Item, Step, StepResult, Writer, run_step
from processing.offsets import current_offsets
from processing.runs import output_directory, what_is_at, write_product
from processing.steps import Frame, inherited, leave_out_bad, product_of, resolve, safe_name, without_images

ALGORITHM = "stack-3"  # 3: detector by detector
# Rotation (degrees) and scale change under which a multi-detector offset is a shift, whatever its uncertainty
_SHIFT_ROTATION_DEG, _SHIFT_SCALE = 1e-3, 1e-5
# Beyond them, a fit that cannot tell its rotation and scale from none (within this many sigma) is a shift when
# they move the mosaic's far corner by at most this many pixels: a small part of any sampled star (FWHM >= 2 px)
_SHIFT_SIGMAS, _SHIFT_PIXELS = 3.0, 0.25


def _reach(detectors) -> float:
    """Pixels from the origin of the detector an offset is measured on to the
    farthest corner of the others, not knowing how they lie: laid edge to
    edge, n detectors reach farthest all in a row, along their long side."""
    sides = [sorted(d.shape[-2:]) for d in detectors]
    return math.hypot(len(detectors) * max(long for _, long in sides), max(short for short, _ in sides))


def _allowance(threshold: float, error: float | None) -> float:
    """How far from none a fitted value can be and still be none: the
    threshold alone when the fit gave no usable uncertainty."""
    return max(threshold, _SHIFT_SIGMAS * error) if error is not None and math.isfinite(error) else threshold


def _moves_as_a_shift(transform, reach: float) -> bool:
    """Whether every detector moves alike by ``transform``, measured on one of
    them: its rotation and scale are below the thresholds, or consistent with
    none and negligible ``reach`` pixels away (a poor fit's large rotation is
    consistent with none too, yet would misplace the far detectors)."""
    rotation, change = abs(transform.rotation), abs(transform.scale - 1)
    if rotation <= _SHIFT_ROTATION_DEG and change <= _SHIFT_SCALE:
        return True
    if rotation > _allowance(_SHIFT_ROTATION_DEG, transform.rotation_err) \
            or change > _allowance(_SHIFT_SCALE, transform.scale_err):
        return False
    # scale * R - 1 is [[p, -q], [q, p]]: it moves a point r pixels from the origin by hypot(p, q) * r beyond the shift
    angle = math.radians(transform.rotation)
    return math.hypot(transform.scale * math.cos(angle) - 1, transform.scale * math.sin(angle)) * reach <= _SHIFT_PIXELS


def _remove_dead_scratch() -> None:
    """Scratch directories of stacks whose process was killed (kill -9 leaves them)."""
    for directory in Path(tempfile.gettempdir()).glob("obsarch-stack-*-*"):
        try:
            os.kill(int(directory.name.split("-")[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except (ValueError, PermissionError):
            continue  # not ours, or another user's live process


def _resample_one(task: tuple) -> str:
    """Resample each detector of one frame onto the reference grid into a
    scratch FITS file, one detector at a time. Runs in a worker."""
    path, transform, detectors, target, single = task
    from processing import detectors as pixels
    from processing.quality import _image_of

    with pixels.opened(path) as hdul:
        own = pixels.paired(hdul, [d.name for d in detectors], single=single)
        fits.PrimaryHDU().writeto(target, overwrite=True)
        for detector in detectors:
            data = _image_of(hdul[own[detector.name].hdu_index], 32)
            if data.shape != detector.shape[-2:]:
                raise ObsarchError(f"{path}: detector {detector.name} is {data.shape}, the reference's {detector.shape}")
            bad = pixels.bad_pixels(hdul, own[detector.name])
            if bad is not None and bad.shape == data.shape:  # hot pixels and bad columns: no value, not data
                data = np.where(bad, np.nan, data)
            image, _ = resample(data, transform, data.shape)
            fits.append(target, image.astype(np.float32), fits.Header([("EXTNAME", detector.name)]))
            del data, image
    return target


_METHOD_NAMES = {"sigclip": "sigma-clipped mean, one pass", "sigclip-median": "sigma-clipped median, one pass"}


class StackStep(Step):
    """One stack from the frames of a selection (their calibrated products
    where they exist), each resampled in a worker by its current offset."""

    name, algorithm, whole = "stack", ALGORITHM, True
    work = staticmethod(_resample_one)

    def __init__(self, selection, method: str, sigma: float, out_dir: Path, name: str | None, include_bad: bool, memory: str,
                 hdus: tuple[str, ...] | None = None, force: bool = False):
        self.selection, self.method, self.sigma, self.out_dir = selection, method, sigma, Path(out_dir)
        self.file_name, self.include_bad, self.memory, self.hdus = name, include_bad, memory, hdus
        parse_memory(memory)  # a size that cannot be read is refused before anything runs
        if name is not None and (not name.strip() or Path(name).name != name or name in (".", "..")):
            raise UsageError(f"--name {name!r}: give a file name, without a directory (--out is the directory)")
        self.scratch, self.force = None, force

    def params(self) -> dict:
        return {"method": self.method, "sigma": self.sigma, "include_bad": self.include_bad, "out": str(self.target),
                "detectors": [d.name for d in self.detectors]}

    def items(self, engine) -> list[Item]:
        chosen, bad, self.said = leave_out_bad(engine, self.selection, is_null("product"), include_bad=self.include_bad)
        chosen, imageless = without_images(chosen)
        self.said += imageless
        if not chosen:
            why = [f"the {len(bad)} that match are graded bad and left out (--include-bad keeps them)"] \
                if bad and not self.include_bad else []
            raise ObsarchError("no frames to stack in the selection" + (": " + "; ".join(why + imageless) if why + imageless else ""))
        offsets = current_offsets(engine, [f.exposure_id for f in chosen])
        references = {offsets[f.exposure_id].reference_id for f in chosen if offsets.get(f.exposure_id, None) and offsets[f.exposure_id].ok}
        if len(references) > 1:
            raise ObsarchError(f"the frames' current offsets point to {len(references)} references ({sorted(references)}); "
                               "register them onto one (offsets compute --reference N, or --groups ... --reference N)")
        if not references:
            raise ObsarchError("no frame of the selection has an offset to stack by; run `obsarch offsets compute` first")
        (self.reference_id,) = references
        reference = resolve(engine, None, ids=[self.reference_id])
        if not reference:
            raise ObsarchError(f"the reference exposure {self.reference_id} is gone from the catalog")
        from processing import detectors as pixels

        with pixels.opened(product_of(engine, reference[0].file_id, "calibrated") or reference[0].path) as hdul:
            every = pixels.detectors_of(hdul)
            self.detectors = [d if len(d.shape) == 2 else type(d)(d.hdu_index, d.name, d.shape[-2:])
                              for d in select_detectors(every, self.hdus)]
            # the stack is on the reference's pixel grid: its sky coordinates are the reference's
            self.grid = {d.name: _celestial_cards(hdul[d.hdu_index].header) for d in self.detectors}
        # one detector pairs with the reference's one whatever their names; a detector --hdu chose of several, only by name
        self.single = len(every) == 1
        self.measured_on = every[0].name  # an offset of a frame of several detectors is measured on its first
        self.reach = _reach(every)  # every detector: the offset is measured on the first, which --hdu may leave out
        if not self.detectors:
            raise ObsarchError(f"the reference exposure {self.reference_id} has no detector to stack onto")
        clip_reaches(self.method, self.sigma, len(chosen), "--sigma-clip")  # before a pixel is read
        for detector in self.detectors:  # before any frame is resampled: it was said only once all were
            need = least_memory(len(chosen), detector.shape, self.method)
            if parse_memory(self.memory) < need:
                raise UsageError(f"--memory {self.memory} is too small: {len(chosen)} frames of {detector.shape[-1]}x{detector.shape[-2]} "
                                 f"need at least {_size(need)} to be stacked")
        bands = sorted({f.band for f in chosen if f.band}, key=str)
        self.band = bands[0] if len(bands) == 1 else None
        self.target = (self.out_dir / (self.file_name or f"{safe_name(self.band or 'mixed')}_stack.fits")).resolve()
        output_directory(self.out_dir)
        self.replaces = self._replaces(engine)
        _remove_dead_scratch()
        self.scratch = Path(tempfile.mkdtemp(prefix=f"obsarch-stack-{os.getpid()}-"))
        sources = {f.file_id: product_of(engine, f.file_id, "calibrated") for f in chosen}
        calibrated = sum(1 for source in sources.values() if source)
        # bias-subtracted and raw pixels never go into one stack: the frames not calibrated are left out, and said
        raw = f"not calibrated, while {calibrated} of the selected frames are: calibrate it first" if 0 < calibrated < len(chosen) else None
        return [self._item(engine, f, offsets.get(f.exposure_id), sources[f.file_id], raw) for f in chosen]

    def _replaces(self, engine) -> str | None:
        """What writing the stack will replace, to be said: the newest product
        at a path supersedes the older ones, so an earlier stack there is
        replaced (its run keeps its record). Anything else there is refused
        (:meth:`processing.runs.Occupant.refusal`): a raw file and another
        step's product (a master) always, a file no run made unless forced."""
        occupant = what_is_at(engine, self.target)
        if occupant.what == "product" and occupant.kind != "stack":  # forced or not: steps would take the stack for a master
            raise ObsarchError(f"{self.target} is the {occupant.kind} made by run {occupant.run_id}: --name or --out writes elsewhere")
        if why := occupant.refusal("stack", force=self.force):
            raise ObsarchError(why.replace("--out writes elsewhere", "--name or --out writes elsewhere"))
        if occupant.what == "product":
            return (f"replaced {self.target}, the {occupant.kind} of run {occupant.run_id} ({len(occupant.frames)} frames)"
                    "; --name keeps both")
        return None if occupant.what == "nothing" else f"replaced {self.target}, which no run made"

    def _item(self, engine, frame: Frame, offset, source: str | None, raw: str | None) -> Item:
        inputs = [Input(frame.file_id, "frame", frame.content)]
        if raw and not source:
            return Item(frame.path, error=raw, inputs=inputs, data=frame)
        if source:
            calibrated = resolve(engine, compare("path", "==", source))
            inputs += [Input(c.file_id, "calibrated", c.content) for c in calibrated]
        if offset is None or not offset.ok:
            why = "no offset; run `obsarch offsets compute` first" if offset is None else f"its latest registration failed: {offset.error}"
            return Item(frame.path, error=why, inputs=inputs, data=frame)
        inputs.append(Input(None, "offset", offset.identity))
        transform = offset.transform
        # a rotation or a scale about the first detector's origin moves any other detector differently: only a shift moves them alike
        elsewhere = len(self.detectors) > 1 or self.detectors[0].name != self.measured_on
        if elsewhere and not _moves_as_a_shift(transform, self.reach):
            moved = (f"the stack's {len(self.detectors)} detectors then move differently and need a WCS to be mosaicked"
                     if len(self.detectors) > 1 else
                     f"detector {self.detectors[0].name} then moves differently from {self.measured_on}, the detector it was "
                     "measured on, and needs a WCS to be stacked")
            return Item(frame.path, error=f"its offset rotates by {transform.rotation:.4f} deg and scales by "
                        f"{transform.scale:.6f}: {moved}", inputs=inputs, data=frame)
        task = (source or frame.path, transform, self.detectors, str(self.scratch / f"{frame.exposure_id}.fits"), self.single)
        return Item(frame.path, task, inputs, {"source": source or frame.path}, data=frame)

    def finish(self, out: Writer, done, failed) -> str | None:
        used = [item for item, _ in done]
        scratches = [scratch for _, scratch in done]
        header = fits.Header()
        header["NCOMBINE"] = (len(used), "frames stacked")
        header["COMBMETH"] = (self.method, _METHOD_NAMES.get(self.method, "combine method"))
        fewest = clip_minimum(self.method, self.sigma)
        if self.method.startswith("sigclip"):
            header["CLIPSIG"] = (self.sigma, "sigma-clip threshold, standard deviations")
            if fewest is not None:
                header["CLIPMINN"] = (fewest, "fewest frames at a pixel for the clip to act")
        header["REFEXP"] = (self.reference_id, "obsarch exposure id of the reference frame")
        if self.band:
            header["FILTER"] = self.band
        header["IMAGETYP"] = ("STACK", "made by obsarch")
        for item in used:
            header.add_history(f"obsarch input: {Path(item.task[0]).name}")
        values = {**inherited([item.data for item in used], "science", exptime=False), **detector_values(self.detectors)}
        if values.get("date_obs") is not None:  # the stack's time, as the catalog's row gives it: not the reference's
            header["DATE-OBS"] = (values["date_obs"].isoformat(timespec="milliseconds"), "middle of the stacked frames")
            header["MJD-OBS"] = (values["mjd"], "middle of the stacked frames")
        single = len(self.detectors) == 1
        unclipped = [0, 0]  # covered pixels with fewer frames than the clip needs, covered pixels

        def make(detector):
            coverage = np.zeros(detector.shape, dtype=np.int16)
            index = self.detectors.index(detector) + 1
            image = combine_files(scratches, method=self.method, sigma=self.sigma, memory_bytes=parse_memory(self.memory),
                                  coverage=coverage, hdu=index)
            if fewest is not None:
                unclipped[0] += int(np.count_nonzero((coverage > 0) & (coverage < fewest)))
                unclipped[1] += int(np.count_nonzero(coverage))
            cover = fits.ImageHDU(coverage, name="COVERAGE" if single else f"COVERAGE_{detector.name}")
            cover.header["BUNIT"] = ("frames", "number of frames with a value at each pixel")
            own = fits.Header() if detector.hdu_index == 0 else fits.Header([("EXTNAME", detector.name)])
            own.update(self.grid.get(detector.name, fits.Header()))
            return image, own, [cover]

        write_product(self.target, lambda tmp: write_detectors(tmp, header, self.detectors, make))
        out.product(self.target, "stack", values)
        if self.replaces:
            out.note(self.replaces)
        if unclipped[0]:  # a stack's edges, where fewer frames overlap: CLIPSIG would say they were clipped
            plain = "mean" if self.method == "sigclip" else "median"
            out.note(f"the clip at {self.sigma:g} sigma can leave a value out only where {fewest} or more frames overlap: "
                     f"{unclipped[0]:,} of the stack's {unclipped[1]:,} covered pixels ({100 * unclipped[0] / unclipped[1]:.1f}%) "
                     f"have fewer, and are their plain {plain} (its COVERAGE map shows where; header CLIPMINN)")
        if failed:
            return f"stacked {len(used)} of {len(used) + len(failed)} selected frames"
        return None

    def close(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _celestial_cards(header: fits.Header) -> fits.Header:
    """The celestial WCS of a detector's header as cards (none when it has
    none astropy reads)."""
    import warnings

    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header)
            cards = wcs.celestial.to_header(relax=True) if wcs.has_celestial else fits.Header()
    except (ValueError, KeyError, MemoryError, AttributeError):
        return fits.Header()
    for key in list(cards.keys()):  # astropy adds the reference's time and place: the stack's are its own
        if key.startswith(_NOT_SKY):
            del cards[key]
    return cards


_NOT_SKY = ("DATE", "MJD", "TIMESYS", "TIMEUNIT", "OBSGEO", "JEPOCH", "BEPOCH", "TSTART", "TSTOP", "XPOSURE", "TELAPSE")


def stack_method(method: str | None, sigma_clip: float | None) -> str:
    """The combine method of ``--method`` and ``--sigma-clip``: ``method``
    (default median) alone; with a clip, a median is clipped
    (``sigclip-median``) and a mean, or no method, is a clipped mean
    (``sigclip``). Refuses an unknown method and a clip that is not positive."""
    if method is not None and method not in METHODS:
        raise CombineError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if sigma_clip is None:
        return method or "median"
    if not sigma_clip > 0:
        raise CombineError(f"--sigma-clip {sigma_clip:g}: give a positive number of standard deviations")
    return "sigclip-median" if method in ("median", "sigclip-median") else "sigclip"


def stack(
    engine, selection, *, method: str = "median", sigma: float = 3.0, out_dir: Path = Path("stacks"),
    name: str | None = None, include_bad: bool = False, memory: str = DEFAULT_MEMORY, workers: int | None = None,
    executor: str = "pool", scheduler: str | None = None, force: bool = False, progress: Progress | None = None,
    hdus: tuple[str, ...] | None = None,
) -> StepResult:
    """Stack the frames of ``selection`` (a tree, or a person's text; their
    calibrated products when they exist) onto the reference of their current
    offsets, detector by detector (``hdus``: only those). Fewer frames
    stacked than selected is a short result (exit 3)."""
    step = StackStep(selection, method, sigma, out_dir, name, include_bad, memory, hdus, force)
    return run_step(engine, step, force=force, executor=executor, workers=workers, scheduler=scheduler, progress=progress)
