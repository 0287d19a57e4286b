"""The Jinja2 environment shared by the web app and the static quality
report (``obsarch report quality --html``): one set of templates, one stylesheet."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import jinja2

from archive.formats import counted, frame_label, is_null, rounded
from processing.report import GRADE_COLOURS
from processing.runs import unmade_text

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def cell(value) -> str:
    """A value as a table shows it: blank for missing (NULL), ``nan`` for a float that is not a
    number; floats as ``obsarch query`` draws them in a terminal (:func:`archive.formats.rounded`)."""
    if is_null(value):
        return ""
    if isinstance(value, float):
        return rounded(value) if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def selection_string(value: str) -> str:
    """``value`` as a string of the selection language (archive/query.py): in single quotes, with
    backslashes and quotes escaped by a backslash. Not JSON: the language reads no \\uXXXX escapes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def clock(value) -> str:
    return value.strftime("%H:%M:%S") if isinstance(value, datetime) else ""


def colour(grade) -> str:
    return GRADE_COLOURS.get(grade, GRADE_COLOURS[None])


def pretty_json(value) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str)


def environment() -> jinja2.Environment:
    """Templates from the package; the stylesheet can be included inline (static pages)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(TEMPLATES), str(STATIC)]),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(frame_label=frame_label)
    env.filters.update(cell=cell, clock=clock, counted=counted, colour=colour, pretty_json=pretty_json, selection_string=selection_string,
                       unmade=unmade_text)
    return env
