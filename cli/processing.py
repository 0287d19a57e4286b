"""Processing with provenance: calibration masters, calibrate, stack, external
tools, and what they made (runs, products, lineage, stale)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from archive.exceptions import NotFoundError, ObsarchError
from archive.formats import counted, exact, iso, typed_rows
from cli.app import (
    ColumnsOption,
    ExecutorOption,
    ForceOption,
    FormatOption,
    SchedulerOption,
    Selection,
    WorkersOption,
    calib_app,
    command,
    open_catalog,
    progress,
    reports_errors,
    runs_app,
)
from cli.calib_rules import HduOption, configured_rules, hdu_names
from cli.render import Format, console, err_console, show_rows, write
from cli.steps import finish_step

NearestOption = Annotated[Optional[int], typer.Option("--nearest", help="Use the N frames nearest in time to --to.")]
ToOption = Annotated[Optional[str], typer.Option(
    "--to", help="What the frames are nearest to: a date (2014-07-27), a time, an MJD (56865.5), a frame number or a selection.")]
MethodOption = Annotated[str, typer.Option(help="median, mean, sigclip (sigma-clipped mean) or sigclip-median (sigma-clipped median).")]
SigmaOption = Annotated[float, typer.Option(help="Clipping threshold for sigclip, in standard deviations.")]
MemoryOption = Annotated[str, typer.Option(help="Memory to combine within, e.g. 2GB.")]
MasterOutOption = Annotated[Path, typer.Option(help="Directory for the master.")]
IncludeBadOption = Annotated[bool, typer.Option(help="Keep frames graded bad.")]


@runs_app.callback(invoke_without_command=True)
@reports_errors
def runs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many runs, the newest.", min=0, max=2**63 - 2)] = 20,
    fmt: FormatOption = Format.table,
    columns: ColumnsOption = None,
) -> None:
    """Every run, newest first: ingests (i1, i2...) and processing steps (1, 2...),
    with state and what each did; `obsarch runs show N` tells one run in full.

    Example: obsarch runs --limit 5
    """
    if ctx.invoked_subcommand is None:
        from archive.catalog import RUN_COLUMNS, first_rows

        catalog = open_catalog()
        rows, more = first_rows(lambda n: catalog.run_rows(n)[1], limit)
        show_rows(list(RUN_COLUMNS), typed_rows(rows, RUN_COLUMNS), fmt, brief=["run", "step", "state", "started_at", "summary"], columns=columns)
        if more:
            err_console.print(f"note: the newest {limit} runs: more exist (--limit N shows N)", markup=False)


@command(runs_app, "show")
def runs_show(
    run: Annotated[str, typer.Argument(help="A run id from `obsarch runs` (i3 is ingest run 3).")],
    fmt: FormatOption = Format.table,
) -> None:
    """One run in full: parameters, code, inputs, products, the state of each
    item, and an external tool's stdout and stderr as stored.

    Example: obsarch runs show i1
    """
    detail = open_catalog().run(run)
    if fmt is Format.json:
        write(json.dumps(detail, indent=1, default=lambda v: iso(v) if isinstance(v, datetime) else str(v)) + "\n")
        return
    head = ("run", "parent", "step", "item", "state", "started_at", "finished_at", "code_version", "host", "user", "paths", "summary", "error")
    for key in head:
        if detail.get(key) not in (None, "") and not isinstance(detail[key], dict):
            console.print(f"{key}: {exact(detail[key])}", markup=False, soft_wrap=True)
    for key in ("params", "summary"):
        if isinstance(detail[key], dict) and detail[key]:
            console.print(f"{key}: {json.dumps(detail[key], sort_keys=True)}", markup=False, soft_wrap=True)
    for part in ("inputs", "products", "items"):
        if detail[part]:
            console.print(f"\n{part} ({len(detail[part])}):", markup=False)
            names = list(detail[part][0])
            show_rows(names, typed_rows(detail[part], names), fmt)
    for stream in ("stdout", "stderr"):
        if detail.get(stream):
            console.print(f"\n{stream}:", markup=False)
            write(detail[stream] if detail[stream].endswith("\n") else detail[stream] + "\n")  # as the tool wrote it


def _master(kind: str, selection, nearest, to, band, method, sigma, memory, out, force, hdu=None, include_bad=False) -> None:
    from processing import calibration

    params = calibration.MasterParams(method=method, sigma=sigma, memory=memory)
    finish_step(calibration.make_master(open_catalog().engine, kind, selection, band=band, nearest_count=nearest, to=to,
                                        params=params, out_dir=out, force=force, hdus=hdu_names(hdu),
                                        rules=configured_rules(), include_bad=include_bad, on_wait=_waiting(f"master-{kind}")))


def _waiting(step: str):
    """What a step says before it waits for another run writing its product."""
    def say(path: Path) -> None:
        err_console.print(f"{step}: waiting for another run writing {path}", markup=False, soft_wrap=True)
    return say


@command(calib_app, "bias")
def calib_bias(selection: Selection = None, nearest: NearestOption = None, to: ToOption = None, method: MethodOption = "median",
               sigma: SigmaOption = 3.0, memory: MemoryOption = "2GB", out: MasterOutOption = Path("masters"),
               force: ForceOption = False, hdu: HduOption = None, include_bad: IncludeBadOption = False) -> None:
    """A master bias from raw bias frames of one read-out mode; frames graded bad
    are left out (and said) unless --include-bad.

    Example: obsarch calib bias "readout_mode == 'SCI1.0'" --nearest 5 --to 2017-08-16
    """
    _master("bias", selection, nearest, to, None, method, sigma, memory, out, force, hdu, include_bad)


@command(calib_app, "dark")
def calib_dark(selection: Selection = None, nearest: NearestOption = None, to: ToOption = None, method: MethodOption = "median",
               sigma: SigmaOption = 3.0, memory: MemoryOption = "2GB", out: MasterOutOption = Path("masters"),
               force: ForceOption = False, hdu: HduOption = None, include_bad: IncludeBadOption = False) -> None:
    """A master dark (bias-subtracted when a master bias exists) from darks of one
    exposure time; frames graded bad are left out (and said) unless --include-bad.

    Example: obsarch calib dark "exptime == 60"
    """
    _master("dark", selection, nearest, to, None, method, sigma, memory, out, force, hdu, include_bad)


@command(calib_app, "flat")
def calib_flat(selection: Selection = None, band: Annotated[Optional[str], typer.Option(help="The band.")] = None,
               nearest: NearestOption = None, to: ToOption = None, method: MethodOption = "median", sigma: SigmaOption = 3.0,
               memory: MemoryOption = "2GB", out: MasterOutOption = Path("masters"), force: ForceOption = False,
               hdu: HduOption = None, include_bad: IncludeBadOption = False) -> None:
    """A master flat of one band: flats bias- and dark-subtracted, each scaled to a
    median of 1, combined; flats graded bad are left out (and said) unless --include-bad.

    Example: obsarch calib flat --band V
    """
    _master("flat", selection, nearest, to, band, method, sigma, memory, out, force, hdu, include_bad)


@command(panel="processing")
def calibrate(
    selection: Selection = None,
    no_dark: Annotated[bool, typer.Option("--no-dark", help="Skip dark subtraction.")] = False,
    no_flat: Annotated[bool, typer.Option("--no-flat", help="Skip flat division.")] = False,
    out: Annotated[Path, typer.Option(help="Directory for the calibrated frames.")] = Path("calibrated"),
    workers: WorkersOption = None,
    executor: ExecutorOption = "pool", scheduler: SchedulerOption = None, force: ForceOption = False,
    hdu: HduOption = None, memory: MemoryOption = "2GB",
) -> None:
    """Bias, dark and flat correction of science frames, detector by detector, with
    the masters the calibration rules choose ([calibration] of obsarch.toml; see
    `obsarch calib explain`). A frame no master fits is reported with the rule
    that refused each candidate.

    Example: obsarch calibrate "band == 'V' and frame_type == 'science' and night == '2017-08-15'"
    """
    from processing import calibration

    use = tuple(k for k in ("bias", "dark", "flat") if not (k == "dark" and no_dark) and not (k == "flat" and no_flat))
    with progress("calibrating") as on_progress:
        summary = calibration.calibrate(open_catalog().engine, selection, use=use, out_dir=out, workers=workers, executor=executor,
                                        scheduler=scheduler, force=force, progress=on_progress, rules=configured_rules(),
                                        hdus=hdu_names(hdu), memory=memory)
    finish_step(summary)


@command(name="stack", panel="processing")
def stack_command(
    selection: Annotated[str, typer.Argument(help="The frames to stack.")],
    method: Annotated[Optional[str], typer.Option(
        help="median (default), mean or sigclip (sigma-clipped mean); with --sigma-clip, median is a sigma-clipped median.")] = None,
    sigma_clip: Annotated[Optional[float], typer.Option(
        "--sigma-clip", help="Clip at this many standard deviations before combining (by default a sigma-clipped mean).")] = None,
    out: Annotated[Path, typer.Option(help="Directory for the stack.")] = Path("stacks"),
    name: Annotated[Optional[str], typer.Option(help="File name (default: BAND_stack.fits).")] = None,
    include_bad: IncludeBadOption = False,
    memory: MemoryOption = "2GB", workers: WorkersOption = None,
    executor: ExecutorOption = "pool", scheduler: SchedulerOption = None,
    force: Annotated[bool, typer.Option(help="Do it again even where an identical earlier run's stack exists, and replace "
                                        "a file of that name no run wrote.")] = False,
    hdu: HduOption = None,
) -> None:
    """Resample frames onto their reference by their stored offsets and combine
    them with rejection, detector by detector; writes the stack with a COVERAGE
    extension per detector.

    Example: obsarch stack "band == 'B' and grade in ('great', 'ok')" --method median --sigma-clip 3 --out stacks/
    """
    from processing import stacking

    try:
        combine = stacking.stack_method(method, sigma_clip)
    except ObsarchError as exc:
        raise typer.BadParameter(str(exc)) from None
    with progress("resampling") as on_progress:
        summary = stacking.stack(open_catalog().engine, selection, method=combine,
                                 sigma=sigma_clip or 3.0, out_dir=out, name=name, include_bad=include_bad, memory=memory,
                                 workers=workers, executor=executor, scheduler=scheduler, force=force, progress=on_progress,
                                 hdus=hdu_names(hdu))
    finish_step(summary)


@command(name="run", panel="processing", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_command(
    ctx: typer.Context,
    selection: Selection = None,
    each: Annotated[str, typer.Option(help="exposure, obsid or group: one run per item.")] = "exposure",
    workdir: Annotated[str, typer.Option(help="Working directory of each item ({item}, {obsid}, {group}...).")] = "runs/{item}",
    timeout: Annotated[Optional[float], typer.Option(help="Seconds before an item's command is stopped (0: no limit).")] = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = "pool", scheduler: SchedulerOption = None, force: ForceOption = False,
    metrics_from: Annotated[Optional[str], typer.Option(
        "--metrics-from",
        help="A JSON or name=value file the tool writes in its working directory; its numbers become metrics of the item.")] = None,
    tool: Annotated[Optional[list[str]], typer.Option(
        "--tool",
        help="A file or directory whose change runs the items again (a pipeline's plugins, $SAS_DIR); repeatable.")] = None,
) -> None:
    """Run an external tool once per exposure, obsid or group, in parallel, in a
    working directory per item. Arguments after -- may hold {path}, {paths},
    {obsid}, {dir}, {group}, {id}, {frame}, {workdir}, {region}, {regions}. Output is logged with the
    run, written files become products with lineage, items done with the same
    command and inputs are skipped; with --metrics-from the numbers the tool
    wrote are stored as metric['name'] of the item's exposures. The program
    files the command runs (and those named by --tool) are recorded with the
    run: when one is replaced, its items run again and obsarch stale lists
    their products.

    Example: obsarch run --each obsid "obsid in ('0013140101', '0761220101')" -- sh -c 'echo {obsid}: {paths}'
    """
    from processing import external

    engine = open_catalog().engine
    summary = external.run_each(engine, each, selection, list(ctx.args), workdir=workdir, workers=workers,
                                executor=executor, scheduler=scheduler, timeout=timeout, force=force, metrics_from=metrics_from,
                                tools=tool or [])
    if summary.products:
        from cli.xray import catch_up

        catch_up(engine)  # products that are X-ray files get their summaries
    finish_step(summary)


@command(panel="processing")
def products(
    kind: Annotated[Optional[str], typer.Option(help="Only this kind (master_bias, calibrated, stack, output...).")] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Files made by obsarch's steps and wrapped tools, with the run that made each.

    Example: obsarch products --kind stack
    """
    names, rows = open_catalog().product_rows(kind)
    show_rows(names, typed_rows(rows, names), fmt)


@command(panel="processing")
def lineage(path: Annotated[Path, typer.Argument(help="A product (or any ingested file).")]) -> None:
    """The tree of runs and inputs a file was made from, down to raw files.

    Example: obsarch lineage stacks/B_stack.fits
    """
    from processing import runs as runs_

    catalog = open_catalog()
    try:
        tree = runs_.lineage(catalog.engine, catalog.resolve(str(path)))
    except NotFoundError:  # a tool's output that is no FITS file: a product by its path only
        tree = runs_.output_lineage(catalog.engine, path.expanduser().absolute().parent.resolve() / path.name)
        if tree is None:
            raise

    def show(node, indent=0, role=None):
        label = f"{'  ' * indent}{'[' + role + '] ' if role else ''}{node['path']}"
        if node["shown_above"]:
            label += "  (shown above)"
        elif node["run"]:
            run = node["run"]
            label += f"  <- run {run['id']} {run['step']} ({iso(run['finished_at']) if run['finished_at'] else 'not finished'})"
        elif unmade := node.get("unmade"):
            label += f"  ({runs_.unmade_text(unmade)})"
        else:
            label += "  (raw)"
        console.print(label, markup=False, soft_wrap=True)
        for child in node["inputs"]:
            show(child, indent + 1, child["role"])

    show(tree)


@command(panel="processing")
def stale(fmt: FormatOption = Format.table) -> None:
    """Products that something changed since they were made: an input changed,
    went missing or was rebuilt, or a frame of a stack or master was graded bad
    (unless it was made with --include-bad); re-running their step rebuilds only those.

    Example: obsarch stale
    """
    from processing import runs as runs_

    rows = runs_.stale_products(open_catalog().engine)
    names = ["product_id", "kind", "path", "run_id", "reason"]
    show_rows(names, typed_rows(rows, names), fmt)
    if fmt is Format.table:
        err_console.print(counted(len(rows), "stale product"))
