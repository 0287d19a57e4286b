"""Text order on a PostgreSQL server whose collation is not C.

Many teams' servers collate text as en_US does; the test server's is
C.UTF-8, which orders ASCII as SQLite does (byte order). On an en-US
database the same text range and sort gave other answers than on SQLite
(found 2026-12-04, not mended yet): this test pins it, and turns red (a
strict xfail that passes) once PostgreSQL compares text in byte order.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from astropy.io import fits
from conftest import PG_URL, _postgres_problem, missing
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from archive.catalog import Catalog

OBJECTS = ["M31", "a-field", "ngc 300", "NGC 253", "_test"]


def _answers(url: str, data) -> tuple:
    catalog = Catalog.create(url)
    try:
        catalog.ingest([data])
        below_a = sorted(catalog.query("object < 'a'")["object"])
        n_range = sorted(catalog.query("hdr['OBJECT'] >= 'N' and hdr['OBJECT'] < 'O'")["object"])
        ordered = list(catalog.query("", columns="object", sort="object")["object"])
        return below_a, n_range, ordered
    finally:
        catalog.engine.dispose()


@pytest.fixture
def en_us_url():
    """A database of its own whose default collation is ICU's en-US."""
    if problem := _postgres_problem():
        missing(problem)
    name = f"obsarch_en_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                              "LOCALE 'C.UTF-8'"))
    except DBAPIError as exc:  # a server built without ICU (PostgreSQL < 15, or --without-icu)
        admin.dispose()
        pytest.skip(f"this server cannot make an ICU en-US database: {' '.join(str(exc.orig).split())[:120]}")
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            for (role,) in conn.execute(text("SELECT rolname FROM pg_roles WHERE rolname LIKE :p"), {"p": f"obsarch_reader_{name}%"}):
                conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


@pytest.mark.xfail(strict=True, reason="text ranges and sorts follow the database's collation on PostgreSQL")
def test_text_ranges_and_sorts_agree_with_sqlite_on_an_en_us_server(tmp_path, en_us_url):
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(OBJECTS):
        hdu = fits.PrimaryHDU(np.zeros((2, 2), dtype=np.int16))
        hdu.header["OBJECT"], hdu.header["EXPTIME"] = name, 1.0
        hdu.writeto(data / f"f{i}.fits")
    sqlite = _answers(f"sqlite:///{tmp_path / 'catalog.db'}", data)
    assert sqlite == (["M31", "NGC 253", "_test"], ["NGC 253"], ["M31", "NGC 253", "_test", "a-field", "ngc 300"])
    assert _answers(en_us_url, data) == sqlite
