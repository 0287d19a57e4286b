"""How values are written for scripts, in one place for the command line and
the web app: floats whole, integers as integers, times in one ISO 8601 form
(``2017-08-16T01:06:00``, UTC), missing values empty (CSV) or null (JSON).
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
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")  # pandas' missing values, without importing pandas


def iso(value: datetime | date) -> str:
    """The one way obsarch writes a time: ISO 8601, no zone (times are UTC)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return value.isoformat()


def exact(value) -> str:
    """A value written whole, for scripts: floats at full precision."""
    if missing(value):
        return ""
    if isinstance(value, (datetime, date)):
        return iso(value)
    return str(value)


def json_value(value):
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):  # a numpy scalar
        value = value.item()
    if missing(value):
        return None
    if isinstance(value, float) and math.isinf(value):  # JSON has no infinity: a string, as JavaScript writes it
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, (datetime, date)):
        return iso(value)
    return value if isinstance(value, (int, float, str, bool, list, dict)) else str(value)


def rows_to_csv(names: list[str], rows) -> str:
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    writer.writerows([exact(v) for v in row] for row in rows)
    return buffer.getvalue()


def rows_to_json(names: list[str], rows) -> str:
    return json.dumps([dict(zip(names, map(json_value, row))) for row in rows], indent=1, allow_nan=False)


def rounded(value: float) -> str:
    """A float as people read it in a table (the terminal's and the web's):
    5 decimals, trailing zeros dropped, 3 significant digits below 1e-3. So
    an MJD keeps its time of day (0.86 s) and RA/Dec their arcseconds (0.036")."""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.5f}".rstrip("0").rstrip(".")
