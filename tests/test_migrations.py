"""The schema: created only by migrations, which agree with the models."""

from __future__ import annotations

import re

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from archive import db
from archive.models import Base


def schema_diff(engine) -> list:
    """What alembic would change to make the database match the models."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_models_and_migrations_agree(url):
    engine = db.make_engine(url)
    db.upgrade(engine)
    diff = schema_diff(engine)
    engine.dispose()
    assert diff == []


def test_downgrade_and_upgrade_again(url):
    from alembic import command

    engine = db.make_engine(url)
    db.upgrade(engine)
    command.downgrade(db.alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision(engine)
    engine.dispose()


def test_sqlite_pragmas(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_S * 1000
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == db.SQLITE_PAGE_SIZE == 16384
    engine.dispose()


def test_a_catalog_made_with_smaller_pages_keeps_them_and_takes_an_ingest(tmp_path, rng):
    """New catalogs have 16 KB pages (a first ingest stores its cards ~20%
    faster); one made before, with SQLite's 4 KB, is migrated and ingests as
    it always did, its pages unchanged."""
    import sqlite3

    from factories import write_image

    from archive.catalog import Catalog

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute("PRAGMA page_size=4096")
        old.execute("PRAGMA journal_mode=WAL")
    catalog = Catalog.create(f"sqlite:///{path}")
    write_image(tmp_path / "raw" / "f1.fits", rng.normal(0, 1, (8, 8)).astype("float32"), {"OBJECT": "x"})
    assert catalog.ingest([tmp_path / "raw"]).new == 1
    assert len(catalog.query("hdr['OBJECT'] == 'x'")) == 1
    with catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 4096
    catalog.engine.dispose()


def test_url_resolution(monkeypatch):
    monkeypatch.delenv("OBSARCH_DB", raising=False)
    assert db.resolve_url() == "sqlite:///obsarch.db"
    monkeypatch.setenv("OBSARCH_DB", "postgresql://u@h/d")
    assert db.resolve_url() == "postgresql+psycopg://u@h/d"
    assert db.resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    assert db.resolve_url("/data/cat.db") == "sqlite:////data/cat.db"


def test_head_constant_is_alembics_head(tmp_path):
    from alembic.script import ScriptDirectory

    engine = db.make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    assert ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head() == db.head_revision()


def test_the_catalogs_reader_role_goes_down_and_up_with_0021(url, backend):
    """0021 gives the catalog a reader role of its own and takes it from the shared obsarch_reader;
    its downgrade gives the catalog back to obsarch_reader and drops the role."""
    if backend != "postgresql":
        pytest.skip("roles are PostgreSQL's")
    from alembic import command
    from conftest import reader_of

    engine = db.make_engine(url)
    db.upgrade(engine)
    role = reader_of(url)

    def readers() -> dict[str, tuple[bool, int]]:
        """role -> (USAGE of the schema, tables it may SELECT), for the roles that exist"""
        with engine.connect() as conn:
            return {name: tuple(conn.execute(text(
                "select has_schema_privilege(:r, current_schema(), 'USAGE'), count(*) filter (where has_table_privilege("
                ":r, format('%I.%I', schemaname, tablename), 'SELECT')) from pg_tables where schemaname = current_schema()"),
                {"r": name}).one()) for name in (role, "obsarch_reader")
                if conn.execute(text("select count(*) from pg_roles where rolname = :r"), {"r": name}).scalar()}

    with engine.connect() as conn:
        tables = conn.execute(text("select count(*) from pg_tables where schemaname = current_schema()")).scalar()
    assert readers() == {role: (True, tables), "obsarch_reader": (False, 0)}
    command.downgrade(db.alembic_config(engine), "0020")
    assert readers() == {"obsarch_reader": (True, tables)}
    db.upgrade(engine)
    assert readers() == {role: (True, tables), "obsarch_reader": (False, 0)}
    engine.dispose()


# (database, schema) pairs that read alike once cut, lowered or flattened to [a-z0-9_]
CATALOGS = [("test", "t_0123456789ab"), ("a_b", "c"), ("a", "b_c"), ("Team", "Data Set"), ("team", "data_set"),
            ("d" * 63, "s" * 63), ("d" * 63, "s" * 62 + "t"), ("ünï", "côdé")]


@pytest.mark.parametrize("database, schema", CATALOGS)
def test_reader_role_names_fit_and_differ(database, schema):
    role = db.reader_role(database, schema)
    assert len(role.encode()) <= 63 and re.fullmatch(r"obsarch_reader_[a-z0-9_]+_[0-9a-f]{8}", role)
    assert role not in {db.reader_role(*other) for other in CATALOGS if other != (database, schema)}
    assert db.reader_role(database, schema) == role


def test_0022_reads_again_fpack_files_stored_with_their_tables_header(url, tmp_path, rng):
    """An fpack file that an obsarch before 2026-12-03 stored with its binary table's cards (ZIMAGE = T among them)
    is read again by the next ingest, and a step refuses it until then; other files stay unchanged."""
    from alembic import command
    from astropy.io import fits
    from factories import obsarch

    from processing.machinery import unusable_files

    frames = tmp_path / "frames"
    frames.mkdir()
    data = rng.normal(100, 5, (32, 32)).astype("float32")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, name="SCI")]).writeto(frames / "a.fits.fz")
    fits.PrimaryHDU(data).writeto(frames / "b.fits")
    obsarch(url, "init")
    obsarch(url, "ingest", str(frames))
    engine = db.make_engine(url)
    command.downgrade(db.alembic_config(engine), "0021")
    with engine.begin() as conn:  # what the earlier obsarch stored: the table's cards
        fz = conn.execute(text("select id from files where relpath = 'a.fits.fz'")).scalar()
        assert conn.execute(text("select count(*) from header_cards where keyword = 'ZIMAGE'")).scalar() == 0
        conn.execute(text("insert into header_cards (file_id, hdu_index, position, keyword, value_text, value_num, vtype) "
                          "values (:f, 1, 999, 'ZIMAGE', 'T', 1, 'b')"), {"f": fz})
    db.upgrade(engine)
    with engine.connect() as conn:
        stale = dict(conn.execute(text("select relpath, mtime_ns is null from files")).all())
    assert stale == {"a.fits.fz": True, "b.fits": False}
    assert "a.fits.fz: its headers were stored wrongly by an earlier obsarch (obsarch ingest reads it again)" in unusable_files(engine, [fz])[fz]
    out = obsarch(url, "ingest", str(frames)).stdout
    assert "0 new, 1 changed, 1 unchanged" in out
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from header_cards where keyword = 'ZIMAGE'")).scalar() == 0
        assert conn.execute(text("select count(*) from files where mtime_ns is null")).scalar() == 0
    assert unusable_files(engine, [fz]) == {}
    engine.dispose()


def test_a_catalog_made_from_the_recorded_migrations_is_the_one_they_make(tmp_path):
    """The suite makes most PostgreSQL catalogs by sending the statements the
    migrations sent once again (conftest.make_catalog): pg_dump must find
    such a catalog and one the migrations make alike, schema, rows and
    privileges, and its reader role made, with the user a member of it."""
    import shutil
    import subprocess
    import uuid

    from conftest import PG_URL, _postgres_problem, drop_schema, make_catalog
    from factories import missing
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    if _postgres_problem():
        missing(_postgres_problem())
    if shutil.which("pg_dump") is None:
        missing("pg_dump not found (PostgreSQL's client programs)")
    server = make_url(PG_URL)
    admin = create_engine(PG_URL)
    schemas = [f"t_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    dumps, members = [], []
    try:
        for schema in schemas:
            with admin.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {schema}"))
        engine = db.make_engine(f"{PG_URL}?options=-csearch_path%3D{schemas[0]}")
        db.upgrade(engine)
        engine.dispose()
        make_catalog(f"{PG_URL}?options=-csearch_path%3D{schemas[1]}")
        for schema in schemas:
            role = db.reader_role(server.database, schema)
            dump = subprocess.run(["pg_dump", "-h", server.host, "-p", str(server.port or 5432), "-U", server.username,
                                   "-d", server.database, "-n", schema], capture_output=True, text=True, check=True).stdout
            dump = re.sub(r"(?m)^\\(un)?restrict .*$", "", dump)  # a random key per dump (pg_dump 15.14 on)
            dumps.append(dump.replace(role, "READER").replace(schema, "SCHEMA"))
            with admin.connect() as conn:
                members.append(conn.execute(text("select pg_has_role(current_user, :role, 'MEMBER')"), {"role": role}).scalar())
    finally:
        for schema in schemas:
            drop_schema(admin, schema)
        admin.dispose()
    assert "CREATE TABLE SCHEMA.files" in dumps[0] and "GRANT SELECT ON TABLE SCHEMA.files TO READER" in dumps[0]
    assert "INSERT" in dumps[0] or "COPY SCHEMA.alembic_version" in dumps[0]
    assert dumps[1] == dumps[0]
    assert members == [True, True]


def test_0023_orders_card_text_and_promoted_text_by_bytes_in_their_indexes(url, backend, tmp_path, rng):
    """On PostgreSQL 0023 collates the cards' keyword and text, and a
    promoted text column, "C" (the byte order a selection compares text in),
    and downgrade gives them the database's collation back; SQLite orders
    all text by its bytes already. Answers are the same before and after."""
    from alembic import command
    from factories import obsarch, write_frame

    from archive import promoted

    for name, observer in (("a", "ann"), ("b", "kim"), ("c", "Zed"), ("d", "_x")):
        write_frame(tmp_path / "frames" / f"{name}.fits", rng, {"OBSERVER": observer})
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "frames"))
    engine = db.make_engine(url)
    promoted.promote(engine, "OBSERVER")

    def collations():
        if backend == "sqlite":
            return None
        with engine.connect() as conn:
            return conn.execute(text(
                "SELECT table_name, column_name, collation_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND column_name IN ('keyword', 'value_text', 'kw_observer') "
                "AND table_name IN ('header_cards', 'exposures') ORDER BY 1, 2")).all()

    def answers():
        rows = obsarch(url, "query", "hdr['OBSERVER'] > 'Z'", "--columns", "hdr['OBSERVER']", "--sort", "hdr['OBSERVER']",
                       "--format", "csv").stdout
        return rows.split()[1:]

    byte_ordered = None if backend == "sqlite" else [
        ("exposures", "kw_observer", "C"), ("header_cards", "keyword", "C"), ("header_cards", "value_text", "C")]
    assert collations() == byte_ordered
    assert answers() == ["Zed", "_x", "ann", "kim"]  # bytes: upper case, then _, then lower case
    command.downgrade(db.alembic_config(engine), "0022")
    assert collations() == (None if backend == "sqlite" else [(table, column, None) for table, column, _ in byte_ordered])
    db.upgrade(engine)
    assert collations() == byte_ordered
    assert answers() == ["Zed", "_x", "ann", "kim"]
    engine.dispose()


def test_0023_keeps_a_users_view_of_the_columns_it_changes(url, backend, tmp_path, rng):
    """A view reading a card column or a promoted column stopped 0023 on
    PostgreSQL ("cannot alter type of a column used by a view"; found by a
    review): views are set aside and made again as they were, with their
    comment and grants."""
    from alembic import command
    from factories import obsarch, write_frame

    from archive import promoted

    for name, observer in (("a", "ann"), ("b", "kim")):
        write_frame(tmp_path / "frames" / f"{name}.fits", rng, {"OBSERVER": observer})
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "frames"))
    engine = db.make_engine(url)
    promoted.promote(engine, "OBSERVER")
    command.downgrade(db.alembic_config(engine), "0022")
    view = ("CREATE VIEW my_observers AS SELECT c.value_text, e.kw_observer FROM header_cards c "
            "JOIN exposures e ON e.file_id = c.file_id WHERE c.keyword = 'OBSERVER' AND c.value_text LIKE 'k%'")
    with engine.begin() as conn:
        conn.execute(text(view))
        conn.exec_driver_sql("CREATE VIEW my_count AS SELECT count(*) AS n FROM my_observers")  # a view of the view
        if backend == "postgresql":
            conn.exec_driver_sql("COMMENT ON VIEW my_observers IS 'the observer''s cards'")
            conn.exec_driver_sql("GRANT SELECT ON my_observers TO PUBLIC")
            conn.exec_driver_sql("CREATE MATERIALIZED VIEW my_kept AS SELECT keyword, value_text FROM header_cards")
            conn.exec_driver_sql("CREATE INDEX my_kept_keyword ON my_kept (keyword)")
    db.upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT * FROM my_observers").all() == [("kim", "kim")]
        assert conn.exec_driver_sql("SELECT n FROM my_count").scalar() == 1
        if backend == "postgresql":
            assert conn.exec_driver_sql("SELECT obj_description('my_observers'::regclass, 'pg_class')").scalar() == "the observer's cards"
            assert conn.exec_driver_sql("SELECT has_table_privilege('public', 'my_observers', 'SELECT')").scalar()
            assert conn.exec_driver_sql("SELECT count(*) FROM my_kept WHERE keyword = 'OBSERVER'").scalar() == 2
            assert conn.exec_driver_sql("SELECT indexname FROM pg_indexes WHERE tablename = 'my_kept'").all() == [("my_kept_keyword",)]
            assert conn.exec_driver_sql(
                "SELECT collation_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'header_cards' AND column_name = 'value_text'").scalar() == "C"
    command.downgrade(db.alembic_config(engine), "0022")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT * FROM my_observers").all() == [("kim", "kim")]
    engine.dispose()
