"""What every processing step does the same way: pick its frames, choose
masters by rule, skip work already done, write products, record lineage."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, select

from archive.db import transaction
from archive.exceptions import ObsarchError
from archive.models import Exposure, File, Product, Root
from archive.query import FIELDS, select_exposures
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
    product: str | None = None


@dataclass
class StepSummary:
    made: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def frames(engine: Engine, selection: str | None, *extra: str) -> list[Frame]:
    """The frames of ``selection`` (and ``extra`` conditions), with what steps need."""
    text = " and ".join(f"({part})" for part in (selection, *extra) if part and part.strip()) or None
    statement = select_exposures(
        text, engine.dialect.name, File.id.label("file_id"), (Root.path + "/" + File.relpath).label("path"),
        File.header_hash, File.size, File.mtime_ns, File.status, Exposure.frame_type, Exposure.band,
        Exposure.readout_mode, Exposure.exptime, Exposure.mjd, Exposure.night, Exposure.frame_number,
        FIELDS["product"].expression().label("product"),
    ).order_by(Exposure.mjd, Exposure.id)
    with transaction(engine) as conn:
        rows = conn.execute(statement).all()
    return [
        Frame(r.id, r.file_id, r.path, file_content(r), r.frame_type, r.band, r.readout_mode, r.exptime, r.mjd, r.night,
              r.frame_number, r.product)
        for r in rows if r.status != "missing"
    ]


def mjd_of(text: str) -> float:
    """An ISO date or time -> MJD (a date means its noon, the middle of a night)."""
    from archive.keywords import MJD_EPOCH, parse_fits_date

    parsed = parse_fits_date(text)
    if parsed is None:
        raise ObsarchError(f"--to {text!r}: give a date (2014-07-27) or time (2014-07-27T23:00)")
    if not isinstance(parsed, datetime):
        parsed = datetime(parsed.year, parsed.month, parsed.day, 12)
    return (parsed.replace(tzinfo=None) - MJD_EPOCH).total_seconds() / 86400


def nearest(candidates: list[Frame], count: int, mjd: float) -> list[Frame]:
    """The ``count`` frames closest in time to ``mjd`` (frames without a time last)."""
    return sorted(candidates, key=lambda f: abs(f.mjd - mjd) if f.mjd is not None else float("inf"))[:count]


def one_value(frames_: list[Frame], attribute: str, what: str) -> str | None:
    values = sorted({getattr(f, attribute) for f in frames_}, key=str)
    if len(values) > 1:
        raise ObsarchError(f"the {what} frames are in several {attribute.replace('_', ' ')}s ({', '.join(map(str, values))}); "
                           f"select one, e.g. \"{attribute} == '{values[0]}'\"")
    return values[0] if values else None


def choose_master(engine: Engine, kind: str, frame: Frame, *, same_band: bool = False) -> Frame | None:
    """The master of ``kind`` for a frame: same read-out mode (and band for
    flats), nearest in time; the newest product at a path only."""
    conditions = [f"product == 'master_{kind}'"]
    if frame.readout_mode is not None:
        conditions.append(f"readout_mode == '{_quote(frame.readout_mode)}'")
    if same_band:
        conditions.append(f"band == '{_quote(frame.band)}'" if frame.band is not None else "band is null")
    candidates = frames(engine, " and ".join(conditions))
    if not candidates:
        return None
    if frame.mjd is None:
        return candidates[-1]
    return nearest(candidates, 1, frame.mjd)[0]


def _quote(text: str) -> str:
    return str(text).replace("'", "''")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("_") or "none"


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
