"""Registration speed and accuracy, next to the manual way and astroalign, in one run.

    python benchmarks/offsets.py [--frames 12] [--size 2048] [--night 18] [--rounds 1]

Makes 2048x2048 frames of one star field with known shifts (up to 150 px)
and rotations (up to 3 deg), and prints frames/s and rms errors against the
truth for obsarch's automatic registration (stars, no starting guess), for
the manual way (photutils centroid_2dg in a box around one star, shift
only), and for astroalign (``pip install astroalign``) on the same frames.

Then (``--night N``, 0 to skip) it writes a night of N such frames as 16-bit
FITS files, ingests them, and times the command a user runs,
``obsarch offsets compute`` (start-up, reading, catalog writes included), on
one process and on all cores, next to astroalign in a Python loop that
reads the same files. ``--rounds`` repeats every measurement, alternating
the tools, and prints each round: this machine's speed drifts.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def make_frames(n: int, size: int, seed: int = 11):
    from processing.offsets import Transform

    rng = np.random.default_rng(seed)
    sky = np.column_stack([rng.uniform(-300, size + 300, 900), rng.uniform(-300, size + 300, 900)])
    flux = rng.uniform(3e3, 2e5, len(sky))
    truths = [Transform(0.0, 0.0)] + [
        Transform(rng.uniform(-150, 150), rng.uniform(-150, 150), rng.uniform(-3, 3)) for _ in range(n - 1)
    ]
    sigma = 3.0 / 2.3548
    y, x = np.mgrid[0:25, 0:25]
    frames = []
    for truth in truths:
        image = rng.normal(1000.0, 10.0, (size, size)).astype(np.float32)
        xy = (np.c_[sky, np.ones(len(sky))] @ np.linalg.inv(truth.matrix).T)[:, :2]
        for (px, py), f in zip(xy, flux):
            if 15 < px < size - 15 and 15 < py < size - 15:
                ix, iy = int(px), int(py)
                image[iy - 12 : iy + 13, ix - 12 : ix + 13] += (
                    f / (2 * np.pi * sigma**2) * np.exp(-((x - 12 - (px - ix)) ** 2 + (y - 12 - (py - iy)) ** 2) / (2 * sigma**2))
                )
        frames.append(image)
    # the brightest star seen in every frame, for the manual way's box
    inside = [np.all([(lambda p: 40 < p[0] < size - 40 and 40 < p[1] < size - 40)(
        ((np.r_[s, 1.0]) @ np.linalg.inv(t.matrix).T)[:2]) for t in truths]) for s in sky]
    star = sky[np.argmax(np.where(inside, flux, -1))]
    return frames, truths, star


def errors(measured, truths, size):
    """rms error of where each frame's pixels land on the reference, over a
    5x5 grid spanning the frame (fair to a shift-only method: it pays for the
    rotation it ignores), and rms rotation error."""
    grid = np.stack(np.meshgrid(np.linspace(0, size - 1, 5), np.linspace(0, size - 1, 5)), axis=-1).reshape(-1, 2)
    position = [np.hypot(*(m.apply(grid) - t.apply(grid)).T) for m, t in zip(measured, truths) if m is not None]
    rotation = [m.rotation - t.rotation for m, t in zip(measured, truths) if m is not None]
    return math.sqrt(np.mean(np.square(position))), math.sqrt(np.mean(np.square(rotation)))


def run_obsarch(frames):
    from processing.offsets import find_stars, match_stars

    find_stars(frames[0][:256, :256])  # imports, outside the clock as astroalign's are
    cpu, start = time.process_time(), time.perf_counter()
    reference = find_stars(frames[0])
    measured = [match_stars(find_stars(frame), reference) for frame in frames]
    return time.perf_counter() - start, time.process_time() - cpu, measured


def run_manual(frames, truths, star):
    """The observer's way: a box drawn around one star (where it sits in each
    frame, as found by eye), centroid_2dg, difference of centroids."""
    from photutils.centroids import centroid_2dg

    from processing.offsets import Transform

    cpu, start = time.process_time(), time.perf_counter()
    centres = []
    for frame, truth in zip(frames, truths):
        px, py = (np.r_[star, 1.0] @ np.linalg.inv(truth.matrix).T)[:2]
        x0, y0 = int(round(px)) - 12, int(round(py)) - 12
        cutout = frame[y0 : y0 + 25, x0 : x0 + 25].astype(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cx, cy = centroid_2dg(cutout - np.median(cutout))
        centres.append((x0 + cx, y0 + cy))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, [Transform(centres[0][0] - x, centres[0][1] - y) for x, y in centres]


def run_astroalign(frames):
    try:
        import astroalign
    except ImportError:
        return None, None, None
    from processing.offsets import Transform

    cpu, start = time.process_time(), time.perf_counter()
    measured = []
    for frame in frames:
        try:
            transform, _ = astroalign.find_transform(frame, frames[0])
            measured.append(Transform(float(transform.translation[0]), float(transform.translation[1]),
                                      math.degrees(transform.rotation), float(transform.scale)))
        except Exception:  # astroalign raises MaxIterError and others on failure
            measured.append(None)
    return time.perf_counter() - start, time.process_time() - cpu, measured


def write_night(directory: Path, frames) -> list[Path]:
    from astropy.io import fits

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames, start=1):
        hdu = fits.PrimaryHDU(np.clip(np.rint(frame), 0, 65535).astype(np.uint16))
        hdu.header.update({"IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": 60.0, "FRAMENUM": i,
                           "DATE-OBS": f"2017-08-16T03:{i % 60:02d}:00"})
        path = directory / f"night-{i:04d}.fits"
        hdu.writeto(path)
        paths.append(path)
    return paths


def run_command(url: str, n: int, workers: int) -> tuple[float, float, list]:
    """``obsarch offsets compute`` as a user types it; the transforms read back from the catalog."""
    from sqlalchemy import create_engine

    from processing.offsets import Transform, offsets_table

    # what the console script `obsarch` runs (pyproject: obsarch = "cli.main:run")
    command = [sys.executable, "-c", "import sys; sys.argv[0] = 'obsarch'; from cli.main import run; run()", "--db", url, "offsets", "compute", f"1-{n}", "--reference", "1",
               "--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its workers
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        raise SystemExit(f"obsarch offsets compute failed ({done.returncode}): {done.stderr.strip()}")
    engine = create_engine(url)
    latest = {row["frame_number"]: row for row in offsets_table(engine)}
    engine.dispose()
    measured = [Transform(r["dx"], r["dy"], r["rotation"], r["scale"]) if r and r["status"] == "ok" else None
                for r in (latest.get(i) for i in range(1, n + 1))]
    return seconds, cpu, measured


def run_astroalign_files(paths) -> tuple[float, float, list]:
    import astroalign
    from astropy.io import fits

    from processing.offsets import Transform

    cpu = time.process_time()
    start = time.perf_counter()
    reference = fits.getdata(paths[0]).astype(np.float32)
    measured = []
    for path in paths:
        try:
            transform, _ = astroalign.find_transform(fits.getdata(path).astype(np.float32), reference)
            measured.append(Transform(float(transform.translation[0]), float(transform.translation[1]),
                                      math.degrees(transform.rotation), float(transform.scale)))
        except Exception:  # astroalign raises MaxIterError and others on failure
            measured.append(None)
    return time.perf_counter() - start, time.process_time() - cpu, measured


PEER = "astroalign, Python loop over the files"


def night(n: int, size: int, rounds: int) -> None:
    from archive.catalog import Catalog

    frames, truths, _ = make_frames(n, size, seed=23)
    work = Path(tempfile.mkdtemp(prefix="obsarch-bench-offsets-"))
    try:
        paths = write_night(work / "night", frames)
        del frames
        url = f"sqlite:///{work / 'night.db'}"
        Catalog.create(url).ingest([work / "night"])
        for path in paths:
            path.read_bytes()
        cores = os.cpu_count() or 1
        print(f"\na night of {n} frames of {size}x{size}, 16-bit FITS; the command with start-up and catalog writes")
        print(f"{'':46}{'seconds':>9}{'frames/s':>10}{'CPU s':>8}{'rms px':>10}  failed")
        for round_ in range(1, rounds + 1):
            results, cpus = {}, {}
            for label, job in ((PEER, lambda: run_astroalign_files(paths)),
                               ("obsarch offsets compute --workers 1", lambda: run_command(url, n, 1)),
                               (f"obsarch offsets compute --workers {cores}", lambda: run_command(url, n, cores))):
                seconds, cpu, measured = job()
                position, _ = errors(measured, truths, size)
                results[label], cpus[label] = seconds, cpu
                print(f"{label:46}{seconds:9.2f}{n / seconds:10.2f}{cpu:8.2f}{position:10.4f}  {sum(m is None for m in measured)}")
            peer, peer_cpu = results[PEER], cpus[PEER]
            ours = [(v, cpus[k]) for k, v in results.items() if k.startswith("obsarch")]
            print(f"round {round_}: obsarch {peer / ours[0][0]:.2f}x astroalign's speed on one process "
                  f"({peer_cpu / ours[0][1]:.2f}x in CPU time), {peer / ours[1][0]:.2f}x on {cores}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--night", type=int, default=18, help="frames of the command's night (0: skip)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    frames, truths, star = make_frames(args.frames, args.size)
    print(f"{args.frames} frames of {args.size}x{args.size}, shifts up to 150 px, rotations up to 3 deg, ~600 stars")
    print(f"{'':40}{'frames/s':>10}{'CPU s':>8}{'rms px':>10}{'rms deg':>10}  failed")

    def line(label, seconds, cpu, measured, note=""):
        position, rotation = errors(measured, truths, args.size)
        failed = sum(m is None for m in measured)
        print(f"{label:40}{args.frames / seconds:10.2f}{cpu:8.2f}{position:10.4f}{rotation:10.4f}  {failed} {note}")

    line("centroid_2dg in a box (shift only)", *run_manual(frames, truths, star), "(boxes placed by hand; rotation ignored)")
    for round_ in range(1, args.rounds + 1):
        ours = run_obsarch(frames)
        seconds, cpu, measured = run_astroalign(frames)
        line("obsarch stars (no starting guess)", *ours)
        if seconds is None:
            print("astroalign not installed (pip install astroalign)")
            return
        line("astroalign.find_transform", seconds, cpu, measured)
        print(f"round {round_}: obsarch {seconds / ours[0]:.2f}x astroalign's speed ({cpu / ours[1]:.2f}x in CPU time)")
    del frames
    if args.night:
        night(args.night, args.size, args.rounds)


if __name__ == "__main__":
    main()
