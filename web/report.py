"""The static quality report (``obsarch report quality --html DIR``), drawn
with the review app's templates and stylesheet: ``DIR/index.html`` with a
thumbnail per frame beside it, and the plots inline. The page needs nothing
but its directory: no script, no link out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from processing.executor import Progress, parallel_map
from processing.report import GRADE_COLOURS, frame_rows, summary_rows, write_thumbnail
from web.plots import PLOTS, time_plot
from web.templating import environment


@dataclass
class HtmlReport:
    index: Path
    frames: int
    thumbnails_failed: int


def write_html(engine: Engine, directory: Path, *, ids: list[int] | None = None, workers: int | None = None,
               progress: Progress | None = None) -> HtmlReport:
    """Write ``directory/index.html`` with its thumbnails (``directory/thumbs``)."""
    (directory / "thumbs").mkdir(parents=True, exist_ok=True)
    rows = [{**row, "id": row["exposure_id"]} for row in frame_rows(engine, ids)]
    tasks = [(row["path"], str(directory / "thumbs" / f"{row['id']}.png")) for row in rows]
    problems = {}
    for index, problem in parallel_map(write_thumbnail, tasks, workers=workers, progress=progress):
        if problem:
            problems[rows[index]["id"]] = problem
    for row in rows:
        row["picture"] = ("problem", problems[row["id"]]) if row["id"] in problems else ("img", f"thumbs/{row['id']}.png")
    science = [r for r in rows if r["frame_type"] == "science"]
    bands = sorted({row["band"] or "none" for row in science})
    plots = {band: [p for p in (time_plot([r for r in science if (r["band"] or "none") == band], metric, label)
                                for metric, label in PLOTS) if p] for band in bands}
    page = environment().get_template("report.html").render(
        summary=summary_rows(engine), rows=rows, plots=plots, problems=problems, grade_colours=GRADE_COLOURS)
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return HtmlReport(index, len(rows), len(problems))
