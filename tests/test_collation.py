"""Text order on a PostgreSQL server whose collation is not C.

Many teams' servers collate text as en_US does; the test server's is
C.UTF-8, which orders ASCII as SQLite does (byte order). On an en-US
database the same text range and sort gave other answers than on SQLite
(found 2026-12-04): PostgreSQL now compares text by its bytes for ranges
and sorts (archive.query.byte_order).
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
        between = sorted(catalog.query("object between 'A' and 'Z'")["object"])
        card_between = sorted(catalog.query("hdr['OBJECT'] between 'A' and 'Z'")["object"])
        ordered = list(catalog.query("", columns="object", sort="object")["object"])
        by_card = list(catalog.query("", columns="object", sort="-hdr['OBJECT']")["object"])
        return below_a, n_range, between, card_between, ordered, by_card
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


def test_text_ranges_and_sorts_agree_with_sqlite_on_an_en_us_server(tmp_path, en_us_url):
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(OBJECTS):
        hdu = fits.PrimaryHDU(np.zeros((2, 2), dtype=np.int16))
        hdu.header["OBJECT"], hdu.header["EXPTIME"] = name, 1.0
        hdu.writeto(data / f"f{i}.fits")
    sqlite = _answers(f"sqlite:///{tmp_path / 'catalog.db'}", data)
    ordered = ["M31", "NGC 253", "_test", "a-field", "ngc 300"]
    assert sqlite == (["M31", "NGC 253", "_test"], ["NGC 253"], ["M31", "NGC 253"], ["M31", "NGC 253"], ordered, ordered[::-1])
    assert _answers(en_us_url, data) == sqlite


def test_only_text_ranges_and_sorts_are_collated():
    """Equality keeps its indexes (every deterministic collation agrees on
    it), and so do night's ranges: digits and dashes, ordered alike by any
    collation. SQLite's order is its bytes already."""
    from sqlalchemy.dialects import postgresql

    from archive.query import select_exposures

    def sql(selection: str, dialect: str = "postgresql") -> str:
        statement = select_exposures(selection, dialect)
        # a value compared with a card's text is cast to the column's type, collation "C" included (migration 0023)
        compiled = str(statement.compile(dialect=postgresql.dialect() if dialect == "postgresql" else None))
        return compiled.replace(')s::VARCHAR COLLATE "C"', ")s::VARCHAR")

    for collated in ("object < 'a'", "object between 'A' and 'Z'", "hdr['OBJECT'] >= 'N'", "hdr['OBJECT'] between 'A' and 'B'",
                     "obsid > '07'"):
        assert 'COLLATE "C"' in sql(collated), collated
    for plain in ("object == 'M31'", "object != 'M31'", "object in ('M31', 'a')", "hdr['OBJECT'] == 'M31'", "object like 'm%'",
                  "night >= '2017-08'", "night between '2017-08-01' and '2017-08-31'", "exptime > 30", "hdr['EXPTIME'] < 3",
                  "date_obs > '2017-08-16'"):
        assert "COLLATE" not in sql(plain), plain
    assert "COLLATE" not in sql("object < 'a'", "sqlite")


def test_a_sort_on_a_text_field_without_a_sql_type_is_in_byte_order_too():
    """xray_filter is a function of the cards (trim): its sort was left to the collation."""
    from archive.query import Compiler, sort_expressions

    compiler = Compiler("postgresql")
    for name in ("xray_filter", "object", "path"):
        assert [str(e).count('COLLATE "C"') for e in sort_expressions(name, compiler)] == [1], name
    assert ["COLLATE" in str(e) for e in sort_expressions("night,exptime,hdr['OBJECT']", compiler)] == [
        False, False, False, False, True]  # night; exptime; the card's number, exact integer and text


@pytest.mark.parametrize("selection, said", [
    ("group >= 5", "group is text; compare it with a quoted string, not 5"),
    ("group_role in ('target', 3)", "group_role is text; compare it with quoted strings, not 3"),
])
def test_a_group_is_compared_with_text(selection, said):
    """PostgreSQL refused 'group >= 5' (character varying >= integer); it is a usage error on both."""
    from archive.query import SelectionError, select_exposures

    for dialect in ("sqlite", "postgresql"):
        with pytest.raises(SelectionError, match=said):
            select_exposures(selection, dialect)
