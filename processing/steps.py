"""What every processing step does the same way: pick its frames, choose
masters by rule, skip work already done, write products, record lineage."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine, select

from archive.db import transaction
from archive.exceptions import ObsarchError, SelectionError
from archive.models import Exposure, File, Product, Root
from archive.query import FIELDS, Node, all_of, compare, is_null, naming, select_exposures, shared_frames
from archive.query import ids as query_ids
from processing.runs import file_content


@dataclass
class Frame:
    """One input frame as a step sees it."""

    exposure_id: int
    file_id: int
    path: str
    content: str
    frame_type: str | None = None
    band: str | None = None
    readout_mode: str | None = None
    exptime: float | None = None
    mjd: float | None = None
    night: str | None = None
    frame_number: int | None = None
    instrument: str | None = None
    telescope: str | None = None
    object: str | None = None
    obsid: str | None = None
    date_obs: datetime | None = None
    ra: float | None = None
    dec: float | None = None
    xbin: int | None = None
    ybin: int | None = None
    gain: float | None = None
    ccd_temp: float | None = None
    detector: str | None = None
    n_detectors: int | None = None  # 0: no image at all (an X-ray event list, a header-only file); None: not known
    product: str | None = None


@dataclass
class StepSummary:
    made: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def resolve(engine: Engine, selection: Node | str | None, *conditions: Node | None, ids: list[int] | None = None) -> list[Frame]:
    """The frames of ``selection`` (a tree, or a person's text) and every one of
    ``conditions`` (trees), with what steps need; missing files left out. A
    frame number shared by raw exposures of several instruments is refused
    with the list."""
    tree = all_of(selection, *conditions, query_ids(ids) if ids is not None else None)
    with naming("selection", selection):  # only the person's text can hold an unknown name
        statement = select_exposures(
            tree, engine.dialect.name, File.id.label("file_id"), (Root.path + "/" + File.relpath).label("path"),
            File.header_hash, File.size, File.mtime_ns, File.status, *[getattr(Exposure, c) for c in _FRAME_COLUMNS],
            FIELDS["product"].expression().label("product"),
        ).order_by(Exposure.mjd, Exposure.id)
    with transaction(engine) as conn:
        refuse_ambiguous_frames(conn, tree)
        rows = conn.execute(statement).all()
    return [
        Frame(r.id, r.file_id, r.path, file_content(r), *[getattr(r, c) for c in _FRAME_COLUMNS], product=r.product)
        for r in rows if r.status != "missing"
    ]


_FRAME_COLUMNS = ("frame_type", "band", "readout_mode", "exptime", "mjd", "night", "frame_number", "instrument",
                  "telescope", "object", "obsid", "date_obs", "ra", "dec", "xbin", "ybin", "gain", "ccd_temp", "detector",
                  "n_detectors")


def leave_out_bad(engine: Engine, selection, *conditions: Node | None, include_bad: bool,
                  kind: str | None = None) -> tuple[list[Frame], list[Frame], list[str]]:
    """The frames of ``selection`` and ``conditions`` a master or a stack
    combines: those graded bad are left out unless ``include_bad``. Returns
    the frames, the ones graded bad, and what to say of them."""
    selected = resolve(engine, selection, *conditions)
    kept = {f.exposure_id for f in resolve(engine, selection, *conditions, compare("grade", "!=", "bad"))}
    bad = [f for f in selected if f.exposure_id not in kept]  # never-graded frames have grade 'ungraded'
    chosen = selected if include_bad else [f for f in selected if f.exposure_id in kept]
    if not bad:
        return chosen, bad, []
    names = some_names([_frame_name(f) for f in bad], 5)
    frames = f"{len(bad)} {kind + ' ' if kind else ''}frame{'s' if len(bad) > 1 else ''} graded bad"
    said = f"kept {frames} (--include-bad): {names}" if include_bad else f"left out {frames} (--include-bad keeps them): {names}"
    return chosen, bad, [said]


def _frame_name(frame: Frame) -> str:
    return str(frame.frame_number) if frame.frame_number is not None else Path(frame.path).name


def without_images(frames: list) -> tuple[list, list[str]]:
    """The frames that may hold an image, and what to say of those that hold
    none (X-ray event lists and spectra are tables, a header-only file has no
    pixels): a pixel step leaves them out, which is no failure of theirs.
    A frame whose detectors are not known (a catalog not renormalized since
    0009) is kept. Frames are anything with ``path`` and ``n_detectors``
    (a :class:`Frame`, a row)."""
    imageless = [f for f in frames if f.n_detectors == 0]
    if not imageless:
        return frames, []
    return [f for f in frames if f.n_detectors != 0], [no_image_note([Path(f.path).name for f in imageless])]


def some_names(names: list[str], shown: int = 3) -> str:
    """``a, b, c and 4 more``."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def no_image_note(names: list[str]) -> str:
    return f"left out {len(names)} exposure{'s' if len(names) > 1 else ''} with no image: {some_names(names)}"


def refuse_ambiguous_frames(conn, tree: Node | None, shared: list | None = None) -> None:
    """A frame number that raw exposures of several instruments share names
    no one frame: refuse it, listing them. ``shared``: the tree's
    :func:`archive.query.shared_frames`, when the caller has them."""
    if shared is None:
        shared = shared_frames(conn, tree)
    clashes = [(number, names) for number, _, names in shared if len(names) > 1]
    if clashes:
        listed = "; ".join(f"{number}: {', '.join(names)}" for number, names in clashes[:10])
        raise SelectionError(f"frame numbers name exposures of several instruments ({listed}); "
                             "add e.g. \"and instrument == '...'\" to say which")


def frames(engine: Engine, selection: Node | str | None, *conditions: Node | None) -> list[Frame]:
    """:func:`resolve` (kept for callers of the first name)."""
    return resolve(engine, selection, *conditions)


def mjd_of(engine: Engine, text: str) -> float:
    """What ``--to`` names, as an MJD: an ISO date (its noon, the middle of a
    night) or time; an MJD (a number with a decimal point); a frame number
    (of a raw exposure); or a selection (the mean time of its exposures)."""
    from archive.keywords import MJD_EPOCH, parse_fits_date

    text = str(text).strip()
    parsed = parse_fits_date(text) if re.match(r"^\d{4}-\d\d-\d\d", text) else None
    if parsed is not None:
        if not isinstance(parsed, datetime):
            parsed = datetime(parsed.year, parsed.month, parsed.day, 12)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
        return (parsed - MJD_EPOCH).total_seconds() / 86400
    if re.fullmatch(r"\d+\.\d*", text):
        return float(text)
    try:
        chosen = [f.mjd for f in resolve(engine, text) if f.mjd is not None]
    except SelectionError as exc:
        raise ObsarchError(f"--to {text!r}: give a date (2014-07-27), a time (2014-07-27T23:00), an MJD (56865.5), "
                           f"a frame number or a selection ({exc})") from exc
    if not chosen:
        raise ObsarchError(f"--to {text!r}: no exposure with a time matches it")
    return sum(chosen) / len(chosen)


def nearest(candidates: list[Frame], count: int, mjd: float) -> list[Frame]:
    """The ``count`` frames closest in time to ``mjd`` (frames without a time last)."""
    return sorted(candidates, key=lambda f: abs(f.mjd - mjd) if f.mjd is not None else float("inf"))[:count]


def one_value(frames_: list[Frame], attribute: str, what: str) -> str | None:
    values = sorted({getattr(f, attribute) for f in frames_}, key=lambda v: (v is None, str(v)))
    if len(values) > 1:
        shown = ", ".join("none" if v is None else str(v) for v in values)
        # frames without the value are selected with `is null`: "== 'None'" would match none of them
        null = f" (\"{attribute} is null\" for the frames without one)" if values[-1] is None else ""
        raise ObsarchError(f"the {what} frames are in several {attribute.replace('_', ' ')}s ({shown}); "
                           f"select one, e.g. \"{attribute} == '{values[0]}'\"{null}")
    return values[0] if values else None


def choose_master(engine: Engine, kind: str, frame: Frame, *, same_band: bool = False) -> Frame | None:
    """The master of ``kind`` for a frame: same read-out mode (and band for
    flats), nearest in time; the newest product at a path only."""
    conditions = [compare("product", "==", f"master_{kind}"), _same("readout_mode", frame.readout_mode)]
    if same_band:
        conditions.append(_same("band", frame.band))
    candidates = resolve(engine, None, *conditions)
    if not candidates:
        return None
    if frame.mjd is None:
        return candidates[-1]
    return nearest(candidates, 1, frame.mjd)[0]


def _same(name: str, value) -> Node:
    return is_null(name) if value is None else compare(name, "==", value)


def safe_name(text: str | None) -> str:
    """``text`` as a part of a file name; a value a frame does not have is
    ``none`` (str(None) gave master_bias_None_... of frames without a read-out mode)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "" if text is None else str(text)).strip("_") or "none"


def product_of(engine: Engine, file_id: int, kind: str) -> str | None:
    """The path of the newest product of ``kind`` made from file ``file_id``."""
    from archive.models import RunInput

    with transaction(engine) as conn:
        row = conn.execute(
            select(Product.path).join(RunInput, RunInput.run_id == Product.run_id)
            .where(RunInput.file_id == file_id, RunInput.role == "frame", Product.kind == kind)
            .order_by(Product.id.desc()).limit(1)
        ).first()
    return row.path if row else None


# Values a product takes from its inputs only when they all agree on them.
_SHARED = ("instrument", "telescope", "object", "obsid", "band", "readout_mode", "xbin", "ybin", "gain", "detector",
           "exptime")


def inherited(inputs: list[Frame], frame_type: str | None, *, exptime: bool = True) -> dict:
    """The normalized values of a product made from ``inputs``: what they all
    share (instrument, band, read-out mode whatever keyword it came from,
    exposure time when ``exptime``...), the middle of their times and the
    night of the input nearest that middle, and ``frame_type``. Never a
    frame number."""
    values: dict = {"frame_type": frame_type}
    for name in _SHARED if exptime else _SHARED[:-1]:
        found = {getattr(f, name) for f in inputs}
        values[name] = found.pop() if len(found) == 1 else None
    for name in ("ra", "dec"):  # a pointing shared to within an arcsecond
        found = [getattr(f, name) for f in inputs]
        if found and None not in found and max(found) - min(found) < 1 / 3600:
            values[name] = float(sum(found) / len(found))
    temperatures = [f.ccd_temp for f in inputs]
    if temperatures and None not in temperatures:  # the mean: a master's temperature is its inputs'
        values["ccd_temp"] = float(sum(temperatures) / len(temperatures))
    times = [f for f in inputs if f.mjd is not None]
    if times:
        middle = (min(f.mjd for f in times) + max(f.mjd for f in times)) / 2
        values["mjd"] = middle
        values["night"] = min(times, key=lambda f: abs(f.mjd - middle)).night
        from datetime import timedelta

        from archive.keywords import MJD_EPOCH

        values["date_obs"] = MJD_EPOCH + timedelta(days=middle)
    return values
