"""Header cards -> the normalized columns of an exposure.

Which keywords feed which column, and how their values are spelled, is data
(``keywords.toml`` in this package, overridable under ``[keywords]`` in the
user's ``obsarch.toml``). What cannot be normalized stays ``None``: the raw
cards stay queryable with ``hdr['KEY']``.
"""

from __future__ import annotations

import functools
import json
import math
import re
import tomllib
import warnings
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from importlib.resources import files
from pathlib import PurePath

from archive.detectors import detectors_of_units
from archive.exceptions import ConfigError
from archive.headers import Card, HeaderUnit, normalize_keyword
from archive.xray_kinds import kind_of_units

MJD_EPOCH = datetime(1858, 11, 17)
COLUMNS = (
    "instrument", "telescope", "obsid", "object", "frame_type", "band", "exptime",
    "date_obs", "mjd", "night", "ra", "dec", "airmass", "readout_mode", "frame_number",
    "xbin", "ybin", "gain", "ccd_temp", "detector", "detector_shape", "n_detectors",
)  # fmt: skip
_XRAY_TELESCOPES = frozenset(
    ("XMM", "CHANDRA", "NUSTAR", "SWIFT", "XTE", "EROSITA", "SRG", "NICER", "ROSAT",
     "SUZAKU", "HITOMI", "XRISM", "INTEGRAL", "ASTROSAT", "EINSTEIN PROBE")
)  # fmt: skip
_XRAY_EXTNAMES = frozenset(("EVENTS", "SPECTRUM", "RATE", "GTI", "STDGTI"))
_TT_SCALES = frozenset(("TT", "TDB", "TAI", "TDT", "ET"))


@dataclass(frozen=True)
class KeywordMaps:
    sources: dict[str, list[str]]
    placeholders: frozenset[str]
    frame_types: dict[str, str]
    bands: dict[str, str]
    filename_pattern: re.Pattern | None


def load_maps(config: dict | None = None) -> KeywordMaps:
    """The default maps, updated by ``config['keywords']`` if given."""
    defaults = tomllib.loads(files("archive").joinpath("keywords.toml").read_text())
    user = (config or {}).get("keywords", {})
    try:
        sources = {**defaults["sources"], **user.get("sources", {})}
        frame_types = {k.lower(): v for k, v in {**defaults["frame_types"], **user.get("frame_types", {})}.items()}
        bands = {**defaults["bands"], **user.get("bands", {})}
        placeholders = user.get("placeholders", defaults["placeholders"])["values"]
        pattern = user.get("frame_number", {}).get(
            "filename_pattern", defaults["frame_number"]["filename_pattern"]
        )
        compiled = re.compile(pattern) if pattern else None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"[keywords] in obsarch.toml is not in the expected form: {exc}") from exc
    except re.error as exc:
        raise ConfigError(f"[keywords.frame_number] filename_pattern is not a regular expression: {exc}") from exc
    return KeywordMaps(
        sources={k: [normalize_keyword(x) for x in v] for k, v in sources.items()},
        placeholders=frozenset(p.upper() for p in placeholders),
        frame_types=frame_types,
        bands=bands,
        filename_pattern=compiled,
    )


class _Values:
    """The cards of a file by keyword: primary first, extensions fill the gaps
    (LCO and X-ray files keep their metadata in extension 1)."""

    def __init__(self, units: list[HeaderUnit], maps: KeywordMaps):
        merged: dict[str, Card] = {}
        for unit in reversed(units):  # the primary's cards are written last: they win
            merged.update(unit.values())
        self.cards = merged
        self.units = units
        self.maps = maps
        self.sources: dict[str, str] = {}
        self.utc_offset: timedelta | None = None
        # (column, the card as written, why): values read but not usable, told once the row is known
        self.problems: list[tuple[str, str, str]] = []
        self.untimed: list[str] = []  # date cards as written that give a day but no time of day, and no time card did

    def card(self, keyword: str) -> Card | None:
        card = self.cards.get(keyword)
        if card is None or card[2] is None:
            return None
        if card[4] in "sx" and card[2].strip().upper() in self.maps.placeholders:
            return None
        return card

    def hdu_of(self, keyword: str) -> int | None:
        """The HDU the card of ``keyword`` comes from (the first that has it)."""
        return next((unit.index for unit in self.units if keyword in unit.values()), None)

    def first(self, field: str) -> tuple[str, Card] | None:
        for keyword in self.maps.sources.get(field, ()):
            card = self.card(keyword)
            if card is not None:
                return keyword, card
        return None

    def text(self, field: str) -> str | None:
        found = self.first(field)
        if found is None:
            return None
        keyword, card = found
        self.note(field, keyword, card)
        return card[2].strip() or None

    def number(self, keyword: str) -> float | None:
        card = self.card(keyword)
        return card[3] if card is not None and card[4] in "if" else None

    def note(self, field: str, keyword: str, card: Card) -> None:
        self.sources[field] = f"{keyword}={card[2]!r}"

    def reading(self, column: str, keyword: str) -> float | None:
        """The number of a card, or None: an absent card says nothing, one
        whose value is no number is a problem of ``column``."""
        card = self.card(keyword)
        if card is None:
            return None
        if card[4] in "if":
            return card[3]
        self.reject(column, keyword, card, _NOT_A_NUMBER.get(card[4], "not a number"))
        return None

    def reject(self, column: str, keyword: str, card: Card, why: str) -> None:
        """A card read for ``column`` whose value cannot be its value. A card
        that is not valid FITS is told already (``invalid card kept as text``)."""
        if card[4] != "x":
            self.problems.append((column, f"{keyword}={card[2]!r}", why))


_NOT_A_NUMBER = {"s": "written as text, not as a number", "b": "T or F, not a number",
                 "c": "a complex number, not a real one"}


def normalize(units: list[HeaderUnit], filename: str, maps: KeywordMaps) -> dict:
    """The exposure columns of one file, plus ``sources`` (JSON text)."""
    values = _Values(units, maps)
    xray = _is_xray(units, values)
    row = {
        "instrument": values.text("instrument"),
        "telescope": values.text("telescope"),
        "obsid": _obsid(values),
        "object": values.text("object"),
        "readout_mode": values.text("readout_mode"),
        "frame_type": _frame_type(values, units),
        "band": _xray_filter_note(values) if xray and not _optical_monitor(values) else _band(values),
        "exptime": _exptime(values, xray, filename),
        "airmass": _airmass(values),
        "frame_number": _guarded(values, filename, "frame_number", lambda: _frame_number(values, None if xray else filename)),
    }
    row["date_obs"] = _guarded(values, filename, "date_obs", lambda: _date_obs(values))
    row["mjd"] = (row["date_obs"] - MJD_EPOCH).total_seconds() / 86400 if row["date_obs"] else None
    row["night"] = _guarded(values, filename, "night", lambda: _night(values, row["date_obs"], xray))
    row["ra"], row["dec"] = _pointing(values, units)
    row.update(_detector_columns(values, units))
    row["sources"] = json.dumps(values.sources, sort_keys=True)
    _tell_problems(values, row, filename)
    return row


class NormalizationWarning(UserWarning):
    """A header value that is kept raw (in its card) but not normalized."""


def _guarded(values: _Values, filename: str, field: str, compute):
    """``compute()``, or None with a warning naming the file and the card
    when the value is legal FITS but beyond what the column holds: the card
    keeps it raw. The rules tell such values themselves, in plain words
    (:func:`_tell_problems`); this catches what one of them did not foresee."""
    try:
        value = compute()
    except (ValueError, OverflowError, ArithmeticError) as exc:
        problem = str(exc)
    else:
        if not isinstance(value, int) or -(2**63) <= value < 2**63:
            return value
        problem = "does not fit in 64 bits"
    card = values.sources.get(field) or "its card"
    warnings.warn(f"{filename}: {field} left empty, {card} kept as written: {problem}", NormalizationWarning, stacklevel=2)
    return None


# Where a column's value came from, when a card read for it was not used (``sources`` keys).
_SOURCE_KEYS = {"xbin": ("xbinning", "binning"), "ybin": ("ybinning", "binning"),
                "xbin and ybin": ("binning", "xbinning"), "ra and dec": ("ra",), "night": ("night", "longitude")}


def _tell_problems(values: _Values, row: dict, filename: str) -> None:
    """One warning for each value read from a card that its column could
    not take, in the form of :func:`_guarded`'s: the column, the card as
    written, and why; the column is empty, or says where its value came
    from instead."""
    for column, written, why in dict.fromkeys(values.problems):
        if all(row[name] is None for name in column.split(" and ")):
            told = f"{column} left empty, {written} kept as written: {why}"
        else:
            source = next((values.sources[k] for k in _SOURCE_KEYS.get(column, (column,)) if k in values.sources),
                          "date_obs" if column == "night" else "another card")
            told = f"{column} from {source}, {written} not used: {why}"
        warnings.warn(f"{filename}: {told}", NormalizationWarning, stacklevel=3)


# The optical and UV telescopes of X-ray missions (Swift's UVOT, XMM's OM,
# AstroSat's UVIT): their FILTER is a photometric band (V, UVW1...).
_OPTICAL_MONITORS = frozenset(("UVOT", "UVOTA", "OM", "XMM-OM", "UVIT"))


def _optical_monitor(values: _Values) -> bool:
    instrument = values.card("INSTRUME")
    return bool(instrument and isinstance(instrument[2], str) and instrument[2].strip().upper() in _OPTICAL_MONITORS)


def _is_xray(units: list[HeaderUnit], values: _Values) -> bool:
    telescope = values.card("TELESCOP")
    if telescope and telescope[2].strip().upper() in _XRAY_TELESCOPES:
        return True
    return any((u.extname or "").upper() in _XRAY_EXTNAMES for u in units)


def _frame_type(values: _Values, units: list[HeaderUnit]) -> str | None:
    """An X-ray file's frame type is its kind's, by the rule of its ``xray_kind``
    (:func:`archive.xray_kinds.kind_of_units`): an event list is the
    observation itself (``science``); a spectrum, response, ARF, light curve,
    image, region or GTI file is a product of one (``other``), whatever its
    HDUCLAS1 spells. Other files: the first frame-type card the maps know."""
    kind = None if _optical_monitor(values) else kind_of_units(units)
    # HDUCLAS1 = 'IMAGE' alone makes no X-ray file: an optical frame may say it beside its IMAGETYP
    if kind is not None and (kind[0] != "image" or _is_xray(units, values)):
        return _xray_frame_type(values, units, *kind)
    first_seen = None
    for keyword in values.maps.sources["frame_type"]:
        card = values.card(keyword)
        if card is None:
            continue
        mapped = values.maps.frame_types.get(card[2].strip().lower())
        if mapped:
            values.note("frame_type", keyword, card)
            return mapped
        first_seen = first_seen or (keyword, card)
    if first_seen:
        values.note("frame_type", *first_seen)
        return "other"
    return None


def _xray_frame_type(values: _Values, units: list[HeaderUnit], kind: str, index: int) -> str:
    unit = next(u for u in units if u.index == index)
    card = next((unit.values()[k] for k in ("HDUCLAS1", "EXTNAME", "CONTENT") if k in unit.values()), None)
    said = f"{card[1]}={card[2]!r} in HDU {index}" if card else f"HDU {index}"
    if kind == "events":
        values.sources["frame_type"] = f"{said}: X-ray events"
        return "science"
    values.sources["frame_type"] = f"{said}: an X-ray {kind}, not an exposure (see xray_kind)"
    return "other"


def _band(values: _Values) -> str | None:
    bands = values.maps.bands
    names: list[str] = []
    for keyword in values.maps.sources["band"]:
        card = values.card(keyword)
        if card is None or card[4] != "s" or not card[2].strip():
            continue
        name = card[2].strip()
        if keyword == "FILTER":  # a combined name wins over its parts
            values.note("band", keyword, card)
            return bands.get(name, name)
        band = bands.get(name, name)
        if band != "clear" and band not in names:
            names.append(band)
            values.note("band", keyword, card)
    if not names:
        return None
    return "+".join(names)


def _xray_filter_note(values: _Values) -> None:
    """No band for an X-ray file: its FILTER (XMM's Thin, Medium, Thick) is an
    optical blocking filter, not a photometric band. The card stays queryable
    as ``xray_filter`` (and ``hdr['FILTER']``); ``sources`` says why the band is empty."""
    found = values.first("band")
    if found is not None:
        keyword, card = found
        values.sources["band"] = f"{keyword}={card[2]!r}: an X-ray filter, not a band (see xray_filter)"
    return None


def _exptime(values: _Values, xray: bool, filename: str = "") -> float | None:
    """Seconds. A card whose comment gives another time unit (DSS plates:
    ``EXPOSURE = 70 / Exposure time minutes``) is converted, with a warning;
    one whose comment names a unit that is not a time stays as written, with
    a warning."""
    # X-ray files: EXPTIME is the CCD frame time (e.g. 3.2 s), EXPOSURE the
    # exposure that matters.
    for keyword in values.maps.sources["exptime_xray" if xray else "exptime"]:
        number = values.reading("exptime", keyword)
        if number is None:
            continue
        card = values.cards[keyword]
        if number < 0:
            values.reject("exptime", keyword, card, "negative (an exposure time is 0 or more)")
            continue
        if xray and number == 0:  # a placeholder (eROSITA's merged light curve): no X-ray file is a bias
            if not any(column == "exptime" for column, _, _ in values.problems):
                values.reject("exptime", keyword, card, "0 in an X-ray file: no exposure time")
            continue
        values.note("exptime", keyword, card)
        seconds = _in_seconds(values, filename, keyword, card, number)
        if seconds is not None:
            return seconds
        del values.sources["exptime"]
        values.reject("exptime", keyword, card, "beyond the numbers a catalog holds once in seconds")
    return None


# Time units an exposure card's comment may give, in seconds: FITS puts a unit
# in brackets first ("[s] Exposure length"); cameras write words ("Exposure
# time minutes", "integration time in secs") or "(s)".
_SECONDS_PER = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("ms", "msec", "msecs", "millisec", "millisecs", "millisecond", "milliseconds"), 1e-3),
    **dict.fromkeys(("us", "usec", "microsec", "microsecond", "microseconds"), 1e-6),
    **dict.fromkeys(("ks", "ksec", "kilosecond", "kiloseconds"), 1e3),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}
UNIT_NAMES = {60.0: "minutes", 3600.0: "hours", 86400.0: "days", 1e-3: "milliseconds", 1e-6: "microseconds", 1e3: "kiloseconds"}
_BRACKETED_UNIT = re.compile(r"^\s*\[([^\]]*)\]")  # the FITS convention: the unit first, in brackets
_UNIT_IN_BRACKETS = re.compile(r"[\[(]\s*([A-Za-z]+)\s*[\])]")  # "[min]", "(s)" anywhere
# A unit written as a word: right after "in" or "time" ("Exposure time minutes", "integration time in secs"), in
# lower case (or a whole word in capitals: MINUTES). Anywhere else a word is prose ("time, HR mode", "time of day
# flat", "in MS mode", "min of amplifiers"). A lookahead, so that "time in minutes" finds both words.
_UNIT_AFTER_WORD = re.compile(r"\b(?:in|time)\s+(?=([A-Za-z]+)\b)", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)  # a camera writes the same comment on every frame
def comment_unit(comment: str | None) -> tuple[float | None, str | None]:
    """(seconds per unit, None) when the comment gives one time unit; (None,
    what is not understood) when it puts another unit first in brackets, or
    names several; (None, None) when it names none."""
    if not comment:
        return None, None
    bracketed = _BRACKETED_UNIT.match(comment)
    if bracketed and bracketed[1].strip():
        unit = bracketed[1].strip()
        factor = _SECONDS_PER.get(unit.lower())
        return (factor, None) if factor else (None, f"the unit [{unit}]")
    found = {_SECONDS_PER[w.lower()] for w in _UNIT_IN_BRACKETS.findall(comment) if w.lower() in _SECONDS_PER}
    found |= {_SECONDS_PER[w.lower()] for w in _UNIT_AFTER_WORD.findall(comment)
              if w.lower() in _SECONDS_PER and (w.islower() or (w.isupper() and len(w) >= 4))}
    if len(found) > 1:
        return None, "several time units"
    return (found.pop() if found else None), None


def _in_seconds(values: _Values, filename: str, keyword: str, card: Card, number: float) -> float | None:
    """Seconds, or None when the card's unit makes more than a float holds."""
    factor, problem = comment_unit(card[5])
    written = f"{keyword} = {card[2]} / {card[5]}"
    if problem:
        warnings.warn(f"{filename}: exptime: {written!r} names {problem}, not understood: kept as written ({number:g}, "
                      "taken as seconds)", NormalizationWarning, stacklevel=2)
        values.sources["exptime"] += f" (unit not understood: {problem})"
        return number
    if factor is None or factor == 1.0:
        return number
    seconds = number * factor
    if not math.isfinite(seconds):
        return None
    unit = UNIT_NAMES.get(factor, f"x{factor:g} s")
    warnings.warn(f"{filename}: exptime: {written!r} is in {unit}: converted to {seconds:g} s", NormalizationWarning,
                  stacklevel=2)
    values.sources["exptime"] += f" ({unit}, converted to seconds)"
    return seconds


_NOT_AN_AIRMASS = "not an airmass (1 to 100)"


def _airmass(values: _Values) -> float | None:
    found = None
    for keyword in values.maps.sources["airmass"]:
        number = values.reading("airmass", keyword)
        if number is not None and 1.0 <= number < 100:
            found = (keyword, number)
            break
        if number is not None:
            values.reject("airmass", keyword, values.cards[keyword], _NOT_AN_AIRMASS)
    if found is None:
        return None
    keyword, number = found
    values.note("airmass", keyword, values.cards[keyword])
    if keyword == "ESO TEL AIRM START":
        for end_keyword in values.maps.sources.get("airmass_end", ()):
            end = values.reading("airmass", end_keyword)
            if end is not None and not 1.0 <= end < 100:
                values.reject("airmass", end_keyword, values.cards[end_keyword], _NOT_AN_AIRMASS)
            if end is not None and 1.0 <= end < 100:
                values.sources["airmass"] = (f"mean of {keyword}={values.cards[keyword][2]!r} and "
                                             f"{end_keyword}={values.cards[end_keyword][2]!r}")
                return (number + end) / 2
    return number


def _obsid(values: _Values) -> str | None:
    found = values.first("obsid")
    if found is None:
        return None
    keyword, card = found
    if card[4] == "i" and card[3] < 0:  # ESO writes -2147483648 for "no OB"
        return None
    values.note("obsid", keyword, card)
    return card[2].strip() or None


def _frame_number(values: _Values, filename: str | None) -> int | None:
    for keyword in values.maps.sources["frame_number"]:
        number = values.reading("frame_number", keyword)
        if number is None:
            continue
        card = values.cards[keyword]
        if card[4] == "f":
            values.reject("frame_number", keyword, card, "not a whole number" if number != int(number)
                          else "written as a real number, not as an integer")
        elif not -(2**63) <= int(card[2]) < 2**63:
            values.reject("frame_number", keyword, card, "does not fit in 64 bits")
        else:
            values.note("frame_number", keyword, card)
            return int(card[2])
    pattern = values.maps.filename_pattern
    match = pattern.search(PurePath(filename).name) if pattern and filename else None
    if match:
        values.sources["frame_number"] = f"file name {match.group(0)!r}"
        return int(match.group(1))
    return None


# -- the detector -----------------------------------------------------------

_BINNING = re.compile(r"^\s*(\d+)\s*[ x,*]\s*(\d+)\s*$")
_KELVIN_ABOVE = 100.0  # no CCD runs above 100 C; a larger value is in kelvin


def _detector_columns(values: _Values, units: list[HeaderUnit]) -> dict:
    xbin, ybin = _binning(values)
    detectors = detectors_of_units(units)
    shapes = sorted({d.shape_text for d in detectors})
    if len(shapes) > 1:
        values.sources["detector_shape"] = f"detectors differ: {', '.join(shapes)}"
    # The detector's name only when the file has one detector: a file without
    # pixels (a MUSE product's header-only primary, X-ray events) names none
    # of its own; the chip it mentions is one it was made from.
    return {
        "xbin": xbin, "ybin": ybin, "gain": _gain(values, units, detectors), "ccd_temp": _ccd_temp(values),
        "detector": values.text("detector") if len(detectors) == 1 else None,
        "detector_shape": shapes[0] if len(shapes) == 1 else None,
        "n_detectors": len(detectors),
    }


def _binning(values: _Values) -> tuple[int | None, int | None]:
    x, y = _whole(values, "xbinning"), _whole(values, "ybinning")
    if x is not None and y is not None:
        return x, y
    for keyword in values.maps.sources.get("binning", ()):
        card = values.card(keyword)
        if card is None or card[4] != "s":  # a number (Chandra's BIN = 1) is no "2x2" binning: not read
            continue
        match = _BINNING.match(card[2])
        if match and int(match[1]) > 0 and int(match[2]) > 0:
            values.note("binning", keyword, card)
            return int(match[1]), int(match[2])
        values.reject("xbin and ybin", keyword, card, "not a binning (two whole numbers of 1 or more, such as '2 2')")
    return x, y


def _whole(values: _Values, field: str) -> int | None:
    column = field[0] + "bin"
    for keyword in values.maps.sources.get(field, ()):
        number = values.reading(column, keyword)
        if number is not None and number >= 1 and number == int(number):
            values.note(field, keyword, values.cards[keyword])
            return int(number)
        if number is not None:
            values.reject(column, keyword, values.cards[keyword], "not a binning (a whole number of 1 or more)")
    return None


_OUTPUT = re.compile(r"^(ESO DET OUT)(\d+)( .+)$")  # ESO's cards of one amplifier: ESO DET OUT3 CONAD


def _gain(values: _Values, units: list[HeaderUnit], detectors: list) -> float | None:
    """The file's gain (e-/ADU), only when it has one: every amplifier of a
    detector (ESO's OUT1..OUTn) and every detector of the file must agree.
    Where they differ (MUSE: 4 outputs on each of 24 chips) no single value
    is right, so the column stays empty and its source says why; each
    detector's own header still holds its gains."""
    gain = _positive(values, "gain")
    if gain is None:
        return None
    keyword = values.sources["gain"].split("=", 1)[0]
    output = _OUTPUT.match(keyword)
    by_hdu = {d.hdu_index: d.name for d in detectors} if len(detectors) > 1 else {}
    found: dict[str, float] = {}
    for unit in [u for u in units if u.index in by_hdu] or [None]:
        cards = values.cards if unit is None else unit.values()
        prefix = "" if unit is None else f"{by_hdu[unit.index]} "
        names = [(keyword, "")]
        if output:
            names, n = [], 1
            while (name := f"{output[1]}{n}{output[3]}") in cards:
                names.append((name, f"OUT{n}"))
                n += 1
        for name, label in names:
            card = cards.get(name)
            if card is not None and card[4] in "if" and card[3] > 0 and math.isfinite(card[3]):
                found[(prefix + label).strip() or name] = card[3]
    if len(set(found.values())) > 1:
        shown = ", ".join(f"{label} {number:g}" for label, number in list(found.items())[:6])
        more = f" and {len(found) - 6} more" if len(found) > 6 else ""
        values.sources["gain"] = f"gains differ ({keyword}): {shown}{more}"
        return None
    return gain


def _positive(values: _Values, field: str) -> float | None:
    for keyword in values.maps.sources.get(field, ()):
        number = values.reading(field, keyword)
        if number is not None and number > 0 and math.isfinite(number):
            values.note(field, keyword, values.cards[keyword])
            return number
        if number is not None:
            values.reject(field, keyword, values.cards[keyword], f"not a {field} (a {field} is above 0)")
    return None


def _ccd_temp(values: _Values) -> float | None:
    """Degrees Celsius; a value above 100 is read as kelvin (SAAO's STE3
    writes CCD-TEMP = 180.2), one below absolute zero is no temperature."""
    for keyword in values.maps.sources.get("ccd_temp", ()):
        number = values.reading("ccd_temp", keyword)
        if number is None:
            continue
        if not math.isfinite(number) or number < -273.15:
            values.reject("ccd_temp", keyword, values.cards[keyword], "below absolute zero (-273.15 C)")
            continue
        values.note("ccd_temp", keyword, values.cards[keyword])
        if number > _KELVIN_ABOVE:
            values.sources["ccd_temp"] += " (kelvin)"
            return round(number - 273.15, 6)
        return number
    return None


# -- time --------------------------------------------------------------------

_OLD_DATE = re.compile(r"^\s*(\d\d)/(\d\d)/(\d\d)\s*$")
_DATE_ONLY = re.compile(r"^\s*\d{4}-\d\d-\d\d\s*$")
_CLOCK = re.compile(r"^\s*(\d{1,2}):(\d\d):(\d\d(?:\.\d*)?)\s*$")
_YEAR = re.compile(r"^\s*([+-]?)(\d{4,})-\d\d-\d\d")  # FITS allows a sign and more than four digits
_BEYOND = "beyond the dates a catalog holds (years 1-9999)"


def parse_fits_date(text: str) -> datetime | date | None:
    """A FITS date string -> aware/naive datetime, or a date when it has no time.

    Handles ISO 8601 with an optional UTC offset (``-0700``), the old
    ``dd/mm/yy`` form (1900-1999 by the FITS standard) and date-only values.
    """
    return _read_date(text)[0]


def _read_date(text: str) -> tuple[datetime | date | None, str | None]:
    """(:func:`parse_fits_date` of ``text``, None), or (None, why it is no date)."""
    text = text.strip()
    old = _OLD_DATE.match(text)
    try:
        if old:
            day, month, year = (int(g) for g in old.groups())
            return date(1900 + year, month, day), None
        if _DATE_ONLY.match(text):
            return date.fromisoformat(text), None
        return datetime.fromisoformat(text.replace(" ", "T", 1)), None
    except ValueError as exc:
        return None, _why_not_a_date(text, str(exc))


def _why_not_a_date(text: str, reason: str) -> str:
    year = _YEAR.match(text)
    if (year and not 1 <= int(year[1] + year[2]) <= 9999) or reason.startswith("year "):
        return _BEYOND
    if reason.startswith("offset must be"):
        return "not a date (its UTC offset must be less than 24 hours)"
    if reason.startswith("Invalid isoformat"):  # Python's words for any other text
        return "not a date"
    return f"not a date ({_plain(reason)})"


def _plain(reason: str) -> str:
    """Python's ``month must be in 1..12`` -> ``month must be 1 to 12``."""
    return re.sub(r"must be in (\d+)\.\.(\d+)", r"must be \1 to \2", reason)


def _read_clock(text: str) -> tuple[timedelta | None, str | None]:
    """(the time of day ``text`` gives, None), or (None, why it gives none)."""
    match = _CLOCK.match(text)
    if not match:
        return None, "not a time of day"
    hours, minutes, seconds = int(match[1]), int(match[2]), float(match[3])
    if hours > 23:
        return None, "not a time of day (hour must be 0 to 23)"
    if minutes > 59:
        return None, "not a time of day (minute must be 0 to 59)"
    if seconds >= 61:
        return None, "not a time of day (second must be below 61)"
    return timedelta(hours=hours, minutes=minutes, seconds=seconds), None


def _date_obs(values: _Values) -> datetime | None:
    """Start of the exposure in UTC (naive), or None. The first card (or
    pair of cards) that gives a moment wins; one whose moment is no date a
    catalog holds is a problem, and the next is tried."""
    for moment, field, written, keyword in _moments(values):
        try:
            moment, offset, scale = _in_utc(values, moment, field, keyword)
        except (ValueError, OverflowError):  # past year 9999, or before year 1, once in UTC
            values.problems.append(("date_obs", written, f"{_BEYOND} once in UTC"))
            continue
        values.sources["date_obs"] = written
        if offset is not None:
            values.utc_offset = offset
        if scale is not None:
            values.sources["timesys"] = scale
        return moment
    # Told only when no card gave the moment: a date-only DATE-OBS beside an MJD-OBS is common and harmless.
    if values.untimed:
        *others, last = values.maps.sources["time"] or ["time"]
        cards = f"{', '.join(others)} or {last}" if others else last
        why = f"a date with no time of day (no {cards} card gives one), so mjd and night are not computed from it"
        values.problems.extend(("date_obs", written, why) for written in values.untimed)
    return None


def _moments(values: _Values):
    yield from _from_date_keywords(values)
    yield from _from_mjd(values)
    yield from _from_tstart(values)


def _in_utc(values: _Values, moment: datetime, field: str, keyword: str) -> tuple[datetime, timedelta | None, str | None]:
    """(``moment``, read from the card ``keyword``, in UTC, naive; its UTC
    offset; the time scale it was converted from, or why it was not).

    A TIMESYS holds for its own HDU: a primary DATE-OBS beside none is UTC,
    as FITS says, though the extensions' event times are TT (XMM). A date
    that is TT by its HDU's TIMESYS stays UTC where the header says so
    itself: its comment names UTC (eROSITA's 'Start Time (UTC) of
    exposure'), or it is the TSTART of the same file in UTC to a few seconds
    and not in TT (Swift's DATE-OBS, 68 s from TSTART in TT)."""
    offset = None
    if moment.tzinfo is not None:
        offset = moment.utcoffset()
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    scale = values.card("TIMESYS")
    if not (scale and scale[4] == "s" and scale[2].strip().upper() in _TT_SCALES and field != "mjd-utc"
            and values.hdu_of("TIMESYS") == values.hdu_of(keyword)):
        return moment, offset, None
    if field == "date" and re.search(r"\bUTC\b", values.cards[keyword][5] or ""):
        return moment, offset, f"UTC, as the comment of {keyword} says (TIMESYS {scale[2].strip()} not applied)"
    converted = _to_utc(moment, scale[2].strip().lower())
    if field == "date" and _is_tstart_in_utc(values, moment, converted):
        return moment, offset, f"UTC, as TSTART in UTC says (TIMESYS {scale[2].strip()} not applied)"
    return converted, offset, scale[2].strip()


def _is_tstart_in_utc(values: _Values, as_utc: datetime, as_tt: datetime, within: timedelta = timedelta(seconds=5)) -> bool:
    """Whether a date read as UTC (``as_utc``) is the file's TSTART in UTC,
    where read as TT (``as_tt``, converted) it is not."""
    for start, _, _, keyword in _from_tstart(values):
        start, _, _ = _in_utc(values, start, "tstart", keyword)
        return abs(as_utc - start) <= within < abs(as_tt - start)
    return False


def _from_date_keywords(values: _Values):
    """(moment, "date", its cards as written) of each date card, in order."""
    for keyword in values.maps.sources["date"]:
        card = values.card(keyword)
        if card is None:
            continue
        if card[4] != "s":
            values.reject("date_obs", keyword, card, "not a date (a date is written as text)")
            continue
        parsed, why = _read_date(card[2])
        if isinstance(parsed, datetime):
            yield parsed, "date", f"{keyword}={card[2]!r}", keyword
        elif isinstance(parsed, date):
            timed = False
            for time_keyword in values.maps.sources["time"]:
                time_card = values.card(time_keyword)
                if time_card is None or time_card[4] != "s":  # MUSE's UT is seconds, not a clock
                    continue
                timed = True
                offset, why = _read_clock(time_card[2])
                if offset is None:
                    values.reject("date_obs", time_keyword, time_card, why)
                    continue
                written = f"{keyword}={card[2]!r} + {time_keyword}={time_card[2]!r}"
                try:
                    moment = datetime.combine(parsed, datetime.min.time()) + offset
                except OverflowError:  # 9999-12-31 + 23:59:60.5
                    values.problems.append(("date_obs", written, _BEYOND))
                    continue
                yield moment, "date", written, keyword
            if not timed:
                values.untimed.append(f"{keyword}={card[2]!r}")
        else:
            values.reject("date_obs", keyword, card, why)


def _from_mjd(values: _Values):
    for keyword in values.maps.sources["mjd"]:
        number = values.reading("date_obs", keyword)
        if number is None or number <= 0:
            continue
        try:
            moment = MJD_EPOCH + timedelta(days=number)
        except (OverflowError, ValueError):
            values.reject("date_obs", keyword, values.cards[keyword], _BEYOND)
            continue
        # A whole-number MJD-OBS (SAAO) is the day, not the time: not used.
        if number != int(number):
            yield moment, "mjd", f"{keyword}={values.cards[keyword][2]!r}", keyword


def _from_tstart(values: _Values):
    tstart = values.number("TSTART")
    if tstart is None:
        return
    mjdref = values.number("MJDREF")
    if mjdref is None:
        integer, fraction = values.number("MJDREFI"), values.number("MJDREFF")
        if integer is None:
            return
        mjdref = integer + (fraction or 0.0)
    if mjdref <= 0:
        return
    timezero = values.number("TIMEZERO") or 0.0
    written = f"TSTART={tstart!r} MJDREF={mjdref!r}"
    try:
        moment = MJD_EPOCH + timedelta(days=mjdref) + timedelta(seconds=tstart + timezero)
    except (OverflowError, ValueError):
        values.problems.append(("date_obs", written, _BEYOND))
        return
    yield moment, "tstart", written, "TSTART"


def _to_utc(moment: datetime, scale: str) -> datetime:
    from astropy.time import Time

    converted = Time(moment, scale="tt" if scale in ("tdt", "et") else scale).utc
    return converted.to_datetime()


def _night(values: _Values, date_obs: datetime | None, space: bool = False) -> str | None:
    """The observing night: the local date of the evening the night began
    (for an X-ray observatory in space, the UTC date)."""
    found = values.first("night")
    if found:
        keyword, card = found
        text = card[2].strip().replace("-", "")
        why = "not a date (a night is written YYYY-MM-DD or YYYYMMDD)"
        if len(text) == 8 and text.isdigit():
            try:
                date(int(text[:4]), int(text[4:6]), int(text[6:]))
            except ValueError as exc:
                why = _BEYOND if str(exc).startswith("year ") else f"not a date ({_plain(str(exc))})"
            else:
                values.note("night", keyword, card)
                return f"{text[:4]}-{text[4:6]}-{text[6:]}"
        values.reject("night", keyword, card, why)
    if date_obs is None:
        return None
    if space:
        return date_obs.date().isoformat()
    longitude = _longitude(values)
    if longitude is not None:
        shift = timedelta(hours=longitude / 15.0)
    elif values.utc_offset is not None:
        shift = values.utc_offset
    else:
        values.sources["night"] = "UTC date of the start minus 12 h (no site longitude)"
        shift = timedelta(0)
    try:  # one step: 9999-12-31T23:00 at a site east of Greenwich has a night, though its local time has no date
        return (date_obs + (shift - timedelta(hours=12))).date().isoformat()
    except OverflowError:  # 0001-01-01T03:00 UTC: its night began in year 0
        values.sources.pop("night", None)
        values.problems.append(("night", values.sources.get("date_obs", "its date"), f"its night is {_BEYOND}"))
        return None


def _longitude(values: _Values) -> float | None:
    for keyword in values.maps.sources.get("longitude", ()):
        card = values.card(keyword)
        if card is None:
            continue
        degrees = card[3] if card[4] in "if" else _sexagesimal(card[2], 1.0) if card[4] == "s" else None
        if degrees is not None and -360 <= degrees <= 360:
            values.note("longitude", keyword, card)
            return _east_of_greenwich(degrees)
        values.reject("night", keyword, card, "not a longitude (-360 to 360 degrees)")
    x, y = values.number("OBSGEO-X"), values.number("OBSGEO-Y")
    if x is not None and y is not None and (x or y):
        values.sources["longitude"] = "OBSGEO-X/Y"
        return math.degrees(math.atan2(y, x))
    return None


def _east_of_greenwich(degrees: float) -> float:
    """An east-positive longitude in (-180, 180]: a site written in the 0-360
    convention (Cerro Pachon as 289.27) is 24 h of local time away from the
    same site written as -70.73, and its night was a day late."""
    return 180.0 - (180.0 - degrees) % 360.0


# -- pointing ----------------------------------------------------------------


def _sexagesimal(text: str, scale: float) -> float | None:
    """``'-00:55:31'`` or ``'20 57 04.40'`` -> degrees (``scale`` 15 for hours)."""
    text = text.strip()
    parts = text.replace(":", " ").split()
    if not parts or len(parts) > 3:
        return None
    try:
        numbers = [abs(float(p)) for p in parts]
    except ValueError:
        return None
    if len(numbers) == 1:  # a plain number written as a string: degrees
        return float(parts[0])
    value = sum(n / 60**i for i, n in enumerate(numbers))
    return -value * scale if text.startswith("-") else value * scale


def _angle(card: Card, hours: bool) -> float | None:
    if card[4] in "if":
        return card[3]
    if card[4] != "s":
        return None
    text = card[2].strip()
    sexagesimal = ":" in text or " " in text
    return _sexagesimal(text, 15.0 if hours and sexagesimal else 1.0)


def _pointing(values: _Values, units: list[HeaderUnit]) -> tuple[float | None, float | None]:
    for ra_key, dec_key in zip(values.maps.sources["ra"], values.maps.sources["dec"]):
        ra_card, dec_card = values.card(ra_key), values.card(dec_key)
        if ra_card is None or dec_card is None:
            continue
        ra, dec = _angle(ra_card, hours=True), _angle(dec_card, hours=False)
        if ra is not None and dec is not None and 0 <= ra < 360 and -90 <= dec <= 90:
            values.note("ra", ra_key, ra_card)
            values.note("dec", dec_key, dec_card)
            return ra, dec
        if ra is None or not 0 <= ra < 360:
            values.reject("ra and dec", ra_key, ra_card, "not a right ascension (0 to 360 degrees, or 0 to 24 hours)")
        if dec is None or not -90 <= dec <= 90:
            values.reject("ra and dec", dec_key, dec_card, "not a declination (-90 to 90 degrees)")
    return _pointing_from_wcs(values, units)


def _pointing_from_wcs(values: _Values, units: list[HeaderUnit]) -> tuple[float | None, float | None]:
    """The sky position of the image centre from a celestial WCS, if any."""
    for unit in units:
        cards = unit.values()
        ctype1, ctype2 = cards.get("CTYPE1"), cards.get("CTYPE2")
        if not (ctype1 and ctype2 and (ctype1[2] or "").startswith("RA") and (ctype2[2] or "").startswith("DEC")):
            continue
        try:
            centre = _wcs_centre(unit)
        except Exception:  # any WCS astropy cannot build: no pointing from it
            continue
        if centre is not None:
            values.sources["ra"] = values.sources["dec"] = f"WCS of HDU {unit.index}"
            return centre
    return None, None


def _wcs_centre(unit: HeaderUnit) -> tuple[float, float] | None:
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    header = fits.Header()
    for _, keyword, text, number, vtype, _ in unit.cards:
        if vtype in "if":
            header[keyword] = number if vtype == "f" else int(text)
        elif vtype == "s" and len(keyword) <= 8:
            header[keyword] = text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    shape = [int(n) for n in (unit.shape or "").split("x") if n]
    ny, nx = shape[-2:] if len(shape) >= 2 else (1, 1)
    ra, dec = wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
    if not (math.isfinite(ra) and math.isfinite(dec)):
        return None
    return float(ra) % 360.0, float(dec)
