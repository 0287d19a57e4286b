"""A small synthetic night for ``obsarch demo``, the one the README's tour uses.

Real FITS files from a seeded rng: one star field seen through B, V and R,
dithered by a few pixels between frames, at two pointings 40" apart; bias
frames, darks and flats; a trailed frame and a cloudy pair for the quality rules;
two XMM-Newton event files (two obsids) and a DS9 region; and two source
lists of the field for ``align catalogs``. Frame numbers, bands and the star in the centroid
box are those the README names.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

SHAPE = (128, 128)
SKY = (320, 320)  # the field the frames are cut from, in pixels
SCALE_DEG = 1.0 / 3600  # 1 arcsec per pixel
CENTRE = (158.95417, -58.23)  # NGC 3293, degrees
BRIGHT_STAR = (150.0, 142.0)  # sky pixel (x, y) of the star in the README's centroid box
START = datetime(2017, 8, 16, 0, 30)


@dataclass(frozen=True)
class Frame:
    number: int
    kind: str  # IMAGETYP
    band: str | None
    exptime: float
    pointing: int = 1  # 1 or 2 (40" west)
    trouble: str | None = None  # "trail" or "clouds"


def plan() -> list[Frame]:
    """The night, in frame-number order: science 3852-3889, then calibrations."""
    frames = [Frame(3852 + i, "Light Frame", "B", 60.0) for i in range(10)]  # group B0
    frames += [Frame(3862 + i, "Light Frame", "V", 60.0) for i in range(10)]
    frames += [Frame(3872 + i, "Light Frame", "R", 60.0) for i in range(10)]
    frames += [Frame(3882 + i, "Light Frame", "B", 120.0, pointing=2) for i in range(8)]
    frames += [Frame(3890 + i, "Bias Frame", None, 0.0) for i in range(5)]
    frames += [Frame(3895 + 3 * b + i, "Flat Field", band, 2.0) for b, band in enumerate("BVR") for i in range(3)]
    frames += [Frame(3904 + i, "Dark Frame", None, 60.0) for i in range(3)]
    trouble = {3857: "trail", 3874: "clouds", 3875: "clouds"}
    return [Frame(f.number, f.kind, f.band, f.exptime, f.pointing, trouble.get(f.number)) for f in frames]


def _field(rng: np.random.Generator, n: int = 70) -> np.ndarray:
    """Stars of the field: x, y (sky pixels) and flux (ADU in 60 s)."""
    stars = np.column_stack([rng.uniform(5, SKY[1] - 5, n), rng.uniform(5, SKY[0] - 5, n), rng.uniform(3e3, 4e4, n)])
    return np.vstack([stars, [*BRIGHT_STAR, 2e5]])


def _render(stars: np.ndarray, origin: tuple[float, float], fwhm_px: float, trail: float) -> np.ndarray:
    y, x = np.indices(SHAPE, dtype=np.float32)
    image = np.zeros(SHAPE, dtype=np.float32)
    sigma_y = fwhm_px / 2.3548
    sigma_x = sigma_y * trail
    for sx, sy, flux in stars:
        cx, cy = sx - origin[0], sy - origin[1]
        if -10 < cx < SHAPE[1] + 10 and -10 < cy < SHAPE[0] + 10:
            image += flux / (2 * np.pi * sigma_x * sigma_y) * np.exp(
                -((x - cx) ** 2) / (2 * sigma_x**2) - ((y - cy) ** 2) / (2 * sigma_y**2))
    return image


def _science(frame: Frame, stars: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, fits.Header]:
    origin = (86.0 + (40.0 if frame.pointing == 2 else 0.0) + rng.uniform(-5, 5), 79.0 + rng.uniform(-5, 5))
    scale = frame.exptime / 60 * {"B": 0.6, "V": 1.0, "R": 1.2}[frame.band]
    sky, transparency = (4000.0, 0.5) if frame.trouble == "clouds" else (120.0, 1.0)
    image = _render(stars, origin, 3.0, 2.4 if frame.trouble == "trail" else 1.0) * scale * transparency
    image += sky * frame.exptime / 60
    header = fits.Header()
    centre_x, centre_y = origin[0] + SHAPE[1] / 2, origin[1] + SHAPE[0] / 2
    ra = CENTRE[0] - (centre_x - SKY[1] / 2) * SCALE_DEG / np.cos(np.radians(CENTRE[1]))
    dec = CENTRE[1] + (centre_y - SKY[0] / 2) * SCALE_DEG
    header["OBJECT"] = "NGC 3293"
    header["RA"], header["DEC"] = (round(ra, 6), "[deg]"), (round(dec, 6), "[deg]")
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRPIX1"], header["CRPIX2"] = SHAPE[1] / 2 + 0.5, SHAPE[0] / 2 + 0.5
    header["CRVAL1"], header["CRVAL2"] = round(ra, 7), round(dec, 7)
    header["CDELT1"], header["CDELT2"] = -SCALE_DEG, SCALE_DEG
    return image, header


def _xray(directory: Path, obsid: str, start: datetime, rng: np.random.Generator) -> Path:
    """A small XMM-Newton EPIC-pn event list."""
    n = 500
    events = fits.BinTableHDU.from_columns([
        fits.Column("TIME", "D", array=np.sort(rng.uniform(0, 3e4, n))),
        fits.Column("PI", "J", array=rng.integers(150, 12000, n)),
        fits.Column("X", "E", array=rng.normal(25000, 300, n)),
        fits.Column("Y", "E", array=rng.normal(25000, 300, n)),
    ], name="EVENTS")
    header = events.header
    header["HDUCLASS"], header["HDUCLAS1"] = "OGIP", "EVENTS"
    primary = fits.PrimaryHDU()
    for h in (primary.header, header):
        h["TELESCOP"], h["INSTRUME"], h["OBS_ID"] = "XMM", "EPN", obsid
        h["OBJECT"], h["DATE-OBS"] = "NGC 5506", start.isoformat(timespec="seconds")
        h["EXPOSURE"] = (3.0e4, "[s]")
    path = directory / obsid / f"P{obsid}PNS003PIEVLI0000.fits"
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([primary, events]).writeto(path, overwrite=True)
    return path


def _source_lists(directory: Path, stars: np.ndarray, rng: np.random.Generator) -> None:
    """Two lists of the field's sources for ``align catalogs``: optical stars,
    and "X-ray" sources (a third of them) off by 0.8" east and 0.5" north."""
    def sky(x, y):
        return (CENTRE[0] - (x - SKY[1] / 2) * SCALE_DEG / np.cos(np.radians(CENTRE[1])),
                CENTRE[1] + (y - SKY[0] / 2) * SCALE_DEG)

    with open(directory / "optical_stars.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["ra", "dec", "flux"])
        for x, y, flux in stars:
            writer.writerow([f"{v:.7f}" for v in sky(x, y)] + [f"{flux:.1f}"])
    with open(directory / "xray_sources.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["ra", "dec", "counts"])
        for x, y, flux in stars[::3]:
            ra, dec = sky(x + rng.normal(0, 0.1), y + rng.normal(0, 0.1))
            writer.writerow([f"{ra + 0.8 / 3600 / np.cos(np.radians(dec)):.7f}", f"{dec + 0.5 / 3600:.7f}", f"{flux / 50:.0f}"])


def _region(directory: Path) -> None:
    """A DS9 region around the X-ray source, for ``regions attach``."""
    (directory / "src.reg").write_text(
        "# Region file format: DS9 version 4.1\nglobal color=green\nfk5\n"
        f"circle({CENTRE[0]:.5f},{CENTRE[1]:.5f},20\")\n")


def make_night(directory: Path, seed: int = 3293) -> list[Path]:
    """Write the night's frames to ``directory/ngc3293``, two XMM obsids to
    ``directory/xmm`` and two source lists to ``directory``; return the paths
    of the FITS files."""
    rng = np.random.default_rng(seed)
    fields = {1: _field(rng)}
    night = directory / "ngc3293"
    night.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(plan()):
        data = rng.normal(1000.0, 8.0, SHAPE).astype(np.float32)
        header = fits.Header()
        if frame.kind == "Light Frame":
            signal, extra = _science(frame, fields[1], rng)
            data += signal
            header.update(extra)
        elif frame.kind == "Dark Frame":
            data += rng.poisson(3.0, SHAPE).astype(np.float32)
        elif frame.kind == "Flat Field":
            data += 20000.0 * (1 + 0.02 * rng.standard_normal(SHAPE)).astype(np.float32)
        header["IMAGETYP"] = frame.kind
        if frame.band:
            header["FILTER"] = frame.band
        header["EXPTIME"] = (frame.exptime, "[s]")
        header["DATE-OBS"] = (START + timedelta(minutes=3 * i)).isoformat(timespec="seconds")
        header["TELESCOP"], header["INSTRUME"] = "Demo 0.6m", "DemoCam"
        header["READOUTM"] = "SCI1.0"
        header["HIERARCH ESO INS DROT POSANG"] = float(frame.number % 180)
        path = night / f"ngc3293-{frame.number}.fits"
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
        paths.append(path)
    xmm = directory / "xmm"
    paths += [_xray(xmm, obsid, START + timedelta(days=400 * k), rng) for k, obsid in enumerate(("0013140101", "0761220101"))]
    _source_lists(directory, fields[1], rng)
    _region(directory)
    return paths




def _small_stars(rng: np.random.Generator, shape: tuple[int, int], n: int, fwhm_px: float) -> np.ndarray:
    y, x = np.indices(shape)
    image = np.zeros(shape, dtype=np.float32)
    sigma = fwhm_px / 2.3548
    for cx, cy, flux in zip(rng.uniform(10, shape[1] - 10, n), rng.uniform(10, shape[0] - 10, n), rng.uniform(2e3, 5e4, n)):
        image += flux / (2 * np.pi * sigma**2) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return image


def make_small_night(directory: Path, seed: int = 3293, shape: tuple[int, int] = (128, 128)) -> list[Path]:
    """The first demo's night, which the web app's tests are written against:
    5 bias frames, 3 flats and 4 science frames per band (B, V, R), numbered
    from 3852, written straight into ``directory``."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    sky = _small_stars(rng, shape, 25, 3.0)
    plan = [("Bias Frame", None, 0.0)] * 5
    plan += [("Flat Field", band, 2.0) for band in ("B", "V", "R") for _ in range(3)]
    plan += [("Light Frame", band, exptime) for band in ("B", "V", "R") for exptime in (30.0, 60.0, 60.0, 120.0)]
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
