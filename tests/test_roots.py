"""path -> (root, relpath): the deepest root wins; lookups below a directory
match it as a path, not as a LIKE pattern. Both backends."""

from __future__ import annotations

from factories import write_frame
from sqlalchemy import select

from archive.db import transaction
from archive.models import File
from archive.roots import file_id_of, files_below, root_of


def test_the_deepest_root_holds_a_path(catalog, tmp_path, rng):
    outer, inner = tmp_path / "data", tmp_path / "data" / "night_1"
    write_frame(outer / "a.fits", rng, {})
    write_frame(inner / "b.fits", rng, {})
    write_frame(outer / "night%1" / "c.fits", rng, {})
    catalog.ingest([inner])
    catalog.ingest([outer])
    with transaction(catalog.engine) as conn:
        assert root_of(conn, inner / "b.fits")[1:] == (inner, "b.fits")
        assert root_of(conn, outer / "night%1" / "c.fits")[1:] == (outer, "night%1/c.fits")
        assert root_of(conn, tmp_path / "elsewhere.fits") is None
        b = file_id_of(conn, inner / "b.fits")
        c = file_id_of(conn, outer / "night%1" / "c.fits")
        assert b is not None and c is not None and file_id_of(conn, outer / "missing.fits") is None
        assert files_below(conn, outer / "night%1") == [c]  # '%' is a character, not a wildcard
        assert files_below(conn, inner) == [b]
        every = sorted(conn.execute(select(File.id)).scalars())
        assert files_below(conn, tmp_path) == every  # a directory holding whole roots
    assert catalog.exposure(catalog.resolve(str(outer / "night%1" / "c.fits")))["path"].endswith("night%1/c.fits")
