"""X-ray products: what kind a file is and what its tables say.

Pure: a path in, a :class:`XraySummary` out; no session, no printing.
Tables are read a column at a time, in chunks of rows, through a memory
map (``fits.open(memmap=True)``): an event list is never loaded whole, so
memory stays near ``CHUNK_ROWS`` rows of one column whatever its length
(a gzipped file cannot be mapped; astropy then holds it decompressed).

Kinds (the first that any HDU shows, in this order): spectrum, events,
lightcurve, response, arf, image, region, gti. A spectrum's role is
``background`` when its HDUCLAS2 says BKG/BACKGROUND or its file name has
a ``bg``/``bkg``/``back``/``background`` word, else ``source``; a spectrum
named by another's BACKFILE becomes ``background`` when the links are made.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from astropy.io import (
    fits,  # imported before any warning is caught: its logger hooks warnings on import
)

from archive.xray_kinds import XRAY_KINDS, classify, hdu_kind

ALGORITHM = "xray-summary-1"
CHUNK_ROWS = 1_000_000
KIND_ORDER = XRAY_KINDS  # one list: the selection language refuses a kind not in it


@dataclass
class XraySummary:
    """The numbers of one X-ray file (seconds, counts, counts/s, MJD UTC)."""

    kind: str
    role: str | None = None
    hdu_index: int | None = None
    counts: float | None = None
    exposure_s: float | None = None
    rate: float | None = None
    backscal: float | None = None
    channels: int | None = None
    n_events: int | None = None
    gti_exposure_s: float | None = None
    time_span_s: float | None = None
    mean_rate: float | None = None
    frac_rms: float | None = None
    mjd_start: float | None = None
    mjd_stop: float | None = None
    mjd_mid: float | None = None
    backfile: str | None = None
    respfile: str | None = None
    ancrfile: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def row(self) -> dict:
        values = asdict(self)
        values["warnings"] = "; ".join(self.warnings) or None
        return values


# -- times ---------------------------------------------------------------------


def _time_scale(header) -> str:
    scale = str(header.get("TIMESYS", "TT")).strip().lower() or "tt"
    return {"tdt": "tt", "et": "tt"}.get(scale, scale)


def mjd_reference(header) -> tuple[float, float] | None:
    """MJDREF as (integer, fraction) from MJDREFI+MJDREFF or MJDREF."""
    if "MJDREFI" in header:
        return float(header["MJDREFI"]), float(header.get("MJDREFF", 0.0))
    if "MJDREF" in header:
        whole = float(header["MJDREF"])
        return math.floor(whole), whole - math.floor(whole)
    return None


def mission_time_to_mjd_utc(seconds: float, header) -> float:
    """Seconds of mission time (TSTART, a TIME value) to MJD in UTC:
    MJDREF + (t + TIMEZERO) / 86400 in TIMESYS (TT unless said), converted."""
    from astropy.time import Time

    whole, fraction = mjd_reference(header)
    offset = (float(seconds) + float(header.get("TIMEZERO", 0.0))) / 86400.0
    return float(Time(whole, fraction + offset, format="mjd", scale=_time_scale(header)).utc.mjd)


def _date_to_mjd_utc(text: str, header) -> float | None:
    from astropy.time import Time

    try:
        return float(Time(text.strip(), format="isot", scale=_time_scale(header)).utc.mjd)
    except ValueError:
        return None


def time_range(headers: list) -> tuple[float | None, float | None, list[str]]:
    """MJD (UTC) start and stop: TSTART/TSTOP with MJDREF from the first
    header that has all three, else the earliest TSTART and latest TSTOP of
    the headers that have them (an XMM spectrum keeps them only in its GTI
    extensions), else DATE-OBS/DATE-END."""
    notes: list[str] = []
    timed = [h for h in headers if "TSTART" in h and "TSTOP" in h and mjd_reference(h) is not None]
    if timed:
        start = min(mission_time_to_mjd_utc(h["TSTART"], h) for h in timed)
        stop = max(mission_time_to_mjd_utc(h["TSTOP"], h) for h in timed)
        return start, stop, notes
    dated = next((h for h in headers if "DATE-OBS" in h), None)
    if dated is None:
        return None, None, ["no TSTART/TSTOP with MJDREF and no DATE-OBS: times unknown"]
    start = _date_to_mjd_utc(str(dated["DATE-OBS"]), dated)
    stop = _date_to_mjd_utc(str(dated["DATE-END"]), dated) if "DATE-END" in dated else None
    return start, stop, notes


# -- columns, a chunk at a time --------------------------------------------------


def _column_name(hdu, wanted: str) -> str | None:
    return next((n for n in hdu.columns.names if n.upper() == wanted), None)


def column_chunks(hdu, name: str, chunk_rows: int | None = None):
    """One column of a table HDU, ``chunk_rows`` (default :data:`CHUNK_ROWS`)
    rows at a time, with TSCAL/TZERO applied.

    The chunks are cut from the records as stored (a view of the memory
    map): astropy's own ``field()`` converts and caches the whole column
    even when asked for a slice, which is what this avoids."""
    column = hdu.columns[name]
    if any(letter in str(column.format) for letter in "LPQA"):
        raise ValueError(f"column {name} ({column.format}) is not numeric")
    records = np.ndarray.view(hdu.data, np.ndarray)
    scale, zero = column.bscale, column.bzero
    rows, chunk_rows = len(records), chunk_rows or CHUNK_ROWS
    for start in range(0, rows, chunk_rows):
        chunk = records[name][start : start + chunk_rows]
        if scale not in (None, 1) or zero not in (None, 0):
            chunk = chunk * (1.0 if scale is None else scale) + (0.0 if zero is None else zero)
        yield chunk


def gti_exposure(hdul) -> float | None:
    """Sum of STOP - START of the first GTI extension (per-chip GTIs follow
    it; their union is not the exposure of any one chip)."""
    for hdu in hdul[1:]:
        if not hdu.is_image and hdu_kind(hdu.header, True, True) == "gti":
            start, stop = _column_name(hdu, "START"), _column_name(hdu, "STOP")
            if start and stop:
                return float(sum(np.sum(b - a, dtype=float) for a, b in zip(column_chunks(hdu, start), column_chunks(hdu, stop))))
    return None


def _positive(header, keyword: str) -> float | None:
    value = header.get(keyword)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _link(header, keyword: str) -> str | None:
    value = header.get(keyword)
    return str(value).strip() if value is not None and str(value).strip() else None


# -- per kind ----------------------------------------------------------------------


def summarize_spectrum(hdu, result: XraySummary) -> None:
    header = hdu.header
    result.exposure_s = _positive(header, "EXPOSURE")
    result.channels = int(header.get("DETCHANS") or header.get("NAXIS2", 0)) or None
    result.backfile, result.respfile, result.ancrfile = (_link(header, k) for k in ("BACKFILE", "RESPFILE", "ANCRFILE"))
    if isinstance(header.get("BACKSCAL"), (int, float)):
        result.backscal = float(header["BACKSCAL"])
    elif _column_name(hdu, "BACKSCAL"):
        result.warnings.append("BACKSCAL is a column: no net rate")
    counts_col, rate_col = _column_name(hdu, "COUNTS"), _column_name(hdu, "RATE")
    if counts_col is None and rate_col is None:
        result.error = "spectrum has neither a COUNTS nor a RATE column"
        return
    if str(header.get("HDUCLAS4", "")).strip().upper() == "TYPE:II" or hdu.columns[counts_col or rate_col].format.repeat > 1:
        result.error = f"type II spectrum ({header.get('NAXIS2')} spectra in one table): not summarized"
        return
    total = sum(float(np.sum(chunk, dtype=float)) for chunk in column_chunks(hdu, counts_col or rate_col))
    if counts_col:
        result.counts = total
        result.rate = total / result.exposure_s if result.exposure_s else None
    else:
        result.rate = total
        result.counts = total * result.exposure_s if result.exposure_s else None
    if result.exposure_s is None:
        result.warnings.append("EXPOSURE missing or 0: no rate")


def summarize_events(hdul, hdu, result: XraySummary) -> None:
    header = hdu.header
    result.n_events = int(header.get("NAXIS2", 0))
    result.exposure_s = _positive(header, "EXPOSURE")
    result.gti_exposure_s = gti_exposure(hdul)
    per = result.exposure_s or result.gti_exposure_s
    if result.exposure_s and result.gti_exposure_s and result.exposure_s > result.gti_exposure_s * 1.001:
        # exposure is live time inside the good intervals: more means the
        # header describes a longer list than the one in the file
        result.warnings.append(f"EXPOSURE ({result.exposure_s:.1f} s) exceeds the good time intervals "
                               f"({result.gti_exposure_s:.1f} s): rate per GTI exposure")
        per = result.gti_exposure_s
    result.rate = result.n_events / per if per else None
    time_col = _column_name(hdu, "TIME")
    if time_col and result.n_events:
        lows, highs = zip(*((float(np.min(c)), float(np.max(c))) for c in column_chunks(hdu, time_col)))
        result.time_span_s = max(highs) - min(lows)


def summarize_lightcurve(hdu, result: XraySummary) -> None:
    """Mean rate and fractional rms over the bins with a finite rate, each
    bin weighted by its exposure (FRACEXP x TIMEDEL where the table has
    them): a bin exposed for a millionth of its width must not dominate.
    Two passes over the columns, a chunk at a time."""
    header = hdu.header
    result.exposure_s = _positive(header, "EXPOSURE")
    rate_col = _column_name(hdu, "RATE")
    if rate_col is None:
        result.error = "light curve without a RATE column: not summarized"
        return
    bands = hdu.columns[rate_col].format.repeat
    if bands > 1:
        result.warnings.append(f"RATE has {bands} energy bands: the first is summarized")
    totals = [0.0, 0.0]
    for rates, weights in _weighted_rates(hdu, rate_col):
        totals[0] += float(np.sum(weights))
        totals[1] += float(np.sum(weights * rates))
    if totals[0] <= 0:
        result.error = "light curve has no bin with a finite rate and exposure"
        return
    mean = totals[1] / totals[0]
    spread = sum(float(np.sum(weights * (rates - mean) ** 2)) for rates, weights in _weighted_rates(hdu, rate_col))
    result.mean_rate = result.rate = mean
    if mean > 0:
        result.frac_rms = math.sqrt(spread / totals[0]) / mean
    else:
        result.warnings.append("mean rate is not positive: no fractional rms")


def _weighted_rates(hdu, rate_col: str):
    """(rates, weights) per chunk: finite rates of the first band, weighted
    by FRACEXP x TIMEDEL when present (bins without exposure dropped)."""
    frac_col, del_col = _column_name(hdu, "FRACEXP"), _column_name(hdu, "TIMEDEL")
    frac_chunks = column_chunks(hdu, frac_col) if frac_col else _nones()
    del_chunks = column_chunks(hdu, del_col) if del_col else _nones()
    for rates, frac, width in zip(column_chunks(hdu, rate_col), frac_chunks, del_chunks):
        rates = (rates[:, 0] if rates.ndim > 1 else rates).astype(float)
        weights = np.ones_like(rates)
        if frac is not None:
            weights = weights * (frac[:, 0] if frac.ndim > 1 else frac)
        if width is not None:
            weights = weights * width
        keep = np.isfinite(rates) & (weights > 0)
        yield rates[keep], weights[keep]


def _nones():
    while True:
        yield None


def summarize_matrix(hdu, result: XraySummary) -> None:
    header = hdu.header
    result.channels = int(header.get("DETCHANS") or 0) or None


# -- one file ----------------------------------------------------------------------


_FROM_TABLES = ("counts", "rate", "n_events", "gti_exposure_s", "time_span_s", "mean_rate", "frac_rms")


def summarize_file(path: str) -> XraySummary | None:
    """The kind and summary of the X-ray file at ``path``; None when it is
    not an X-ray product. A table that cannot be read gives a summary with
    ``error`` set and no number read from the tables, never a partial one;
    astropy's warnings (a truncated file) become the summary's warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _summarize(path)
    if result is not None:
        for message in dict.fromkeys(str(w.message).strip() for w in caught if issubclass(w.category, UserWarning)):
            result.warnings.append(message)
        if result.error:
            for name in _FROM_TABLES:
                setattr(result, name, None)
    return result


def _summarize(path: str) -> XraySummary | None:
    from pathlib import Path

    with fits.open(path, memmap=True, lazy_load_hdus=False) as hdul:
        hdus = [(i, h.header, not h.is_image, h.header.get("NAXIS", 0) > 0) for i, h in enumerate(hdul)]
        kinds = classify(hdus, Path(path).name)
        if kinds is None:
            return None
        kind, role, index = kinds
        result = XraySummary(kind=kind, role=role, hdu_index=index)
        hdu = hdul[index]
        try:
            if kind == "spectrum":
                summarize_spectrum(hdu, result)
            elif kind == "events":
                summarize_events(hdul, hdu, result)
            elif kind == "lightcurve":
                summarize_lightcurve(hdu, result)
            elif kind in ("response", "arf"):
                summarize_matrix(hdu, result)
            else:
                result.exposure_s = _positive(hdu.header, "EXPOSURE") or _positive(hdul[0].header, "EXPOSURE")
                if kind == "gti":
                    result.gti_exposure_s = gti_exposure(hdul)
        except (KeyError, ValueError, TypeError, OSError) as exc:
            result.error = f"cannot read the {hdu.header.get('EXTNAME', 'table')} table: {exc}"
        headers = [hdu.header, hdul[0].header] + [h.header for h in hdul[1:] if h is not hdu]
        start, stop, notes = time_range(headers)
    result.mjd_start, result.mjd_stop = start, stop
    result.mjd_mid = (start + stop) / 2 if start is not None and stop is not None else None
    result.warnings.extend(notes)
    return result


def summary_row(task: tuple[int, str]) -> dict | None:
    """The summary of one file as a row (None: not an X-ray product). Runs in a worker."""
    from archive.exceptions import ObsarchError

    _, path = task
    try:
        summary = summarize_file(path)
    except OSError as exc:
        raise ObsarchError(f"cannot read: {exc.strerror or exc}") from None
    return summary.row() if summary else None


def net_rate(source: dict, background: dict) -> float | None:
    """Source rate minus the background rate scaled to the source area:
    C_s/t_s - C_b/t_b * BACKSCAL_s/BACKSCAL_b (counts per second)."""
    needed = (source.get("counts"), source.get("exposure_s"), source.get("backscal"),
              background.get("counts"), background.get("exposure_s"), background.get("backscal"))
    if any(v is None for v in needed) or not source["exposure_s"] or not background["exposure_s"] or not background["backscal"]:
        return None
    return (source["counts"] / source["exposure_s"]
            - background["counts"] / background["exposure_s"] * source["backscal"] / background["backscal"])
