"""DS9 region files (text, and FITS region tables) attached to exposures.

Files are read with the ``regions`` package. Its DS9 reader knows sky
frames (fk5, icrs, galactic, ...) and ``image``, not ``physical``; a
physical-coordinate file is read as pixel shapes and recorded with frame
``physical`` (its numbers are physical pixels, not image pixels).
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, insert, select, update

from archive.db import transaction
from archive.exceptions import ObsarchError
from archive.ingest import utcnow
from archive.models import Exposure, File, RegionFile, Root
from archive.query import select_exposures

_PHYSICAL = re.compile(r"^\s*physical\s*(;|$)", re.IGNORECASE | re.MULTILINE)
_SEPARATORS = "_.-"


@dataclass
class RegionInfo:
    """What a region file holds."""

    path: str
    format: str  # ds9 | fits
    frame: str | None  # fk5, icrs, galactic, ..., image, physical
    n_shapes: int
    shapes: str  # "circle x2, polygon"
    skipped: int = 0  # shapes the regions package could not read


class RegionReadError(ObsarchError):
    """A region file with no region the regions package can read."""


def read_region_file(path: str | Path) -> RegionInfo:
    """Read a DS9 text or FITS region file; raise :class:`RegionReadError`
    naming the file when nothing in it can be read."""
    path = Path(path)
    try:
        if _is_fits(path):
            regions, frame, skipped = _read_fits(path)
            kind = "fits"
        else:
            regions, frame, skipped = _read_ds9(path)
            kind = "ds9"
    except (OSError, UnicodeDecodeError) as exc:
        raise RegionReadError(f"{path}: cannot read the region file: {exc}") from exc
    except ValueError as exc:
        raise RegionReadError(f"{path}: not a region file the regions package can read: {exc}") from exc
    if not regions:
        extra = f" ({skipped} shapes it cannot read)" if skipped else ""
        raise RegionReadError(f"{path}: no region the regions package can read{extra}")
    counts = Counter(type(r).__name__.replace("Sky", "").replace("Pixel", "").replace("Region", "").lower() for r in regions)
    shapes = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(counts.items()))
    return RegionInfo(str(path.resolve()), kind, frame, len(regions), shapes, skipped)


def _is_fits(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(9) == b"SIMPLE  ="


def _read_ds9(path: Path):
    from regions import Regions

    text = path.read_text()
    physical = bool(_PHYSICAL.search(text))
    if physical:  # the regions package knows no physical frame: read the numbers as pixels
        text = _PHYSICAL.sub(lambda m: "image" + m.group(1), text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        regions = list(Regions.parse(text, format="ds9"))
    skipped = sum("skipping" in str(w.message) for w in caught)
    return regions, "physical" if physical else _frame(regions), skipped


def _frame(regions) -> str | None:
    for region in regions:
        for attribute in ("center", "vertices", "start"):
            point = getattr(region, attribute, None)
            if point is not None:
                return point.frame.name if hasattr(point, "frame") else "image"
    return None


def _read_fits(path: Path):
    """Every table HDU with HDUCLAS1 = REGION (a CXC SRCREG/BKGREG pair, an
    XMM REGnnnnn), in physical pixels as the standard has them."""
    from astropy.io import fits
    from astropy.table import QTable
    from regions import Regions

    regions = []
    with fits.open(path) as hdul:
        names = [i for i, h in enumerate(hdul) if str(h.header.get("HDUCLAS1", "")).strip().upper() == "REGION"
                 or str(h.header.get("EXTNAME", "")).strip().upper() == "REGION"]
    if not names:
        raise ValueError("no REGION extension (HDUCLAS1 = 'REGION')")
    for index in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = QTable.read(path, hdu=index)
        regions.extend(Regions.parse(_normalized(table), format="fits"))
    return regions, "physical", 0


def _normalized(table):
    """CXC tables give ROTANG two values per row (the second masked) and a
    unit of pix; the FITS region standard has one angle in degrees."""
    import astropy.units as u
    import numpy as np

    if "ROTANG" in table.colnames:
        angle = table["ROTANG"]
        values = np.ma.getdata(getattr(angle, "value", angle))
        table["ROTANG"] = (values[:, 0] if values.ndim > 1 else values) * u.deg
    return table


# -- in the catalog ----------------------------------------------------------------


def attach(engine: Engine, path: str | Path, selection: str, how: str = "attach") -> tuple[RegionInfo, int]:
    """Attach the region file at ``path`` to every exposure of ``selection``;
    returns what the file holds and how many exposures it was attached to
    (attaching again updates the row)."""
    info = read_region_file(path)
    statement = select_exposures(selection, engine.dialect.name)
    with transaction(engine) as conn:
        ids = list(conn.execute(statement).scalars())
    if not ids:
        raise ObsarchError(f"no exposure matches {selection!r}")
    with transaction(engine, write=True) as conn:
        _store(conn, info, ids, how)
    return info, len(ids)


def _store(conn, info: RegionInfo, exposure_ids: list[int], how: str) -> None:
    values = {"format": info.format, "frame": info.frame, "n_shapes": info.n_shapes, "shapes": info.shapes,
              "how": how, "created_at": utcnow()}
    for exposure_id in exposure_ids:
        found = conn.execute(select(RegionFile.id).where(RegionFile.exposure_id == exposure_id,
                                                         RegionFile.path == info.path)).scalar()
        if found is None:
            conn.execute(insert(RegionFile).values(exposure_id=exposure_id, path=info.path, **values))
        else:
            conn.execute(update(RegionFile).where(RegionFile.id == found).values(**values))


def regions_of(engine: Engine, exposure_id: int) -> list[dict]:
    """The region files attached to an exposure, oldest first."""
    with transaction(engine) as conn:
        rows = conn.execute(select(RegionFile.__table__).where(RegionFile.exposure_id == exposure_id).order_by(RegionFile.id)).all()
        return [{"path": r.path, "format": r.format, "frame": r.frame, "n_shapes": r.n_shapes, "shapes": r.shapes,
                 "how": r.how} for r in rows]


def owner_of(region_name: str, data_names: list[str]) -> str | None:
    """The data file a region file's name says it belongs to: the one whose
    name (without extensions) is the region's, else the one whose name
    starts with the region's name less its last word (``acisf07999_r0035_reg3``
    -> ``acisf07999_r0035_regevt3_srcimg.fits``); None when no name, or
    more than one, fits."""
    stem = _stem(region_name)
    exact = [name for name in data_names if _stem(name) == stem]
    if exact:
        return exact[0] if len(exact) == 1 else None
    cut = max(stem.rfind(c) for c in _SEPARATORS)
    if cut <= 0:
        return None
    base = stem[:cut]
    same = [name for name in data_names if _stem(name) == base]
    if same:
        return same[0] if len(same) == 1 else None
    found = [name for name in data_names if _stem(name).startswith(base) and _stem(name)[len(base) : len(base) + 1] in tuple(_SEPARATORS)]
    return found[0] if len(found) == 1 else None


def _stem(name: str) -> str:
    lower = name
    for suffix in (".gz", ".fz"):
        if lower.lower().endswith(suffix):
            lower = lower[: -len(suffix)]
    return lower.rsplit(".", 1)[0] if "." in lower else lower


def attach_by_name(engine: Engine, run_id: int) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]]]:
    """Attach the region files next to the files an ingest run read
    (``*.reg``, and FITS files the X-ray summaries found to hold only REGION
    tables) to the catalogued data file their name names. Returns (region
    path, data path, exposure id) attached, and (path, problem) of region
    files that could not be read. A directory without a region file costs
    one listing."""
    from archive.models import XraySummary

    with transaction(engine) as conn:
        read = conn.execute(select(File.root_id, Root.path, File.relpath, XraySummary.kind).join(Root, Root.id == File.root_id)
                            .outerjoin(XraySummary, XraySummary.file_id == File.id).where(File.run_id == run_id)).all()
    # a stored relpath is normalized ("sub/a.fits", never "./" or a trailing "/"): its folder is
    # the text before the last "/", which costs a first ingest of 3,000 files 20x less than a Path each
    directories = {(root_id, root, os.path.dirname(relpath) or ".") for root_id, root, relpath, _ in read}
    with_fits_regions = {(root_id, os.path.dirname(relpath) or ".") for root_id, _, relpath, kind in read if kind == "region"}
    attached, problems = [], []
    for root_id, root, folder in sorted(directories):
        directory = Path(root) / folder
        try:
            texts = [e.name for e in os.scandir(directory) if e.name.lower().endswith(".reg") and e.is_file()]
        except OSError:
            continue
        if not texts and (root_id, folder) not in with_fits_regions:
            continue
        prefix = "" if folder == "." else folder + "/"
        with transaction(engine) as conn:  # the directory's files: a range of the (root, relpath) key
            rows = conn.execute(
                select(Exposure.id, File.relpath, XraySummary.kind).join(File, File.id == Exposure.file_id)
                .outerjoin(XraySummary, XraySummary.file_id == File.id)
                .where(File.root_id == root_id, File.status == "present", File.relpath >= prefix, File.relpath < prefix + "\uffff")
            ).all()
        names = {relpath[len(prefix):]: (exposure_id, kind) for exposure_id, relpath, kind in rows if "/" not in relpath[len(prefix):]}
        fits_regions = [name for name, (_, kind) in names.items() if kind == "region"]
        data = [name for name in names if name not in fits_regions]
        for region in sorted(texts + fits_regions):
            owner = owner_of(region, data)
            if owner is None:
                continue
            try:
                info = read_region_file(directory / region)
            except RegionReadError as exc:
                problems.append((str(directory / region), str(exc)))
                continue
            with transaction(engine, write=True) as conn:
                _store(conn, info, [names[owner][0]], "ingest")
            attached.append((str(directory / region), str(directory / owner), names[owner][0]))
    return attached, problems
