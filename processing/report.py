"""The quality report: tables in SQL views, and a static HTML page with a
thumbnail per frame and plots per band. The page needs nothing but its
directory: images are files beside it, there is no script and no link out."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, select, text

from archive.db import transaction
from archive.models import File, Root
from processing.executor import Progress, parallel_map
from processing.quality import QualityError, load_image

GRADE_COLOURS = {"great": "#1a9850", "ok": "#91cf60", "marginal": "#fc8d59", "bad": "#d73027", None: "#999999"}
THUMBNAIL_PX = 256


def summary_rows(engine: Engine) -> list[dict]:
    """Counts of science frames per night, band and grade (view ``quality_summary``)."""
    with transaction(engine) as conn:
        rows = conn.execute(text("SELECT night, band, grade, exposures FROM quality_summary ORDER BY night, band, grade"))
        return [dict(row._mapping) for row in rows]


def frame_rows(engine: Engine, ids: list[int] | None = None) -> list[dict]:
    """Metrics and current flag of frames (view ``exposure_quality``) with their paths."""
    with transaction(engine) as conn:
        rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM exposure_quality ORDER BY night, band, date_obs, exposure_id"))]
        paths = dict(conn.execute(select(File.id, Root.path + "/" + File.relpath).join(Root, Root.id == File.root_id)).all())
    wanted = set(ids) if ids is not None else None
    result = []
    for row in rows:
        if wanted is not None and row["exposure_id"] not in wanted:
            continue
        row["path"] = paths.get(row["exposure_id"])
        if isinstance(row["date_obs"], str):  # SQLite returns a view's times as text
            row["date_obs"] = datetime.fromisoformat(row["date_obs"])
        result.append(row)
    return result


# -- pictures ------------------------------------------------------------------


def thumbnail(data: np.ndarray, size: int = THUMBNAIL_PX) -> np.ndarray:
    """A block-averaged copy of ``data`` no larger than ``size`` pixels, scaled
    to 0..1 with astropy's zscale interval."""
    from astropy.visualization import ZScaleInterval

    if not np.isfinite(data).any():
        raise QualityError("no finite pixels to show")
    factor = max(1, math.ceil(max(data.shape) / size))
    ny, nx = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    small = np.nanmean(data[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor), axis=(1, 3))
    low, high = ZScaleInterval().get_limits(small[np.isfinite(small)])
    return np.clip((small - low) / (high - low or 1.0), 0.0, 1.0)


def write_thumbnail(task: tuple[str, str]) -> str | None:
    """Write the thumbnail of one file to a PNG; the reason when it cannot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source, target = task
    try:
        data, _, _ = load_image(source)
        plt.imsave(target, thumbnail(data), cmap="gray", origin="lower")
    except (QualityError, ValueError) as exc:
        return str(exc)
    return None


def band_plot(rows: list[dict], band: str, target: Path) -> None:
    """Background, FWHM and elongation against time for one band, one colour per grade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for axis, metric, label in zip(axes, ("background", "fwhm", "elongation"), ("background", "FWHM [px]", "elongation")):
        for grade, colour in GRADE_COLOURS.items():
            points = [(r["date_obs"], r[metric]) for r in rows if r["grade"] == grade and r[metric] is not None and r["date_obs"]]
            if points:
                times, values = zip(*points)
                axis.scatter(times, values, s=18, color=colour, label=grade or "unreviewed")
        axis.set_ylabel(label)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, ncol=5, loc="upper left")
    axes[0].set_title(f"band {band}")
    axes[-1].set_xlabel("time (UTC)")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(target, dpi=80)
    plt.close(figure)


# -- the page -----------------------------------------------------------------------


@dataclass
class HtmlReport:
    index: Path
    frames: int
    thumbnails_failed: int


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def write_html(engine: Engine, directory: Path, *, ids: list[int] | None = None, workers: int | None = None,
               progress: Progress | None = None) -> HtmlReport:
    """Write ``directory/index.html`` with its thumbnails and plots."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "thumbs").mkdir(exist_ok=True)
    (directory / "plots").mkdir(exist_ok=True)
    rows = frame_rows(engine, ids)
    tasks = [(row["path"], str(directory / "thumbs" / f"{row['exposure_id']}.png")) for row in rows]
    problems = {}
    for index, problem in parallel_map(write_thumbnail, tasks, workers=workers, progress=progress):
        if problem:
            problems[rows[index]["exposure_id"]] = problem
    science = [r for r in rows if r["frame_type"] == "science"]
    bands = sorted({row["band"] or "none" for row in science})
    for band in bands:
        band_plot([r for r in science if (r["band"] or "none") == band], band, directory / "plots" / f"{band}.png")
    page = _page(summary_rows(engine), rows, bands, problems)
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return HtmlReport(index, len(rows), len(problems))


def _page(summary: list[dict], rows: list[dict], bands: list[str], problems: dict) -> str:
    summary_html = "".join(
        f"<tr><td>{_cell(s['night'])}</td><td>{_cell(s['band'])}</td><td>{_cell(s['grade'])}</td><td>{s['exposures']}</td></tr>"
        for s in summary
    )
    plots = "".join(f'<figure><img src="plots/{html.escape(b)}.png" alt="band {html.escape(b)}"></figure>' for b in bands)
    cards = []
    for row in rows:
        colour = GRADE_COLOURS.get(row["grade"], GRADE_COLOURS[None])
        image = (f'<p class="problem">{html.escape(problems[row["exposure_id"]])}</p>' if row["exposure_id"] in problems
                 else f'<img src="thumbs/{row["exposure_id"]}.png" alt="frame {row["exposure_id"]}">')
        facts = " ".join(
            f"<span>{name} {_cell(row[key])}</span>"
            for name, key in (("bkg", "background"), ("rms", "background_rms"), ("FWHM", "fwhm"),
                              ("elong", "elongation"), ("stars", "nstars"))
            if row[key] is not None
        )
        cards.append(
            f'<div class="frame" id="exposure-{row["exposure_id"]}" style="border-color:{colour}">{image}'
            f'<h3>#{_cell(row["frame_number"]) or row["exposure_id"]} {_cell(row["band"])} {_cell(row["frame_type"])}</h3>'
            f'<p>{_cell(row["night"])} {_cell(row["date_obs"])} {_cell(row["exptime"])} s</p><p>{facts}</p>'
            f'<p class="grade" style="color:{colour}">{_cell(row["grade"]) or "unreviewed"} {_cell(row["reason"])} '
            f'{_cell(row["flag_source"])} {_cell(row["note"])}</p>'
            f'{"<p class=problem>" + html.escape(row["metrics_error"]) + "</p>" if row["metrics_error"] else ""}</div>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>obsarch quality report</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; }}
.frames {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.frame {{ border: 4px solid; width: 270px; padding: 4px; font-size: 12px; }}
.frame img {{ width: 256px; }} .frame h3 {{ margin: 2px 0; font-size: 14px; }} .frame p {{ margin: 2px 0; }}
.problem {{ color: #b00; }} figure img {{ max-width: 100%; }}
</style></head><body>
<h1>Quality report</h1>
<h2>Science frames per night, band and grade</h2>
<table><tr><th>night</th><th>band</th><th>grade</th><th>frames</th></tr>{summary_html}</table>
<h2>Per band</h2>{plots}
<h2>Frames ({len(rows)})</h2><div class="frames">{''.join(cards)}</div>
</body></html>
"""
