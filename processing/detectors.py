"""Pixels per detector: read one detector at a time, write products with one
image HDU per detector (EXTNAME and header kept).

Which HDUs are detectors is decided in :mod:`archive.detectors`; here the
files are opened lazily and a detector's data are read only when asked, so a
24-detector file costs one detector's memory at a time. A product is written
one HDU after another (the primary first, then each detector appended), so
a step never holds more than the detector it is working on.

A file's companion planes are not detectors: a bad-pixel mask (LCO ``BPM``)
is copied unchanged into the calibrated product, since it describes the same
pixels; its tables (LCO's source catalogue ``CAT``) describe the pixels
before calibration and are not copied.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from astropy.io import fits

from archive.detectors import (
    NAME_KEYWORDS,
    Detector,
    _unique,
    detector_name,
    is_detector,
)
from archive.exceptions import ObsarchError

# Cards that describe an HDU's layout, not its detector: never copied
STRUCTURE = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "BZERO", "BSCALE",
             "PCOUNT", "GCOUNT", "BLANK", "CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2",
             "ZTILE1", "ZTILE2", "ZCMPTYPE", "ZQUANTIZ", "ZDITHER0", "ZSIMPLE", "ZEXTEND", "ZPCOUNT", "ZGCOUNT", "TFIELDS")


class DetectorError(ObsarchError):
    """A file whose detectors cannot be read or paired; the message says why."""


@contextmanager
def opened(path: str | Path) -> Iterator[fits.HDUList]:
    """A FITS file opened lazily (no data read until asked)."""
    path = Path(path)
    if not path.exists():
        raise DetectorError(f"{path}: file not found (gone since it was ingested? run `obsarch ingest`)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # no memmap: astropy cannot map scaled (BZERO) integers
            hdul = fits.open(path, memmap=False, lazy_load_hdus=True)
            hdul.readall()  # every header now (no data): a truncated file is a read error here
    except OSError as exc:
        raise DetectorError(f"{path}: cannot read: {exc}") from exc
    # what the caller does with the file (writing a product, say) is not a read error of it
    with hdul:
        yield hdul


def _kind(hdu) -> str:
    if isinstance(hdu, fits.CompImageHDU):
        return "compressed"
    return "image" if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) else "table"


def detectors_of(hdul: fits.HDUList) -> list[Detector]:
    """The detectors of an open file, by the catalog's rule."""
    found, versions = [], {}
    for index, hdu in enumerate(hdul):
        shape = tuple(hdu.shape) if _kind(hdu) != "table" else ()
        if is_detector(_kind(hdu), hdu.name, shape):
            keywords = {k: hdu.header.get(f"HIERARCH {k}" if " " in k else k) for k in NAME_KEYWORDS}
            found.append(Detector(index, detector_name(index, hdu.name or None, keywords), shape))
            if isinstance(hdu.header.get("EXTVER"), int) and not isinstance(hdu.header.get("EXTVER"), bool):
                versions[index] = hdu.header["EXTVER"]
    return _unique(found, versions)


def companions_of(hdul: fits.HDUList) -> list[int]:
    """The HDUs of masks and other planes that accompany the detectors."""
    return [i for i, hdu in enumerate(hdul) if _kind(hdu) != "table" and len(hdu.shape) in (2, 3) and 0 not in hdu.shape
            and not is_detector(_kind(hdu), hdu.name, tuple(hdu.shape))]


# Companion planes whose non-zero pixels are bad (LCO's BPM, HST's DQ): not
# variances or weights, whose values are no flags
MASK_PLANES = frozenset(("BPM", "MASK", "DQ", "QUAL", "QUALITY", "FLAGS"))


def bad_pixels(hdul: fits.HDUList, detector: Detector) -> np.ndarray | None:
    """Where the detector's mask plane flags a pixel (non-zero), or None
    when it has none: a mask plane of its shape that is the file's only one
    beside its only detector, or that shares its EXTVER."""
    detectors = detectors_of(hdul)
    version = hdul[detector.hdu_index].header.get("EXTVER")
    masks = [i for i in companions_of(hdul) if (hdul[i].name or "").upper() in MASK_PLANES
             and tuple(hdul[i].shape) == tuple(detector.shape)]
    if len(detectors) != 1 or len(masks) != 1:
        masks = [i for i in masks if version is not None and hdul[i].header.get("EXTVER") == version]
    if len(masks) != 1:
        return None
    flags = hdul[masks[0]].data
    return None if flags is None else np.asarray(flags) != 0


def read(hdul: fits.HDUList, detector: Detector) -> np.ndarray:
    """One detector's data as float64."""
    data = hdul[detector.hdu_index].data
    if data is None:
        raise DetectorError(f"detector {detector.name} (HDU {detector.hdu_index}) has no data")
    return np.asarray(data, dtype=np.float64)


def detector_header(hdul: fits.HDUList, detector: Detector) -> fits.Header:
    """A detector's header without its layout cards (they follow the new data)."""
    header = hdul[detector.hdu_index].header.copy()
    for key in STRUCTURE:
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def header_only(header: fits.Header) -> fits.Header:
    cleaned = header.copy()
    for key in STRUCTURE:
        cleaned.remove(key, ignore_missing=True, remove_all=True)
    return cleaned


def write_detectors(
    target: str | Path, primary: fits.Header, detectors: list[Detector], make: Callable[[Detector], tuple[np.ndarray, fits.Header]],
    extra: Callable[[], Iterator[fits.ImageHDU]] | None = None,
) -> None:
    """Write ``target`` with one image HDU per detector, made one at a time by
    ``make(detector) -> (data, header[, hdus to append after it])``: a
    detector that was the primary HDU stays the primary, the others are
    extensions named as in the input.
    ``extra`` yields more HDUs to append (companion planes)."""
    from processing.runs import stamp

    target = Path(target)
    first = detectors[0] if detectors else None
    if first is not None and first.hdu_index == 0:
        data, header, *after = make(first)
        merged = header_only(primary)
        merged.update(header)
        stamp(merged)
        fits.PrimaryHDU(data.astype(np.float32), merged).writeto(target)
        _append(target, after)
        rest = detectors[1:]
    else:
        own = header_only(primary)
        stamp(own)
        fits.PrimaryHDU(header=own).writeto(target)
        rest = detectors
    for detector in rest:
        data, header, *after = make(detector)
        if "EXTNAME" not in header:  # a name from a keyword; an EXTNAME (and its EXTVER) stays as it was
            header["EXTNAME"] = detector.name
        fits.append(target, data.astype(np.float32), header)
        del data
        _append(target, after)
    for hdu in extra() if extra else ():
        fits.append(target, hdu.data, hdu.header)


def _append(target: Path, after: list) -> None:
    """HDUs that follow a detector (its coverage map), written now so that
    none is held until the end."""
    for hdu in after[0] if after else ():
        fits.append(target, hdu.data, hdu.header)


def paired(hdul: fits.HDUList, names: list[str], single: bool) -> dict[str, Detector]:
    """The detectors of an open master by the frame's detector names (a
    single detector on both sides pairs with the other whatever its name)."""
    found = detectors_of(hdul)
    if single and len(found) == 1 and len(names) == 1:
        return {names[0]: found[0]}
    by_name = {d.name: d for d in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DetectorError(f"{hdul.filename()}: no detector {', '.join(missing)}")
    return {n: by_name[n] for n in names}
