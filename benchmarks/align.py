"""align catalogs: right, refused or wrong, and how fast, next to astroalign, in one run.

    python benchmarks/align.py [--rounds 3]

Three cases of two source lists with a known transform: lists of similar
depth (3,000 sources against 2,100 of them, rotation 0.05 deg), a short
list against a long one (150 against 3,000 stars, rotation 37 deg), and
two unrelated lists (150 against 3,000). For each it prints what obsarch's
``align_catalogs`` returns (the transform and its error against the truth,
or its refusal) and its best time, and the same for astroalign's
``find_transform`` (its default 50 control points) on the same tangent-plane positions (``pip install
astroalign``): a wrong transform is counted as wrong, however fast.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np


def _case(directory: Path, rng, n_b: int, n_a: int, rotation: float, shift, related: bool = True, noise: float = 0.2):
    from astropy.table import Table

    from processing.offsets import _tangent

    ra, dec = 150 + rng.uniform(-0.2, 0.2, n_b), 2 + rng.uniform(-0.2, 0.2, n_b)
    Table({"RA": ra, "DEC": dec, "flux": rng.uniform(1, 100, n_b)}).write(directory / "b.csv", overwrite=True)
    centre = _tangent(ra, dec, (150.0, 2.0)).mean(axis=0)
    pick = rng.choice(n_b, n_a, replace=False)
    xy = _tangent(ra[pick], dec[pick], (150.0, 2.0)) - centre
    t = math.radians(-rotation)
    back = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    xa = (xy - shift) @ back.T + rng.normal(0, noise, (n_a, 2)) + centre
    if not related:
        xa = rng.uniform(xy.min(), xy.max(), (n_a, 2)) + centre
    Table({"ra": 150 + xa[:, 0] / 3600 / math.cos(math.radians(2)), "dec": 2 + xa[:, 1] / 3600}).write(directory / "a.csv", overwrite=True)
    return str(directory / "a.csv"), str(directory / "b.csv")


def _obsarch(a: str, b: str, rounds: int):
    from processing.offsets import NotSignificant, align_catalogs

    best, answer = math.inf, None
    for _ in range(rounds):
        start = time.perf_counter()
        try:
            result = align_catalogs(a, b)
            answer = (result.transform.rotation, result.transform.nmatched, f"chance 10^{result.log10_p:.0f}")
        except NotSignificant:
            answer = None
        best = min(best, time.perf_counter() - start)
    return answer, best


def _astroalign(a: str, b: str, rounds: int):
    import astroalign

    from processing.offsets import _tangent, read_sources

    ra_a, dec_a, _ = read_sources(a)
    ra_b, dec_b, _ = read_sources(b)
    centre = (float(np.mean(ra_b)), float(np.mean(dec_b)))
    pa, pb = _tangent(ra_a, dec_a, centre), _tangent(ra_b, dec_b, centre)
    best, answer = math.inf, None
    for _ in range(rounds):
        start = time.perf_counter()
        try:
            transform, (matched, _) = astroalign.find_transform(pa, pb, max_control_points=50)
            answer = (math.degrees(transform.rotation), len(matched), "")
        except (astroalign.MaxIterError, ValueError, TypeError):
            answer = None
        best = min(best, time.perf_counter() - start)
    return answer, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(5)
    cases = [
        ("3,000 vs 2,100, rot 0.05", dict(n_b=3000, n_a=2100, rotation=0.05, shift=(1.5, 0.8)), 0.05),
        ("150 vs 3,000, rot 37", dict(n_b=3000, n_a=150, rotation=37.0, shift=(12.0, -7.0)), 37.0),
        ("150 vs 3,000, unrelated", dict(n_b=3000, n_a=150, rotation=0.0, shift=(0.0, 0.0), related=False), None),
    ]
    print(f"{'case':<26} {'tool':<11} {'answer':<34} {'rot err deg':>11} {'best s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec, truth in cases:
            a, b = _case(Path(tmp), rng, **spec)
            for tool, run in (("obsarch", _obsarch), ("astroalign", _astroalign)):
                try:
                    answer, seconds = run(a, b, args.rounds)
                except ImportError:
                    print(f"{label:<26} {tool:<11} (not installed)")
                    continue
                if answer is None:
                    shown, error = "refused" + (" (right)" if truth is None else " (wrong)"), ""
                else:
                    rotation, matched, note = answer
                    wrong = truth is None or abs(rotation - truth) > 0.1
                    shown = f"rot {rotation:+.3f}, {matched} matched {note}" + (" WRONG" if wrong else "")
                    error = "" if truth is None else f"{abs(rotation - truth):.4f}"
                print(f"{label:<26} {tool:<11} {shown:<34} {error:>11} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
