"""Catalog commands: ingest, query, show, summary, errors, sql."""

from __future__ import annotations

import re
from typing import Annotated, Optional

import typer

from archive.formats import counted, typed_rows
from cli.app import (
    DEFAULT_TIMEOUT_S,
    STATE,
    ByIdOption,
    ExecutorOption,
    FormatOption,
    RefArg,
    SchedulerOption,
    TimeoutOption,
    WorkersOption,
    command,
    fail,
    load_config,
    open_catalog,
    progress,
)
from cli.render import Format, console, err_console, exposures_shown, readable, show_rows, unique_columns


@command(panel="catalog")
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Directories or files to scan.")],  # str: Path("") would be "."
    workers: WorkersOption = None,
    executor: ExecutorOption = "pool",
    scheduler: SchedulerOption = None,
) -> None:
    """Scan directories into the catalog: new and changed files are read,
    vanished ones marked missing, unchanged ones only stat'ed.

    With --executor dask the headers are read on the workers of a dask
    cluster (sharing the file system, same paths) and this process writes.

    Example: obsarch ingest ngc3293 xmm
    """
    from archive import prescan

    ahead = prescan.start(paths)  # the tree is read and stat'ed while SQLAlchemy loads
    try:
        catalog = open_catalog()
        config = load_config()
    except BaseException:
        if ahead is not None:
            ahead.stop()  # ingest stops it from here on
        raise
    with progress("reading headers") as on_progress:
        summary = catalog.ingest(
            paths, config=config, workers=workers, executor=executor, scheduler=scheduler, progress=on_progress,
            ahead=ahead,
        )
    console.print(
        f"ingest run {summary.run_id}: {summary.new} new, {summary.changed} changed, "
        f"{summary.unchanged} unchanged, {summary.missing} missing, {summary.failed} failed "
        f"({summary.seconds:.2f} s)"
        + (f"; {counted(summary.ignored, 'entry', 'entries')} without a FITS name ignored" if summary.ignored else "")
    )
    if not (summary.new or summary.changed or summary.unchanged or summary.missing or summary.failed):
        from archive.ingest import FITS_SUFFIXES

        err_console.print(f"note: no FITS file in {', '.join(map(str, paths))} (names ending {' '.join(FITS_SUFFIXES)}, "
                          "each also with .gz; links to directories are not followed)", soft_wrap=True, markup=False)
    for note in summary.notes:
        err_console.print(f"note: {note}", soft_wrap=True, markup=False)
    for path, reason in summary.errors[:20]:
        err_console.print(f"  {path}: {reason}", soft_wrap=True, markup=False)
    if len(summary.errors) > 20:
        err_console.print(f"  ... and {len(summary.errors) - 20} more: see `obsarch errors`")
    from cli.xray import after_ingest

    unsummarized = after_ingest(catalog.engine, summary)
    if summary.failed:
        files = counted(summary.failed, "file")
        if summary.new + summary.changed + summary.unchanged == 0:  # nothing else to store: an error, not partial
            err_console.print(f"{files} failed and no other file was found; see `obsarch errors`", markup=False)
            raise typer.Exit(1)
        if summary.new + summary.changed:
            err_console.print(f"{files} failed, the others were stored; see `obsarch errors`", markup=False)
        else:  # a re-scan whose only news are failures stored none
            kept = "the unchanged file stays" if summary.unchanged == 1 else f"the {summary.unchanged} unchanged files stay"
            err_console.print(f"{files} failed and no file was stored; {kept} as stored; see `obsarch errors`", markup=False)
        raise typer.Exit(3)
    if unsummarized:  # stored, but their counts and rates are missing: partial
        raise typer.Exit(3)


@command(panel="catalog")
def query(
    selection: Annotated[Optional[str], typer.Argument(help="A selection, e.g. \"band == 'V' and exptime > 30\".")] = None,
    columns: Annotated[Optional[str], typer.Option(help="Comma-separated names or hdr['KEY'].")] = None,
    sort: Annotated[Optional[str], typer.Option(help="Comma-separated names; -name for descending.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="At most this many rows.", min=0, max=2**63 - 1)] = None,
    fmt: FormatOption = Format.table,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
) -> None:
    """List the exposures a selection matches.

    Example: obsarch query "band == 'V' and frame_type == 'science' and exptime >= 60" --columns frame_number,date_obs,exptime,path
    """
    catalog = open_catalog()
    # one row more than the limit: to say whether more match, without counting them all
    asked = None if limit is None else min(limit + 1, 2**63 - 1)
    names, rows = catalog.rows(selection, columns=columns, sort=sort, limit=asked, timeout_s=timeout or None)
    more = limit is not None and len(rows) > limit
    rows = rows[:limit] if more else rows
    show_rows(names, rows, fmt, named=columns is not None and columns.strip() != "all")
    if fmt is Format.table:
        err_console.print(exposures_shown(len(rows), limit, more), markup=False)
    elif more:  # stdout is data: the note goes beside it
        err_console.print(f"note: the first {limit} exposures: more match", markup=False)
    # a typo should not pass for an empty answer, nor for a header column empty in every row
    unfilled = [name for i, name in enumerate(names) if name.startswith("hdr[") and rows and all(r[i] is None for r in rows)]
    if not rows and selection or unfilled:
        for hint in catalog.hints(selection if not rows else None, columns, unfilled):
            err_console.print(f"note: {hint}", markup=False)


_PLAIN_SOURCE = re.compile(r"[^=]+=(['\"]).*\1")  # KEYWORD='value': where a value came from, no reason


@command(panel="catalog")
def show(
    ref: RefArg,
    by_id: ByIdOption = False,
    hdu: Annotated[Optional[int], typer.Option(help="Only this HDU.")] = None,
) -> None:
    """Show every HDU's header of one exposure, as stored, and its normalized values.

    Example: obsarch show 3852
    """
    if by_id and not (ref.isascii() and ref.isdigit()):
        fail(f"--id {ref}: an exposure id is a whole number, such as 3852", code=2)
    catalog = open_catalog()
    exposure_id = catalog.resolve(ref, by_id=by_id)
    row = catalog.exposure(exposure_id)
    units = catalog.headers(exposure_id)
    if hdu is not None and hdu not in {unit["index"] for unit in units}:  # checked first: a usage error prints nothing else
        fail(f"--hdu {hdu}: {row['path']} has {_hdus(units)}", code=2)
    # values from files never as markup: a file named a[red]b.fits was shown as ab.fits
    console.print(f"{row['path']}  (exposure {exposure_id}, {row['status']})", style="bold", markup=False, soft_wrap=True)
    sources = row.pop("sources")
    console.print("  ".join(f"{k}={readable(v)}" for k, v in row.items() if k not in ("path", "id", "status") and readable(v)),
                  markup=False, soft_wrap=True)
    # A value the rules found but could not trust stays empty; its source says why.
    for name, why in sources.items():
        if name in row and not readable(row[name]) and not _PLAIN_SOURCE.fullmatch(why):
            console.print(f"{name} left empty: {why}", markup=False, soft_wrap=True)
    for unit in units:
        if hdu is not None and unit["index"] != hdu:
            continue
        console.print(f"\nHDU {unit['index']} {unit['extname'] or ''} {unit['type']} {unit['shape'] or ''}",
                      style="bold", markup=False, soft_wrap=True)
        for keyword, text, vtype, comment in unit["cards"]:
            value = "" if text is None else f"'{text}'" if vtype == "s" else text
            line = f"{keyword:<8} {value}" if vtype == "C" else f"{keyword:<8} = {value}"
            console.print(line + (f" / {comment}" if comment else ""), markup=False, soft_wrap=True)
    from cli.xray import show_xray

    show_xray(catalog, exposure_id)


def _hdus(units: list[dict]) -> str:
    """``HDUs 0-2``, ``HDU 0``: the HDU numbers a file has, for --hdu's message."""
    indices = sorted(unit["index"] for unit in units)
    if not indices:
        return "no HDU stored"
    if len(indices) == 1:
        return f"HDU {indices[0]}"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"HDUs {indices[0]}-{indices[-1]}"
    return f"HDUs {', '.join(map(str, indices))}"


@command(panel="catalog")
def summary() -> None:
    """Counts of raw exposures per instrument, night, frame type and band, and
    of files per status. Products of steps (masters, calibrated frames, stacks)
    are left out and counted in a line on stderr; `obsarch products` lists them,
    and `query` and `sql` count both.

    Example: obsarch summary
    """
    from collections import Counter

    from archive.query import is_null

    catalog = open_catalog()
    names, rows = catalog.rows(is_null("product", negate=True), columns="product")
    kinds = Counter(kind for kind, in rows)
    left_out = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    # on stderr, as query's count: piped, stdout stays the tables; said only when something was left out
    if rows:
        err_console.print(f"raw exposures only; {len(rows)} product{'' if len(rows) == 1 else 's'} left out "
                          f"({left_out}): see `obsarch products`", markup=False, soft_wrap=True)
    for name, (names, rows) in catalog.summary_rows().items():
        show_rows(names, typed_rows(rows, names), Format.table,
                  title="files per status" if name == "status" else f"raw exposures per {name}")


@command(panel="catalog")
def errors(fmt: FormatOption = Format.table) -> None:
    """Files that could not be read, or were read with invalid cards, and why.

    Example: obsarch errors --format csv
    """
    names, rows = open_catalog().error_rows()
    show_rows(names, typed_rows(rows, names), fmt)
    if fmt is Format.table:
        err_console.print(f"{counted(len(rows), 'file')} with problems")


SQL_MAX_ROWS = 100_000  # as archive.db.DEFAULT_MAX_ROWS, which this module does not import to start
SQL_MAX_MB = 100  # as archive.db.DEFAULT_MAX_MB
SQL_MAX_MB_CAP = 200  # ECSV holds a value in a numpy string of at most 2**31 bytes, 4 a character; bytes print as hex


def _megabytes(value: float) -> float:
    if not 0.001 <= value <= SQL_MAX_MB_CAP:  # NaN too
        raise typer.BadParameter(f"{value:g} is not a size from 0.001 to {SQL_MAX_MB_CAP} MB")
    return value


@command(panel="catalog")
def sql(
    statement: Annotated[str, typer.Argument(
        help="One SQL statement; writes are refused. One that begins with a dash and no space: after --, "
             "obsarch sql -- '--x...'.")],
    fmt: FormatOption = Format.table,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    max_rows: Annotated[int, typer.Option(
        "--max-rows", min=1, max=2**62,
        help=f"Stop after this many rows (default {SQL_MAX_ROWS}): they are shown, a line on stderr says more "
             "were left, and the exit status is 3. Page with LIMIT and OFFSET, or raise it.")] = SQL_MAX_ROWS,
    max_mb: Annotated[float, typer.Option(
        "--max-mb", callback=_megabytes,
        help=f"Stop where the rows' values would pass this many MB (default {SQL_MAX_MB}, at most {SQL_MAX_MB_CAP}; text "
             "counted in characters), as at --max-rows; a first row larger than this is refused.")] = SQL_MAX_MB,
) -> None:
    """Run one read-only SQL statement on the catalog.

    Rows are fetched in batches and at most --max-rows are kept, so a
    statement of a billion rows does not fill the memory.

    Example: obsarch sql "select band, count(*) from exposures group by band"
    """
    from archive import db

    if not statement.strip():
        fail("`obsarch sql` needs a statement, e.g. \"select band, count(*) from exposures group by band\"", code=2)
    open_catalog()  # refuses a missing or out-of-date catalog
    names, rows, more, too_big = db.run_read_only(STATE.db, statement, timeout_s=timeout or None, max_rows=max_rows, max_mb=max_mb)
    if too_big and not rows:
        fail(f"the first row is larger than {max_mb:g} MB, which `obsarch sql` does not show (--max-mb {max_mb:g}): "
             "select a part of it (substr, length) or raise --max-mb")
    # integers with NULLs stay integers, as in `obsarch query`; a name given twice is renamed first, in every format
    names = unique_columns(names)
    show_rows(names, typed_rows(rows, names), fmt)
    if too_big:
        err_console.print(f"stopped after {counted(len(rows), 'row')}: with the next, the rows would pass {max_mb:g} MB (--max-mb {max_mb:g}); "
                          "the statement returns more: page with LIMIT and OFFSET, or raise --max-mb", markup=False, soft_wrap=True)
        raise typer.Exit(3)
    if more:  # partial: the last line says so, and how to get the rest
        err_console.print(f"stopped after {counted(max_rows, 'row')} (--max-rows {max_rows}); the statement returns more: "
                          "page with LIMIT and OFFSET, or raise --max-rows", markup=False, soft_wrap=True)
        raise typer.Exit(3)
