"""Fixtures shared by the suite.

Every catalog test takes ``url`` (or ``catalog``) and so runs twice: on a
fresh SQLite file and on a fresh schema of the local PostgreSQL server. In CI
(``CI`` set) an unreachable PostgreSQL fails the run; elsewhere its half of
the suite is skipped with the reason.
"""

from __future__ import annotations

import atexit
import os
import shutil
import uuid
from pathlib import Path

import pytest
from factories import missing
from sqlalchemy import create_engine, text

from archive.catalog import Catalog

PG_URL = os.environ.get("OBSARCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _find_real_data() -> Path:
    """``$OBSARCH_REAL_DATA``, else ``shared/data/real`` beside the repository
    (or beside one of its parents)."""
    if os.environ.get("OBSARCH_REAL_DATA"):
        return Path(os.environ["OBSARCH_REAL_DATA"])
    repo = Path(__file__).resolve().parents[1]
    for parent in repo.parents:
        candidate = parent / "shared" / "data" / "real"
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "data" / "real"


REAL_DATA = _find_real_data()


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests marked slow first (the README's tour takes a
    minute or more per backend): under pytest-xdist one picked up last ran
    alone while the other cores sat idle, and that tail was the CI's."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

_pg_problem: str | None = None
_pg_checked = False


def _postgres_problem() -> str | None:
    global _pg_checked, _pg_problem
    if not _pg_checked:
        _pg_checked = True
        try:
            engine = create_engine(PG_URL, connect_args={"connect_timeout": 5})
            with engine.connect() as conn:
                conn.execute(text("select 1"))
            engine.dispose()
        except Exception as exc:  # any failure to connect means: no PostgreSQL here
            _pg_problem = f"PostgreSQL not reachable at {PG_URL}: {' '.join(str(exc).split())[:200]}"
    return _pg_problem


# The catalogs a test schema fills and its drop leaves as dead rows: a server
# without autovacuum (as CI's) kept millions of them from earlier runs, and
# every catalog the suite made took 1.5 s instead of 0.5 s.
SYSTEM_CATALOGS = ("pg_attribute", "pg_class", "pg_depend", "pg_type", "pg_constraint", "pg_index", "pg_trigger",
                   "pg_attrdef", "pg_rewrite", "pg_sequence", "pg_namespace", "pg_statistic", "pg_shdepend",
                   "pg_default_acl", "pg_description")
VACUUM_EVERY = 200  # test schemas dropped by one test process between two vacuums
_dropped = 0


def vacuum_system_catalogs() -> None:
    """VACUUM PostgreSQL's own catalogs in the test database (one a user may
    not vacuum is passed over by the server with a warning)."""
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("VACUUM " + ", ".join(f"pg_catalog.{name}" for name in SYSTEM_CATALOGS))
    finally:
        engine.dispose()


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput") and _postgres_problem() is None:  # once, before the workers start
        vacuum_system_catalogs()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    if request.param == "postgresql":
        problem = _postgres_problem()
        if problem:
            missing(problem)
    return request.param


@pytest.fixture
def url(backend, tmp_path) -> str:
    """An empty database of the backend under test (no catalog yet)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    drop_schema(admin, schema)
    admin.dispose()
    global _dropped
    _dropped += 1
    if _dropped % VACUUM_EVERY == 0:
        vacuum_system_catalogs()


_recorded: tuple[str, str, list] | None = None


def recorded_migrations() -> tuple[str, str, list]:
    """(schema, reader role, statements): every statement the migrations
    sent the server, with its parameters, as they made a catalog of an empty
    schema of PostgreSQL (once per test process, then the schema is dropped)."""
    global _recorded
    if _recorded is None:
        from sqlalchemy import event

        from archive import db

        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        engine = db.make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
        statements = []

        @event.listens_for(engine, "before_cursor_execute")
        def record(conn, cursor, statement, parameters, context, executemany):
            # sent without parameters, a statement's % are its own; with (even none), %% stands for one
            bare = context is not None and context.no_parameters
            statements.append((statement, None if bare else parameters, executemany))

        try:
            db.upgrade(engine)
            with engine.connect() as conn:
                role = db.reader_role(*conn.execute(text("select current_database(), current_schema()")).one())
        finally:
            engine.dispose()
            drop_schema(admin, schema)
            admin.dispose()
        _recorded = schema, role, statements
    return _recorded


def _renamed(value, names: dict[str, str]):
    if isinstance(value, str):
        for old, new in names.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {key: _renamed(item, names) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_renamed(item, names) for item in value)
    return value


def make_catalog(url: str) -> None:
    """The catalog the migrations make, at ``url`` (an empty database of the
    ``url`` fixture), as fast as the backend allows: on SQLite a copy of the
    file they made once per test process; on PostgreSQL their recorded
    statements sent again in one transaction, the schema's and its reader
    role's names changed: 0.1 s instead of their 0.3 s, on a thousand
    catalogs a run (CI's time is limited). test_migrations checks that such a
    catalog is the one the migrations make, privileges and rows included;
    tests of ``obsarch init`` and of the migrations themselves run them."""
    if url.startswith("sqlite:///"):
        shutil.copyfile(_sqlite_template(), url.removeprefix("sqlite:///"))
        return
    from archive import db

    template, template_role, statements = recorded_migrations()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            database, schema = conn.execute(text("select current_database(), current_schema()")).one()
            names = {template_role: db.reader_role(database, schema), template: schema}  # the role's name holds the schema's
            cursor = conn.connection.driver_connection.cursor()
            for statement, parameters, many in statements:
                statement, parameters = _renamed(statement, names), _renamed(parameters, names)
                if many:
                    cursor.executemany(statement, parameters)
                else:
                    cursor.execute(statement, parameters)
    finally:
        engine.dispose()


_sqlite_template_path: Path | None = None


def _sqlite_template() -> Path:
    """A SQLite catalog made by the migrations once per test process: a
    SQLite catalog is one file, so a copy of it is the catalog they make, in
    a millisecond instead of their 0.3 s."""
    global _sqlite_template_path
    if _sqlite_template_path is None:
        import tempfile

        folder = tempfile.mkdtemp(prefix="obsarch-template-")
        atexit.register(shutil.rmtree, folder, True)
        path = Path(folder) / "catalog.db"
        Catalog.create(f"sqlite:///{path}").engine.dispose()
        _sqlite_template_path = path
    return _sqlite_template_path


def drop_schema(admin, schema: str) -> None:
    """Drop a test's schema, and the catalog's reader role: roles outlive schemas (migration 0021)."""
    from archive.db import reader_role

    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        role = reader_role(conn.execute(text("select current_database()")).scalar(), schema)
        conn.execute(text(f"DROP ROLE IF EXISTS {role}"))


def reader_of(url: str) -> str:
    """The reader role of the catalog at ``url`` (PostgreSQL)."""
    from archive import db

    engine = db.make_engine(url)
    with engine.connect() as conn:
        role = db.reader_role(*conn.execute(text("select current_database(), current_schema()")).one())
    engine.dispose()
    return role


@pytest.fixture
def catalog(url) -> Catalog:
    """A catalog at the current schema on the backend under test."""
    make_catalog(url)
    cat = Catalog(url)
    yield cat
    cat.engine.dispose()


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        missing(f"real data not found at {REAL_DATA} (set OBSARCH_REAL_DATA to its directory)")
    return REAL_DATA


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(20261121)


@pytest.fixture
def ingested(url, tmp_path, rng) -> str:
    """The URL of a catalog holding a night of frames, made and filled
    through the command as a user does (the catalog made as `obsarch init` makes it)."""
    from factories import night_of_frames, obsarch

    night_of_frames(tmp_path / "night", rng)
    make_catalog(url)
    obsarch(url, "ingest", str(tmp_path / "night"))
    return url
