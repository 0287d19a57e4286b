"""X-ray commands: summaries, the spectra report, named metrics, regions.

Registers on the app of :mod:`cli.app` (imported by :mod:`cli.main`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archive.exceptions import ObsarchError, UsageError
from archive.formats import counted
from cli.app import (
    PANELS,
    ByIdOption,
    FormatOption,
    RefArg,
    WorkersOption,
    app,
    command,
    group,
    open_catalog,
    report_app,
)
from cli.render import Format, console, err_console, show_frame

xray_app = group("X-ray products: summaries of spectra, events and light curves.")
metrics_app = group("Named metrics of exposures (from tools or people).")
regions_app = group("DS9 region files attached to exposures.")
app.add_typer(xray_app, name="xray", rich_help_panel=PANELS["processing"])
app.add_typer(metrics_app, name="metrics", rich_help_panel=PANELS["quality"])
app.add_typer(regions_app, name="regions", rich_help_panel=PANELS["catalog"])

_SHOWN = 20


def _print_problems(label: str, items: list[tuple[str, str]]) -> None:
    for path, reason in items[:_SHOWN]:
        err_console.print(f"  {label}{path}: {reason}", markup=False, soft_wrap=True)
    if len(items) > _SHOWN:
        err_console.print(f"  ... and {len(items) - _SHOWN} more", markup=False)


def report_xray(summary, prefix: str = "x-ray") -> None:
    """What a summary step did, its warnings and failures (last line: failures)."""
    console.print(f"{prefix}: {len(summary.summarized)} summarized, {summary.skipped} up to date, "
                  f"{len(summary.failed)} failed", markup=False)
    _print_problems("warning: ", summary.warnings)
    if summary.failed:
        _print_problems("", summary.failed)
        err_console.print(f"{len(summary.failed)} X-ray files could not be summarized", markup=False)


def after_ingest(engine, summary) -> int:
    """Summarize the X-ray files an ingest run read and attach the region
    files next to them by name, saying what failed; returns how many X-ray
    files could not be summarized for a fault of theirs. A run that read nothing costs nothing;
    one that read no X-ray file, one query."""
    if not summary.new and not summary.changed and not summary.missing and not summary.failed:
        return 0
    from processing import regions, xray_catalog  # astropy and numpy: only when there is something to do

    result = xray_catalog.summarize(engine, run_id=summary.run_id)
    if summary.missing or summary.failed:
        # a background, response or ARF gone missing or unreadable takes its links
        # (one that comes back, or changes, is summarized again: linked above)
        result.warnings.extend(xray_catalog.relink_broken(engine))
    if result.summarized or result.failed or result.warnings:
        report_xray(result)
    attached, problems = regions.attach_by_name(engine, summary.run_id)
    for region, data, placement in attached:
        console.print(f"region {region} attached to {data} ({placement.note})", markup=False, soft_wrap=True)
    _print_problems("", problems)
    # a kind obsarch does not summarize (a type II spectrum: pha2) is said, and is no failure of the ingest
    return sum(1 for _, why in result.failed if not why.endswith("not summarized"))


def catch_up(engine) -> None:
    """Summarize the X-ray files not summarized at their current version
    (after a command that catalogued files: fetch, a tool's products)."""
    from processing import xray_catalog

    result = xray_catalog.summarize(engine)
    if result.summarized or result.failed:
        report_xray(result)


@command(xray_app, "summarize")
def xray_summarize(
    selection: Annotated[Optional[str], typer.Argument(help="Which exposures (default: every X-ray file).")] = None,
    force: Annotated[bool, typer.Option(help="Summarize again files summarized at their current version.")] = False,
    workers: WorkersOption = None,
) -> None:
    """Summarize X-ray files from their tables (counts, rates, exposure, GTI,
    MJD in UTC) and link spectra to their background, response and ARF.
    Ingest does this for the files it reads; this catches up the rest.

    Example: obsarch xray summarize "obsid == '0761220101'"
    """
    from processing import xray_catalog

    catalog = open_catalog()
    ids = catalog.exposure_ids(selection) if selection else None
    summary = xray_catalog.summarize(catalog.engine, file_ids=ids, force=force, workers=workers)
    report_xray(summary)
    if summary.result.exit_code:
        raise typer.Exit(summary.result.exit_code)


def _seconds(value: Optional[str]) -> Optional[float]:
    from processing.xray_catalog import parse_duration_s

    if value is None:
        return None
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--min-exposure") from None


@command(report_app, "spectra")
def report_spectra(
    selection: Annotated[Optional[str], typer.Argument(help="Which exposures (default: all spectra).")] = None,
    min_exposure: Annotated[Optional[str], typer.Option("--min-exposure", help="Keep spectra with at least this exposure: 5ks, 5000s.")] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Per spectrum: obsid, instrument, role, mid-time (MJD, UTC), counts,
    rate, net rate, exposure in ks and linked files, sorted by time.

    Example: obsarch report spectra "obsid in ('0013140101', '0761220101')" --min-exposure 5ks --format csv
    """
    from processing.xray_catalog import spectra_report

    frame = spectra_report(open_catalog().engine, selection, _seconds(min_exposure))
    show_frame(frame, fmt)
    if fmt is Format.table:
        err_console.print(counted(len(frame), "spectrum", "spectra"))


@command(metrics_app, "set")
def metrics_set(
    selection: Annotated[str, typer.Argument(help="Which exposures.")],
    values: Annotated[list[str], typer.Argument(help="name=value pairs.")],
) -> None:
    """Give exposures named metrics by hand; select them as metric['name'].

    Example: obsarch metrics set "obsid == '0761220101'" pileup=0.12 single_frac=0.71
    """
    from processing.named_metrics import parse_assignments, set_by_person

    try:
        parsed = parse_assignments(values, "metrics set", once=True)
    except ObsarchError as exc:  # the command line's words, not a tool's file: a usage error
        raise UsageError(str(exc)) from None
    count = set_by_person(open_catalog().engine, selection, parsed)
    console.print(f"{', '.join(f'{k}={v:g}' for k, v in parsed.items())} set on {count} exposures", markup=False)


@command(regions_app, "attach")
def regions_attach(
    region_file: Annotated[Path, typer.Argument(help="A DS9 region file, or a FITS file with REGION tables.")],
    to: Annotated[str, typer.Option("--to", help="The exposures it belongs to (a selection).")],
    force: Annotated[bool, typer.Option("--force", help="Attach a region file even where it lies far from an exposure's pointing, "
                                                        "or names another telescope or obsid.")] = False,
) -> None:
    """Attach a region file to exposures; `show` lists it and `run` passes it as {region}.

    A sky-coordinate file whose nearest shape is more than 1 deg (or the
    exposure's field radius, when larger) from an exposure's ra/dec is
    refused, naming the exposure and the separation, unless --force; so is
    a FITS region file whose TELESCOP or OBS_ID is not the exposure's.

    Example: obsarch regions attach src.reg --to "obsid == '0761220101'"
    """
    from processing import regions

    info, placements = regions.attach(open_catalog().engine, region_file, to, force=force)
    skipped = f"; {info.skipped} shapes the regions package cannot read were skipped" if info.skipped else ""
    console.print(f"{info.path}: {counted(info.n_shapes, 'shape')} in {info.frame} coordinates ({info.shapes}) attached to "
                  f"{counted(len(placements), 'exposure')}{skipped}", markup=False, soft_wrap=True)
    _print_placement_notes(placements)


def _print_placement_notes(placements) -> None:
    """Where the position could not be checked (one line a reason), and
    each exposure a forced file lies far from."""
    unchecked: dict[str, list[str]] = {}
    for placement in placements:
        if placement.separation_deg is None and not placement.refused:  # a refused one is told below, once
            unchecked.setdefault(placement.note, []).append(placement.name)
    for note, names in unchecked.items():
        which = names[0] if len(names) == 1 else f"{len(names)} exposures"
        err_console.print(f"  note: {note} ({which})", markup=False, soft_wrap=True)
    _print_problems("note: ", [(p.name, p.note) for p in placements if p.refused])


@command(regions_app, "list")
def regions_list(
    ref: RefArg,
    by_id: ByIdOption = False,
    fmt: FormatOption = Format.table,
) -> None:
    """The region files attached to one exposure.

    Example: obsarch regions list xmm/0761220101/P0761220101PNS003PIEVLI0000.fits
    """
    import pandas as pd

    from processing import regions

    catalog = open_catalog()
    rows = regions.regions_of(catalog.engine, catalog.resolve(ref, by_id=by_id))
    show_frame(pd.DataFrame(rows, columns=list(regions.LISTED)), fmt)


def show_xray(catalog, exposure_id: int) -> None:
    """The X-ray summary, links, named metrics and regions of one exposure, for `show`."""
    from processing import named_metrics, regions, xray_catalog

    values = {k: v for k, v in xray_catalog.values_of(catalog.engine, exposure_id, _SHOW_COLUMNS).items() if _filled(v)}
    if values:
        console.print("\nX-ray " + "  ".join(f"{k}={_text(v)}" for k, v in values.items()), soft_wrap=True)
    for label, text in xray_catalog.summary_notes(catalog.engine, exposure_id):
        console.print(f"  {label}: {text}", markup=False, soft_wrap=True)
    for metric in named_metrics.metrics_of(catalog.engine, exposure_id):
        origin = f"run {metric['run_id']}" if metric["run_id"] else metric["who"]
        console.print(f"metric {metric['name']} = {metric['value']:g}  ({metric['source']}, {origin})", markup=False)
    for region in regions.regions_of(catalog.engine, exposure_id):
        console.print(f"region {region['path']}  ({region['format']}, {region['frame']}, {region['n_shapes']} shapes: "
                      f"{region['shapes']}; {region['how']}; {region['position'] or 'position not checked'})",
                      markup=False, soft_wrap=True)


_SHOW_COLUMNS = ("xray_kind", "xray_role", "counts", "rate", "net_rate", "exposure_ks", "gti_exposure_ks", "n_events",
                 "time_span", "mean_rate", "frac_rms", "channels", "mjd_start", "mjd_stop", "mjd_mid",
                 "background_file", "response", "arf")


def _filled(value) -> bool:
    import math

    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _text(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) and not 40000 < value < 100000 else str(value)
