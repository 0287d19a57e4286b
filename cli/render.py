"""Showing results: rich tables for people, csv/json/ecsv for scripts."""

from __future__ import annotations

import io
import math
from enum import Enum
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    ecsv = "ecsv"


def _cell(value) -> str:
    import pandas as pd

    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def show_frame(frame: "pd.DataFrame", fmt: Format = Format.table, title: str | None = None) -> None:
    """Print a DataFrame in the chosen format."""
    from archive.results import to_csv, to_json

    if fmt is Format.csv:
        typer.echo(to_csv(frame), nl=False)
    elif fmt is Format.json:
        typer.echo(to_json(frame))
    elif fmt is Format.ecsv:
        from astropy.table import Table as AstropyTable

        buffer = io.StringIO()
        AstropyTable.from_pandas(frame).write(buffer, format="ascii.ecsv")
        typer.echo(buffer.getvalue(), nl=False)
    else:
        table = Table(title=title, show_lines=False)
        for name in frame.columns:
            table.add_column(str(name), overflow="fold")
        for row in frame.itertuples(index=False):
            table.add_row(*(_cell(v) for v in row))
        console.print(table)
