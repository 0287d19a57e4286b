"""Quality: metrics, rules, flags and the quality report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from archive.formats import counted, typed_rows
from cli.app import (
    ByIdOption,
    ForceOption,
    FormatOption,
    RefArg,
    Selection,
    WorkersOption,
    command,
    flag_app,
    flags_app,
    load_config,
    open_catalog,
    progress,
    quality_app,
    report_app,
)
from cli.calib_rules import HduOption, hdu_names
from cli.render import Format, console, show_frame, show_rows
from cli.steps import finish_step


@command(quality_app, "compute")
def quality_compute(selection: Selection = None, force: ForceOption = False, workers: WorkersOption = None,
                    hdu: HduOption = None) -> None:
    """Measure frames: statistics, background, stars, FWHM, elongation, sharpness, repeats.
    Every detector is measured and stored; the exposure's metrics (what selections
    use) are the median over its detectors. Frames measured before with the same
    parameters and unchanged files are skipped.

    Example: obsarch quality compute "frame_type == 'science' and telescope != 'XMM'"
    """
    from processing import quality

    catalog = open_catalog()
    params = quality.QualityParams.from_config(load_config())
    with progress("measuring") as on_progress:
        summary = quality.compute(catalog.engine, selection, params=params, force=force, workers=workers, progress=on_progress,
                                  hdus=hdu_names(hdu))
    finish_step(summary)


@command(quality_app, "rules")
def quality_rules(selection: Selection = None) -> None:
    """Flag measured science frames by the rules of obsarch.toml (defaults: FWHM against
    the median of their night and band, background and star count against that of its
    frames of about their exposure time, elongation, repeats (stars seen twice), saturation).
    A person's flag is never overwritten. A frame on which no rule could be checked
    (no stars measured, fewer than 3 frames in its night and band) is not graded.

    Example: obsarch quality rules
    """
    from processing import quality

    catalog = open_catalog()
    rules = quality.rules_from_config(load_config())
    summary = quality.apply_rules(catalog.engine, rules, selection)
    flagged = ", ".join(f"{n} {reason}" for reason, n in sorted(summary.flagged.items())) or "none"
    partly = f" ({summary.partly_checked} on some rules only, see their notes)" if summary.partly_checked else ""
    console.print(
        f"rules run {summary.run_id}: {summary.evaluated} frames; flagged: {flagged}; {summary.passed} passed{partly}; "
        f"{summary.unchanged} unchanged; {summary.kept_person} flagged by a person, left alone"
        + _not_graded(summary), markup=False, soft_wrap=True,
    )


def _not_graded(summary) -> str:
    """The frames the rules could not grade, and why, as the end of the summary line."""
    from processing import quality

    if not summary.unchecked:
        return ""
    kinds = {"unmeasured": "without a metric the rules need (too few stars, say)",
             "small group": f"in a night and band of fewer than {quality.MIN_GROUP} measured frames"}
    why = "; ".join(f"{n} {kinds.get(kind, kind)}" for kind, n in sorted(summary.unchecked_why.items()))
    return f"; {summary.unchecked} not graded: no rule could be checked ({why})"


@command(flag_app, "set")
def flag_set(
    selection: Annotated[str, typer.Argument(help="Frame numbers (3920,3921,4058-4059) or a selection.")],
    grade: Annotated[str, typer.Option(help="great, ok, marginal or bad.")],
    reason: Annotated[Optional[str], typer.Option(help="clouds, tracking, focus, trail, saturation, manual or other.")] = None,
    note: Annotated[Optional[str], typer.Option(help="Free text.")] = None,
    by: Annotated[Optional[str], typer.Option(help="Who (default: your user name).")] = None,
) -> None:
    """Record your verdict on frames; earlier flags are kept as history, and yours
    wins over any rule's.

    Example: obsarch flag set 3856,3857,3870 --grade bad --reason tracking --note "big tracking errors"
    """
    from processing import quality

    count = quality.flag(open_catalog().engine, selection, grade, reason=reason, note=note, who=by)
    console.print(f"flagged {counted(count, 'exposure')} {grade}" + (f" ({reason})" if reason else ""))


@command(flag_app, "history", aliases=[(flags_app, "history")])
def flag_history(ref: RefArg, by_id: ByIdOption = False, fmt: FormatOption = Format.table) -> None:
    """Every flag of one frame, oldest first; the current one is marked.

    Example: obsarch flag history 3857
    """
    from processing import quality

    catalog = open_catalog()
    rows = quality.flag_history(catalog.engine, catalog.resolve(ref, by_id=by_id))
    # current, who and note before a rule's numbers: a terminal table leaves out from the right
    names = ["id", "created_at", "grade", "reason", "source", "current", "who", "note", "rule", "value", "threshold"]
    show_rows(names, typed_rows(rows, names), fmt)


@command(report_app, "quality")
def report_quality(
    html_dir: Annotated[Optional[Path], typer.Option("--html", help="Also write a static page with thumbnails and plots here.")] = None,
    selection: Annotated[Optional[str], typer.Option(help="Frames to show in the page (default: all).")] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Science exposures (products such as calibrated frames included) per night,
    band and grade (SQL view quality_summary); with --html, a page with plots per
    band and a thumbnail, metrics and flag per frame of every type (calibrations and
    X-ray files too; --selection picks fewer), its counts on the last line.

    Example: obsarch report quality --html report/
    """
    import pandas as pd

    from processing import report
    from web.report import write_html

    catalog = open_catalog()
    summary = pd.DataFrame(report.summary_rows(catalog.engine), columns=["night", "band", "grade", "exposures"])
    if fmt is Format.table and not summary.empty:
        keys = summary[["night", "band"]].fillna("")  # pivot_table drops rows whose key is NaN (frames without a band)
        summary = summary.assign(night=keys["night"], band=keys["band"]).pivot_table(
            index=["night", "band"], columns="grade", values="exposures", aggfunc="sum", fill_value=0).reset_index()
    show_frame(summary, fmt, title="science exposures (products included) per night, band and grade")
    if html_dir is not None:
        ids = catalog.exposure_ids(selection) if selection else None
        with progress("thumbnails") as on_progress:
            result = write_html(catalog.engine, html_dir, ids=ids, progress=on_progress)
        counts = report.frame_counts(catalog.engine, ids)
        kinds = ", ".join(f"{n} {name}" for name, n in counts["frame_type"].items())
        instruments = ", ".join(f"{n} {name}" for name, n in counts["instrument"].items())
        scope = f"selected by {selection!r}" if selection else "every type and instrument"
        console.print(f"wrote {result.index} ({result.frames} frames, {result.thumbnails_failed} without a thumbnail), "
                      f"{scope}: {kinds}; {instruments}", soft_wrap=True, markup=False)
