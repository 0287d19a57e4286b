"""Shift-and-stack: every frame resampled onto its reference by its stored
offset, combined with rejection, written with a coverage map."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from sqlalchemy import select

from archive.db import transaction
from archive.exceptions import ObsarchError
from archive.models import Offset
from processing.combine import DEFAULT_MEMORY, combine_files, parse_memory, resample
from processing.executor import Progress, parallel_map
from processing.offsets import Transform
from processing.runs import add_product, done_before, fingerprint, record_inputs, recorded_run, set_fingerprint, write_product
from processing.steps import StepSummary, frames, product_of, safe_name

ALGORITHM = "stack-1"


def _offsets(engine, exposure_ids: list[int]) -> dict[int, tuple[int, Transform, str]]:
    """The latest successful offset of each exposure: (reference, transform, its identity)."""
    with transaction(engine) as conn:
        rows = conn.execute(
            select(Offset.id, Offset.exposure_id, Offset.reference_id, Offset.dx, Offset.dy, Offset.rotation, Offset.scale)
            .where(Offset.exposure_id.in_(exposure_ids), Offset.status == "ok").order_by(Offset.stage, Offset.id)
        ).all()
    found = {}
    for row in rows:
        transform = Transform(row.dx, row.dy, row.rotation or 0.0, row.scale or 1.0)
        found[row.exposure_id] = (row.reference_id, transform, f"offset {row.id}: {row.dx:.4f} {row.dy:.4f} {row.rotation or 0:.5f}")
    return found


def _resample_one(task: tuple) -> tuple[int, str | None]:
    """Resample one frame onto the reference grid into a scratch FITS file. Runs in a worker."""
    exposure_id, path, transform, shape, target = task
    from processing.quality import load_image

    try:
        data, _, _ = load_image(path)
        image, _ = resample(data, transform, shape)
        fits.PrimaryHDU(image.astype(np.float32)).writeto(target, overwrite=True)
        return exposure_id, None
    except (ObsarchError, OSError, ValueError) as exc:
        return exposure_id, f"{path}: {exc}"


def stack(
    engine, selection: str, *, method: str = "median", sigma: float = 3.0, out_dir: Path = Path("stacks"),
    name: str | None = None, include_bad: bool = False, memory: str = DEFAULT_MEMORY, workers: int | None = None,
    executor: str = "pool", scheduler: str | None = None, force: bool = False, progress: Progress | None = None,
) -> StepSummary:
    """Stack the frames of ``selection`` (their calibrated products when they
    exist) onto the reference of their offsets."""
    summary = StepSummary()
    extra = ["product is null"] + ([] if include_bad else ["(grade is null or grade != 'bad')"])
    chosen = frames(engine, selection, *extra)
    if not chosen:
        raise ObsarchError(f"no frames to stack in {selection!r}" + ("" if include_bad else " (frames graded bad are left out; --include-bad keeps them)"))
    offsets = _offsets(engine, [f.exposure_id for f in chosen])
    for frame in [f for f in chosen if f.exposure_id not in offsets]:
        summary.failed.append((frame.path, "no offset; run `obsarch offsets compute` first"))
    chosen = [f for f in chosen if f.exposure_id in offsets]
    references = {offsets[f.exposure_id][0] for f in chosen}
    if len(references) != 1:
        raise ObsarchError(f"the frames' offsets point to {len(references)} references ({sorted(references)}); "
                           "register them onto one (offsets compute --reference N, or --groups ... --reference N)")
    if not chosen:
        raise ObsarchError("no frame of the selection has an offset to stack by")
    (reference_id,) = references
    reference = frames(engine, f"id == {reference_id}")
    if not reference:
        raise ObsarchError(f"the reference exposure {reference_id} is gone from the catalog")
    from processing.quality import load_image

    shape = load_image(product_of(engine, reference[0].file_id, "calibrated") or reference[0].path)[0].shape
    sources = {f.exposure_id: (product_of(engine, f.file_id, "calibrated") or f.path) for f in chosen}
    # what is stacked: the calibrated product of a frame where there is one
    calibrated = {}
    for f in chosen:
        if sources[f.exposure_id] != f.path:
            calibrated.update({f.exposure_id: c for c in frames(engine, f"path == '{sources[f.exposure_id].replace(chr(39), chr(39) * 2)}'")})  # noqa: B035 (the last found)
    bands = sorted({f.band for f in chosen if f.band}, key=str)
    target = (Path(out_dir) / (name or f"{safe_name(bands[0]) if len(bands) == 1 else 'mixed'}_stack.fits")).resolve()
    contents = ([f.content for f in chosen] + [offsets[f.exposure_id][2] for f in chosen]
                + [c.content for c in calibrated.values()])
    params = {"method": method, "sigma": sigma, "reference": reference_id, "include_bad": include_bad,
              "frames": sorted(f.file_id for f in chosen), "sources": sorted(sources.values()), "out": str(target)}
    print_ = fingerprint("stack", params, ALGORITHM, contents)
    if not force and done_before(engine, print_):
        summary.skipped.append(str(target))
        return summary
    scratch = Path(tempfile.mkdtemp(prefix="obsarch-stack-"))
    try:
        tasks = [(f.exposure_id, sources[f.exposure_id], offsets[f.exposure_id][1], shape, str(scratch / f"{f.exposure_id}.fits"))
                 for f in chosen]
        failed = {}
        for _, (exposure_id, error) in parallel_map(_resample_one, tasks, workers=workers, executor=executor,
                                                     scheduler=scheduler, progress=progress):
            if error:
                failed[exposure_id] = error
        used = [f for f in chosen if f.exposure_id not in failed]
        summary.failed += [(f.path, failed[f.exposure_id]) for f in chosen if f.exposure_id in failed]
        if not used:
            raise ObsarchError("no frame could be resampled")
        with recorded_run(engine, "stack", params, ALGORITHM) as run:
            set_fingerprint(engine, run.id, print_)
            inputs = [(f.file_id, "frame", f.content) for f in used]
            inputs += [(calibrated[f.exposure_id].file_id, "calibrated", calibrated[f.exposure_id].content)
                       for f in used if f.exposure_id in calibrated]
            record_inputs(engine, run.id, inputs)
            coverage = np.zeros(shape, dtype=np.int16)
            image = combine_files([tasks[chosen.index(f)][4] for f in used], method=method, sigma=sigma,
                                  memory_bytes=parse_memory(memory), coverage=coverage)
            header = fits.Header()
            header["NCOMBINE"] = (len(used), "frames stacked")
            header["COMBMETH"] = (method, "combine method")
            header["REFEXP"] = (reference_id, "obsarch exposure id of the reference frame")
            if len(bands) == 1:
                header["FILTER"] = bands[0]
            header["IMAGETYP"] = ("STACK", "made by obsarch")
            for f in used:
                header.add_history(f"obsarch input: {Path(sources[f.exposure_id]).name} {offsets[f.exposure_id][2]}")
            cover = fits.ImageHDU(coverage, name="COVERAGE")
            cover.header["BUNIT"] = ("frames", "number of frames with a value at each pixel")
            write_product(target, lambda tmp: fits.HDUList([fits.PrimaryHDU(image, header), cover]).writeto(tmp))
            add_product(engine, run.id, target, "stack")
            run.summary = {"product": str(target), "frames": len(used), "failed": len(summary.failed),
                           "offsets": json.dumps({f.exposure_id: offsets[f.exposure_id][2] for f in used})}
        summary.made.append(str(target))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return summary
