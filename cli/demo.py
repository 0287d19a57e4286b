"""A small synthetic night for ``obsarch demo``, the one the README's tour uses.

Real FITS files from a seeded rng: one star field seen through B, V and R,
dithered by a few pixels between frames, at two pointings 40" apart; bias
frames, darks and flats; a trailed frame and a cloudy pair for the quality rules;
two XMM-Newton EPIC-pn observations (an event list with its good time
intervals, source and background spectra extracted from it, a response and
an ARF; one 12 ks long, the other cut to 1.7 ks by flares) and a DS9 region; and two source
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


MJDREF = 50814.0  # XMM-Newton's mission time: seconds since 1998-01-01 TT
# Per obsid: exposure segments (s from the start) left by flare filtering, and
# source and background rates (counts/s over the whole field).
OBSERVATIONS = {
    "0013140101": ([(0.0, 5000.0), (7000.0, 14000.0)], 6.0, 2.0),  # 12 ks
    "0761220101": ([(500.0, 1100.0), (4000.0, 5100.0)], 6.5, 2.0),  # 1.7 ks: flares took the rest
}
SOURCE_PX, ANNULUS_PX = 600.0, (1500.0, 2500.0)  # extraction radii in sky pixels of 0.05"
CENTRE_PX = 25000.0


def _xray_header(header, obsid: str, start: datetime, gti: list[tuple[float, float]]) -> float:
    """XMM-like keywords; TSTART in mission time (TT) at ``start`` (UTC). Returns TSTART."""
    from astropy.time import Time

    tt = Time(start, scale="utc").tt
    tstart = round((tt.mjd - MJDREF) * 86400.0, 3)
    header["TELESCOP"], header["INSTRUME"], header["OBS_ID"] = "XMM", "EPN", obsid
    # TIMESYS applies to DATE-OBS too: the start in TT, as XMM writes it (UTC + 69.184 s)
    header["OBJECT"], header["DATE-OBS"] = "NGC 5506", tt.isot
    header["MJDREF"], header["TIMESYS"], header["TIMEREF"] = MJDREF, "TT", "LOCAL"
    header["TSTART"], header["TSTOP"] = tstart + gti[0][0], tstart + gti[-1][1]
    return tstart


def _events(obsid: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Event times (from the start), PI (eV) and sky x, y of one observation:
    a point source and a flat background, inside the good time intervals."""
    gti, source_rate, background_rate = OBSERVATIONS[obsid]
    exposure = sum(b - a for a, b in gti)
    n_source, n_background = rng.poisson(source_rate * exposure), rng.poisson(background_rate * exposure)
    pi = np.concatenate([np.clip(rng.gamma(2.0, 900.0, n_source), 150, 14999), rng.uniform(150, 15000, n_background)])
    x = np.concatenate([rng.normal(CENTRE_PX, 120.0, n_source), rng.uniform(-4000, 4000, n_background) + CENTRE_PX])
    y = np.concatenate([rng.normal(CENTRE_PX, 120.0, n_source), rng.uniform(-4000, 4000, n_background) + CENTRE_PX])
    lengths = np.array([b - a for a, b in gti])
    segment = rng.choice(len(gti), size=len(pi), p=lengths / lengths.sum())
    times = np.array([a for a, _ in gti])[segment] + rng.uniform(0, 1, len(pi)) * lengths[segment]
    order = np.argsort(times)
    return times[order], pi[order].astype(np.int32), x[order].astype(np.float32), y[order].astype(np.float32)


def _spectrum(path: Path, obsid: str, start: datetime, pi: np.ndarray, background: bool) -> None:
    """A PN spectrum (4096 channels of 5 eV) of the events in the source
    circle, or in the background annulus, linked to its background,
    response and ARF by name."""
    gti = OBSERVATIONS[obsid][0]
    channels = np.bincount(np.minimum(pi // 5, 4095), minlength=4096).astype(np.int32)
    area = np.pi * (ANNULUS_PX[1] ** 2 - ANNULUS_PX[0] ** 2) if background else np.pi * SOURCE_PX**2
    hdu = fits.BinTableHDU.from_columns([
        fits.Column("CHANNEL", "J", array=np.arange(4096, dtype=np.int32)),
        fits.Column("COUNTS", "J", array=channels),
    ], name="SPECTRUM")
    header = hdu.header
    header["HDUCLASS"], header["HDUCLAS1"] = "OGIP", "SPECTRUM"
    header["HDUCLAS2"], header["HDUCLAS3"] = ("BKG" if background else "TOTAL"), "COUNT"
    header["CHANTYPE"], header["DETCHANS"], header["POISSERR"] = "PI", 4096, True
    header["EXPOSURE"] = (sum(b - a for a, b in gti), "[s]")
    header["BACKSCAL"], header["AREASCAL"] = round(float(area), 1), 1.0
    header["BACKFILE"] = "none" if background else "pn_bkg.pha"
    header["RESPFILE"], header["ANCRFILE"] = "pn.rmf", "pn.arf"
    primary = fits.PrimaryHDU()
    for h in (primary.header, header):
        _xray_header(h, obsid, start, gti)
    fits.HDUList([primary, hdu]).writeto(path, overwrite=True)


def _response(directory: Path, obsid: str, start: datetime) -> list[Path]:
    """A diagonal response matrix (with its EBOUNDS) and a flat ARF: enough
    to be recognized and linked, not for fitting."""
    lo = np.arange(4096, dtype=np.float32) * 0.005  # keV
    energies = [fits.Column("ENERG_LO", "E", array=lo), fits.Column("ENERG_HI", "E", array=lo + 0.005)]
    matrix = fits.BinTableHDU.from_columns([*energies,
        fits.Column("N_GRP", "I", array=np.ones(4096, np.int16)),
        fits.Column("F_CHAN", "J", array=np.arange(4096, dtype=np.int32)),
        fits.Column("N_CHAN", "J", array=np.ones(4096, np.int32)),
        fits.Column("MATRIX", "E", array=np.full(4096, 0.9, np.float32))], name="MATRIX")
    matrix.header["HDUCLASS"], matrix.header["HDUCLAS1"], matrix.header["HDUCLAS2"] = "OGIP", "RESPONSE", "RSP_MATRIX"
    matrix.header["DETCHANS"], matrix.header["CHANTYPE"] = 4096, "PI"
    ebounds = fits.BinTableHDU.from_columns([
        fits.Column("CHANNEL", "J", array=np.arange(4096, dtype=np.int32)),
        fits.Column("E_MIN", "E", array=lo), fits.Column("E_MAX", "E", array=lo + 0.005)], name="EBOUNDS")
    ebounds.header["HDUCLASS"], ebounds.header["HDUCLAS1"], ebounds.header["HDUCLAS2"] = "OGIP", "RESPONSE", "EBOUNDS"
    arf = fits.BinTableHDU.from_columns([*energies, fits.Column("SPECRESP", "E", array=np.full(4096, 900.0, np.float32))],
                                        name="SPECRESP")
    arf.header["HDUCLASS"], arf.header["HDUCLAS1"], arf.header["HDUCLAS2"] = "OGIP", "RESPONSE", "SPECRESP"
    paths = []
    for name, hdus in (("pn.rmf", [matrix, ebounds]), ("pn.arf", [arf])):
        primary = fits.PrimaryHDU()
        for h in [primary.header] + [hdu.header for hdu in hdus]:
            h["TELESCOP"], h["INSTRUME"], h["OBS_ID"] = "XMM", "EPN", obsid
            h["DATE-OBS"] = start.isoformat(timespec="seconds")
        fits.HDUList([primary, *(hdu.copy() for hdu in hdus)]).writeto(directory / name, overwrite=True)
        paths.append(directory / name)
    return paths


def _xray(directory: Path, obsid: str, start: datetime, rng: np.random.Generator) -> list[Path]:
    """One XMM-Newton EPIC-pn observation: the event list (with its good time
    intervals), the source and background spectra, a response and an ARF."""
    gti = OBSERVATIONS[obsid][0]
    times, pi, x, y = _events(obsid, rng)
    folder = directory / obsid
    folder.mkdir(parents=True, exist_ok=True)
    primary = fits.PrimaryHDU()
    tstart = _xray_header(primary.header, obsid, start, gti)
    events = fits.BinTableHDU.from_columns([
        fits.Column("TIME", "D", array=tstart + times),
        fits.Column("PI", "J", array=pi),
        fits.Column("X", "E", array=x),
        fits.Column("Y", "E", array=y),
    ], name="EVENTS")
    good = fits.BinTableHDU.from_columns([
        fits.Column("START", "D", array=np.array([tstart + a for a, _ in gti])),
        fits.Column("STOP", "D", array=np.array([tstart + b for _, b in gti])),
    ], name="STDGTI01")
    for hdu, class1 in ((events, "EVENTS"), (good, "GTI")):
        hdu.header["HDUCLASS"], hdu.header["HDUCLAS1"] = "OGIP", class1
        _xray_header(hdu.header, obsid, start, gti)
    events.header["EXPOSURE"] = (sum(b - a for a, b in gti), "[s]")
    primary.header["EXPOSURE"] = events.header["EXPOSURE"]
    path = folder / f"P{obsid}PNS003PIEVLI0000.fits"
    fits.HDUList([primary, events, good]).writeto(path, overwrite=True)
    r = np.hypot(x - CENTRE_PX, y - CENTRE_PX)
    _spectrum(folder / "pn_src.pha", obsid, start, pi[r < SOURCE_PX], background=False)
    _spectrum(folder / "pn_bkg.pha", obsid, start, pi[(r > ANNULUS_PX[0]) & (r < ANNULUS_PX[1])], background=True)
    return [path, folder / "pn_src.pha", folder / "pn_bkg.pha", *_response(folder, obsid, start)]


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
        header["XBINNING"], header["YBINNING"] = 1, 1
        header["GAIN"] = (1.4, "[e-/ADU]")
        header["DETECTOR"] = "e2v CCD42-40"
        header["CCD-TEMP"] = (-20.0 + 0.1 * (i % 3 - 1), "[C] regulated")  # no draw: the data stay as they were
        header["HIERARCH ESO INS DROT POSANG"] = float(frame.number % 180)
        path = night / f"ngc3293-{frame.number}.fits"
        fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
        paths.append(path)
    xmm = directory / "xmm"
    xray_rng = np.random.default_rng([seed, 1])  # the X-ray data's own draws: the frames do not depend on them
    for k, obsid in enumerate(OBSERVATIONS):
        paths += _xray(xmm, obsid, START + timedelta(days=400 * k), xray_rng)
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
