"""path -> (root, relpath): the deepest root wins; lookups below a directory
match it as a path, not as a LIKE pattern. Both backends."""

from __future__ import annotations

from factories import write_frame
from sqlalchemy import select

from archive.db import transaction
from archive.models import File
from archive.roots import file_id_of, file_ids_at, files_below, root_of


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


def test_many_paths_at_once_each_under_its_deepest_root(catalog, tmp_path, rng):
    outer, inner = tmp_path / "data", tmp_path / "data" / "night_1"
    write_frame(outer / "a.fits", rng, {})
    write_frame(inner / "b.fits", rng, {})
    catalog.ingest([inner])
    catalog.ingest([outer])
    (outer / "a.fits").unlink()
    catalog.ingest([outer])  # a.fits is now missing
    paths = {str(outer / "a.fits"), str(inner / "b.fits"), str(tmp_path / "elsewhere.fits")}
    with transaction(catalog.engine) as conn:
        every = file_ids_at(conn, paths)
        assert set(every) == {str(outer / "a.fits"), str(inner / "b.fits")}
        assert every[str(inner / "b.fits")] == file_id_of(conn, inner / "b.fits")
        assert file_ids_at(conn, paths, status="present") == {str(inner / "b.fits"): every[str(inner / "b.fits")]}
