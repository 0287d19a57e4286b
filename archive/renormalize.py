"""Filling normalized columns again from the header cards the catalog holds.

A column added by a migration (the detector columns of 0009: binning, gain,
CCD temperature, detector shape) is NULL for every file ingested before it,
and an incremental scan does not read unchanged files again. The cards and
HDUs are in the catalog, so the columns are computed from them, without
opening a file. Products keep the values their step gave them; their
empty ones are filled from their own cards.
"""

from __future__ import annotations

import json
import warnings

from sqlalchemy import Engine, select, update

from archive.db import transaction
from archive.headers import HeaderUnit
from archive.keywords import NormalizationWarning, load_maps, normalize
from archive.models import Exposure, File, Hdu, HeaderCard, Product

DETECTOR_COLUMNS = ("xbin", "ybin", "gain", "ccd_temp", "detector", "detector_shape", "n_detectors")
# Columns whose rules were corrected after files were ingested: an exposure
# time in the unit its card's comment gives (minutes on DSS plates), no
# frame number glued from a name's digits (HAT-P-32's 32 and a time stamp),
# no band from an X-ray file's blocking filter, an X-ray file's frame type
# from its kind (events science; spectra, responses, light curves... other).
CORRECTED_COLUMNS = ("exptime", "frame_number", "band", "frame_type")
COLUMNS = DETECTOR_COLUMNS + CORRECTED_COLUMNS
_SOURCES = {"xbinning", "ybinning", "binning", "gain", "ccd_temp", "detector", "detector_shape", *CORRECTED_COLUMNS}


def _units(hdus, cards) -> list[HeaderUnit]:
    by_hdu: dict[int, list] = {}
    for card in cards:
        by_hdu.setdefault(card.hdu_index, []).append(
            (card.position, card.keyword, card.value_text, card.value_num, card.vtype, card.comment))
    return [HeaderUnit(h.hdu_index, sorted(by_hdu.get(h.hdu_index, [])), h.hdu_type, extname=h.extname, shape=h.shape,
                       bitpix=h.bitpix) for h in hdus]


def renormalize(engine: Engine, config: dict | None = None, *, batch: int = 500, warned: list[str] | None = None) -> int:
    """Compute the detector columns of every exposure, and those whose rules
    were corrected since (:data:`CORRECTED_COLUMNS`), from its stored cards
    (``config``: the user's keyword maps); returns how many were updated.
    A product's columns that its step gave are kept: only its empty ones
    are filled. Each batch of files is one transaction. What the rules could
    not use (a value left empty, and why, naming the file) goes to
    ``warned``, as an ingest stores it, instead of Python's warning lines."""
    maps = load_maps(config)
    with transaction(engine) as conn:
        ids = conn.execute(select(Exposure.id).order_by(Exposure.id)).scalars().all()
        products = set(conn.execute(select(Product.file_id).where(Product.file_id.is_not(None))).scalars())
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        with transaction(engine, write=True) as conn:
            rows = conn.execute(select(Exposure.id, Exposure.file_id, Exposure.sources, File.relpath,
                                       *[getattr(Exposure, c) for c in COLUMNS])
                                .join(File, File.id == Exposure.file_id).where(Exposure.id.in_(chunk))).all()
            hdus = conn.execute(select(Hdu).where(Hdu.file_id.in_(chunk)).order_by(Hdu.file_id, Hdu.hdu_index)).all()
            cards = conn.execute(select(HeaderCard.file_id, HeaderCard.hdu_index, HeaderCard.position, HeaderCard.keyword,
                                        HeaderCard.value_text, HeaderCard.value_num, HeaderCard.vtype, HeaderCard.comment)
                                 .where(HeaderCard.file_id.in_(chunk))).all()
            hdus_of, cards_of = _grouped(hdus), _grouped(cards)
            for row in rows:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", NormalizationWarning)
                    _update(conn, row, hdus_of.get(row.id, []), cards_of.get(row.id, []), maps, row.file_id in products)
                if warned is not None:
                    warned += [str(w.message) for w in caught if issubclass(w.category, NormalizationWarning)]
    return len(ids)


def _grouped(rows) -> dict[int, list]:
    grouped: dict[int, list] = {}
    for row in rows:
        grouped.setdefault(row.file_id, []).append(row)
    return grouped


def _update(conn, row, hdus, cards, maps, product: bool) -> None:
    normalized = normalize(_units(hdus, cards), row.relpath, maps)
    # A product is no camera frame: no frame number, whatever digits its name holds
    # (ngc3293-3862_cal.fits, master_bias_..._5aed9c40.fits), as products.py stores it.
    columns = [c for c in COLUMNS if not product or (getattr(row, c) is None and c != "frame_number")]
    found = {k: v for k, v in json.loads(normalized["sources"]).items() if k in _SOURCES}
    sources = json.loads(row.sources or "{}")
    sources.update({k: v for k, v in found.items() if not product or (k not in sources and k != "frame_number")})
    for column in CORRECTED_COLUMNS:  # a value the corrected rule leaves empty keeps no old provenance
        if column in columns and normalized[column] is None and column not in found:
            sources.pop(column, None)
    conn.execute(update(Exposure).where(Exposure.id == row.id)
                 .values(**{c: normalized[c] for c in columns}, sources=json.dumps(sources, sort_keys=True)))
