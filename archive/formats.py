"""How values are written for scripts, in one place for the command line and
the web app: floats whole, integers as integers, times in one ISO 8601 form
(``2017-08-16T01:06:00``, UTC), missing values (NULL) empty (CSV, a table) or
null (JSON). A float that is not a number is a value, not a missing one:
``nan`` (CSV, a table), the string ``"NaN"`` in JSON, which has no NaN (as
infinities are ``"Infinity"``, ``"-Infinity"``: JavaScript's names).
What PostgreSQL gives as other Python objects is written as its text, the
same in every format: bytes in PostgreSQL's hex form (``\\xdeadbeef``), jsonb
and arrays as JSON (nested in JSON output), an interval as PostgreSQL writes
it (loaded as its text), a numeric whole (``123456789012345678901234567890``), a time, a uuid.
Every column is written: a name that repeats gets a suffix (:func:`unique_names`).
Pure Python: printing a few rows should not import pandas."""

from __future__ import annotations

import io
import itertools
import json
import math
from datetime import date, datetime
from decimal import Decimal


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
    empty, NaN ``nan``, other objects as their text (:func:`text`)."""
    if is_null(value):
        return ""
    if isinstance(value, (datetime, date)):
        return iso(value)
    return text(value)


def text(value) -> str:
    """The text of a value that no format has a type for: bytes (bytea, a
    SQLite blob) in PostgreSQL's hex form ``\\xdeadbeef``, since their own
    repr is Python's and they need not be UTF-8; jsonb or an array as JSON;
    anything else (a Decimal, whole; a time; a uuid) its str. (An interval
    comes as PostgreSQL's own text: archive.db loads it so.)"""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(json_value(value), ensure_ascii=False, allow_nan=False)
    return str(value)


def json_value(value):
    """A value as JSON holds it: numbers, strings, true/false, null, and
    lists and objects of them (jsonb, arrays); a time ISO 8601, NaN and
    infinities strings, anything else its text (:func:`text`)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):  # a numpy scalar
        value = value.item()
    if is_null(value):
        return None
    if isinstance(value, float) and not math.isfinite(value):  # JSON has no NaN nor infinity: a string, as JavaScript writes it
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, (datetime, date)):
        return iso(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value if isinstance(value, (int, float, str, bool)) else text(value)


def typed_rows(rows, columns) -> list[tuple]:
    """Rows from the database (tuples, or dicts by column name) as a listing
    writes them: what :func:`archive.results.output_rows` gives of
    :func:`archive.results.frame_of`, without importing pandas (a fourth of a
    short command's start-up). The one change a frame makes: a column of
    numbers that mixes integers and floats is floats."""
    columns = list(columns)
    rows = [tuple(r.get(c) for c in columns) if isinstance(r, dict) else tuple(r) for r in rows]
    mixed = {i for i in range(len(columns)) if _ints_and_floats([row[i] for row in rows])}
    if not mixed:
        return rows
    return [tuple(float(v) if i in mixed and v is not None else v for i, v in enumerate(row)) for row in rows]


def _ints_and_floats(values: list) -> bool:
    kinds = {type(v) for v in values if v is not None}
    return kinds == {int, float}


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


def ecsv_column(values: list) -> list:
    """A column's values as ECSV can hold them: ints, floats, bools, text,
    None. PostgreSQL's numeric (a Decimal), which ECSV has no type for, is
    ints when it has no fraction digits and fits int64 (a sum), floats when it
    has (an average), and text when a float64 would change an integer in it
    (beyond 2**53): exact. Times are ISO 8601, other objects :func:`text`."""
    present = [v for v in values if not is_null(v)]
    if present and all(isinstance(v, Decimal) for v in present):
        return _numeric(values, present)
    if any(isinstance(v, int) and not -(2**63) <= v < 2**63 for v in present):  # a header integer of 20 digits: exact, as text
        return [None if is_null(v) else str(v) for v in values]
    return [None if is_null(v) else v if isinstance(v, (bool, int, float, str)) else exact(v) for v in values]


def _numeric(values: list, present: list[Decimal]) -> list:
    whole = [v for v in present if v.is_finite() and v.as_tuple().exponent >= 0]
    if len(whole) == len(present) and all(-(2**63) <= v < 2**63 for v in whole):
        return [None if is_null(v) else int(v) for v in values]
    if any(abs(v) > 2**53 for v in whole):
        return [None if is_null(v) else str(v) for v in values]
    return [None if is_null(v) else float(v) for v in values]


def rows_to_csv(names: list[str], rows) -> str:
    import csv

    buffer = io.StringIO()
    # csv quotes only its own line terminator: a bare carriage return in a field would end the record
    # for csv.reader and RFC 4180 readers, so a row holding one has every field quoted
    plain = csv.writer(buffer, lineterminator="\n")
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for values in itertools.chain([unique_names(names)], ([exact(v) for v in row] for row in rows)):
        (quoted if any("\r" in v for v in values) else plain).writerow(values)
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
