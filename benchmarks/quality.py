"""Quality metrics speed, next to an observer's script, in one run.

    python benchmarks/quality.py [--frames 20] [--size 2048]

Writes N 16-bit frames with stars, ingests them, and prints frames/s of
``quality compute`` on one core and on all cores, next to what observers run
today: astropy ``sigma_clipped_stats`` plus photutils ``DAOStarFinder`` per
file, one after another.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits


def make_frames(directory: Path, n: int, size: int, seed: int = 7) -> list[Path]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:25, 0:25]
    paths = []
    for i in range(n):
        image = rng.normal(1200.0, 12.0, (size, size))
        sigma = rng.uniform(2.6, 3.6) / 2.3548
        for px, py, flux in zip(rng.uniform(20, size - 20, 400), rng.uniform(20, size - 20, 400), rng.uniform(3e3, 2e5, 400)):
            ix, iy = int(px), int(py)
            image[iy - 12 : iy + 13, ix - 12 : ix + 13] += flux / (2 * np.pi * sigma**2) * np.exp(
                -((x - 12 - (px - ix)) ** 2 + (y - 12 - (py - iy)) ** 2) / (2 * sigma**2)
            )
        hdu = fits.PrimaryHDU(np.clip(image, 0, 65535).astype(np.uint16))
        hdu.header.update({"IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": 60.0, "DATE-OBS": f"2017-08-16T03:{i % 60:02d}:00"})
        path = directory / f"frame-{i:04d}.fits"
        hdu.writeto(path, overwrite=True)
        paths.append(path)
    return paths


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def observer_script(paths: list[Path]) -> tuple[float, float]:
    """What observers do today, one file after another."""
    from astropy.stats import sigma_clipped_stats
    from photutils.detection import DAOStarFinder

    cpu, start = cpu_seconds(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            data = fits.getdata(path).astype(np.float32)
            mean, median, std = sigma_clipped_stats(data, sigma=3.0)
            sources = DAOStarFinder(fwhm=3.0, threshold=5.0 * std)(data - median)
            assert sources is not None and len(sources) > 0
    return time.perf_counter() - start, cpu_seconds() - cpu


def obsarch(paths: list[Path], work: Path, workers: int) -> tuple[float, float]:
    from archive.catalog import Catalog
    from processing import quality

    catalog = Catalog.create(f"sqlite:///{work / f'q{workers}-{time.monotonic_ns()}.db'}")
    catalog.ingest([paths[0].parent])
    cpu, start = cpu_seconds(), time.perf_counter()
    summary = quality.compute(catalog.engine, workers=workers)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    assert summary.computed == len(paths), summary
    catalog.engine.dispose()
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the measurements (this machine's speed drifts)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="obsarch-bench-quality-"))
    try:
        paths = make_frames(work / "frames", args.frames, args.size)
        for path in paths:
            path.read_bytes()
        cores = os.cpu_count() or 1
        print(f"{args.frames} frames of {args.size}x{args.size} 16-bit, ~400 stars each, {cores} cores")
        print(f"{'':52}{'seconds':>9}{'frames/s':>10}{'CPU s':>8}{'frames/CPU s':>14}")
        for round_ in range(1, args.rounds + 1):
            rows = [("sigma_clipped_stats + DAOStarFinder, one by one", *observer_script(paths)),
                    ("obsarch quality compute, 1 process", *obsarch(paths, work, 1)),
                    (f"obsarch quality compute, {cores} processes", *obsarch(paths, work, cores))]
            for label, seconds, cpu in rows:
                print(f"{label:52}{seconds:9.2f}{args.frames / seconds:10.2f}{cpu:8.2f}{args.frames / cpu:14.2f}")
            print(f"round {round_}: obsarch on 1 process {rows[0][1] / rows[1][1]:.2f}x the observer script's speed")
        print("obsarch measures more per frame: mesh background, segmentation, PSF-fit FWHM, elongation, saturation")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
