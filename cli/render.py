"""Showing results: rich tables for people, whole rows for scripts.

In a terminal a table is drawn for reading: numbers rounded, and a command
may name the columns worth showing (``--columns`` gets the rest). When
stdout is a pipe or a file, a table is printed tab-separated, whole: every
column, numbers at full precision. In every format integers stay integers
and times are written in one ISO 8601 form (``2017-08-16T01:06:00``, UTC).
"""

from __future__ import annotations

import io
import json
import math
from datetime import date, datetime
from enum import Enum
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    import pandas as pd

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    ecsv = "ecsv"


def iso(value: datetime | date) -> str:
    """The one way obsarch writes a time: ISO 8601, no zone (times are UTC)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return value.isoformat()


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False


def exact(value) -> str:
    """A value written whole, for scripts: floats at full precision."""
    if _missing(value):
        return ""
    if isinstance(value, (datetime, date)):
        return iso(value)
    return str(value)


def readable(value) -> str:
    """A value rounded for reading in a terminal."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None, microsecond=0).isoformat()
    if isinstance(value, float) and not _missing(value):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.5f}".rstrip("0").rstrip(".")
    return exact(value)


_cell = readable  # the name older callers use


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with times as ISO text and integers kept integers."""
    import pandas as pd

    frame = frame.copy()
    for name in frame.columns:
        column = frame[name]
        first = column.dropna().iloc[0] if column.dtype == object and column.notna().any() else None
        if pd.api.types.is_datetime64_any_dtype(column) or isinstance(first, (datetime, date)):
            frame[name] = column.map(lambda v: None if _missing(v) else iso(pd.Timestamp(v).to_pydatetime()))
    return frame


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{str(k): (None if _missing(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def show_frame(frame: pd.DataFrame, fmt: Format = Format.table, title: str | None = None,
               brief: list[str] | None = None, columns: str | None = None) -> None:
    """Print a DataFrame in the chosen format.

    ``brief``: the columns a terminal table shows unless ``columns`` (a
    comma-separated list, or ``all``) says otherwise; pipes get every column.
    """
    frame = _choose(frame, columns)
    if fmt is Format.table and console.is_terminal:
        _rich_table(frame, title, brief if columns is None else None)
        return
    frame = _plain(frame)
    if fmt is Format.csv:
        typer.echo(frame.to_csv(index=False), nl=False)
    elif fmt is Format.json:
        typer.echo(json.dumps(_records(frame), indent=1, default=str))
    elif fmt is Format.ecsv:
        from astropy.table import Table as AstropyTable

        buffer = io.StringIO()
        AstropyTable.from_pandas(frame).write(buffer, format="ascii.ecsv")
        typer.echo(buffer.getvalue(), nl=False)
    else:
        _tab_separated(frame, title)


def _choose(frame: pd.DataFrame, columns: str | None) -> pd.DataFrame:
    if not columns or columns == "all":
        return frame
    names = [c.strip() for c in columns.split(",") if c.strip()]
    unknown = [n for n in names if n not in frame.columns]
    if unknown:
        from archive.exceptions import ObsarchError

        raise ObsarchError(f"no column {', '.join(unknown)}; the columns are {', '.join(map(str, frame.columns))}")
    return frame[names]


def _tab_separated(frame: pd.DataFrame, title: str | None) -> None:
    if title:
        typer.echo(f"# {title}")
    lines = ["\t".join(map(str, frame.columns))]
    lines += ["\t".join(exact(v).replace("\t", " ").replace("\n", " ") for v in row) for row in frame.itertuples(index=False)]
    typer.echo("\n".join(lines))


def _rich_table(frame: pd.DataFrame, title: str | None, brief: list[str] | None) -> None:
    from rich.table import Table

    hidden = [c for c in frame.columns if brief and c not in brief]
    shown = [c for c in frame.columns if c not in hidden]
    table = Table(title=title, show_lines=False)
    rows = [[readable(v) for v in row] for row in frame[shown].itertuples(index=False)]
    for i, name in enumerate(shown):
        short = all(len(row[i]) <= 24 for row in rows)  # numbers, times, names: never broken
        table.add_column(str(name), overflow="fold", no_wrap=short)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if hidden:
        err_console.print(f"not shown: {', '.join(map(str, hidden))} (--columns all, or name them)", markup=False)
