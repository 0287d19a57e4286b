"""Small FITS files for tests, written with a seeded rng."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
from astropy.io import fits

CCD_HEADER = {
    "IMAGETYP": "Light Frame",
    "FILTER": "V",
    "EXPTIME": 60.0,
    "DATE-OBS": "2017-08-16T03:00:00",
    "OBJECT": "NGC 3293",
    "INSTRUME": "TestCam",
    "TELESCOP": "Test 1m",
    "RA": "10:35:50",
    "DEC": "-58:13:00",
    "AIRMASS": 1.2,
    "READOUTM": "SCI1.0",
}


def write_frame(
    path: Path,
    rng: np.random.Generator | None = None,
    header: dict | None = None,
    *,
    shape: tuple[int, int] = (32, 32),
    extensions: int = 0,
    compress: bool = False,
    gzipped: bool = False,
) -> Path:
    """A CCD-like frame with ``header`` cards (``None`` values remove a default)."""
    rng = rng or np.random.default_rng(0)
    cards = {**CCD_HEADER, **(header or {})}
    data = rng.normal(1000, 10, shape).astype(np.float32)
    primary = fits.PrimaryHDU(None if compress else data)
    for key, value in cards.items():
        if value is not None:
            primary.header[key] = value
    hdus = [primary]
    if compress:
        hdus.append(fits.CompImageHDU(data, name="SCI"))
    for i in range(extensions):
        hdus.append(fits.ImageHDU(rng.normal(0, 1, (8, 8)).astype(np.float32), name=f"EXT{i + 1}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_name(path.name + ".tmp") if gzipped else path
    fits.HDUList(hdus).writeto(target, overwrite=True)
    if gzipped:
        with open(target, "rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        target.unlink()
    return path


def night_of_frames(directory: Path, rng: np.random.Generator, first: int = 3852) -> list[Path]:
    """A small night: 3 bias, 3 flats per band, 4 science per band (B, V, R)."""
    paths = []
    number = first
    for kind, bands, count, exptime in (
        ("Bias Frame", [None], 3, 0.0),
        ("Flat Field", ["B", "V", "R"], 3, 2.0),
        ("Light Frame", ["B", "V", "R"], 4, 60.0),
    ):
        for band in bands:
            for i in range(count):
                header = {"IMAGETYP": kind, "FILTER": band, "EXPTIME": exptime + 30 * i * (kind == "Light Frame"),
                          "DATE-OBS": f"2017-08-16T0{3 + i}:{number % 60:02d}:00"}
                paths.append(write_frame(directory / f"ngc3293-{number}.fits", rng, header))
                number += 1
    return paths
