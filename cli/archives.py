"""Archives: search, fetch, downloads, sync."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archive.formats import counted, typed_rows
from cli.app import FormatOption, archive_app, command, load_config, open_catalog
from cli.render import Format, console, err_console, show_frame, show_rows


def _night(value: str | None) -> str | None:
    """A night as the archives take it, checked here: a date that is no date
    (2017-02-30) is a usage error, not a query sent to an archive."""
    from datetime import date

    if value is not None:
        try:
            date.fromisoformat(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is no date written YYYY-MM-DD") from None
    return value


def _seconds(value: float) -> float:
    if not 0 < value < float("inf"):
        raise typer.BadParameter(f"{value:g}: give a number of seconds above 0")
    return value


def _bytes_bar():
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    # only on a terminal (as cli.app.progress_bar): elsewhere a stopped bar left a blank line before the message
    return Progress(TextColumn("downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err_console.unwrap(),
                    transient=True, disable=not err_console.is_terminal)


@command(archive_app, "search")
def archive_search(
    archive: Annotated[str, typer.Argument(help="heasarc, eso or mast.")],
    mission: Annotated[str, typer.Option(help="xmm, nustar, chandra (heasarc); an instrument such as muse (eso); a collection such as hst (mast).")],
    target: Annotated[str, typer.Option(help="A name (resolved by Sesame) or coordinates.")],
    radius: Annotated[float, typer.Option(help="Search radius, arcmin (heasarc).")] = 10.0,
    night: Annotated[Optional[str], typer.Option(help="Night, YYYY-MM-DD (eso).", callback=_night)] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """List an archive's observations of a target and record them as known
    observations (the search is kept for `obsarch sync`).

    Example: obsarch archive search heasarc --mission xmm --target "NGC 5506"
    """
    import pandas as pd

    from archive import fetch

    rows, new = fetch.search(open_catalog().engine, archive, mission, target, radius_arcmin=radius, night=night,
                             config=load_config())
    show_frame(pd.DataFrame(rows, columns=["mission", "obsid", "target", "ra", "dec", "t_start", "exptime", "public_date"]), fmt)
    err_console.print(f"{len(rows)} observations, {new} new")


@command(name="fetch", panel="archives")
def fetch_command(
    mission: Annotated[Optional[str], typer.Argument(help="xmm, nustar, chandra, eso or mast (none: run the queue).")] = None,
    obsids: Annotated[Optional[list[str]], typer.Argument(help="Observation ids (HEASARC missions).")] = None,
    instrument: Annotated[Optional[str], typer.Option(help="ESO instrument (e.g. MUSE), or MAST collection (e.g. HST).")] = None,
    target: Annotated[Optional[str], typer.Option(help="ESO target.")] = None,
    night: Annotated[Optional[str], typer.Option(help="ESO night, YYYY-MM-DD.", callback=_night)] = None,
    with_calib: Annotated[bool, typer.Option(help="Also the raw calibrations CalSelector associates (ESO).")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Queue failed downloads again and run the queue.")] = False,
    dest: Annotated[Path, typer.Option(help="Where data go: DEST/MISSION/OBSID/.")] = Path("archive-data"),
    parallel: Annotated[int, typer.Option(help="Downloads at once.", min=1)] = 4,
    retries: Annotated[int, typer.Option(help="Tries per file.", min=1)] = 3,
    timeout: Annotated[float, typer.Option(help="Seconds without data before a try fails.", callback=_seconds)] = 60.0,
) -> None:
    """Queue, download (resuming, verified), unpack and ingest observations; each
    file is linked to its observation.

    Example: obsarch fetch xmm 0013140101 0201830201 0761220101
    """
    from archive import fetch

    engine = open_catalog().engine
    options = {"parallel": parallel, "retries": retries, "timeout": timeout, "config": load_config()}
    with _bytes_bar() as bar:
        task = bar.add_task("fetch", total=None)
        options["on_bytes"] = lambda n: bar.advance(task, n)
        if retry_failed:
            err_console.print(f"{fetch.retry_failed(engine)} failed downloads queued again")
        if mission is None:
            summary = fetch.fetch_queue(engine, **options)
        else:
            summary = fetch.fetch(engine, mission, obsids, instrument=instrument, target=target, night=night,
                                  with_calib=with_calib, dest=dest, **options)
    queue = summary.queue
    console.print(f"{summary.observations} observations ({summary.new_observations} new); {counted(queue.done, 'file')} downloaded "
                  f"({queue.bytes / 1e6:.1f} MB), {queue.unpacked} unpacked, {len(queue.failed)} failed; "
                  f"{counted(summary.linked, 'exposure')} linked to their observation", soft_wrap=True)
    for url, reason in queue.failed[:20]:
        err_console.print(f"  {url}: {reason}", markup=False, soft_wrap=True)
    if queue.done:
        from cli.xray import catch_up

        catch_up(engine)  # downloaded X-ray files get their summaries
    if queue.failed:  # what arrived is stored; the queue keeps the failures with their reasons
        err_console.print(f"{len(queue.failed)} of {len(queue.failed) + queue.done} files failed: see `obsarch downloads`; "
                          "`obsarch fetch --retry-failed` tries them again", markup=False)
        raise typer.Exit(3 if queue.done else 1)  # partial, or nothing downloaded at all: an error


@command(panel="archives")
def downloads(fmt: FormatOption = Format.table) -> None:
    """Each known observation: known, queued, downloading, done or failed (with the reason).

    Example: obsarch downloads
    """
    from archive.downloads import downloads_table

    names = ["mission", "obsid", "target", "start", "state", "files", "done", "bytes", "last_error"]
    show_rows(names, typed_rows(downloads_table(open_catalog().engine), names), fmt)  # no pandas: a fourth of its start


@command(name="sync", panel="archives")
def sync_command(dest: Annotated[Path, typer.Option(help="Where new data will go.")] = Path("archive-data")) -> None:
    """Ask the archives again for every target searched before; record new
    observations and queue their data (`obsarch fetch` downloads the queue).

    Example: obsarch sync
    """
    from archive import fetch

    results = fetch.sync(open_catalog().engine, dest=dest, config=load_config())
    for archive, target, new in results:
        console.print(f"{archive} {target}: {new} new observations" + (" queued" if new else ""), markup=False)
    if not results:
        console.print("no searches to repeat: run `obsarch archive search` first")
