"""Cataloguing a file a processing step wrote, inside the step's transaction.

A product is not scanned like a raw file: its headers are stored as ingest
stores them (every HDU, every card, so selections on ``hdr[...]`` reach it),
but its normalized values are the ones the step gives (what its inputs
share, their middle time and night), never values guessed from its file name,
and it has no frame number.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Connection, insert, select, update

from archive.db import bulk_insert
from archive.exceptions import FitsReadError, ObsarchError
from archive.ingest import CARD_COLUMNS, HDU_COLUMNS, _archive_version, _root_for, read_file, utcnow
from archive.keywords import COLUMNS
from archive.models import Exposure, File, Product


def register_product(conn: Connection, path: str | Path, values: dict) -> int:
    """Store the file at ``path`` with the exposure ``values`` (normalized
    column -> value; columns not given are NULL) and return its file id.
    A file already catalogued at that path gets a new version. Never commits."""
    path = Path(path).resolve()
    result = read_file(str(path), path.name)
    if result[0] != "ok":
        raise FitsReadError(f"{path}: {result[1]}")
    _, header_hash, hdus, _, warnings = result
    now = utcnow()
    root_id, root = _root_for(conn, path, now)
    relpath = path.relative_to(root).as_posix()
    stat = path.stat()
    row = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "header_hash": header_hash, "status": "present",
           "error": "; ".join(warnings) or None, "last_seen": now, "run_id": None}
    existing = conn.execute(select(File).where(File.root_id == root_id, File.relpath == relpath)).first()
    if existing is not None and conn.execute(select(Product.id).where(Product.file_id == existing.id).limit(1)).first() is None:
        # a raw file written over (a tool run in the raw directory): as a product its exposure
        # row lost its frame type, band and frame number, and it left every raw selection
        raise ObsarchError(f"{path}: a raw file of the catalog, written over in place; not made a product "
                           "(obsarch ingest reads it again)")
    if existing is None:
        file_id = conn.execute(
            insert(File).values(root_id=root_id, relpath=relpath, first_seen=now, version=1, **row).returning(File.id)
        ).scalar_one()
    else:
        file_id = existing.id
        if existing.header_hash is not None:
            _archive_version(conn, existing, now, None)
        conn.execute(update(File).where(File.id == file_id).values(version=existing.version + 1, **row))
    bulk_insert(conn, "hdus", HDU_COLUMNS, [(file_id, i, e, t, s, b, len(c)) for i, e, t, s, b, c in hdus])
    bulk_insert(conn, "header_cards", CARD_COLUMNS, [(file_id, i, *card) for i, _, _, _, _, cards in hdus for card in cards])
    exposure = {column: values.get(column) for column in COLUMNS}
    exposure["frame_number"] = None  # a product is no camera frame
    sources = {column: "inherited from the inputs" for column, value in exposure.items() if value is not None}
    exposure["sources"] = json.dumps(sources, sort_keys=True)
    if conn.execute(select(Exposure.id).where(Exposure.id == file_id)).first() is None:
        conn.execute(insert(Exposure).values(id=file_id, file_id=file_id, **exposure))
    else:
        conn.execute(update(Exposure).where(Exposure.id == file_id).values(**exposure))
    return file_id
