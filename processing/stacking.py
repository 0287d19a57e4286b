"""Shift-and-stack: every frame resampled onto its reference by its current
offset, combined with rejection, written with a coverage map."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from archive.exceptions import ObsarchError
from archive.query import compare, is_null
from processing.combine import DEFAULT_MEMORY, combine_files, parse_memory, resample
from processing.executor import Progress
from processing.machinery import Input, Item, Step, StepResult, Writer, run_step
from processing.offsets import current_offsets
from processing.runs import write_product
from processing.steps import Frame, inherited, product_of, resolve, safe_name

ALGORITHM = "stack-2"


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
    """Resample one frame onto the reference grid into a scratch FITS file. Runs in a worker."""
    path, transform, shape, target = task
    from processing.quality import load_image

    data, _, _ = load_image(path)
    image, _ = resample(data, transform, shape)
    fits.PrimaryHDU(image.astype(np.float32)).writeto(target, overwrite=True)
    return target


class StackStep(Step):
    """One stack from the frames of a selection (their calibrated products
    where they exist), each resampled in a worker by its current offset."""

    name, algorithm, whole = "stack", ALGORITHM, True
    work = staticmethod(_resample_one)

    def __init__(self, selection, method: str, sigma: float, out_dir: Path, name: str | None, include_bad: bool, memory: str):
        self.selection, self.method, self.sigma, self.out_dir = selection, method, sigma, Path(out_dir)
        self.file_name, self.include_bad, self.memory = name, include_bad, memory
        self.scratch = None

    def params(self) -> dict:
        return {"method": self.method, "sigma": self.sigma, "include_bad": self.include_bad, "out": str(self.target)}

    def items(self, engine) -> list[Item]:
        not_bad = None if self.include_bad else compare("grade", "!=", "bad")  # never-graded frames have grade 'ungraded'
        chosen = resolve(engine, self.selection, is_null("product"), not_bad)
        if not chosen:
            raise ObsarchError("no frames to stack in the selection"
                               + ("" if self.include_bad else " (frames graded bad are left out; --include-bad keeps them)"))
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
        from processing.quality import load_image

        self.shape = load_image(product_of(engine, reference[0].file_id, "calibrated") or reference[0].path)[0].shape
        bands = sorted({f.band for f in chosen if f.band}, key=str)
        self.band = bands[0] if len(bands) == 1 else None
        self.target = (self.out_dir / (self.file_name or f"{safe_name(self.band or 'mixed')}_stack.fits")).resolve()
        _remove_dead_scratch()
        self.scratch = Path(tempfile.mkdtemp(prefix=f"obsarch-stack-{os.getpid()}-"))
        return [self._item(engine, f, offsets.get(f.exposure_id)) for f in chosen]

    def _item(self, engine, frame: Frame, offset) -> Item:
        source = product_of(engine, frame.file_id, "calibrated")
        inputs = [Input(frame.file_id, "frame", frame.content)]
        if source:
            calibrated = resolve(engine, compare("path", "==", source))
            inputs += [Input(c.file_id, "calibrated", c.content) for c in calibrated]
        if offset is None or not offset.ok:
            why = "no offset; run `obsarch offsets compute` first" if offset is None else f"its latest registration failed: {offset.error}"
            return Item(frame.path, error=why, inputs=inputs, data=frame)
        inputs.append(Input(None, "offset", offset.identity))
        task = (source or frame.path, offset.transform, self.shape, str(self.scratch / f"{frame.exposure_id}.fits"))
        return Item(frame.path, task, inputs, {"source": source or frame.path}, data=frame)

    def finish(self, out: Writer, done, failed) -> str | None:
        used = [item for item, _ in done]
        coverage = np.zeros(self.shape, dtype=np.int16)
        image = combine_files([scratch for _, scratch in done], method=self.method, sigma=self.sigma,
                              memory_bytes=parse_memory(self.memory), coverage=coverage)
        header = fits.Header()
        header["NCOMBINE"] = (len(used), "frames stacked")
        header["COMBMETH"] = (self.method, "combine method")
        header["REFEXP"] = (self.reference_id, "obsarch exposure id of the reference frame")
        if self.band:
            header["FILTER"] = self.band
        header["IMAGETYP"] = ("STACK", "made by obsarch")
        for item in used:
            header.add_history(f"obsarch input: {Path(item.task[0]).name}")
        cover = fits.ImageHDU(coverage, name="COVERAGE")
        cover.header["BUNIT"] = ("frames", "number of frames with a value at each pixel")
        write_product(self.target, lambda tmp: fits.HDUList([fits.PrimaryHDU(image, header), cover]).writeto(tmp))
        out.product(self.target, "stack", inherited([item.data for item in used], "science", exptime=False))
        if failed:
            return f"stacked {len(used)} of {len(used) + len(failed)} selected frames"
        return None

    def close(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def stack(
    engine, selection, *, method: str = "median", sigma: float = 3.0, out_dir: Path = Path("stacks"),
    name: str | None = None, include_bad: bool = False, memory: str = DEFAULT_MEMORY, workers: int | None = None,
    executor: str = "pool", scheduler: str | None = None, force: bool = False, progress: Progress | None = None,
) -> StepResult:
    """Stack the frames of ``selection`` (a tree, or a person's text; their
    calibrated products when they exist) onto the reference of their current
    offsets. Fewer frames stacked than selected is a short result (exit 3)."""
    step = StackStep(selection, method, sigma, out_dir, name, include_bad, memory)
    return run_step(engine, step, force=force, executor=executor, workers=workers, scheduler=scheduler, progress=progress)
