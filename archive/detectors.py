"""Which HDUs of a file are its detectors, and what each is called.

One home for the rule, used at ingest (the exposure's detector columns), by
the calibration rules (detectors paired by name) and by the pixel steps
(one output HDU per detector). A detector is an image HDU with data (two
dimensions, or three for a cube) that is not a companion plane: a bad-pixel
mask, a variance, a weight or coverage map describes a detector, it is not
one (LCO's ``BPM`` beside ``SCI``, MUSE's ``STAT`` and ``FIELDMAP`` beside
``DATA``). Its name is its EXTNAME, else a detector keyword of its header,
else ``PRIMARY`` for the primary HDU and ``HDU<n>`` for another.
"""

from __future__ import annotations

from dataclasses import dataclass

# EXTNAMEs of planes that accompany detectors (compared in upper case)
COMPANION_PLANES = frozenset((
    "BPM", "MASK", "DQ", "QUAL", "QUALITY", "FLAGS", "STAT", "ERR", "ERROR", "SIGMA", "VAR", "VARIANCE", "IVAR",
    "WHT", "WEIGHT", "CONF", "COVERAGE", "EXPMAP", "FIELDMAP", "UNCERT",
))  # fmt: skip
# Keywords naming a detector when its HDU has no EXTNAME, in this order
NAME_KEYWORDS = ("CCDNAME", "ESO DET CHIP NAME", "DETNAME", "ESO DET CHIP INDEX", "DETSEC")
_IMAGE_TYPES = frozenset(("image", "compressed"))


@dataclass(frozen=True)
class Detector:
    """One detector of a file: its HDU, its name and its data shape (numpy order)."""

    hdu_index: int
    name: str
    shape: tuple[int, ...]

    @property
    def shape_text(self) -> str:
        return "x".join(str(n) for n in self.shape)


def parse_shape(text: str | None) -> tuple[int, ...]:
    """``"1020x1523"`` -> ``(1020, 1523)``; ``()`` for none."""
    try:
        return tuple(int(n) for n in (text or "").split("x") if n)
    except ValueError:
        return ()


def is_detector(hdu_type: str, extname: str | None, shape: tuple[int, ...]) -> bool:
    """An image HDU with 2- or 3-dimensional data that is not a companion plane."""
    if hdu_type not in _IMAGE_TYPES or len(shape) not in (2, 3) or 0 in shape:
        return False
    name = (extname or "").strip().upper()
    # COVERAGE_CHAN01: the plane of one detector of a multi-detector product
    return name not in COMPANION_PLANES and name.split("_")[0] not in COMPANION_PLANES


def detector_name(hdu_index: int, extname: str | None, keywords: dict[str, str | None]) -> str:
    """EXTNAME, else the first detector keyword present, else PRIMARY / HDU<n>."""
    if extname and extname.strip() and not (hdu_index == 0 and extname.strip() == "PRIMARY"):
        return extname.strip()
    for keyword in NAME_KEYWORDS:
        value = keywords.get(keyword)
        if value is not None and str(value).strip() and str(value).strip().upper() != "UNKNOWN":
            text = str(value).strip()
            return f"CHIP{text}" if keyword == "ESO DET CHIP INDEX" else text
    return "PRIMARY" if hdu_index == 0 else f"HDU{hdu_index}"


def detectors_of_units(units) -> list[Detector]:
    """The detectors of a file from its parsed headers (:class:`archive.headers.HeaderUnit`)."""
    found, versions = [], {}
    for unit in units:
        shape = parse_shape(unit.shape)
        values = unit.values()
        if not is_detector(unit.hdu_type, unit.extname, shape) or _is_weight_map(values):
            continue
        keywords = {k: (values[k][2] if k in values else None) for k in NAME_KEYWORDS}
        found.append(Detector(unit.index, detector_name(unit.index, unit.extname, keywords), shape))
        if "EXTVER" in unit.values() and unit.values()["EXTVER"][4] == "i":
            versions[unit.index] = int(unit.values()["EXTVER"][3])
    return _unique(found, versions)


def _is_weight_map(values: dict) -> bool:
    """An OGIP weight map (HDUCLAS2 'WMAP'): the image of a spectrum's
    extraction region (Swift's primary HDU), no detector's pixels."""
    card = values.get("HDUCLAS2")
    return card is not None and card[4] == "s" and (card[2] or "").strip().upper() == "WMAP"


def _unique(found: list[Detector], versions: dict[int, int] | None = None) -> list[Detector]:
    """Detectors sharing a name are told apart by their EXTVER (Gemini's
    ``SCI`` 1..12 become ``SCI.1``..``SCI.12``), else by their HDU index
    (``SCI#3``), so that each pairs with its own master HDU."""
    versions = versions or {}
    counts: dict[str, int] = {}
    for detector in found:
        counts[detector.name] = counts.get(detector.name, 0) + 1
    named = []
    for detector in found:
        name = detector.name
        if counts[name] > 1:
            version = versions.get(detector.hdu_index)
            name = f"{name}.{version}" if version is not None else f"{name}#{detector.hdu_index}"
        named.append(Detector(detector.hdu_index, name, detector.shape))
    return named


def select_detectors(detectors: list[Detector], names: tuple[str, ...] | None) -> list[Detector]:
    """The detectors named in ``names`` (``--hdu``), all when ``names`` is empty;
    an unknown name is an error naming the ones there are."""
    from archive.exceptions import ObsarchError

    if not names:
        return list(detectors)
    by_name = {d.name.upper(): d for d in detectors}
    unknown = [n for n in names if n.upper() not in by_name]
    if unknown:
        known = ", ".join(d.name for d in detectors) or "none"
        raise ObsarchError(f"--hdu {','.join(unknown)}: no such detector (this file has {known})")
    return [by_name[n.upper()] for n in names]


def detectors_of_files(conn, file_ids: list[int]) -> dict[int, list[Detector]]:
    """The detectors of catalogued files, from their ``hdus`` rows and the
    detector keywords of their cards (no file is opened)."""
    from sqlalchemy import select

    from archive.db import rows_in  # 500 files at a time: PostgreSQL takes at most 65,535 parameters
    from archive.models import Hdu, HeaderCard

    if not file_ids:
        return {}
    hdus = sorted(rows_in(conn, select(Hdu.file_id, Hdu.hdu_index, Hdu.extname, Hdu.hdu_type, Hdu.shape), Hdu.file_id, file_ids),
                  key=lambda h: (h.file_id, h.hdu_index))
    keywords: dict[tuple[int, int], dict[str, str | None]] = {}
    versions: dict[int, dict[int, int]] = {}
    for row in rows_in(conn, select(HeaderCard.file_id, HeaderCard.hdu_index, HeaderCard.keyword, HeaderCard.value_text,
                                    HeaderCard.value_num, HeaderCard.vtype)
                       .where(HeaderCard.keyword.in_((*NAME_KEYWORDS, "EXTVER"))), HeaderCard.file_id, file_ids):
        if row.keyword == "EXTVER":
            if row.vtype == "i":
                versions.setdefault(row.file_id, {})[row.hdu_index] = int(row.value_num)
        else:
            keywords.setdefault((row.file_id, row.hdu_index), {}).setdefault(row.keyword, row.value_text)
    found: dict[int, list[Detector]] = {file_id: [] for file_id in file_ids}
    for h in hdus:
        shape = parse_shape(h.shape)
        if is_detector(h.hdu_type, h.extname, shape):
            name = detector_name(h.hdu_index, h.extname, keywords.get((h.file_id, h.hdu_index), {}))
            found[h.file_id].append(Detector(h.hdu_index, name, shape))
    return {file_id: _unique(detectors, versions.get(file_id)) for file_id, detectors in found.items()}


def pair_detectors(frame: list[Detector], master: list[Detector], *, single: bool) -> tuple[list[tuple[Detector, Detector]], list[str]]:
    """Each detector of a frame with the master's detector of the same name;
    and the names the master lacks. ``single``: the frame's file has one
    detector, and so one master detector pairs with it whatever either is
    called; one detector of several chosen by ``--hdu`` is paired by name
    (CCD1 took a master of CCD2, 400 ADU of bias off)."""
    if single and len(frame) == 1 and len(master) == 1:
        return [(frame[0], master[0])], []
    by_name = {d.name: d for d in master}
    pairs = [(d, by_name[d.name]) for d in frame if d.name in by_name]
    return pairs, [d.name for d in frame if d.name not in by_name]


DETECTOR_METRIC_NAMES = (
    "median", "std", "background", "background_rms", "saturated_fraction", "nstars", "fwhm", "fwhm_minor",
    "elongation", "error",
)  # fmt: skip


def detector_metrics(engine, selection) -> list[dict]:
    """Each detector's quality numbers for the exposures of ``selection`` (a
    tree, or a person's text), in exposure and HDU order."""
    from sqlalchemy import select

    from archive.db import transaction
    from archive.models import DetectorMetric, Exposure
    from archive.query import select_exposures

    chosen = select_exposures(selection, engine.dialect.name).subquery()
    statement = (
        select(DetectorMetric.exposure_id, Exposure.frame_number, DetectorMetric.detector, DetectorMetric.hdu_index,
               *[getattr(DetectorMetric, name) for name in DETECTOR_METRIC_NAMES])
        .join(Exposure, Exposure.id == DetectorMetric.exposure_id)
        .where(DetectorMetric.exposure_id.in_(select(chosen.c.id)))
        .order_by(DetectorMetric.exposure_id, DetectorMetric.hdu_index)
    )
    with transaction(engine) as conn:
        return [row._asdict() for row in conn.execute(statement)]
