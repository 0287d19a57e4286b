"""How values are written for scripts, in one place for the command line and
the web app: floats whole, integers as integers, times in one ISO 8601 form
(``2017-08-16T01:06:00``, UTC), missing values (NULL) empty (CSV, a table) or
null (JSON). A float that is not a number is a value, not a missing one:
``nan`` (CSV, a table), the string ``"NaN"`` in JSON, which has no NaN (as
infinities are ``"Infinity"``, ``"-Infinity"``: JavaScript's names).
Every column is written: a name that repeats gets a suffix (:func:`unique_names`).
Pure Python: printing a few rows should not import pandas."""

from __future__ import annotations

import io
import json
import math
from datetime import date, datetime


def counted(n: int, thing: str, things: str | None = None) -> str:
    """``1 exposure``, ``26 exposures``, ``1 spectrum``, ``3 spectra``."""
    return f"{n} {thing if n == 1 else things or thing + 's'}"


def frame_label(frame_number, exposure_id) -> str:
    """``#3852`` for a frame number (``#0`` too), ``exposure 84`` for a frame
    without one: an exposure id is no frame number."""
    return f"exposure {exposure_id}" if missing(frame_number) else f"#{int(frame_number)}"


def missing(value) -> bool:
    """No value, or NaN: for reading a number (a frame number) that may be absent."""
    if isinstance(value, float):
        return math.isnan(value)
    return is_null(value)


def is_null(value) -> bool:
    """No value: None (SQL's NULL) or pandas' NA or NaT; a NaN is a value."""
    return value is None or type(value).__name__ in ("NAType", "NaTType")  # without importing pandas


def iso(value: datetime | date) -> str:
    """The one way obsarch writes a time: ISO 8601, no zone (times are UTC)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return value.isoformat()


def exact(value) -> str:
    """A value written whole, for scripts: floats at full precision, NULL
    empty, NaN ``nan``."""
    if is_null(value):
        return ""
    if isinstance(value, (datetime, date)):
        return iso(value)
    return str(value)


def json_value(value):
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):  # a numpy scalar
        value = value.item()
    if is_null(value):
        return None
    if isinstance(value, float) and not math.isfinite(value):  # JSON has no NaN nor infinity: a string, as JavaScript writes it
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, (datetime, date)):
        return iso(value)
    return value if isinstance(value, (int, float, str, bool, list, dict)) else str(value)


def unique_names(names: list[str]) -> list[str]:
    """Column names, each one that repeats an earlier one suffixed ``_2``,
    ``_3``, ... (the first free): JSON's objects and ECSV's tables hold one
    column of a name, and ``select 'a', 'b'`` names both ``?column?`` on
    PostgreSQL, so a repeated name kept the last column only, or failed."""
    taken, unique = set(names), []
    for name in names:
        if name in unique:
            n = 2
            while f"{name}_{n}" in taken:
                n += 1
            name = f"{name}_{n}"
            taken.add(name)
        unique.append(name)
    return unique


def rows_to_csv(names: list[str], rows) -> str:
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(unique_names(names))
    writer.writerows([exact(v) for v in row] for row in rows)
    return buffer.getvalue()


def rows_to_json(names: list[str], rows) -> str:
    names = unique_names(names)
    return json.dumps([dict(zip(names, map(json_value, row))) for row in rows], indent=1, allow_nan=False)


def rounded(value: float) -> str:
    """A float as people read it in a table (the terminal's and the web's):
    5 decimals, trailing zeros dropped, 3 significant digits below 1e-3. So
    an MJD keeps its time of day (0.86 s) and RA/Dec their arcseconds (0.036")."""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.5f}".rstrip("0").rstrip(".")
