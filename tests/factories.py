"""Small FITS files for tests, written with a seeded rng."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits


def missing(problem: str) -> None:
    """Skip a test whose input (a server, a build, real files, a browser) is
    not on this machine; in CI, which must run every test, fail it."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{problem} (CI runs every test)")
    pytest.skip(problem)

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


def star_field(
    rng: np.random.Generator,
    shape: tuple[int, int] = (256, 256),
    *,
    nstars: int = 40,
    fwhm: float = 3.0,
    elongation: float = 1.0,
    theta_deg: float = 30.0,
    background: float = 1000.0,
    noise: float = 5.0,
    flux: tuple[float, float] = (3e3, 3e4),
    positions: np.ndarray | None = None,
    fluxes: np.ndarray | None = None,
    oversample: int = 5,
) -> np.ndarray:
    """An image of Gaussian stars integrated over pixels (oversampled), with
    a known FWHM (along the minor axis times ``elongation`` along the major),
    on a flat background with Gaussian noise."""
    ny, nx = shape
    image = np.full(shape, background, dtype=np.float64)
    sigma_minor = fwhm / 2.3548200450309493
    sigma_major = sigma_minor * elongation
    theta = np.radians(theta_deg)
    half = int(np.ceil(5 * sigma_major)) + 2
    if positions is None:
        positions = np.column_stack([rng.uniform(half, nx - half - 1, nstars), rng.uniform(half, ny - half - 1, nstars)])
    if fluxes is None:
        fluxes = rng.uniform(*flux, len(positions))
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    for (x0, y0), total in zip(positions, fluxes):
        ix, iy = int(round(x0)), int(round(y0))
        ys, xs = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]
        xx = (xs[..., None, None] + sub[None, None, None, :] - x0)
        yy = (ys[..., None, None] + sub[None, None, :, None] - y0)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        profile = np.exp(-0.5 * ((u / sigma_major) ** 2 + (v / sigma_minor) ** 2)).mean(axis=(2, 3))
        profile *= total / (2 * np.pi * sigma_major * sigma_minor)
        y_lo, y_hi, x_lo, x_hi = max(0, iy - half), min(ny, iy + half + 1), max(0, ix - half), min(nx, ix + half + 1)
        image[y_lo:y_hi, x_lo:x_hi] += profile[y_lo - (iy - half) : y_hi - (iy - half), x_lo - (ix - half) : x_hi - (ix - half)]
    image += rng.normal(0, noise, shape)
    return image.astype(np.float32)


def write_image(path: Path, data: np.ndarray, header: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu = fits.PrimaryHDU(data)
    for key, value in {**CCD_HEADER, **(header or {})}.items():
        if value is not None:
            hdu.header[key] = value
    hdu.writeto(path, overwrite=True)
    return path


def obsarch(url: str, *args: str, code: int = 0, config: Path | None = None):
    """Run an obsarch command on the catalog at url, as a user would, and
    check its exit status; the typer result (stdout, stderr) is returned."""
    from typer.testing import CliRunner

    from cli.main import app

    options = ["--db", url] + (["--config", str(config)] if config else [])
    result = CliRunner().invoke(app, [*options, *args])
    assert result.exit_code == code, (args, result.stdout, result.stderr, result.exception)
    return result


def leaf_commands(group, prefix=()):
    """(path, command) of every command under a click group, groups walked."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def meeting_first(barrier, function):
    """``function``, called once the other party of ``barrier`` is there too
    (or it has given up waiting): two runs at once both reach it unless one
    holds the other back. A broken barrier is the run waited for alone."""
    import threading

    def meet_then_call(*args):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return function(*args)

    return meet_then_call

