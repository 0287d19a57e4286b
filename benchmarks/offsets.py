"""Registration speed and accuracy, next to the manual way and astroalign, in one run.

    python benchmarks/offsets.py [--frames 12] [--size 2048]

Makes 2048x2048 frames of one star field with known shifts (up to 150 px)
and rotations (up to 3 deg), and prints frames/s and rms errors against the
truth for obsarch's automatic registration (stars, no starting guess), for
the manual way (photutils centroid_2dg in a box around one star, shift
only), and for astroalign (``pip install astroalign``) on the same frames.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

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

    start = time.perf_counter()
    reference = find_stars(frames[0])
    measured = [match_stars(find_stars(frame), reference) for frame in frames]
    return time.perf_counter() - start, measured


def run_manual(frames, truths, star):
    """The observer's way: a box drawn around one star (where it sits in each
    frame, as found by eye), centroid_2dg, difference of centroids."""
    from photutils.centroids import centroid_2dg

    from processing.offsets import Transform

    start = time.perf_counter()
    centres = []
    for frame, truth in zip(frames, truths):
        px, py = (np.r_[star, 1.0] @ np.linalg.inv(truth.matrix).T)[:2]
        x0, y0 = int(round(px)) - 12, int(round(py)) - 12
        cutout = frame[y0 : y0 + 25, x0 : x0 + 25].astype(float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cx, cy = centroid_2dg(cutout - np.median(cutout))
        centres.append((x0 + cx, y0 + cy))
    seconds = time.perf_counter() - start
    return seconds, [Transform(centres[0][0] - x, centres[0][1] - y) for x, y in centres]


def run_astroalign(frames):
    try:
        import astroalign
    except ImportError:
        return None, None
    from processing.offsets import Transform

    start = time.perf_counter()
    measured = []
    for frame in frames:
        try:
            transform, _ = astroalign.find_transform(frame, frames[0])
            measured.append(Transform(float(transform.translation[0]), float(transform.translation[1]),
                                      math.degrees(transform.rotation), float(transform.scale)))
        except Exception:  # astroalign raises MaxIterError and others on failure
            measured.append(None)
    return time.perf_counter() - start, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    frames, truths, star = make_frames(args.frames, args.size)
    print(f"{args.frames} frames of {args.size}x{args.size}, shifts up to 150 px, rotations up to 3 deg, ~600 stars")
    print(f"{'':40}{'frames/s':>10}{'rms px':>10}{'rms deg':>10}  failed")

    def line(label, seconds, measured, note=""):
        position, rotation = errors(measured, truths, args.size)
        failed = sum(m is None for m in measured)
        print(f"{label:40}{len(frames) / seconds:10.2f}{position:10.4f}{rotation:10.4f}  {failed} {note}")

    line("obsarch stars (no starting guess)", *run_obsarch(frames))
    line("centroid_2dg in a box (shift only)", *run_manual(frames, truths, star), "(boxes placed by hand; rotation ignored)")
    seconds, measured = run_astroalign(frames)
    if seconds is None:
        print("astroalign not installed (pip install astroalign)")
    else:
        line("astroalign.find_transform", seconds, measured)


if __name__ == "__main__":
    main()
