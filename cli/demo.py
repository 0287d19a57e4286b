"""A small synthetic night for `obsarch demo`: real FITS files, seeded rng."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

BANDS = ("B", "V", "R")


def _stars(rng: np.random.Generator, shape: tuple[int, int], n: int, fwhm_px: float) -> np.ndarray:
    y, x = np.indices(shape)
    image = np.zeros(shape, dtype=np.float32)
    sigma = fwhm_px / 2.3548
    for cx, cy, flux in zip(rng.uniform(10, shape[1] - 10, n), rng.uniform(10, shape[0] - 10, n), rng.uniform(2e3, 5e4, n)):
        image += flux / (2 * np.pi * sigma**2) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return image


def make_night(directory: Path, seed: int = 3293, shape: tuple[int, int] = (128, 128)) -> list[Path]:
    """Bias, flat and science frames of one night in B, V and R, numbered
    from 3852 like an observer's camera would."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    sky = _stars(rng, shape, 25, 3.0)
    plan = [("Bias Frame", None, 0.0)] * 5
    plan += [("Flat Field", band, 2.0) for band in BANDS for _ in range(3)]
    plan += [("Light Frame", band, exptime) for band in BANDS for exptime in (30.0, 60.0, 60.0, 120.0)]
    paths = []
    for number, (kind, band, exptime) in enumerate(plan, start=3852):
        data = rng.normal(1000.0, 8.0, shape).astype(np.float32)
        if kind == "Flat Field":
            data += 20000.0
        if kind == "Light Frame":
            data += 50.0 * exptime / 60 + sky * exptime / 60
        header = fits.Header()
        header["IMAGETYP"] = kind
        if band:
            header["FILTER"] = band
        header["EXPTIME"] = (exptime, "[s]")
        header["DATE-OBS"] = f"2017-08-16T{1 + (number - 3852) // 10:02d}:{(number * 7) % 60:02d}:00"
        header["OBJECT"] = "NGC 3293" if kind == "Light Frame" else ""
        header["RA"], header["DEC"] = "10:35:49", "-58:13:48"
        header["TELESCOP"], header["INSTRUME"] = "Demo 0.6m", "DemoCam"
        header["READOUTM"] = "SCI1.0"
        header["HIERARCH ESO INS DROT POSANG"] = float(number % 180)
        path = directory / f"ngc3293-{number}.fits"
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
        paths.append(path)
    return paths
