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


def observer_script(paths: list[Path]) -> float:
    """What observers do today, one file after another."""
    from astropy.stats import sigma_clipped_stats
    from photutils.detection import DAOStarFinder

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            data = fits.getdata(path).astype(np.float32)
            mean, median, std = sigma_clipped_stats(data, sigma=3.0)
            sources = DAOStarFinder(fwhm=3.0, threshold=5.0 * std)(data - median)
            assert sources is not None and len(sources) > 0
    return time.perf_counter() - start


def obsarch(paths: list[Path], work: Path, workers: int) -> float:
    from archive.catalog import Catalog
    from processing import quality

    catalog = Catalog.create(f"sqlite:///{work / f'q{workers}.db'}")
    catalog.ingest([paths[0].parent])
    start = time.perf_counter()
    summary = quality.compute(catalog.engine, workers=workers)
    seconds = time.perf_counter() - start
    assert summary.computed == len(paths), summary
    catalog.engine.dispose()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="obsarch-bench-quality-"))
    try:
        paths = make_frames(work / "frames", args.frames, args.size)
        for path in paths:
            path.read_bytes()
        cores = os.cpu_count() or 1
        print(f"{args.frames} frames of {args.size}x{args.size} 16-bit, ~400 stars each, {cores} cores")
        peer = observer_script(paths)
        one = obsarch(paths, work, 1)
        every = obsarch(paths, work, cores)
        print(f"{'':52}{'seconds':>9}{'frames/s':>10}")
        print(f"{'sigma_clipped_stats + DAOStarFinder, one by one':52}{peer:9.2f}{args.frames / peer:10.2f}")
        print(f"{'obsarch quality compute, 1 process':52}{one:9.2f}{args.frames / one:10.2f}")
        print(f"{f'obsarch quality compute, {cores} processes':52}{every:9.2f}{args.frames / every:10.2f}")
        print("obsarch measures more per frame: Background2D, segmentation, PSF-fit FWHM, elongation, saturation")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
