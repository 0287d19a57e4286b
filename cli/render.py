"""Showing results: rich tables for people, whole rows for scripts.

In a terminal a table is drawn for reading: numbers rounded, and a command
may name the columns worth showing (``--columns`` gets the rest). When
stdout is a pipe or a file, a table is printed tab-separated, whole: every
column, numbers at full precision. In every format integers stay integers
and times are written in one ISO 8601 form (``2017-08-16T01:06:00``, UTC):
:mod:`archive.formats`, which the web app's downloads use too.

Values are written exactly to a pipe or a file, and shown escaped in a
terminal (:func:`shown`): the one rule for every command's output.
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import sys
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING

from archive.formats import ecsv_column, exact, rounded, rows_to_csv, rows_to_json, unique_names

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

class _LazyConsole:
    """A rich Console made on first use: importing rich.console is a fifth of
    a short command's start-up, and ``obsarch --version`` needs none."""

    def __init__(self, **options):
        self._options, self._console = options, None

    def unwrap(self) -> Console:
        """The Console itself (for rich objects that take one, like Progress)."""
        if self._console is None:
            from rich.console import Console

            class _Console(Console):
                def on_broken_pipe(self) -> None:
                    # rich would exit 1 here; the app treats a closed pipe
                    # once for every command (cli.app.Group)
                    self.quiet = True
                    raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

            self._console = _Console(**self._options)
        return self._console

    def __getattr__(self, name):
        return getattr(self.unwrap(), name)

    def _plain_stream(self):
        """The stream written to when it is no terminal (rich would draw
        nothing there), else None; a console already made answers itself."""
        if self._console is not None or "TTY_COMPATIBLE" in os.environ or "FORCE_COLOR" in os.environ:
            return None
        stream = sys.stderr if self._options.get("stderr") else sys.stdout
        isatty = getattr(stream, "isatty", None)
        return None if isatty is None or isatty() else stream

    @property
    def is_terminal(self) -> bool:
        return self._plain_stream() is None and self.unwrap().is_terminal

    def print(self, *objects, **options) -> None:
        """Text to a pipe or a file is written exactly, without importing
        rich (which drops a carriage return, expands tabs: a value shown
        would be another), unless it asks for markup to be rendered (a
        style is none there); text to a terminal is :func:`shown` first."""
        stream = self._plain_stream()
        text = objects[0] if len(objects) == 1 and isinstance(objects[0], str) else None
        if (stream is not None and text is not None and set(options) <= {"markup", "highlight", "soft_wrap", "style"}
                and options.get("soft_wrap", True) and not options.get("highlight")
                and not (options.get("markup") and "[" in text)):  # markup is off unless asked for
            stream.write(text + "\n")
            return
        if text is not None and self.is_terminal:
            objects = (shown(text),)
        self.unwrap().print(*objects, **options)


def reader_gone() -> bool:
    """Whether stdout or stderr is a pipe whose reader has gone away
    (``obsarch query | head``): a BrokenPipeError from anywhere else, a
    socket say, is a real error."""
    import select

    if not hasattr(select, "poll"):
        return True
    poll = select.poll()
    for fd in (1, 2):
        poll.register(fd, select.POLLOUT)
    return any(event & (select.POLLERR | select.POLLHUP) for _fd, event in poll.poll(0))


def silence_stdout() -> None:
    """Send the rest of stdout, buffered lines included, to /dev/null, so
    that the interpreter's last flush does not fail on a closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


# emoji off: rich made a file named a:smile:.fits a😄.fits; markup off: messages hold values (a group
# named [/x] raised rich's MarkupError, a file a[red]b.fits printed as ab.fits); style= makes bold
console: Console = _LazyConsole(highlight=False, soft_wrap=True, emoji=False, markup=False)
err_console: Console = _LazyConsole(stderr=True, highlight=False, soft_wrap=True, emoji=False, markup=False)

# C0 controls but tab and line feed, DEL, C1 controls (U+009B is a CSI to some terminals)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """Text as a terminal gets it: each control character but a tab and a
    line break written as its escape, ``\\x1b``. Sent raw, an escape
    sequence in a file name would recolour the terminal or worse; dropped
    (as click's echo and rich do), the value shown would be another.
    Pipes and files get the text exactly (:func:`write`)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def write(text: str) -> None:
    """Data (CSV, JSON, ECSV, a piped table, a tool's output) to stdout:
    exactly to a pipe or a file, :func:`shown` in a terminal. Not click's
    echo, which strips ANSI escape sequences from a pipe: a file named
    ``esc\\x1b[31mred.fits`` came out as ``escred.fits``, which does not exist."""
    sys.stdout.write(shown(text) if console.is_terminal else text)
    sys.stdout.flush()


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    ecsv = "ecsv"


def readable(value) -> str:
    """A value rounded for reading in a terminal."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None, microsecond=0).isoformat()
    if isinstance(value, float) and math.isfinite(value):
        return rounded(value)
    return exact(value)


_cell = readable  # the name older callers use


def show_frame(frame: pd.DataFrame, fmt: Format = Format.table, title: str | None = None,
               brief: list[str] | None = None, columns: str | None = None) -> None:
    """Print a DataFrame in the chosen format (see :func:`show_rows`)."""
    from archive.results import output_rows

    show_rows([str(c) for c in frame.columns], output_rows(frame), fmt, title, brief, columns)


def exposures_shown(shown: int, limit: int | None, more: bool) -> str:
    """``10 exposures``, or ``5 exposures (the first 5: more match)`` when a limit cut the list."""
    from archive.formats import counted

    if limit == 0:  # asked whether any matches
        return "none shown (--limit 0): some match" if more else "0 exposures: none matches"
    return counted(shown, "exposure") + (f" (the first {limit}: more match)" if more else "")


def show_rows(names: list[str], rows: list[tuple], fmt: Format = Format.table, title: str | None = None,
              brief: list[str] | None = None, columns: str | None = None, named: bool | None = None) -> None:
    """Print rows in the chosen format.

    ``brief``: the columns a terminal table shows unless ``columns`` (a
    comma-separated list, or ``all``) says otherwise; pipes get every column.
    ``named``: whether the person named these columns (a terminal table
    then folds long ones narrower before it leaves any out); None for a
    command without --columns.
    """
    names, rows = _choose(names, rows, columns)
    names = unique_columns(names)
    if fmt is Format.csv:
        write(rows_to_csv(names, rows))
    elif fmt is Format.json:
        write(rows_to_json(names, rows) + "\n")  # ASCII JSON: every control character but DEL escaped already
    elif fmt is Format.ecsv:
        _ecsv(names, rows)
    elif console.is_terminal:
        chose = bool(named) or bool(columns and columns != "all")
        how = ("pipe the output or use --format csv" if chose or (named is None and brief is None and columns is None)
               else "name columns with --columns, or pipe the output")
        _rich_table(names, rows, title, brief if columns is None else None, chose, how)
    else:
        _tab_separated(names, rows, title)


def unique_columns(names: list[str]) -> list[str]:
    """Column names made unique (:func:`archive.formats.unique_names`), in
    every format alike, and a note on stderr naming each renamed column."""
    unique = unique_names(names)
    renamed = [f"column {i} ({old}) as {new}" for i, (old, new) in enumerate(zip(names, unique), 1) if old != new]
    if renamed:
        err_console.print(f"note: repeated column names renamed: {', '.join(renamed)}", markup=False, soft_wrap=True)
    return unique


def _ecsv(names: list[str], rows: list[tuple]) -> None:
    from astropy.table import Table

    from archive.results import frame_of

    columns = [ecsv_column(list(values)) for values in zip(*rows)] if rows else [[] for _ in names]
    frame = frame_of(list(zip(*columns)), names)
    buffer = io.StringIO()
    Table.from_pandas(frame).write(buffer, format="ascii.ecsv")  # ecsv_column left no value ECSV cannot hold
    write(buffer.getvalue())


def _choose(names: list[str], rows: list[tuple], columns: str | None) -> tuple[list[str], list[tuple]]:
    if not columns or columns == "all":
        return names, rows
    chosen = [c.strip() for c in columns.split(",")]
    unknown = [n for n in chosen if n not in names]
    if unknown:  # a usage error (exit 2), as `obsarch query --columns` says of a name it cannot read
        from archive.exceptions import UsageError

        named = [n for n in unknown if n]
        said = ([f"no column {', '.join(named)}"] if named else []) + (["a name is empty"] if "" in unknown else [])
        raise UsageError(f"--columns {columns!r}: {'; '.join(said)}; the columns are {', '.join(names)}")
    where = [names.index(n) for n in chosen]
    return chosen, [tuple(row[i] for i in where) for row in rows]


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _tsv(text: str) -> str:
    return text.translate(_TSV_ESCAPES)


def _tab_separated(names: list[str], rows: list[tuple], title: str | None) -> None:
    lines = [f"# {title}"] if title else []
    lines += ["\t".join(_tsv(name) for name in names)]
    # escaped as PostgreSQL's COPY text: a tab or a newline in a value (a file name may hold one) is \t or \n,
    # a backslash \\, so every row is one line of as many fields, and the value can be read back exactly
    lines += ["\t".join(_tsv(exact(v)) for v in row) for row in rows]
    write("\n".join(lines) + "\n")


TABLE_CELL_CHARS = 2000  # a terminal table folds a long value into lines: 20 MB took 79 s and filled screens


def _within_reach(cell: str) -> str:
    """A terminal table's cell, cut after TABLE_CELL_CHARS with a mark that says so."""
    if len(cell) <= TABLE_CELL_CHARS:
        return cell
    return f"{cell[:TABLE_CELL_CHARS]}... (cut: {len(cell):,} characters; pipe or --format csv shows them all)"


def _rich_table(names: list[str], rows: list[tuple], title: str | None, brief: list[str] | None, named: bool = False,
                how: str = "name columns with --columns, or pipe the output") -> None:
    """A table drawn for reading: rounded numbers, short columns never broken
    nor cut, long ones folded; columns that do not fit the terminal are left
    out, from the right, and named on stderr. Columns the person ``named``
    may fold to 10 characters before one is left out (the hdr['OBJECT']
    asked for after a path was left out at 100 columns)."""
    from rich.table import Table
    from rich.text import Text

    kept = [i for i, name in enumerate(names) if not brief or name in brief]
    # Text, not str: rich would read a value's [red] as markup and :smile: as an emoji
    cells = {i: [Text(shown(_within_reach(readable(row[i])))) for row in rows] for i in kept}
    heads = {i: Text(shown(names[i])) for i in kept}
    widths = {i: max([len(heads[i])] + [len(c) for c in cells[i]]) for i in kept}
    # a long column folds, at least 20 wide; every named one may fold to 10 (rich narrows the widest first)
    least = {i: min(widths[i], 10) if named else widths[i] if widths[i] <= 26 else 20 for i in kept}
    while len(kept) > 1 and sum(least[i] + 3 for i in kept) + 1 > console.width:
        kept.pop()
    table = Table(title=title, show_lines=False)
    for i in kept:
        if widths[i] <= least[i] or not named and widths[i] <= 26:
            table.add_column(heads[i], no_wrap=True, min_width=widths[i])
        else:
            table.add_column(heads[i], overflow="fold", min_width=least[i])
    for r in range(len(rows)):
        table.add_row(*(cells[i][r] for i in kept))
    console.print(table)
    hidden = [name for i, name in enumerate(names) if i not in kept]
    if hidden:
        err_console.print(f"not shown: {', '.join(hidden)} (the terminal is {console.width} wide: {how})", markup=False)
