"""Metric-against-time plots as SVG geometry: the template draws them, and
each point carries its exposure id so that clicking it selects the frame."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from archive.formats import frame_label

EPOCH = datetime(1970, 1, 1)

# The metrics a night is judged by, against time.
PLOTS = (("background", "background"), ("fwhm", "FWHM [px]"), ("elongation", "elongation"))
WIDTH, HEIGHT, MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 380, 150, 56, 22, 10


@dataclass
class Plot:
    metric: str
    label: str
    points: list[dict] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = MARGIN_LEFT
    bottom: int = HEIGHT - MARGIN_BOTTOM


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / count))
    step *= next(m for m in (1, 2, 5, 10) if (high - low) / (step * m) <= count)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


_TIME_STEPS_S = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _time_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Ticks on whole minutes or hours, at most about ``count`` of them."""
    step = next((s for s in _TIME_STEPS_S if (high - low) / s <= count), _TIME_STEPS_S[-1])
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _scale(low: float, high: float, start: float, end: float):
    span = (high - low) or 1.0
    return lambda value: start + (value - low) / span * (end - start)


def time_plot(rows: list[dict], metric: str, label: str) -> Plot | None:
    """Points (x, y, id, grade) of ``metric`` against ``date_obs``; None when no row has both."""
    usable = [r for r in rows if isinstance(r.get("date_obs"), datetime) and _finite(r.get(metric))]
    if not usable:
        return None
    plot = Plot(metric, label)
    times = [(r["date_obs"].replace(tzinfo=None) - EPOCH).total_seconds() for r in usable]
    values = [float(r[metric]) for r in usable]
    pad = (max(values) - min(values)) * 0.08 or abs(values[0]) * 0.05 or 1.0
    y_low, y_high = min(values) - pad, max(values) + pad
    t_pad = (max(times) - min(times)) * 0.03 or 60.0
    t_low, t_high = min(times) - t_pad, max(times) + t_pad
    x_of = _scale(t_low, t_high, plot.left, plot.width - 8)
    y_of = _scale(y_low, y_high, plot.bottom, MARGIN_TOP)
    for row, t, v in zip(usable, times, values, strict=True):
        clock = f"{row['date_obs'].hour:02d}:{row['date_obs'].minute:02d}:{row['date_obs'].second:02d}"  # strftime costs more
        plot.points.append({"x": round(x_of(t), 1), "y": round(y_of(v), 1), "id": row["id"], "grade": row.get("grade"),
                            "title": f"{frame_label(row.get('frame_number'), row['id'])} {clock} {label} {v:.4g}"})
    plot.y_ticks = [(round(y_of(v), 1), f"{v:.4g}") for v in _ticks(y_low, y_high)]
    plot.x_ticks = [(round(x_of(t), 1), (EPOCH + timedelta(seconds=t)).strftime("%H:%M")) for t in _time_ticks(t_low, t_high)]
    return plot


def _finite(value) -> bool:
    if type(value) in (float, int):  # the usual case, without the slower check against the abstract class
        return math.isfinite(value)
    return isinstance(value, numbers.Real) and math.isfinite(value)
