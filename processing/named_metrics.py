"""Named metrics: numbers a wrapped tool wrote (a pileup fraction) or a
person gave, stored per exposure and selectable as ``metric['name']``."""

from __future__ import annotations

import getpass
import json
import math
import re
from pathlib import Path

from sqlalchemy import Engine, insert, select

from archive.db import transaction, utcnow
from archive.exceptions import ObsarchError
from archive.models import NamedMetric
from archive.query import named, select_exposures

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class MetricsFileError(ObsarchError):
    """A metrics file a tool wrote that cannot be read as numbers."""


def metric_name(name: str) -> str:
    """A metric's name as stored: lower case, a letter then letters, digits, ``_.-``."""
    clean = name.strip().lower()
    if not _NAME.match(clean):
        raise ObsarchError(f"metric name {name!r}: use a letter, then letters, digits, '_', '.' or '-' (at most 64)")
    return clean


def _number(name: str, value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MetricsFileError(f"{where}: {name} = {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise MetricsFileError(f"{where}: {name} = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise MetricsFileError(f"{where}: {name} = {value!r} is not a finite number")
    return number


def parse_assignments(pairs: list[str], where: str = "metrics", once: bool = False) -> dict[str, float]:
    """``["pileup=0.12", "single_frac = 0.7"]`` -> {name: value}; the last of
    a name given twice (a tool's file appended to), or refused with ``once``
    (a person's command line)."""
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise MetricsFileError(f"{where}: {pair!r} is not name=value")
        name, _, value = pair.partition("=")
        if once and metric_name(name) in values:
            raise MetricsFileError(f"{where}: {metric_name(name)} is given twice")
        values[metric_name(name)] = _number(name.strip(), value.strip(), where)
    return values


def read_metrics_file(path: str | Path) -> dict[str, float]:
    """The numbers of a JSON object (``{"pileup": 0.12}``, flat) or of
    ``name=value`` lines (``#`` comments and blank lines allowed)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise MetricsFileError(f"{path}: the tool did not write it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MetricsFileError(f"{path}: cannot read: {exc}") from exc
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetricsFileError(f"{path}: not valid JSON: {exc}") from exc
        values = {metric_name(k): _number(k, v, str(path)) for k, v in document.items()}
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        values = parse_assignments(lines, str(path))
    if not values:
        raise MetricsFileError(f"{path}: no numbers in it")
    return values


def store(conn, exposure_ids: list[int], values: dict[str, float], *, source: str, run_id: int | None = None,
          who: str | None = None) -> int:
    """Add the values for every exposure (history is kept; the latest counts)."""
    now, who = utcnow(), who or getpass.getuser()
    rows = [{"exposure_id": e, "name": n, "value": v, "source": source, "run_id": run_id, "who": who, "created_at": now}
            for e in exposure_ids for n, v in values.items()]
    if rows:
        conn.execute(insert(NamedMetric), rows)
    return len(rows)


def set_by_person(engine: Engine, selection: str, values: dict[str, float], who: str | None = None) -> int:
    """Set named metrics of every exposure of ``selection``; returns how many exposures."""
    named(selection, "metrics set")
    with transaction(engine) as conn:
        ids = list(conn.execute(select_exposures(selection, engine.dialect.name)).scalars())
    if not ids:
        raise ObsarchError(f"no exposure matches {selection!r}")
    with transaction(engine, write=True) as conn:
        store(conn, ids, values, source="person", who=who)
    return len(ids)


def metrics_of(engine: Engine, exposure_id: int) -> list[dict]:
    """The current value of each named metric of an exposure."""
    with transaction(engine) as conn:
        rows = conn.execute(select(NamedMetric.__table__).where(NamedMetric.exposure_id == exposure_id).order_by(NamedMetric.id)).all()
        latest = {r.name: {"name": r.name, "value": r.value, "source": r.source, "run_id": r.run_id, "who": r.who,
                           "at": r.created_at} for r in rows}
    return sorted(latest.values(), key=lambda m: m["name"])
