"""Groups and offsets: group, groups, offsets, align."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archive.exceptions import ObsarchError, UsageError
from archive.formats import counted, typed_rows
from cli.app import ColumnsOption, FormatOption, Selection, WorkersOption, align_app, command, group_app, groups_app, offsets_app, open_catalog, progress
from cli.render import Format, console, err_console, show_frame, show_rows
from cli.steps import finish_step, merge_results

GroupSelectionOption = Annotated[Optional[str], typer.Option("--selection", help="Which exposures (default: all).")]


def _show_groups(result) -> None:
    for name, members in result.groups.items():
        console.print(f"  {name}: {counted(len(members), 'exposure')}", markup=False)
    if result.without_pointing:
        alone = len(result.without_pointing)
        err_console.print(f"{counted(alone, 'exposure')} {'has' if alone == 1 else 'have'} no pointing and joined no group "
                          f"(ids {', '.join(map(str, result.without_pointing[:20]))}{'...' if len(result.without_pointing) > 20 else ''})")
    for note in result.notes:
        err_console.print(f"group: {note}", markup=False)


@command(group_app, "pointing")
def group_pointing(
    method: Annotated[str, typer.Option(help="kmeans or dbscan.")] = "dbscan",
    k: Annotated[Optional[int], typer.Option("--k", help="Number of clusters (kmeans).")] = None,
    radius: Annotated[Optional[str], typer.Option(help="Join pointings closer than this (dbscan), e.g. 30arcsec.")] = None,
    name: Annotated[str, typer.Option(help="Groups are named NAME-1, NAME-2, ... by right ascension.")] = "pointing",
    selection: GroupSelectionOption = None,
) -> None:
    """Cluster exposures by pointing on the sky (scikit-learn KMeans or DBSCAN on
    unit vectors: RA 0/360 and the poles are no special case).

    Example: obsarch group pointing --method kmeans --k 5 --name regions
    """
    from processing import grouping

    result = grouping.group_by_pointing(open_catalog().engine, method=method, k=k, radius=radius, name=name, selection=selection)
    console.print(f"{counted(len(result.groups), 'group')} by pointing ({method})")
    _show_groups(result)


@command(group_app, "by")
def group_by(
    keys: Annotated[str, typer.Argument(help="Comma-separated names or hdr['KEY'], e.g. band,readout_mode.")],
    selection: GroupSelectionOption = None,
    prefix: Annotated[Optional[str], typer.Option(
        "--name", "--prefix", help="Name the groups NAME:band=V,...; making them again under NAME replaces them all.")] = None,
) -> None:
    """One group per distinct combination of values, named like band=V,readout_mode=SCI1.0.

    Example: obsarch group by band,readout_mode
    """
    from processing import grouping

    result = grouping.group_by_values(open_catalog().engine, keys, selection=selection, prefix=prefix)
    console.print(f"{counted(len(result.groups), 'group')} by {keys}")
    _show_groups(result)


@command(group_app, "positions")
def group_positions(
    radius: Annotated[str, typer.Option(help="Join frames whose positions are closer than this, e.g. 20px.")],
    name: Annotated[str, typer.Option(help="Groups are named NAME-1, NAME-2, ... in time order; again under NAME replaces them.")] = "position",
    selection: GroupSelectionOption = None,
    workers: WorkersOption = None,
) -> None:
    """Group frames by their measured position on the sky, in pixels: from their
    current offsets when they all have one onto one reference, else by registering
    each frame onto the one before it (a drifting night no single reference
    reaches). Each group's member nearest its centre is its reference, so that
    `obsarch offsets compute --groups 'NAME-*'` is the second and last command of
    a two-stage registration.

    Example: obsarch group positions --radius 20px --name drift --selection "night == '2017-08-15' and frame_type == 'science'"
    """
    from processing import grouping

    result = grouping.group_by_position(open_catalog().engine, radius=radius, name=name, selection=selection, workers=workers)
    console.print(f"{counted(len(result.groups), 'group')} by position (within {radius})")
    _show_groups(result)
    if result.unmeasured:  # groups made, but some only because a frame could not be placed: partial
        raise typer.Exit(3)


@command(group_app, "create")
def group_create(
    name: Annotated[str, typer.Argument(help="The group's name.")],
    selection: Annotated[str, typer.Argument(help="Frame numbers, ranges or a selection.")],
    reference: Annotated[Optional[str], typer.Option(help="The member that is the group's reference (a frame number or selection).")] = None,
) -> None:
    """Make a group by hand (it replaces a group of the same name).

    Example: obsarch group create B0 3852-3861 --reference 3852
    """
    from processing import grouping

    result = grouping.create_group(open_catalog().engine, name, selection, reference=reference)
    for note in result.notes:
        err_console.print(f"note: {note}", markup=False)
    console.print(f"group {name}: {counted(len(result.groups[name]), 'exposure')}" + (f", reference {reference}" if reference else ""))


@command(group_app, "list", aliases=[(groups_app, "list")])
def groups_list(fmt: FormatOption = Format.table) -> None:
    """Every group with its method and size.

    Example: obsarch group list
    """
    from processing import grouping

    names = ["name", "method", "members", "created_at"]
    show_rows(names, typed_rows(grouping.list_groups(open_catalog().engine), names), fmt)


@command(group_app, "show", aliases=[(groups_app, "show")])
def groups_show(name: Annotated[str, typer.Argument(help="The group's name.")], fmt: FormatOption = Format.table) -> None:
    """The members of a group, reference first, with their normalized values.

    Example: obsarch group show B0
    """
    from archive.query import compare
    from processing import grouping

    catalog = open_catalog()
    _, roles = grouping.group_members(catalog.engine, name)  # this group's roles (or which groups exist)
    names, rows = catalog.rows(compare("group", "==", name), columns="id,frame_number,band,exptime,date_obs,ra,dec,relpath")
    role = dict(roles)  # an exposure may be another group's reference: only this group's role counts
    rows = sorted(((row[0], role.get(row[0]) or "", *row[1:]) for row in rows), key=lambda row: row[1], reverse=True)  # stable
    names = [names[0], "role", *names[1:]]
    show_rows(names, typed_rows(rows, names), fmt)


@command(offsets_app, "compute")
def offsets_compute(
    selection: Selection = None,
    reference: Annotated[Optional[str], typer.Option(
        help="The reference exposure, a frame number or selection (default: the best frame of the selection).")] = None,
    method: Annotated[str, typer.Option(help="stars (no starting guess), centroid (one star in --box) or wcs.")] = "stars",
    box: Annotated[Optional[str], typer.Option(help="x1:x2,y1:y2 around one star, 1-based (centroid method).")] = None,
    group: Annotated[Optional[str], typer.Option(help="Register this group's members onto its reference.")] = None,
    groups: Annotated[Optional[str], typer.Option(help="Groups matching this glob: each onto its reference, then onto --reference.")] = None,
    products: Annotated[bool, typer.Option("--products", help="Register products (calibrated frames...) of the selection too.")] = False,
    workers: WorkersOption = None,
) -> None:
    """Measure the shift, rotation and scale of frames onto a reference. Without
    --reference the best frame is chosen (not graded bad, smallest FWHM, most
    stars; frames are measured first if need be) and named. A frame the star
    matcher cannot register gets one more try for a pure shift (phase correlation).

    Example: obsarch offsets compute "band == 'B' and frame_type == 'science' and grade != 'bad'"
    """
    import fnmatch

    from processing import grouping, offsets

    offsets.check_method(method, box)
    engine = open_catalog().engine
    reference_id = _one(engine, reference) if reference else None
    if groups:
        names = [g["name"] for g in grouping.list_groups(engine) if fnmatch.fnmatch(g["name"], groups)]
        if not names:
            raise ObsarchError(f"no group matches {groups!r}")
        if reference_id is None:
            members = sorted({e for name in names for e in offsets.group_exposures(engine, name)[1]})
            reference_id = _automatic(engine, members, workers)
        results = offsets.compute_multistage(engine, names, reference_id, workers=workers)
        for result in results.values():
            if result.reference_reason:
                console.print(result.reference_reason, markup=False, soft_wrap=True)
        finish_step(merge_results("offsets", [r.step for r in results.values()]))
        return
    group_id = None
    if group:
        group_id, ids, group_reference = offsets.group_exposures(engine, group)
        reference_id = reference_id or group_reference
    elif selection:
        ids = offsets.select_ids(engine, selection, products=products)
    else:
        raise UsageError("say which exposures: a selection, --group NAME or --groups PATTERN")
    if not ids:
        raise ObsarchError(f"no {'' if products else 'raw '}exposure matches {selection!r}")
    if reference_id is None:
        reference_id = _automatic(engine, ids, workers)
    with progress("registering") as on_progress:
        result = offsets.compute_offsets(engine, ids, reference_id, method=method, box=box, group_id=group_id, workers=workers,
                                         progress=on_progress)
    finish_step(result.step)


def _automatic(engine, ids: list[int], workers) -> int:
    from processing import offsets

    reference_id, why = offsets.choose_reference(engine, ids, workers=workers)
    console.print(why, markup=False, soft_wrap=True)
    return reference_id


def _one(engine, selection: str) -> int:
    from processing import offsets

    ids = offsets.select_ids(engine, selection)  # a frame number names the camera's frame, not its products
    if len(ids) != 1:
        raise ObsarchError(f"--reference {selection!r} selects {len(ids)} raw exposures; it must select one")
    return ids[0]


@command(offsets_app, "show")
def offsets_show(
    selection: Selection = None,
    group: Annotated[Optional[str], typer.Option(
        help="Every member of this group, with its current offset, wherever it was measured (column measured_in).")] = None,
    fmt: FormatOption = Format.table,
    columns: ColumnsOption = None,
) -> None:
    """The current offset of each exposure (its latest registration): dx, dy (px), rotation (deg), scale,
    uncertainties, matched stars, residual; MUSE's derotator angle when present. These are the values
    dx, dy, rotation... mean in selections (`obsarch query "abs(dx) > 2"`) and the ones `stack` applies.
    measured_in names the group whose registration made each one (or `selection`), and
    reference_frame the frame it is relative to. With --group, a member whose current offset was measured
    in another run (e.g. a later `offsets compute --groups`) is listed with that offset, and counted on stderr.

    Example: obsarch offsets show --group B0
    """

    from processing import offsets

    engine = open_catalog().engine
    ids = offsets.select_ids(engine, selection) if selection else None
    rows = offsets.offsets_table(engine, ids=ids, group=group)
    names = ["exposure_id", "frame_number", "reference_id", "reference_frame", "measured_in", "method", "stage", "status",
             "dx", "dy", "rotation", "scale", "dx_err", "dy_err", "nmatched", "residual", "drot_posang", "error"]
    shown = typed_rows(rows, names)
    drot = names.index("drot_posang")
    if all(row[drot] is None for row in shown):  # no derotator: no column of it
        names.pop(drot)
        shown = [row[:drot] + row[drot + 1:] for row in shown]
    main = ["frame_number", "reference_frame", "measured_in", "method", "status", "dx", "dy", "rotation", "nmatched",
            "residual", "drot_posang"]
    show_rows(names, shown, fmt, brief=main, columns=columns)
    if group:
        _say_where_measured(group, rows)


def _say_where_measured(group: str, rows: list[dict]) -> None:
    """A line on stderr for the members whose current offset is not the group's own measurement."""
    other = [r for r in rows if r["own"] is False]
    never = sum(r["status"] == "none" for r in rows)
    if other:
        runs = sorted({f"{r['measured_in']} onto frame {r['reference_frame'] or r['reference_id']}" for r in other})
        err_console.print(f"{len(other)} of {len(rows)} members of {group} have a current offset measured in another run "
                          f"({'; '.join(runs)}): it is the one shown, the one selections and stack use", markup=False, soft_wrap=True)
    if never:
        err_console.print(f"{never} of {len(rows)} members of {group} have never been registered (status none)",
                          markup=False, soft_wrap=True)


@command(align_app, "catalogs")
def align_catalogs(
    a: Annotated[Path, typer.Argument(help="Source list A (CSV, ECSV, FITS) with RA/Dec in degrees.")],
    b: Annotated[Path, typer.Argument(help="Source list B.")],
    tolerance: Annotated[float, typer.Option(help="Match radius, arcsec.")] = 2.0,
    scale: Annotated[bool, typer.Option("--scale/--no-scale", help="Fit a scale too.")] = False,
    max_shift: Annotated[float, typer.Option(help="Largest shift searched, arcsec (any rotation is searched).")] = 120.0,
    pairs: Annotated[bool, typer.Option(help="List the matched pairs.")] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Shift and rotation that take list A onto list B (e.g. X-ray sources onto
    optical stars), found without a starting guess and at any rotation, with the
    residuals and the match's significance. A match no better than chance is
    refused (exit 3, one line): no transform is printed.

    Example: obsarch align catalogs xray_sources.csv optical_stars.csv
    """
    import pandas as pd

    from processing import offsets

    try:
        result = offsets.align_catalogs(str(a), str(b), tolerance_arcsec=tolerance, fit_scale=scale, max_shift_arcsec=max_shift)
    except offsets.NotSignificant as exc:
        err_console.print(f"align catalogs: refused: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(3) from None
    t = result.transform
    console.print(
        f"{t.nmatched} of the {result.n_a} sources of A matched among the {result.n_b} of B ({result.chance:.1f} expected by chance; "
        f"chance probability 10^{result.log10_p:.0f}, by {result.method}); about RA {result.centre[0]:.5f} Dec {result.centre[1]:.5f}\n"
        f"shift east {t.dx:+.3f}\" +- {t.dx_err:.3f}, north {t.dy:+.3f}\" +- {t.dy_err:.3f}; rotation {t.rotation:+.4f} deg +- {t.rotation_err:.4f}; "
        f"scale {t.scale:.6f}; residual rms {t.residual:.3f}\"", markup=False, soft_wrap=True,
    )
    if pairs:
        show_frame(pd.DataFrame(result.pairs), fmt)
