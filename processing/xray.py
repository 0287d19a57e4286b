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

from archive.keywords import UNIT_NAMES, comment_unit
from archive.xray_kinds import XRAY_KINDS, classify, hdu_kind

ALGORITHM = "xray-summary-4"  # 3: an ARF with no HDUCLAS2 but EXTNAME SPECRESP is an ARF (archive.xray_kinds); 4: EXPOSURE in its comment's unit
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


class BadTimeCard(ValueError):
    """A card the times of a file depend on that cannot be used; the message
    is the one plain line the summary's warnings give."""


_SCALES = ("tai", "tcb", "tcg", "tdb", "tt", "ut1", "utc")  # astropy's scales that convert to UTC ('local' does not)
_UNIT_NAMES = {"sec": "s", "secs": "s", "second": "s", "seconds": "s", "days": "d"}  # spellings astropy does not parse
_LEFT_EMPTY = "times left empty"


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _number(header, keyword: str, default: float | None = None) -> float:
    """A card the times depend on as a finite number (``default`` when absent)."""
    value = header.get(keyword, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadTimeCard(f"{keyword} {_shown(value)} is not a number: {_LEFT_EMPTY}")
    return float(value)


def seconds_per(unit, card: str) -> float:
    """Seconds in one ``unit`` (a TIMEUNIT or TUNIT value, e.g. s, ms, d; blank:
    seconds), by astropy.units; ``card`` names it in the message of a unit
    that is no time."""
    import astropy.units as u

    name = str(unit).strip()
    if not name:
        return 1.0
    try:
        return float(u.Unit(_UNIT_NAMES.get(name.lower(), name)).to(u.s))
    except (ValueError, u.UnitsError):
        raise BadTimeCard(f"{card} {name!r} is not a unit of time: {_LEFT_EMPTY}") from None


def header_seconds(header) -> float:
    """Seconds per unit of TSTART, TSTOP, TIMEZERO and (unless their TUNIT
    says otherwise) time columns: TIMEUNIT, seconds when absent."""
    return seconds_per(header.get("TIMEUNIT", ""), "TIMEUNIT")


def column_seconds(hdu, name: str) -> float:
    """Seconds per unit of the time column ``name``: its TUNIT, else the
    table's TIMEUNIT."""
    unit = hdu.columns[name].unit
    if unit is not None and str(unit).strip():
        return seconds_per(unit, f"TUNIT of {name}")
    return header_seconds(hdu.header)


def _time_scale(header) -> str:
    value = header.get("TIMESYS", "TT")
    scale = str(value).strip().lower() or "tt"
    scale = {"tdt": "tt", "et": "tt"}.get(scale, scale)
    if scale not in _SCALES:
        raise BadTimeCard(f"TIMESYS {_shown(value)} is not a time scale astropy converts to UTC: {_LEFT_EMPTY}")
    return scale


def mjd_reference(header) -> tuple[float, float] | None:
    """MJDREF as (integer, fraction) from MJDREFI+MJDREFF or MJDREF."""
    if "MJDREFI" in header:
        whole, fraction, keyword = _number(header, "MJDREFI"), _number(header, "MJDREFF", 0.0), "MJDREFI"
    elif "MJDREF" in header:
        value = _number(header, "MJDREF")
        whole, fraction, keyword = math.floor(value), value - math.floor(value), "MJDREF"
    else:
        return None
    if abs(whole) > 1e6:  # ~2,700 years either side of 1858: no mission's clock starts there
        raise BadTimeCard(f"{keyword} {_shown(header[keyword])} is not a date: {_LEFT_EMPTY}")
    return whole, fraction


def mission_time_to_mjd_utc(value: float, header) -> float:
    """Mission time (TSTART, a TIME value) in the header's TIMEUNIT to MJD
    in UTC: MJDREF + (t + TIMEZERO) in days, in TIMESYS (TT unless said),
    converted. Raises :class:`BadTimeCard` naming a card that cannot be used."""
    from astropy.time import Time

    scale, (whole, fraction) = _time_scale(header), mjd_reference(header)
    offset = (value + _number(header, "TIMEZERO", 0.0)) * header_seconds(header) / 86400.0
    return float(Time(whole, fraction + offset, format="mjd", scale=scale).utc.mjd)


def _date_to_mjd_utc(keyword: str, header) -> float:
    from astropy.time import Time

    scale = _time_scale(header)
    try:
        return float(Time(str(header[keyword]).strip(), format="isot", scale=scale).utc.mjd)
    except ValueError:
        raise BadTimeCard(f"{keyword} {_shown(header[keyword])} is not a date: {_LEFT_EMPTY}") from None


def _mission_range(timed: list) -> tuple[float, float]:
    """The earliest TSTART and latest TSTOP of ``timed`` as MJD (UTC); every
    bad card is told, not only the first."""
    problems: list[str] = []
    for header in timed:
        for check in (_time_scale, mjd_reference, header_seconds, lambda h: _number(h, "TIMEZERO", 0.0),
                      lambda h: _number(h, "TSTART"), lambda h: _number(h, "TSTOP")):
            try:
                check(header)
            except BadTimeCard as bad:
                problems.append(str(bad))
    if problems:
        raise BadTimeCard("; ".join(dict.fromkeys(problems)))
    try:
        return (min(mission_time_to_mjd_utc(h["TSTART"], h) for h in timed),
                max(mission_time_to_mjd_utc(h["TSTOP"], h) for h in timed))
    except (ValueError, TypeError, OverflowError):  # astropy's refusal of a date far outside its tables
        raise BadTimeCard(f"TSTART/TSTOP from MJDREF are not dates astropy converts: {_LEFT_EMPTY}") from None


def time_range(headers: list) -> tuple[float | None, float | None, list[str]]:
    """MJD (UTC) start and stop: TSTART/TSTOP with MJDREF from the first
    header that has all three, else the earliest TSTART and latest TSTOP of
    the headers that have them (an XMM spectrum keeps them only in its GTI
    extensions), else DATE-OBS/DATE-END. A card that cannot be used leaves
    both empty, with one warning per bad card."""
    timed = [h for h in headers if "TSTART" in h and "TSTOP" in h and ("MJDREF" in h or "MJDREFI" in h)]
    dated = next((h for h in headers if "DATE-OBS" in h), None)
    if not timed and dated is None:
        return None, None, ["no TSTART/TSTOP with MJDREF and no DATE-OBS: times unknown"]
    try:
        if timed:
            start, stop = _mission_range(timed)
        else:
            start = _date_to_mjd_utc("DATE-OBS", dated)
            stop = _date_to_mjd_utc("DATE-END", dated) if "DATE-END" in dated else None
    except BadTimeCard as bad:
        return None, None, str(bad).split("; ")
    return start, stop, _disagreeing_dates(timed, dated, start)


def _disagreeing_dates(timed: list, dated, start: float) -> list[str]:
    """A warning when TSTART and DATE-OBS of one file name days a day or more
    apart (eROSITA's merged light curve: DATE-OBS 2019-11-03, TSTART four days
    later): the start follows TSTART, and says so. Minutes apart is no
    disagreement (a cleaned event list starts after its observation)."""
    if not timed or dated is None:
        return []
    try:
        observed = _date_to_mjd_utc("DATE-OBS", dated)
    except BadTimeCard:
        return []
    days = abs(start - observed)
    if days < 1:
        return []
    return [f"TSTART and DATE-OBS ({str(dated['DATE-OBS']).strip()}) are {days:.1f} days apart: "
            "mjd_start and mjd_stop follow TSTART; date_obs, mjd and night keep DATE-OBS"]


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


def gti_exposure(hdul, notes: list[str]) -> float | None:
    """Good time in seconds of the first GTI extension (per-chip GTIs follow
    it; their union is not the exposure of any one chip): the length of the
    union of its intervals, so that overlapping or repeated rows count once.
    None, with a note, when a row cannot be an interval. A GTI table is
    read whole (a few rows per interruption of the observation)."""
    for index, hdu in enumerate(hdul[1:], 1):
        if not hdu.is_image and hdu_kind(hdu.header, True, True) == "gti":
            start, stop = _column_name(hdu, "START"), _column_name(hdu, "STOP")
            if start and stop:
                try:
                    return _good_time(hdu, start, stop, f"GTI extension {hdu.name or index} (HDU {index})", notes)
                except BadTimeCard as bad:
                    notes.append(str(bad))
                    return None
    return None


def _good_time(hdu, start: str, stop: str, name: str, notes: list[str]) -> float:
    starts, stops = (np.concatenate([np.asarray(c, dtype=float) for c in column_chunks(hdu, n)] or [np.empty(0)])
                     * column_seconds(hdu, n) for n in (start, stop))
    not_finite = int(np.count_nonzero(~(np.isfinite(starts) & np.isfinite(stops))))
    if not_finite:
        raise BadTimeCard(f"{name}: START or STOP not a finite number in {_rows(not_finite)}: no GTI exposure")
    reversed_rows = int(np.count_nonzero(stops < starts))
    if reversed_rows:
        raise BadTimeCard(f"{name}: STOP before START in {_rows(reversed_rows)}, not a time interval: no GTI exposure")
    if not len(starts):
        return 0.0
    order = np.argsort(starts, kind="stable")
    starts, stops = starts[order], np.maximum.accumulate(stops[order])  # the latest stop so far
    begins = np.flatnonzero(np.concatenate(([True], starts[1:] > stops[:-1])))  # a start after every earlier stop
    ends = np.concatenate((begins[1:] - 1, [len(starts) - 1]))
    if len(begins) < len(starts) and np.any(starts[1:] < stops[:-1]):
        notes.append(f"{name}: overlapping intervals: their union is the GTI exposure")
    return float(np.sum(stops[ends] - starts[begins]))


def _rows(n: int, what: str = "row") -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _exposure(hdul, hdu, keyword: str = "EXPOSURE") -> tuple[float | None, str | None]:
    """EXPOSURE (or ``keyword``) in seconds from the summarized table's
    header, else from the primary header (where ingest's exptime reads it
    first), and a note: why a card was not used, or that the primary's was."""
    header, where = hdu.header, ""
    if keyword not in header and hdu is not hdul[0] and keyword in hdul[0].header:
        header, where = hdul[0].header, " in the primary header"
    if keyword not in header:
        return None, None
    value = header[keyword]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        why = "is text, not a number" if isinstance(value, str) else "is not a number"
    elif not math.isfinite(value):
        why = "is not a finite number"
    elif value < 0:
        why = "is negative"
    elif value == 0:
        return None, f"{keyword}{where} is 0: not used"
    else:
        notes = [f"{keyword} only{where} (not in the {hdu.name or 'table'} table's): used"] if where else []
        # its comment's unit, as ingest reads exptime from the same card: "[ks]" once gave exptime 10000 s, exposure 10 s
        factor, problem = comment_unit(header.comments[keyword])
        seconds = float(value) * (factor or 1.0)
        if not math.isfinite(seconds):  # as ingest leaves exptime empty for it
            return None, f"{keyword} {_shown(value)}{where} in its unit is beyond the numbers a catalog holds in seconds: not used"
        if problem:
            notes.append(f"{keyword}'s comment names {problem}, not understood: taken as seconds")
        elif factor not in (None, 1.0):
            notes.append(f"{keyword} {_shown(value)}{where} is in {UNIT_NAMES.get(factor, f'x{factor:g} s')}: "
                         f"converted to {seconds:g} s")
        return seconds, "; ".join(notes) or None
    return None, f"{keyword} {_shown(value)}{where} {why}: not used"


def _scale(hdu, keyword: str, notes: list[str]) -> float | None:
    """BACKSCAL or AREASCAL of a spectrum as a positive number; None, with a
    note, for a column or a value that is none."""
    if keyword in hdu.header:
        value = hdu.header[keyword]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            return float(value)
        notes.append(f"{keyword} {_shown(value)} is not a positive number: no net rate")
    elif _column_name(hdu, keyword):
        notes.append(f"{keyword} is a column: no net rate")
    return None


def _link(header, keyword: str) -> str | None:
    value = header.get(keyword)
    return str(value).strip() if value is not None and str(value).strip() else None


# -- per kind ----------------------------------------------------------------------


def summarize_spectrum(hdul, hdu, result: XraySummary) -> None:
    header = hdu.header
    result.exposure_s, exposure_note = _exposure(hdul, hdu)
    result.channels = int(header.get("DETCHANS") or header.get("NAXIS2", 0)) or None
    result.backfile, result.respfile, result.ancrfile = (_link(header, k) for k in ("BACKFILE", "RESPFILE", "ANCRFILE"))
    result.backscal = _scale(hdu, "BACKSCAL", result.warnings)
    _scale(hdu, "AREASCAL", result.warnings)  # told here; the net rate reads it from the stored cards
    counts_col, rate_col = _column_name(hdu, "COUNTS"), _column_name(hdu, "RATE")
    if counts_col is None and rate_col is None:
        result.error = "spectrum has neither a COUNTS nor a RATE column"
        return
    if str(header.get("HDUCLAS4", "")).strip().upper() == "TYPE:II" or hdu.columns[counts_col or rate_col].format.repeat > 1:
        result.error = f"type II spectrum ({header.get('NAXIS2')} spectra in one table): not summarized"
        return
    total = _channel_total(hdu, counts_col or rate_col, result.warnings)
    if total is not None and counts_col:
        result.counts = total
        result.rate = total / result.exposure_s if result.exposure_s else None
    elif total is not None:
        result.rate = total
        result.counts = total * result.exposure_s if result.exposure_s else None
    if result.exposure_s is None:
        missing = "no rate" if counts_col else "no counts"
        result.warnings.append(f"{exposure_note}, {missing}" if exposure_note else f"EXPOSURE absent: {missing}")
    elif exposure_note:
        result.warnings.append(exposure_note)


def _channel_total(hdu, column: str, notes: list[str]) -> float | None:
    """The sum of a spectrum's COUNTS or RATE column; None, with a note, when
    a channel is not a finite number, or a count is negative (a total without
    it, or with it, would be a wrong number). A RATE may be negative: a
    background-subtracted spectrum (Swift/BAT) has such channels."""
    total, not_finite, negative = 0.0, 0, 0
    counts = column.upper() == "COUNTS"
    for chunk in column_chunks(hdu, column):
        values = np.asarray(chunk, dtype=float)
        finite = np.isfinite(values)
        not_finite += int(np.count_nonzero(~finite))
        negative += int(np.count_nonzero(values[finite] < 0)) if counts else 0
        total += float(np.sum(values[finite]))
    if not_finite:
        notes.append(f"{column} is not a finite number (NaN or infinite) in {_rows(not_finite, 'channel')}: no counts or rate")
    elif negative:
        notes.append(f"{column} is negative in {_rows(negative, 'channel')} (a spectrum's counts are 0 or more): no counts or rate")
    return None if not_finite or negative else total


def summarize_events(hdul, hdu, result: XraySummary) -> None:
    header = hdu.header
    result.n_events = int(header.get("NAXIS2", 0))
    result.exposure_s, exposure_note = _exposure(hdul, hdu)
    used = "EXPOSURE"
    if result.exposure_s is None:  # no usable EXPOSURE: LIVETIME is the same live time (XMM's pn writes no EXPOSURE)
        live, live_note = _exposure(hdul, hdu, "LIVETIME")
        if live is not None:
            result.exposure_s, used = live, "LIVETIME"
            exposure_note = "; ".join(filter(None, [exposure_note or "no EXPOSURE", "LIVETIME used", live_note]))
    result.gti_exposure_s = gti_exposure(hdul, result.warnings)
    chips = _gti_extensions(hdul)
    per, per_gti = result.exposure_s, _per_good_time(chips, header, result.gti_exposure_s)
    if result.exposure_s and result.gti_exposure_s and result.exposure_s > _longest_good_time(hdul, chips, result.gti_exposure_s) * 1.001:
        # exposure is live time inside the good intervals: more means the
        # header describes a longer list than the one in the file
        result.warnings.append(f"{used} ({result.exposure_s:.1f} s) exceeds the good time intervals "
                               f"({result.gti_exposure_s:.1f} s): {per_gti[1]}")
        per = per_gti[0]
    elif not per:
        per = per_gti[0]
    result.rate = result.n_events / per if per else None
    if result.exposure_s is None and exposure_note:
        result.warnings.append(f"{exposure_note}, {per_gti[1] if per else 'no usable GTI: no rate'}")
    elif exposure_note:
        result.warnings.append(exposure_note)
    elif result.exposure_s is None:
        result.warnings.append(f"no EXPOSURE or LIVETIME: {per_gti[1]}" if per else "no EXPOSURE and no usable GTI: no rate")
    time_col = _column_name(hdu, "TIME")
    if time_col and result.n_events:
        result.time_span_s = _time_span(hdu, time_col, result.warnings)


def _gti_extensions(hdul) -> list[int]:
    return [index for index, h in enumerate(hdul[1:], 1) if not h.is_image and hdu_kind(h.header, True, True) == "gti"]


def _longest_good_time(hdul, chips: list[int], first: float) -> float:
    """The most good time of any GTI extension (``chips``, one per chip: the
    events' exposure is one chip's, not always the first's)."""
    longest = first
    for index in chips[1:]:
        hdu = hdul[index]
        start, stop = _column_name(hdu, "START"), _column_name(hdu, "STOP")
        if start and stop:
            try:
                longest = max(longest, _good_time(hdu, start, stop, "", []))
            except BadTimeCard:
                continue
    return longest


def _per_good_time(chips: list[int], header, good: float | None) -> tuple[float | None, str]:
    """The live time of the good intervals, and what a rate per it is: the
    GTI exposure times the live fraction the events' header gives (DTCOR,
    Chandra's; DEADC, OGIP's), else the GTI exposure itself (on time: a
    rate per it is low by the dead time); of the first GTI extension, which
    with more (one per chip) is one chip's and is said so."""
    if not good:
        return None, "no usable GTI: no rate"
    what = "rate per GTI exposure"
    for keyword in ("DTCOR", "DEADC"):
        value = header.get(keyword)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value <= 1:
            good, what = good * float(value), f"rate per GTI exposure x {keyword} {float(value):.6g} (live time)"
            break
    else:
        what += " (on time: no DTCOR or DEADC between 0 and 1, dead time not taken off)"
    if len(chips) > 1:
        what += f"; of the first of {len(chips)} GTI extensions (HDU {chips[0]}) only (one per chip in XMM's and Chandra's lists)"
    return good, what


def _time_span(hdu, column: str, notes: list[str]) -> float | None:
    """Seconds between the first and the last event: times that are not
    finite numbers are left out, with a note."""
    try:
        seconds = column_seconds(hdu, column)
    except BadTimeCard as bad:
        notes.append(str(bad))
        return None
    lows, highs, not_finite = [], [], 0
    for chunk in column_chunks(hdu, column):
        finite = chunk[np.isfinite(chunk)]
        not_finite += len(chunk) - len(finite)
        if len(finite):
            lows.append(float(np.min(finite)))
            highs.append(float(np.max(finite)))
    if not_finite:
        notes.append(f"{column} is not a finite number (NaN or infinite) in {_rows(not_finite)}: left out of the time span")
    return (max(highs) - min(lows)) * seconds if lows else None


def summarize_lightcurve(hdul, hdu, result: XraySummary) -> None:
    """Mean rate and fractional rms over the bins with a finite rate, each
    bin weighted by its exposure (FRACEXP x TIMEDEL where the table has
    them): a bin exposed for a millionth of its width must not dominate.
    Two passes over the columns, a chunk at a time."""
    result.exposure_s, exposure_note = _exposure(hdul, hdu)
    if exposure_note:  # the mean rate is of the bins, not of EXPOSURE
        result.warnings.append(exposure_note)
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
        keep = np.isfinite(rates) & np.isfinite(weights) & (weights > 0)
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
        _no_non_finite(result)
        result.warnings = list(dict.fromkeys(result.warnings))  # a bad card of several HDUs is told once
    return result


def _no_non_finite(result: XraySummary) -> None:
    """A number that is not finite is left empty, with a warning: PostgreSQL
    would store NaN (greater than every number in its ordering), SQLite NULL."""
    for name in ("counts", "exposure_s", "rate", "backscal", "gti_exposure_s", "time_span_s", "mean_rate", "frac_rms",
                 "mjd_start", "mjd_stop", "mjd_mid"):
        value = getattr(result, name)
        if value is not None and not math.isfinite(value):
            setattr(result, name, None)
            result.warnings.append(f"{name} is {value}, not a finite number: left empty")


def _summarize_kind(hdul, hdu, result: XraySummary) -> None:
    if result.kind == "spectrum":
        summarize_spectrum(hdul, hdu, result)
    elif result.kind == "events":
        summarize_events(hdul, hdu, result)
    elif result.kind == "lightcurve":
        summarize_lightcurve(hdul, hdu, result)
    elif result.kind in ("response", "arf"):
        summarize_matrix(hdu, result)
    else:
        result.exposure_s, note = _exposure(hdul, hdu)
        result.warnings.extend([note] if note else [])
        if result.kind == "gti":
            result.gti_exposure_s = gti_exposure(hdul, result.warnings)


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
            _summarize_kind(hdul, hdu, result)
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
    """Source rate minus the background rate scaled to the source, as OGIP
    (XSPEC, Sherpa) scale it: C_s/(t_s a_s) - C_b/(t_b a_b) * b_s/b_b in
    counts per second, with t = EXPOSURE, a = AREASCAL and b = BACKSCAL.
    None when a number is missing, or a scale or exposure is not positive."""
    rates = own_rate(source), own_rate(background)
    scales = source.get("backscal"), background.get("backscal")
    if None in rates or any(v is None or not math.isfinite(v) or v <= 0 for v in scales):
        return None
    return rates[0] - rates[1] * scales[0] / scales[1]


def own_rate(spectrum: dict) -> float | None:
    """The counts per second of a spectrum whose background is taken off
    already (HDUCLAS2 NET): C/(t a), its net rate."""
    values = [spectrum.get(name) for name in ("counts", "exposure_s", "areascal")]
    if any(v is None or not math.isfinite(v) for v in values) or any(v <= 0 for v in values[1:]):
        return None
    counts, time, area = values
    return counts / (time * area)
