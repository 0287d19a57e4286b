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
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, insert, select, update

from archive.db import rows_in, transaction, utcnow
from archive.exceptions import ObsarchError
from archive.models import Exposure, File, RegionFile, Root
from archive.query import named, select_exposures

_PHYSICAL = re.compile(r"^\s*physical\s*(;|$)", re.IGNORECASE | re.MULTILINE)
_SEPARATORS = "_.-"


@dataclass
class RegionInfo:
    """What a region file holds.

    ``n_shapes`` counts every shape read; ``n_excluded`` those that cut a
    hole (DS9 ``-circle(...)``, FITS ``!CIRCLE``) and ``n_background`` the
    background ones (a CXC BKGREG table, DS9 ``# background``, ``source=0``
    or a ``global`` line saying so), which
    ``shapes`` names apart: ``"source: ellipse; background: ellipse x3 (2 excluded)"``.
    """

    path: str
    format: str  # ds9 | fits
    frame: str | None  # fk5, icrs, galactic, ..., image, physical
    n_shapes: int
    shapes: str  # "circle x2 (1 excluded), polygon"
    skipped: int = 0  # shapes the regions package could not read
    n_excluded: int = 0
    n_background: int = 0
    sky_points: object = field(default=None, repr=False)  # SkyCoord (ICRS) of the shapes' centres and vertices
    made_for: dict[str, str] = field(default_factory=dict)  # a FITS region file's TELESCOP and OBS_ID: {"telescope": ..., "obsid": ...}


class RegionReadError(ObsarchError):
    """A region file with no region the regions package can read."""


class RegionPlacementError(ObsarchError):
    """A sky region file far from the pointing of an exposure it was to be attached to."""


def read_region_file(path: str | Path) -> RegionInfo:
    """Read a DS9 text or FITS region file; raise :class:`RegionReadError`
    naming the file when nothing in it can be read."""
    from regions.io.fits.core import FITSParserError

    path = Path(path)
    try:
        made_for = {}
        if _is_fits(path):
            shapes, frame, skipped, made_for = _read_fits(path)
            kind = "fits"
        else:
            with open(path, "rb") as handle:
                head = handle.read(4096)
            if b"\0" in head or head[:2] == b"\x1f\x8b":  # its bytes would reach the terminal in the parser's message
                raise RegionReadError(f"{path}: not a region file (binary or compressed data)")
            shapes, frame, skipped = _read_ds9(path)
            kind = "ds9"
    except (OSError, UnicodeDecodeError) as exc:
        raise RegionReadError(f"{path}: cannot read the region file: {exc}") from exc
    except (ValueError, FITSParserError) as exc:
        raise RegionReadError(f"{path}: not a region file the regions package can read: {exc}") from exc
    if not shapes:
        extra = f" ({skipped} shapes it cannot read)" if skipped else ""
        raise RegionReadError(f"{path}: no region the regions package can read{extra}")
    for number, shape in enumerate(shapes, start=1):
        if not _finite(shape.region):  # circle(nan,nan,5"): no position to check, nothing to extract
            raise RegionReadError(f"{path}: shape {number} ({shape.name}) has a position or size that is not a finite number")
    return RegionInfo(str(path.resolve()), kind, frame, len(shapes), describe(shapes), skipped,
                      n_excluded=sum(s.excluded for s in shapes), n_background=sum(s.role == "background" for s in shapes),
                      sky_points=_sky_points([s.region for s in shapes]), made_for=made_for)


@dataclass
class _Shape:
    region: object  # a regions.Region
    role: str | None  # source | background | None (the file does not say)
    excluded: bool

    @property
    def name(self) -> str:
        return type(self.region).__name__.replace("Sky", "").replace("Pixel", "").replace("Region", "").lower()


def describe(shapes: list[_Shape]) -> str:
    """``"circle x2 (1 excluded), polygon"``; by role when the file gives
    roles: ``"source: circle; background: annulus"``."""
    roles = list(dict.fromkeys(s.role for s in shapes))
    if roles == [None]:
        return _tally(shapes)
    order = sorted(roles, key=lambda r: ("source", "background", None).index(r))
    return "; ".join(f"{role or 'other'}: {_tally([s for s in shapes if s.role == role])}" for role in order)


def _tally(shapes: list[_Shape]) -> str:
    counts = Counter(s.name for s in shapes)
    excluded = Counter(s.name for s in shapes if s.excluded)
    parts = []
    for name, n in sorted(counts.items()):
        text = f"{name} x{n}" if n > 1 else name
        if excluded[name]:
            text += " (excluded)" if n == 1 else f" ({excluded[name]} excluded)"
        parts.append(text)
    return ", ".join(parts)


def _is_fits(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(9) == b"SIMPLE  ="


# A shape's properties (after '#') or a global line, up to the end of the line
# or a ';', which starts the next shape (outside braces and quotes); a brace
# group before them (a text shape's own text) is matched only to be skipped.
# A failed brace stops at the next brace: unclosed ones cost linear time.
_PROPERTIES = re.compile(r"\{[^{}\n]*\}|#(?:\{[^{}\n]*\}|'[^'\n]*'|\"[^\"\n]*\"|[^\n;])*|^[ \t]*global\b(?:\{[^{}\n]*\}|'[^'\n]*'|\"[^\"\n]*\"|[^\n;])*",
                         re.IGNORECASE | re.MULTILINE)
_SOURCE_SET = re.compile(r"(?<![\w])source\s*=", re.IGNORECASE)
_BACKGROUND_SET = re.compile(r"(?<![\w])background\s*=\s*1\b", re.IGNORECASE)
_QUOTED = re.compile(r"\{[^{}]*\}|'[^']*'|\"[^\"]*\"")
_BARE_ROLE = re.compile(r"(?<![\w=])(background|source)(?![\w=])", re.IGNORECASE)


def _mark_roles(text: str) -> str:
    """DS9 says a shape's role with a bare word, ``circle(...) # background``
    (or ``# source``), or ``source=0`` / ``source=1``; a ``global`` line sets
    it for the shapes that do not. The regions package drops the bare words
    and keeps ``source=``, where a shape's own value wins over the global
    one, so each bare word (and a ``background=1``) is written as its
    ``source=`` value, in the properties of its own shape: a ``;`` ends
    them, as it ends the shape."""
    def mark(match: re.Match) -> str:
        properties = match.group(0)
        if properties.startswith("{"):  # a shape's own text, text(10,10,{a # b}): no properties in it
            return properties
        plain = _QUOTED.sub("", properties)  # a text={background} label is no role
        if _SOURCE_SET.search(plain):
            return properties
        if _BACKGROUND_SET.search(plain):
            return properties + " source=0"
        if not (bare := _BARE_ROLE.search(plain)):
            return properties
        return properties + (" source=0" if bare.group(1).lower() == "background" else " source=1")

    return _PROPERTIES.sub(mark, text)


def _region_text(path: Path) -> str:
    """A DS9 file's text: UTF-8 (a byte-order mark dropped), else Latin-1,
    as DS9 of old wrote labels; the shapes themselves are ASCII either way,
    so one odd byte in a label does not cost the file."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_ds9(path: Path):
    from regions import Regions

    text = _mark_roles(_region_text(path))
    physical = bool(_PHYSICAL.search(text))
    if physical:  # the regions package knows no physical frame: read the numbers as pixels
        text = _PHYSICAL.sub(lambda m: "image" + m.group(1), text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        regions = list(Regions.parse(text, format="ds9"))
    skipped = sum("skipping" in str(w.message) for w in caught)
    background = [r.meta.get("source") == 0 for r in regions]
    shapes = [_Shape(r, "background" if b else "source" if any(background) else None, r.meta.get("include") == 0)
              for r, b in zip(regions, background)]
    return shapes, "physical" if physical else _frame(regions), skipped


def _frame(regions) -> str | None:
    for region in regions:
        for attribute in ("center", "vertices", "start"):
            point = getattr(region, attribute, None)
            if point is not None:
                return point.frame.name if hasattr(point, "frame") else "image"
    return None


def _finite(region) -> bool:
    """Whether every position (centre, vertices, ends) and size of ``region`` is a finite number."""
    import numpy as np

    values = []
    for attribute in ("center", "vertices", "start", "end"):
        point = getattr(region, attribute, None)
        if point is None:
            continue
        if hasattr(point, "icrs") or hasattr(point, "spherical"):  # a SkyCoord, in whatever frame
            values += [np.atleast_1d(point.spherical.lon.deg), np.atleast_1d(point.spherical.lat.deg)]
        else:  # a PixCoord
            values += [np.atleast_1d(point.x), np.atleast_1d(point.y)]
    for attribute in ("radius", "inner_radius", "outer_radius", "width", "height", "angle"):
        size = getattr(region, attribute, None)
        if size is not None:
            values.append(np.atleast_1d(getattr(size, "value", size)))
    return all(np.isfinite(np.asarray(v, dtype=float)).all() for v in values)


def _sky_points(regions):
    """Every sky shape's centre (a polygon's vertices, a line's ends) in
    ICRS, or None when no shape is on the sky."""
    import numpy as np
    from astropy.coordinates import SkyCoord

    ra, dec = [], []
    for region in regions:
        for attribute in ("center", "vertices", "start", "end"):
            point = getattr(region, attribute, None)
            if isinstance(point, SkyCoord):
                ra.extend(np.atleast_1d(point.icrs.ra.deg))
                dec.extend(np.atleast_1d(point.icrs.dec.deg))
    return SkyCoord(ra, dec, unit="deg", frame="icrs") if ra else None


def _read_fits(path: Path):
    """Every table HDU with HDUCLAS1 = REGION (a CXC SRCREG/BKGREG pair, an
    XMM REGnnnnn), in physical pixels as the standard has them. Rows are
    parsed one at a time: the regions package drops the ``!`` of an
    excluded shape when the table has a COMPONENT column."""
    from astropy.io import fits
    from astropy.table import QTable

    with warnings.catch_warnings():  # what astropy warns of a bad file (many lines) is told in one below
        warnings.simplefilter("ignore")
        with fits.open(path) as hdul:
            found = [(i, _role(h.header)) for i, h in enumerate(hdul)
                     if str(h.header.get("HDUCLAS1", "")).strip().upper() == "REGION"
                     or str(h.header.get("EXTNAME", "")).strip().upper() == "REGION"]
            made_for = _made_for([hdul[i].header for i, _ in found] + [hdul[0].header])
    if not found:
        raise ValueError("no REGION extension (HDUCLAS1 = 'REGION')")
    shapes, skipped = [], 0
    for index, role in found:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = _normalized(QTable.read(path, hdu=index))
        more, missed = _fits_rows(table, role)
        shapes.extend(more)
        skipped += missed
    return shapes, "physical", skipped, made_for


def _made_for(headers) -> dict[str, str]:
    """The telescope and observation a FITS region file names (TELESCOP,
    OBS_ID or OBSID), from its REGION tables first, then its primary header."""
    found = {}
    for name, keywords in (("telescope", ("TELESCOP",)), ("obsid", ("OBS_ID", "OBSID"))):
        values = (str(h.get(k, "")).strip() for h in headers for k in keywords)
        value = next((v for v in values if v and v.upper() not in ("NONE", "UNKNOWN")), None)
        if value:
            found[name] = value
    return found


# Names one telescope goes by in TELESCOP, as compared (upper case, letters and digits only).
_TELESCOPE_NAMES = {"XMMNEWTON": "XMM", "AXAF": "CHANDRA", "SRG": "EROSITA", "SRGEROSITA": "EROSITA"}


def _telescope(name: str) -> str:
    key = re.sub(r"[^A-Z0-9]", "", name.upper())
    return _TELESCOPE_NAMES.get(key, key)


def _same(ours: str, theirs: str | None, name: str) -> bool:
    """Whether a region file's telescope or obsid is an exposure's: case
    and leading zeros aside (Chandra's OBS_ID '7999' is obsid 07999), and
    a telescope's other spellings (XMM, XMM-Newton, XMM_NEWTON; NuSTAR,
    NUSTAR; SRG, eROSITA); an exposure that does not say is not contradicted."""
    if theirs is None or not str(theirs).strip():
        return True
    a, b = ours.strip().upper(), str(theirs).strip().upper()
    if name == "telescope":
        return _telescope(a) == _telescope(b)
    if a.isdigit() and b.isdigit():
        return int(a) == int(b)
    return a == b


def _other(info: RegionInfo, telescope: str | None, obsid: str | None) -> str | None:
    """Why a region file made for another telescope or observation does
    not belong to an exposure; None when nothing says so."""
    theirs = {"telescope": telescope, "obsid": obsid}
    wrong = [name for name, value in info.made_for.items() if not _same(value, theirs[name], name)]
    if not wrong:
        return None
    def said(values: dict) -> str:
        return " ".join(f"{'obsid ' if name == 'obsid' else ''}{values[name]}" for name in ("telescope", "obsid") if values.get(name))
    return f"made for {said(info.made_for)}, the exposure is {said(theirs)}"


def _role(header) -> str | None:
    """source or background from HDUCLAS2 (SRC, BKG), else from EXTNAME
    (SRCREG, BKGREG); None when the HDU does not say."""
    kind = str(header.get("HDUCLAS2", "")).strip().upper()
    name = str(header.get("EXTNAME", "")).strip().upper()
    if kind == "SRC" or (not kind and name.startswith("SRC")):
        return "source"
    if kind in ("BKG", "BKGD", "BACKGROUND") or (not kind and name.startswith("BKG")):
        return "background"
    return None


def _fits_rows(table, role: str | None) -> tuple[list[_Shape], int]:
    from regions import Regions

    names = [str(s).strip() for s in table["SHAPE"]] if "SHAPE" in table.colnames else ["point"] * len(table)
    shapes, skipped = [], 0
    for row, name in enumerate(names):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parsed = list(Regions.parse(table[row : row + 1], format="fits"))
        skipped += sum("skipping" in str(w.message) for w in caught)
        shapes.extend(_Shape(region, role, name.startswith("!")) for region in parsed)
    return shapes, skipped


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


LIMIT_DEG = 1.0
_SKY_AXES = ("RA", "GLON", "ELON")
_WCS_KEYS = ("CTYPE1", "CTYPE2", "NAXIS1", "NAXIS2", "CDELT1", "CDELT2", "CD1_1", "CD1_2", "CD2_1", "CD2_2")


@dataclass
class Placement:
    """Where a region file lies against one exposure's pointing.

    ``separation_deg``: the nearest shape centre (or polygon vertex) from
    the exposure's ra/dec; None when it could not be checked (pixel
    coordinates, no ra/dec). ``limit_deg``: the larger of :data:`LIMIT_DEG`
    and the exposure's field radius (half the diagonal of the field its
    celestial WCS spans: an image's NAXIS x CDELT/CD, an event table's
    TLMIN..TLMAX x TCDLT)."""

    exposure_id: int
    name: str  # the exposure's file, relative to its root
    separation_deg: float | None
    limit_deg: float | None
    note: str  # as shown: "0.0021 deg from the pointing" or "position not checked: ..."
    other: str | None = None  # made for another telescope or obsid (a FITS region file's TELESCOP, OBS_ID): why

    @property
    def far(self) -> bool:
        return self.separation_deg is not None and self.separation_deg > self.limit_deg

    @property
    def refused(self) -> bool:
        """Not attached without --force: far from the pointing, or made for another observation."""
        return self.far or self.other is not None


def place(conn, info: RegionInfo, exposure_ids: list[int]) -> list[Placement]:
    """Check a region file's shapes against each exposure's pointing."""
    rows = rows_in(conn, select(Exposure.id, File.relpath, Exposure.ra, Exposure.dec, Exposure.file_id, Exposure.telescope,
                                Exposure.obsid).join(File, File.id == Exposure.file_id), Exposure.id, exposure_ids)
    if info.sky_points is None:
        why = f"{info.frame} coordinates" if info.frame else "no shape on the sky"
        return [Placement(r.id, r.relpath, None, None, f"position not checked: {why}", _other(info, r.telescope, r.obsid)) for r in rows]
    from astropy.coordinates import SkyCoord

    placements = []
    for row in sorted(rows, key=lambda r: r.id):
        other = _other(info, row.telescope, row.obsid)
        if row.ra is None or row.dec is None:
            placements.append(Placement(row.id, row.relpath, None, None, "position not checked: the exposure has no ra/dec", other))
            continue
        pointing = SkyCoord(row.ra, row.dec, unit="deg", frame="icrs")
        separation = float(info.sky_points.separation(pointing).deg.min())
        limit = max(LIMIT_DEG, field_radius_deg(conn, row.file_id) or 0.0)
        placements.append(Placement(row.id, row.relpath, separation, limit, f"{separation:.3g} deg from the pointing", other))
    return placements


def field_radius_deg(conn, file_id: int) -> float | None:
    """Half the diagonal of the largest sky field a file's HDUs span, from
    the catalogued header cards; None when no HDU has a celestial WCS."""
    from sqlalchemy import or_

    from archive.models import HeaderCard

    cards: dict[int, dict[str, object]] = {}
    for hdu, keyword, text, number in conn.execute(
        select(HeaderCard.hdu_index, HeaderCard.keyword, HeaderCard.value_text, HeaderCard.value_num)
        .where(HeaderCard.file_id == file_id, or_(HeaderCard.keyword.in_(_WCS_KEYS), HeaderCard.keyword.like("TC%"),
                                                   HeaderCard.keyword.like("TL%")))
    ):
        cards.setdefault(hdu, {})[keyword] = number if number is not None else (text or "").strip().upper()
    radii = [r for hdu in cards.values() for r in (_image_radius(hdu), _table_radius(hdu)) if r]
    return max(radii) if radii else None


def _image_radius(cards: dict) -> float | None:
    import math

    if not str(cards.get("CTYPE1", "")).startswith(_SKY_AXES):
        return None
    sizes = []
    for axis in (1, 2):
        n = cards.get(f"NAXIS{axis}")
        scale = cards.get(f"CDELT{axis}")
        if not isinstance(scale, float):
            pair = (cards.get(f"CD1_{axis}"), cards.get(f"CD2_{axis}"))
            scale = math.hypot(*pair) if all(isinstance(v, float) for v in pair) else None
        if not isinstance(n, float) or scale is None:
            return None
        sizes.append(n * abs(scale))
    return min(math.hypot(*sizes) / 2, 180.0)


def _table_radius(cards: dict) -> float | None:
    """An event table's sky pixels (TCTYPn RA---TAN on X): the span
    TLMIN..TLMAX of the two sky columns."""
    import math

    sizes = []
    for keyword, value in cards.items():
        if keyword.startswith("TCTYP") and str(value).startswith(_SKY_AXES + ("DEC", "GLAT", "ELAT")):
            n = keyword[5:]
            low, high, step = cards.get(f"TLMIN{n}"), cards.get(f"TLMAX{n}"), cards.get(f"TCDLT{n}")
            if all(isinstance(v, float) for v in (low, high, step)):
                sizes.append((high - low) * abs(step))
    return min(math.hypot(*sizes[:2]) / 2, 180.0) if len(sizes) >= 2 else None


def refusal(refused: list[Placement], hint: str = "--force attaches it anyway") -> str:
    """Why a region file is not attached (the caller names the file): made
    for another observation than an exposure's, else the farthest-off
    exposure, its separation and the limit."""
    other = [p for p in refused if p.other]
    if other:
        more = f" (and {len(other) - 1} more exposure{'s' if len(other) > 2 else ''})" if len(other) > 1 else ""
        return f"{other[0].other}: {other[0].name} (exposure {other[0].exposure_id}){more}: not attached ({hint})"
    return too_far(refused, hint)


def too_far(far: list[Placement], hint: str = "--force attaches it anyway") -> str:
    """Why a region file far from the pointing is not attached: the
    farthest-off exposure, its separation and the limit."""
    worst = max(far, key=lambda p: p.separation_deg)
    more = f" and of {len(far) - 1} more exposure{'s' if len(far) > 2 else ''}" if len(far) > 1 else ""
    return (f"nearest shape {worst.separation_deg:.3g} deg from the pointing of {worst.name} (exposure {worst.exposure_id})"
            f"{more}, more than the {worst.limit_deg:.3g} deg limit: not attached ({hint})")


def attach(engine: Engine, path: str | Path, selection: str, how: str = "attach",
           force: bool = False) -> tuple[RegionInfo, list[Placement]]:
    """Attach the region file at ``path`` to every exposure of ``selection``;
    returns what the file holds and where it lies against each exposure
    (attaching again updates the row). A sky-coordinate file whose nearest
    shape is farther than :attr:`Placement.limit_deg` from an exposure's
    pointing is refused with :class:`RegionPlacementError` (nothing is
    attached) unless ``force``."""
    named(selection, "regions attach")
    info = read_region_file(path)
    statement = select_exposures(selection, engine.dialect.name)
    with transaction(engine) as conn:
        ids = list(conn.execute(statement).scalars())
        if not ids:
            raise ObsarchError(f"no exposure matches {selection!r}")
        placements = place(conn, info, ids)
    refused = [p for p in placements if p.refused]
    if refused and not force:
        raise RegionPlacementError(f"{info.path}: {refusal(refused)}")
    for p in refused:
        p.note += f", more than {p.limit_deg:.3g} deg" if p.far else ""
        p.note += f"; {p.other}" if p.other else ""
        p.note += ": attached with --force"
    with transaction(engine, write=True) as conn:
        _store(conn, info, placements, how)
    return info, placements


def _store(conn, info: RegionInfo, placements: list[Placement], how: str) -> None:
    values = {"format": info.format, "frame": info.frame, "n_shapes": info.n_shapes, "shapes": info.shapes,
              "n_excluded": info.n_excluded, "n_background": info.n_background, "how": how, "created_at": utcnow()}
    for placement in placements:
        exposure_id = placement.exposure_id
        values.update(separation_deg=placement.separation_deg, position=placement.note)
        found = conn.execute(select(RegionFile.id).where(RegionFile.exposure_id == exposure_id,
                                                         RegionFile.path == info.path)).scalar()
        if found is None:
            conn.execute(insert(RegionFile).values(exposure_id=exposure_id, path=info.path, **values))
        else:
            conn.execute(update(RegionFile).where(RegionFile.id == found).values(**values))


LISTED = ("path", "format", "frame", "n_shapes", "n_excluded", "n_background", "shapes", "position", "how")


def regions_of(engine: Engine, exposure_id: int) -> list[dict]:
    """The region files attached to an exposure, oldest first."""
    with transaction(engine) as conn:
        rows = conn.execute(select(RegionFile.__table__).where(RegionFile.exposure_id == exposure_id).order_by(RegionFile.id)).all()
        return [{key: getattr(r, key) for key in LISTED} for r in rows]


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


def attach_by_name(engine: Engine, run_id: int) -> tuple[list[tuple[str, str, Placement]], list[tuple[str, str]]]:
    """Attach the region files next to the files an ingest run read
    (``*.reg``, and FITS files the X-ray summaries found to hold only REGION
    tables) to the catalogued data file their name names. Returns (region
    path, data path, placement) attached, and (path, problem) of region
    files that could not be read or lie far from the pointing of the file
    they name (see :func:`attach`; ``regions attach --force`` attaches one). A directory without a region file costs
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
                (placement,) = place(conn, info, [names[owner][0]])
                if placement.refused:
                    problems.append((str(directory / region), refusal([placement], "regions attach --force attaches it")))
                    continue
                _store(conn, info, [placement], "ingest")
            attached.append((str(directory / region), str(directory / owner), placement))
    return attached, problems
