"""Engines, transactions and every difference between SQLite and PostgreSQL.

The rest of the code speaks SQLAlchemy; what depends on the backend (pragmas,
how a write transaction begins, bulk loading, read-only access) lives here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sqlite3
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from archive.exceptions import (
    CatalogNotFound,
    DatabaseError,
    QueryTimeout,
    ReadOnlyViolation,
    SchemaOutOfDate,
    UsageError,
)

DEFAULT_URL = "sqlite:///obsarch.db"
ENV_VAR = "OBSARCH_DB"
SQLITE_BUSY_TIMEOUT_S = 120


def utcnow() -> datetime:
    """Now, in UTC, without a time zone: as the catalog's times are stored."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (another user's counts
    as running): a run, an ingest or a promote recorded as running by a
    process that is gone was interrupted."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def resolve_url(url: str | None = None) -> str:
    """The catalog URL: the argument, else ``$OBSARCH_DB``, else ``./obsarch.db``.

    ``postgresql://`` is given the psycopg (3) driver; a bare file path is
    taken as a SQLite file.
    """
    url = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser()}"
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


#: Every engine made here, so that a command run in a process that goes on
#: (a test, a notebook calling the CLI) closes the connections it opened
#: rather than leaving them to the garbage collector (:func:`dispose_engines`).
ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def make_engine(url: str | None = None, *, read_only: bool = False) -> Engine:
    """An engine for the catalog at ``url`` (see :func:`resolve_url`)."""
    parsed = _catalog_url(resolve_url(url))
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = _sqlite_engine(parsed, read_only)
        else:
            engine = _postgresql_engine(parsed, read_only)
    except (ImportError, NoSuchModuleError) as exc:  # postgresql+DRIVER, sqlite+DRIVER: one not installed
        raise DatabaseError(f"{parsed.render_as_string(hide_password=True)}: cannot load the driver "
                            f"{parsed.get_driver_name()} ({_one_line(exc)}); "
                            "sqlite:/// and postgresql:// need none beyond obsarch's own") from None
    ENGINES.add(engine)
    return engine


def dispose_engines(keep=()) -> None:
    """Close the pooled connections of every engine made here but those in ``keep``."""
    for engine in list(ENGINES):
        if engine not in keep:
            engine.dispose()
            ENGINES.discard(engine)


def _postgresql_engine(parsed, read_only: bool) -> Engine:
    from archive.models import postgresql_options

    postgresql_options()
    engine = create_engine(parsed, pool_pre_ping=True)
    if read_only:
        # Per connection rather than a connect option, so that options given
        # in the URL (a search_path, say) are kept.
        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn, _record):
            with dbapi_conn.cursor() as cursor:
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            dbapi_conn.commit()

    return engine


def _catalog_url(url: str):
    """``url`` parsed, refused in one line unless it names SQLite or
    PostgreSQL: a value the person gave (--db, $OBSARCH_DB, the config), so
    a usage error (the CLI exits 2)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # a port that is no number, text that is no URL
        raise UsageError(f"the catalog URL cannot be read ({_one_line(exc)}); "
                            "write sqlite:///FILE or postgresql://USER@HOST:PORT/DBNAME") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UsageError(
            f"{parsed.render_as_string(hide_password=True)}: obsarch catalogs are SQLite or PostgreSQL URLs "
            f"(sqlite:///FILE, postgresql://HOST/DBNAME), not {parsed.get_backend_name()}"
        )
    return parsed


# The page size of a new SQLite catalog (one made before keeps its own: 4096).
# Measured on 3,000 files of 150 cards: the storage floor took 0.83-0.93 s
# instead of 1.04-1.08 s, an ingest via the command 1.98-2.01 s instead of
# 2.14-2.47 s, and the two-predicate queries over 1,000,000 exposures were
# as fast or faster (benchmarks/ingest.py). 65536 stored a little faster
# still, but made an empty catalog 6 MB and every small write (a grade) a
# 64 KB page per table and index touched.
SQLITE_PAGE_SIZE = 16384


def _sqlite_engine(parsed, read_only: bool) -> Engine:
    database = parsed.database or ""
    if read_only and database not in ("", ":memory:"):
        # mode=ro makes the file itself unwritable for this connection,
        # whatever pragma a user's statement tries to change.
        path = Path(database).resolve()
        engine = create_engine(
            f"sqlite:///file:{path}?mode=ro&uri=true",
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
        )
    else:
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # We emit BEGIN ourselves (below) so that writers can take the lock
        # up front; pysqlite's implicit transactions cannot do that.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if not read_only:
            cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # before WAL: it sizes a new file's pages, no other
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()
        # `like` with letters beyond ASCII (archive.query): SQLite's lower() and LIKE fold ASCII only
        dbapi_conn.create_function("obsarch_lower", 1, _lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # A deferred transaction that reads and then writes fails at once with
        # SQLITE_BUSY when another writer committed in between; writers
        # therefore take the write lock when they begin and queue on the
        # busy timeout instead.
        if conn.get_execution_options().get("obsarch_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def _lower(value):
    return value.lower() if isinstance(value, str) else value


def _writer(engine: Engine) -> Engine:
    return engine.execution_options(obsarch_write=True)


@contextmanager
def transaction(
    engine: Engine, *, write: bool = False, attach: str | None = None, foreign_keys: bool = True
) -> Iterator[Connection]:
    """A Core connection inside one transaction (committed on success).

    ``attach`` (SQLite): a scratch database file attached as ``scratch`` for
    the transaction; SQLite attaches and detaches only outside one.
    ``foreign_keys=False`` (SQLite): the transaction's statements are not
    checked against the foreign keys, and no ON DELETE acts, so it is only
    for a writer that inserts rows whose parents it has just inserted (and
    checks that itself); SQLite switches the checks only outside a
    transaction, and the connection gets them back before it returns to the
    pool. PostgreSQL ignores it.
    """
    bind = _writer(engine) if write else engine
    try:
        with bind.connect() as conn:
            driver = conn.connection.driver_connection
            unchecked = not foreign_keys and is_sqlite(conn)
            if attach:
                driver.execute("ATTACH DATABASE ? AS scratch", (attach,))
            if unchecked:
                driver.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    yield conn
            finally:
                if unchecked:
                    driver.execute("PRAGMA foreign_keys=ON")
                if attach:
                    driver.execute("DETACH DATABASE scratch")
    except SQLAlchemyError as exc:
        raise DatabaseError(_one_line(exc)) from exc
    except engine.dialect.dbapi.Error as exc:  # raised below SQLAlchemy (bulk_insert)
        raise DatabaseError(_one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split())


def bulk_insert(
    conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence]
) -> None:
    """Insert many rows below the ORM: executemany on SQLite, COPY on PostgreSQL.

    The card table takes hundreds of rows per file; going through the ORM or
    Core executemany costs several times more than the driver's own path.
    """
    if not rows:
        return
    driver_conn = conn.connection.driver_connection
    names = ", ".join(columns)
    if is_sqlite(conn):
        marks = ", ".join("?" * len(columns))
        cursor = driver_conn.cursor()
        cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
        cursor.close()
        return
    with driver_conn.cursor() as cursor:
        with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


CARD_FIELDS = ("position", "keyword", "value_text", "value_num", "vtype", "comment")


def write_scratch_cards(directory: str, hdus: list[tuple[int, int, list[tuple]]]) -> str:
    """Write the cards of a chunk's HDUs, given as (the file's place in the
    chunk, HDU index, cards), to a new scratch SQLite file; return its path.

    The cards go in as the parser made them, one HDU after another, and a
    small table gives each HDU's span of rowids: building a wider tuple for
    every card would cost a third of the write. Runs in a worker; the
    catalog is untouched. Written through apsw, whose executemany binds a
    row in under half the time of the standard sqlite3 module's: this write
    was half of a worker's time.
    """
    import uuid

    import apsw

    path = str(Path(directory) / f"cards-{uuid.uuid4().hex}.db")
    spans, first = [], 1  # a new table numbers its rows 1, 2, 3...
    for local, index, cards in hdus:
        spans.append((local, index, first, first + len(cards) - 1))
        first += len(cards)
    try:
        _write_scratch(apsw.Connection(path), hdus, spans)
    except apsw.Error as exc:  # a full disk, an unwritable temporary directory
        raise DatabaseError(f"{path}: cannot write the ingest's scratch file: {exc}") from None
    return path


def _write_scratch(scratch, hdus: list[tuple[int, int, list[tuple]]], spans: list[tuple]) -> None:
    try:
        for statement in (
            f"PRAGMA page_size={SQLITE_PAGE_SIZE}",  # as the catalog's: fewer pages to write, and to read in the copy
            "PRAGMA journal_mode=OFF",
            "PRAGMA synchronous=OFF",
            f"CREATE TABLE cards ({', '.join(CARD_FIELDS)})",
            "CREATE TABLE hdus (local, hdu_index, first, last)",
        ):
            scratch.execute(statement).fetchall()  # apsw runs a statement as its rows are read
        with scratch:  # one transaction
            scratch.executemany(
                f"INSERT INTO cards VALUES ({', '.join('?' * len(CARD_FIELDS))})",
                itertools.chain.from_iterable(cards for _, _, cards in hdus),
            )
            scratch.executemany("INSERT INTO hdus VALUES (?, ?, ?, ?)", spans)
    finally:
        scratch.close()


def copy_scratch_cards(conn: Connection, file_ids: dict[int, int]) -> None:
    """Copy the attached scratch file's cards into header_cards, giving each
    the id of its file; cards of files not in ``file_ids`` are left out.
    The copy runs inside SQLite: ~4x faster than inserting rows from Python.

    First it checks that every HDU the cards belong to is stored: then the
    copy holds header_cards' foreign key whether or not SQLite checks it card
    by card (the checks would cost twice the copy itself; see
    ``transaction(foreign_keys=False)``)."""
    cursor = conn.connection.driver_connection.cursor()
    cursor.execute("CREATE TEMP TABLE IF NOT EXISTS scratch_ids (local INTEGER PRIMARY KEY, file_id INTEGER)")
    cursor.execute("DELETE FROM temp.scratch_ids")
    cursor.executemany("INSERT INTO temp.scratch_ids VALUES (?, ?)", file_ids.items())
    orphan = cursor.execute(
        "SELECT m.file_id, h.hdu_index FROM scratch.hdus h JOIN temp.scratch_ids m ON m.local = h.local "
        "WHERE NOT EXISTS (SELECT 1 FROM main.hdus x WHERE x.file_id = m.file_id AND x.hdu_index = h.hdu_index) LIMIT 1"
    ).fetchone()
    if orphan:
        cursor.close()
        raise DatabaseError(f"cards of file {orphan[0]} HDU {orphan[1]} have no HDU row; nothing of the chunk stored")
    # CROSS JOIN fixes the loop order: each HDU, then its span of cards.
    cursor.execute(
        "INSERT INTO header_cards (file_id, hdu_index, position, keyword, value_text, value_num, vtype, comment) "
        "SELECT m.file_id, h.hdu_index, c.position, c.keyword, c.value_text, c.value_num, c.vtype, c.comment "
        "FROM scratch.hdus h CROSS JOIN temp.scratch_ids m CROSS JOIN scratch.cards c "
        "WHERE m.local = h.local AND c.rowid BETWEEN h.first AND h.last"
    )
    cursor.close()


def sql_datetime(conn: Connection, value):
    """A datetime as the driver should receive it below the ORM: SQLite keeps
    SQLAlchemy's text form (so comparisons with bound datetimes are exact),
    PostgreSQL takes the object."""
    if value is None or not is_sqlite(conn):
        return value
    # SQLAlchemy's own form, year zero-padded: strftime's %Y wrote year 999 as '999-...', which
    # SQLAlchemy then could not read back, and every query of the catalog failed
    return (f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
            f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}")


# -- schema versions -------------------------------------------------------


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(engine: Engine):
    """An alembic Config whose scripts come from the installed package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    config.attributes["engine"] = engine
    return config


def head_revision(engine: Engine | None = None) -> str:
    """The schema revision this code needs."""
    from migrations import HEAD

    return HEAD


def missing_file(engine: Engine) -> bool:
    """Whether the catalog is a SQLite file that does not exist: connecting
    would create it, and a command that only reads must not leave one behind."""
    if not is_sqlite(engine):
        return False
    database = engine.url.database or ""
    if database.startswith("file:"):  # a read-only URI
        database = database[len("file:"):].split("?", 1)[0]
    return database not in ("", ":memory:") and not Path(database).exists()


def current_revision(engine: Engine) -> str | None:
    """The catalog's schema revision, read without loading alembic (every
    command checks it before doing anything); a file that is no database,
    or a PostgreSQL search_path whose first schema is missing, is refused in
    one line."""
    if missing_file(engine):
        return None
    try:
        return _stored_revision(engine)
    except SQLAlchemyError as exc:
        raise cannot(engine, "open", exc) from exc


def cannot(engine: Engine, doing: str, exc: BaseException) -> DatabaseError:
    """``cannot open the catalog at URL: why``, in one line; a SQLite path
    that is a directory, or whose directory does not exist, is said so
    (SQLite says only 'unable to open database file')."""
    why = _one_line(exc)
    database = engine.url.database or ""
    if is_sqlite(engine) and database not in ("", ":memory:") and not database.startswith("file:"):
        path = Path(database).resolve()
        if path.is_dir():
            why = f"{path} is a directory: name a file in it (--db {path / 'obsarch.db'})"
        elif not path.parent.is_dir():
            # the first part of the path that is no directory: missing, or a file
            folder = next(p for p in reversed([path.parent, *path.parent.parents]) if not p.is_dir())
            why = f"its directory {path.parent} does not exist" if not folder.exists() else f"{folder} is a file, not a directory"
    return DatabaseError(f"cannot {doing} the catalog at {_where(engine)}: {why}")


def _stored_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not is_sqlite(conn):
            return _postgres_revision(conn)
        try:  # one SELECT for a catalog; the table is looked for only when it fails
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except DBAPIError:
            conn.rollback()
            if inspect(conn).has_table("alembic_version"):
                raise
            return None


def _postgres_revision(conn: Connection) -> str | None:
    """The revision stored in the catalog's schema, the first of the
    search_path, and only there: a plain ``alembic_version`` would be found
    in any later schema of the path (``team2,public``: public's catalog
    passed the check, then ingest created team2's indexes against public's
    tables and failed)."""
    schema, path, user, stored = conn.exec_driver_sql(
        "SELECT current_schema(), current_setting('search_path'), current_user, EXISTS "
        "(SELECT FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'alembic_version')").one()
    _check_search_path(conn, schema, path, user)
    if not stored:
        return None
    quoted = conn.dialect.identifier_preparer.quote(schema)
    return conn.exec_driver_sql(f"SELECT version_num FROM {quoted}.alembic_version").scalar()


def known_revisions() -> list[str]:
    """The schema revisions this obsarch carries, oldest first (their files
    are named by them: ``0008_step_runs.py``)."""
    from migrations import versions

    return sorted(p.name[:4] for p in Path(versions.__file__).parent.glob("[0-9][0-9][0-9][0-9]_*.py"))


def unknown_schema(engine: Engine, current: str) -> SchemaOutOfDate:
    """A catalog at a revision this obsarch does not carry: a later obsarch's,
    or another program's alembic table; upgrading cannot help."""
    return SchemaOutOfDate(f"the catalog at {_where(engine)} is at schema {current}, which this obsarch (schema "
                           f"{head_revision()}) does not know: a later obsarch made it (install that one), or it is "
                           "not an obsarch catalog")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the catalog's schema to ``revision``; a database that cannot
    hold a catalog, a revision this obsarch does not carry and a catalog at
    one are refused in one line, before alembic runs."""
    from alembic import command

    known = known_revisions()
    if revision != "head" and revision not in known:
        raise UsageError(f"unknown schema revision {revision!r}; this obsarch carries {known[0]} to {known[-1]} (or head)")
    current = current_revision(engine)
    if current is not None and current not in known:
        raise unknown_schema(engine, current)
    try:
        command.upgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        raise cannot(engine, "upgrade", exc) from exc


def _where(engine: Engine) -> str:
    """The catalog's URL, and the file a relative SQLite path names from here
    (run from another directory, sqlite:///obsarch.db is another catalog)."""
    where = engine.url.render_as_string(hide_password=True)
    database = engine.url.database
    if is_sqlite(engine) and database and database != ":memory:" and not database.startswith("file:") \
            and not os.path.isabs(database):
        where += f" ({os.path.abspath(database)})"
    return where


def search_path_schemas(path: str) -> list[str]:
    """The schemas a PostgreSQL ``search_path`` setting names, in order, as
    the server reads them: an unquoted name in lower case; ``$user`` kept."""
    names = []
    for quoted, plain in re.findall(r'\s*(?:"((?:[^"]|"")*)"|([^,]*?))\s*(?:,|$)', path):
        name = quoted.replace('""', '"') if quoted else plain.lower()
        if name:
            names.append(name)
    return names


def _check_search_path(conn: Connection, schema: str | None, path: str, user: str) -> None:
    """Refuse a PostgreSQL connection whose search_path does not begin with
    a schema it may use: PostgreSQL would skip it and work in the next one
    (another team's catalog, say), or, with none left, every CREATE would
    fail with "no schema has been selected". A missing ``$user`` schema is
    skipped, as PostgreSQL's default search_path means it to be."""
    names = search_path_schemas(path)
    if names[:1] == ["$user"]:
        names = [user] if schema == user else names[1:]
    if names and names[0] == schema:
        return
    where = _where(conn.engine)
    if not names:
        raise DatabaseError(f"the catalog at {where} has an empty search_path; name a schema in it")
    first = names[0]
    quoted = conn.dialect.identifier_preparer.quote(first)
    instead = f", or take it out of the search_path: obsarch works in its first schema only, not in {schema}" if schema else ""
    if conn.exec_driver_sql("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %(n)s)", {"n": first}).scalar():
        raise DatabaseError(f"the user {user} may not use schema {first} (the search_path of {where}); "
                            f"GRANT USAGE ON SCHEMA {quoted} TO {conn.dialect.identifier_preparer.quote(user)}{instead}")
    raise DatabaseError(f"schema {first} (the search_path of {where}) does not exist; "
                        f"create it first: CREATE SCHEMA {quoted}{instead}")


def _catalog_in_a_later_schema(engine: Engine) -> str:
    """Where a catalog is, in words, when the search_path's first schema
    holds none but a later one does (PostgreSQL); else nothing."""
    if is_sqlite(engine):
        return ""
    with engine.connect() as conn:
        schema, later = conn.exec_driver_sql(
            "SELECT current_schema(), (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass('alembic_version'))").one()
    if later is None or later == schema:
        return ""
    return (f" (schema {schema}, the first of its search_path, holds none; the catalog in {later} is "
            f"used only when {later} comes first)")


def _own_tables(engine: Engine) -> set[str]:
    """The tables of the catalog's schema (PostgreSQL: the first of the
    search_path; without a schema, the inspector lists every table the
    search_path reaches, other schemas' too)."""
    inspector = inspect(engine)
    return set(inspector.get_table_names(schema=None if is_sqlite(engine) else inspector.default_schema_name))


def check_schema(engine: Engine) -> None:
    """Refuse a catalog that is missing or not at this code's schema."""
    where = _where(engine)
    current = current_revision(engine)
    head = head_revision(engine)
    if current == head:
        return
    if current is None:
        tables = set() if missing_file(engine) else _own_tables(engine)
        if "files" in tables:
            raise SchemaOutOfDate(
                f"the catalog at {where} has no schema version; run `obsarch db upgrade`"
            )
        raise CatalogNotFound(
            f"no obsarch catalog at {where}{_catalog_in_a_later_schema(engine)}; run `obsarch init` first "
            f"(or name one with --db or ${ENV_VAR})"
        )
    if current not in known_revisions():
        raise unknown_schema(engine, current)
    raise SchemaOutOfDate(
        f"the catalog at {where} is at schema {current}, this obsarch needs {head}; "
        "run `obsarch db upgrade`"
    )


# -- read-only SQL ---------------------------------------------------------

SHARED_READER_ROLE = "obsarch_reader"  # one role for the whole server (migration 0012); no catalog's since 0021
READER_PREFIX = "obsarch_reader_"
READERS_SINCE = "0021"  # the revision from which each catalog has a reader role of its own


def reader_role(database: str, schema: str) -> str:
    """The role ``obsarch sql`` reads the catalog in ``database``.``schema``
    as (PostgreSQL): one per catalog, which may read that schema's tables
    only. One role for the whole server let a user granted it for one
    catalog read every team's (found by a team trial).

    Role names are server-wide and at most 63 bytes: the database and schema
    names, in lower-case letters, digits and ``_`` (cut to fit), then a hash
    of both as given, so that no two catalogs share a role (``a_b``.``c``
    and ``a``.``b_c`` read alike) and no name needs quoting."""
    digest = hashlib.sha256(f"{database}\x00{schema}".encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9]+", "_", f"{database}_{schema}".lower()).strip("_")
    room = 63 - len(READER_PREFIX) - 1 - len(digest)
    return f"{READER_PREFIX}{readable[:room].rstrip('_')}_{digest}"


@contextmanager
def views_set_aside(conn: Connection) -> Iterator[None]:
    """Drop the views of the catalog's schema (PostgreSQL), and make them
    again as they were after the block: a column a view reads cannot change
    type or collation under it, and a user may have made views of the
    catalog's tables (any SQL client reads it). Each view comes back with
    its definition, options, owner, comment and grants, a materialized one
    with its indexes (and its rows made again)."""
    kinds = {"v": "VIEW", "m": "MATERIALIZED VIEW"}
    views = conn.exec_driver_sql(
        "SELECT c.relkind, quote_ident(c.relname), pg_get_viewdef(c.oid), c.reloptions, "
        "quote_ident(pg_get_userbyid(c.relowner)), quote_literal(obj_description(c.oid, 'pg_class')) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('v', 'm') AND n.nspname = current_schema() ORDER BY c.oid").all()  # made in this order
    grants = conn.exec_driver_sql(
        "SELECT quote_ident(c.relname), CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END, "
        "a.privilege_type, a.is_grantable "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a "
        "WHERE c.relkind IN ('v', 'm') AND n.nspname = current_schema() AND a.grantee <> c.relowner").all()
    indexes = conn.exec_driver_sql(  # a materialized view's
        "SELECT i.indexdef FROM pg_indexes i JOIN pg_class c ON c.relname = i.tablename "
        "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = i.schemaname "
        "WHERE c.relkind = 'm' AND i.schemaname = current_schema()").scalars().all()
    me = conn.exec_driver_sql("SELECT quote_ident(current_user)").scalar_one()
    cursor = conn.connection.driver_connection.cursor()  # statements as written: a definition's % is no placeholder
    for kind, name, *_ in reversed(views):
        cursor.execute(f"DROP {kinds[kind]} {name}")
    yield
    for kind, name, definition, options, owner, comment in views:
        with_options = f" WITH ({', '.join(options)})" if options else ""
        cursor.execute(f"CREATE {kinds[kind]} {name}{with_options} AS {definition.rstrip().rstrip(';')}")
        if owner != me:
            cursor.execute(f"ALTER {kinds[kind]} {name} OWNER TO {owner}")
        if comment is not None:
            cursor.execute(f"COMMENT ON {kinds[kind]} {name} IS {comment}")
    for statement in indexes:
        cursor.execute(statement)
    for name, grantee, privilege, grantable in grants:
        cursor.execute(f"GRANT {privilege} ON {name} TO {grantee}{' WITH GRANT OPTION' if grantable else ''}")


def grant_reader(conn: Connection) -> None:
    """Make the catalog's reader role if it is missing and give it what it
    reads (PostgreSQL, in the transaction of ``conn``): USAGE of the schema,
    SELECT on every table and view this user may grant (it owns them, or is
    a member of their owner), and SELECT on the tables this user makes from
    now on (default privileges, which only ever apply to their maker's new
    tables: a table another member makes later is granted when that member
    runs ``obsarch db upgrade``, which calls this). The user is made a member
    of the role, so that ``obsarch sql`` may SET ROLE to it.

    Roles belong to the whole server: another catalog's migration may be
    making one at the same moment, and a user who may not create roles gets
    a catalog without it; ``obsarch sql`` then says so in one line."""
    role = reader_role(*conn.exec_driver_sql("SELECT current_database(), current_schema()").one())
    conn.execute(text(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {role} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION;
            END IF;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN RAISE NOTICE 'cannot create the role {role}: obsarch sql will refuse to run';
        END $$"""))
    conn.execute(text(f"""
        DO $$
        DECLARE
            relation regclass;
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                RETURN;
            END IF;
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO {role}', current_schema());
            FOR relation IN
                SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                  AND pg_has_role(current_user, c.relowner, 'MEMBER')
            LOOP
                BEGIN
                    EXECUTE format('GRANT SELECT ON %s TO {role}', relation);
                EXCEPTION WHEN insufficient_privilege THEN NULL;
                END;
            END LOOP;
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {role}', current_schema());
            BEGIN
                EXECUTE format('GRANT {role} TO %I', current_user);
            EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN NULL;
            END;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot give the role {role} what it reads: %', SQLERRM;
        END $$"""))


DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_MB = 100  # of values kept: a 600 MB blob took 4 GB as JSON and broke ECSV's numpy strings
_FETCH_ROWS = 10_000  # rows asked of the server (or SQLite) at a time
_CHECK_CLIENT_MS = 1000  # how soon PostgreSQL notices a client that went away


class ReadOnlyResult(NamedTuple):
    """What :func:`run_read_only` returns: the column names, at most
    ``max_rows`` rows, whether the statement had more, and whether they were
    left because the rows kept reached ``max_mb`` (then ``rows`` may be
    empty: the first row alone was larger)."""

    names: list[str]
    rows: list[tuple]
    more: bool
    too_big: bool = False


def run_read_only(url: str | None, sql: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                  max_rows: int = DEFAULT_MAX_ROWS, max_mb: float = DEFAULT_MAX_MB) -> ReadOnlyResult:
    """Run one query, read-only by privilege; return its first ``max_rows``
    rows, fetched in batches so that memory holds no more than those (a
    query of a billion rows took 1.8 GB in 3 s): a server-side cursor on
    PostgreSQL, row by row on SQLite. Rows stop too where their values
    would pass ``max_mb`` (see :func:`_first_rows`).

    SQLite: a read-only connection whose authorizer allows reading only
    (no ATTACH, hence no ``VACUUM INTO``; no pragma that writes). PostgreSQL:
    a read-only transaction under ``SET ROLE`` to the catalog's reader role
    (:func:`reader_role`), which may only read the catalog's own tables, so
    other catalogs of the server, server files and programs,
    signals to other sessions and writes fail even for a superuser; the
    server's own plan of the statement is checked for ``set_config``, the one
    way a query could leave that role. ``timeout_s`` is enforced by the
    server (``statement_timeout``, over every fetch together), which also
    drops the statement within a second when the client goes away.
    """
    if max_rows < 1:
        raise UsageError(f"max_rows is {max_rows}; at least 1 row")
    if not max_mb > 0:
        raise UsageError(f"max_mb is {max_mb}; more than 0")
    if "\x00" in sql:
        raise ReadOnlyViolation("the statement holds a NUL byte")
    if any("\ud800" <= c <= "\udfff" for c in sql):  # bytes that were not UTF-8 (kept by Python as surrogates)
        raise DatabaseError("SQL error: the statement is not valid UTF-8")
    engine = make_engine(url, read_only=True)
    try:
        if is_sqlite(engine):
            return _sqlite_read_only(engine, sql, timeout_s, max_rows, max_mb)
        return _postgres_read_only(engine, sql, timeout_s, max_rows, max_mb)
    finally:
        engine.dispose()


def _first_rows(fetch, max_rows: int, max_mb: float, before_fetch=None) -> tuple[list[tuple], bool, bool]:
    """Up to ``max_rows`` rows, ``fetch(n)`` at a time, whether there were
    more, and whether they stopped because the next row would take the
    values kept past ``max_mb`` (then the rows may be none: the first alone
    was larger). One row past ``max_rows`` is asked for, so that a statement
    of exactly ``max_rows`` rows is not called cut short; its size is not
    counted. Batches start at one row and at most double, and hold no more
    rows than the largest so far says fit in what is left of ``max_mb``: a
    batch of 10,000 rows of 100 MB values would be a terabyte."""
    budget = max_mb * 2**20
    rows: list[tuple] = []
    size = largest = 0
    wanted = 1
    while True:
        if before_fetch is not None:
            before_fetch()
        batch = fetch(min(wanted, max_rows + 1 - len(rows)))
        if not batch:
            return rows, False, False
        for row in batch:
            if len(rows) == max_rows:
                return rows, True, False
            taken = sum(map(_value_bytes, row))
            size += taken
            if size > budget:
                return rows, True, True
            largest = max(largest, taken)
            rows.append(tuple(row))
        wanted = max(1, min(_FETCH_ROWS, 2 * wanted, int((budget - size) // max(largest, 1))))


def _value_bytes(value) -> int:
    """About what a fetched value takes (characters of text): what a row holds, for --max-mb."""
    if isinstance(value, (str, bytes, bytearray)):
        return len(value) + 8
    if value is None or isinstance(value, (int, float, bool)):
        return 8
    if isinstance(value, memoryview):
        return value.nbytes + 8
    return len(str(value)) + 8  # arrays, JSON, numeric, times: as shown


_SQLITE_ALLOWED = {21, 20, 31, 33, 22}  # SELECT, READ, FUNCTION, RECURSIVE, TRANSACTION (sqlite3's codes)
_SQLITE_PRAGMA = 19
_PRAGMAS_WITH_ARGUMENT = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                          "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check", "pragma_list",
                          "function_list", "collation_list", "database_list", "compile_options"}
_PRAGMAS_THAT_WRITE = {"optimize", "wal_checkpoint", "incremental_vacuum", "shrink_memory"}


def _sqlite_authorizer(action, arg1, arg2, _db, _trigger):
    if action in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_OK
    if action == _SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name not in _PRAGMAS_THAT_WRITE and (arg2 is None or name in _PRAGMAS_WITH_ARGUMENT):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _sqlite_read_only(engine: Engine, sql: str, timeout_s: float | None, max_rows: int, max_mb: float) -> ReadOnlyResult:
    deadline = time.monotonic() + timeout_s if timeout_s else None
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        driver.set_authorizer(_sqlite_authorizer)
        if deadline is not None:
            driver.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cursor = driver.execute(sql)
            if cursor.description is None:  # BEGIN, or only comments: PostgreSQL refuses them, SQLite ran them and said nothing
                raise ReadOnlyViolation(f"`obsarch sql` is read-only; the statement was refused: it runs one query (SELECT, WITH, "
                                        f"VALUES or a PRAGMA that reads), not {_first_word(sql).upper() or 'only comments'}")
            names = [d[0] for d in cursor.description]
            # one row at a time (the cursor's own loop, in C): SQLite makes each row as it is asked for
            rows, more, too_big = _first_rows(lambda _: list(itertools.islice(cursor, 1)), max_rows, max_mb)
            cursor.close()
        except sqlite3.Warning as exc:  # more than one statement
            raise ReadOnlyViolation("`obsarch sql` runs one statement at a time") from exc
        except sqlite3.Error as exc:
            interrupted = deadline is not None and time.monotonic() > deadline
            raise _sql_error(exc, timeout_s, interrupted=interrupted, where="") from exc
        finally:
            driver.set_authorizer(None)
            driver.set_progress_handler(None, 0)
        conn.rollback()
        return ReadOnlyResult(names, rows, more, too_big)


def _postgres_read_only(engine: Engine, sql: str, timeout_s: float | None, max_rows: int, max_mb: float) -> ReadOnlyResult:
    import psycopg

    raw = engine.raw_connection()
    driver = raw.driver_connection
    try:
        driver.autocommit = True
        with driver.cursor() as cursor:
            cursor.execute("BEGIN READ ONLY")
            deadline = time.monotonic() + timeout_s if timeout_s else None
            _postgres_limits(cursor, driver, timeout_s)
            database, schema = cursor.execute("SELECT current_database(), current_schema()").fetchone()
            role = reader_role(database, schema)
            _set_reader_role(cursor, engine, role, schema)
            try:
                _refuse_leaving_the_role(cursor, sql)
                return _postgres_rows(driver, cursor, sql, max_rows, max_mb, timeout_s, deadline)
            except psycopg.errors.QueryCanceled as exc:
                raise _sql_error(exc, timeout_s, interrupted=True) from None
            except psycopg.errors.InsufficientPrivilege as exc:
                raise _refused_read(cursor, engine, exc, role, schema) or _sql_error(exc, timeout_s) from None
            except psycopg.Error as exc:
                raise _sql_error(exc, timeout_s) from None
    finally:
        with suppress(psycopg.Error):  # a broken connection is dropped below anyway
            driver.execute("ROLLBACK")
        raw.invalidate()  # never hand a connection that ran a user's SQL back to a pool


def _set_reader_role(cursor, engine: Engine, role: str, schema: str) -> None:
    """SET LOCAL ROLE to the catalog's reader, or say in one line who must do what."""
    import psycopg

    user = cursor.connection.info.user
    quote = engine.dialect.identifier_preparer.quote
    try:
        cursor.execute(f"SET LOCAL ROLE {quote(role)}")
    except psycopg.errors.InvalidParameterValue:  # no such role
        raise ReadOnlyViolation(
            f"`obsarch sql` reads as {role}, the reader role of this catalog (schema {schema}), which does not exist: "
            f"the user who upgraded the catalog may not create roles; one who may runs `obsarch db upgrade`, "
            f"then GRANT {role} TO {quote(user)}") from None
    except psycopg.Error as exc:
        raise ReadOnlyViolation(
            f"`obsarch sql` reads as {role}, the reader role of this catalog (schema {schema}), and the user "
            f"{user} cannot SET ROLE to it ({_one_line(exc)}); an administrator runs: GRANT {role} TO {quote(user)}") from None
    # the schema the role works in: without USAGE of the catalog's, PostgreSQL passes it over
    if cursor.execute("SELECT current_schema()").fetchone()[0] != schema:
        raise ReadOnlyViolation(_not_given_schema(role, schema, quote))


def _not_given_schema(role: str, schema: str, quote) -> str:
    return (f"`obsarch sql` reads as {role}, which was not given this catalog's schema {schema}: "
            f"its owner runs `obsarch db upgrade`, or GRANT USAGE ON SCHEMA {quote(schema)} TO {role}")


_DENIED = re.compile(r"permission denied for (schema|table|view|materialized view|foreign table) (\S+)")


def _refused_read(cursor, engine: Engine, exc: Exception, role: str, schema: str) -> Exception | None:
    """Why the catalog's reader role was refused, when it was a read: a
    schema other than the catalog's, or a table of the catalog not given to
    the reader (made by another member after the reader was set up); None
    for anything else (a write)."""
    message = _one_line(exc).split(" LINE 1:")[0]  # the rest quotes our EXPLAIN
    denied = _DENIED.search(message)
    if denied is None:
        return None
    kind, name = denied.groups()
    quote = engine.dialect.identifier_preparer.quote
    if kind == "schema" and name != schema:
        return ReadOnlyViolation(f"`obsarch sql` reads as {role}, which may read this catalog's schema {schema} only, "
                                 f"not {name}: {message}")
    if kind == "schema":
        return ReadOnlyViolation(_not_given_schema(role, schema, quote))
    import psycopg

    try:  # asked outside the failed transaction, as the user
        cursor.execute("ROLLBACK")
        unread = cursor.execute(
            "SELECT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND NOT has_table_privilege(%s, c.oid, 'SELECT')",
            (schema, name, role)).fetchone()
    except psycopg.Error:
        return None
    if unread is None:
        return None
    return ReadOnlyViolation(f"`obsarch sql` reads as {role}, which may not read the {kind} {name} of this catalog: its owner "
                             f"{unread[0]} made it without giving it to the reader; {unread[0]} runs `obsarch db upgrade`, "
                             f"or GRANT SELECT ON {quote(schema)}.{quote(name)} TO {role}")


def _postgres_rows(driver, cursor, sql: str, max_rows: int, max_mb: float, timeout_s: float | None,
                   deadline: float | None) -> ReadOnlyResult:
    """The statement's first rows through a server-side cursor (DECLARE,
    then FETCH a batch at a time): the server keeps the rest, where a
    plain cursor would have received every row. Each FETCH is a statement
    of its own, so the timeout each gets is what is left of ``timeout_s``."""
    import psycopg
    from psycopg.types.string import TextLoader

    named = driver.cursor(name="obsarch_sql")
    # an interval as PostgreSQL writes it: psycopg's timedelta folds 26 hours into a day and a month into 30 days
    named.adapters.register_loader("interval", TextLoader)
    try:
        # EXPLAIN took the statement (_refuse_leaving_the_role); one a cursor does not take is no query
        try:
            named.execute(sql)  # DECLARE, in one Parse: one statement only
        except psycopg.errors.SyntaxError:  # CREATE TABLE AS, EXECUTE
            raise ReadOnlyViolation(f"`obsarch sql` is read-only; the statement was refused: it runs one query "
                                    f"(SELECT, WITH, VALUES or TABLE), not {_first_word(sql).upper()}") from None
        except psycopg.errors.FeatureNotSupported as exc:  # a WITH that writes
            raise ReadOnlyViolation(f"`obsarch sql` is read-only; the statement was refused: {_one_line(exc)}") from None
        names = [d.name for d in named.description or []]

        def time_left() -> None:
            if deadline is None:
                return
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms < 1:
                raise QueryTimeout(f"the statement ran past the {timeout_s:g} s timeout and was cancelled on the server (--timeout)")
            cursor.execute(f"SET LOCAL statement_timeout = {left_ms}")

        rows, more, too_big = _first_rows(named.fetchmany, max_rows, max_mb, time_left) if names else ([], False, False)
        return ReadOnlyResult(names, rows, more, too_big)
    finally:
        with suppress(psycopg.Error):
            named.close()


def _postgres_limits(cursor, driver, timeout_s: float | None) -> None:
    if timeout_s:
        cursor.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
    if driver.info.server_version >= 140000:
        cursor.execute(f"SET LOCAL client_connection_check_interval = {_CHECK_CLIENT_MS}")


def _refuse_leaving_the_role(cursor, sql: str) -> None:
    """Ask the server how it would run ``sql`` (without running it) and
    refuse a plan that calls ``set_config``: as a superuser's session, a
    query could set ``role`` back. Only what EXPLAIN takes is a query here."""
    import psycopg

    cursor.execute("SAVEPOINT plan")
    parsed = cursor.connection.pgconn.prepare(b"", sql.encode())  # parsed, not run
    if parsed.status == psycopg.pq.ExecStatus.FATAL_ERROR and b"multiple commands" in (parsed.error_message or b""):
        raise ReadOnlyViolation("`obsarch sql` runs one statement at a time")
    cursor.execute("ROLLBACK TO SAVEPOINT plan")
    try:
        cursor.execute("EXPLAIN (VERBOSE, FORMAT JSON) " + sql, prepare=True)
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction,
            psycopg.errors.DatatypeMismatch) as exc:  # the user's mistake, quoted without our EXPLAIN
        error = _sql_error(exc, None)
        raise type(error)(str(error).split(" LINE 1:")[0]) from None
    except psycopg.errors.SyntaxError as exc:
        message = _one_line(exc).split(" LINE 1:")[0]  # the rest quotes our EXPLAIN, not the user's text
        if "multiple commands" in message:
            raise ReadOnlyViolation("`obsarch sql` runs one statement at a time") from None
        first = _first_word(sql).lower()
        cursor.execute("ROLLBACK TO SAVEPOINT plan")
        if cursor.execute("SELECT 1 FROM pg_get_keywords() WHERE word = %s", (first,)).fetchone():
            raise ReadOnlyViolation(f"`obsarch sql` is read-only; the statement was refused: it runs one query "
                                    f"(SELECT, WITH, VALUES or TABLE), not {first.upper()}") from None
        raise DatabaseError(f"SQL error: {message}") from None
    plan = json.dumps(cursor.fetchall()).lower()
    if "set_config(" in plan:
        raise ReadOnlyViolation("`obsarch sql` refuses set_config(): it could leave the read-only role")
    # functions that run SQL text they are given: their statement is planned only when they run, so a
    # set_config() put together inside one (format('set_%s', 'config')) is in no plan checked here
    running = sorted({name for name in _RUNS_SQL_TEXT if f"{name}(" in plan})
    if running:
        raise ReadOnlyViolation(f"`obsarch sql` refuses {running[0]}(): it runs SQL text that cannot be checked first")


_LEADING_COMMENTS = re.compile(r"\s*(?:--[^\n]*(?:\n|$)|/\*.*?\*/)", re.DOTALL)


def _first_word(sql: str) -> str:
    """The statement's first word, past leading comments (``-- note``, ``/* ... */``)."""
    position = 0
    while match := _LEADING_COMMENTS.match(sql, position):
        if match.end() == position:
            break
        position = match.end()
    words = sql[position:].split(None, 1)
    return words[0] if words else ""


# PostgreSQL's own functions that take a statement as text and run it.
_RUNS_SQL_TEXT = ("query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema",
                  "ts_stat", "ts_rewrite")


_WRITE_REFUSALS = re.compile(
    r"readonly database|read-only transaction|attempt to write|query_only|not authorized|authorization denied|"
    r"permission denied|"
    r"must be superuser|must be a superuser|must be a member|privilege",
    re.IGNORECASE,
)


def _sql_error(exc: Exception, timeout_s: float | None, *, interrupted: bool = False, where: str = " on the server") -> Exception:
    message = _one_line(exc)
    if interrupted and timeout_s and ("cancel" in message or "interrupt" in message):
        return QueryTimeout(f"the statement ran past the {timeout_s:g} s timeout and was cancelled{where} (--timeout)")
    if interrupted:
        return QueryTimeout(f"the statement was cancelled: {message}")
    if "multiple commands" in message or "one statement at a time" in message:
        return ReadOnlyViolation("`obsarch sql` runs one statement at a time")
    if _WRITE_REFUSALS.search(message):
        return ReadOnlyViolation(f"`obsarch sql` is read-only; the statement was refused: {message}")
    return DatabaseError(f"SQL error: {message}")


@contextmanager
def statement_timeout(conn: Connection, timeout_s: float | None) -> Iterator[None]:
    """Cancel, on the server, what ``conn`` runs inside this block once
    ``timeout_s`` has passed (or the client has gone away): QueryTimeout."""
    if not timeout_s:
        yield
        return
    if is_sqlite(conn):
        driver = conn.connection.driver_connection
        deadline = time.monotonic() + timeout_s
        driver.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            yield
        except DatabaseError as exc:
            raise (QueryTimeout(_timed_out(timeout_s)) if time.monotonic() > deadline else exc) from exc
        except SQLAlchemyError as exc:
            if time.monotonic() > deadline:
                raise QueryTimeout(_timed_out(timeout_s)) from exc
            raise
        finally:
            driver.set_progress_handler(None, 0)
        return
    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
    if conn.connection.driver_connection.info.server_version >= 140000:
        conn.exec_driver_sql(f"SET LOCAL client_connection_check_interval = {_CHECK_CLIENT_MS}")
    try:
        yield
    except SQLAlchemyError as exc:
        if "statement timeout" in str(exc):
            raise QueryTimeout(_timed_out(timeout_s)) from exc
        raise


def _timed_out(timeout_s: float) -> str:
    return f"the query ran past the {timeout_s:g} s timeout and was cancelled (--timeout)"


def insert_ignoring_conflicts(conn: Connection, table, keys: Sequence[str]):
    """INSERT ... ON CONFLICT (keys) DO NOTHING, to execute with a list of
    rows (and RETURNING, which SQLAlchemy batches for both backends)."""
    if is_sqlite(conn):
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table).on_conflict_do_nothing(index_elements=list(keys))


def serialize(conn: Connection, name: str) -> None:
    """Let one transaction at a time past this point for ``name`` (PostgreSQL:
    an advisory lock held to the end of the transaction; SQLite writers
    already hold the database lock)."""
    if not is_sqlite(conn):
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%(name)s))", {"name": f"obsarch {name}"})


def lock_rows(statement, conn: Connection):
    """SELECT ... FOR UPDATE on PostgreSQL; SQLite writers already hold the
    database lock (BEGIN IMMEDIATE)."""
    return statement if is_sqlite(conn) else statement.with_for_update()


def copy_card_text(conn: Connection, blocks: Iterable[tuple[int, bytes]]) -> None:
    """COPY header cards given as (file id, lines of :mod:`archive.cardtext`)
    into header_cards (PostgreSQL): the lines go to the server as they are."""
    from archive.cardtext import with_file_id

    columns = "file_id, hdu_index, position, keyword, value_text, value_num, vtype, comment"
    cursor = conn.connection.driver_connection.cursor()
    with cursor, cursor.copy(f"COPY header_cards ({columns}) FROM STDIN") as copy:
        for file_id, block in blocks:
            copy.write(with_file_id(file_id, block))


# -- bulk loading the card table on PostgreSQL --------------------------------
# Each card row checks its HDU (a foreign-key trigger per row) and goes into
# the primary key's index: with both, COPY takes 146,000 rows/s here, without
# them 730,000 (measured in benchmarks/ingest.py's peer runs). A first ingest
# that drops the card indexes therefore drops these too on PostgreSQL, and
# adds them back in one pass each at the end. SQLite keeps them: its card
# table is clustered on the primary key (WITHOUT ROWID).

CARD_PKEY = "pk_header_cards"
CARD_FKEY = "fk_header_cards_file_id_hdu_index_hdus"


def card_constraint_names(conn: Connection) -> set[str]:
    """The names of header_cards' constraints present now (PostgreSQL; one
    round trip, as every ingest asks)."""
    rows = conn.exec_driver_sql("SELECT conname FROM pg_constraint WHERE conrelid = 'header_cards'::regclass")
    return {name for (name,) in rows}


def card_index_names(conn: Connection) -> set[str]:
    """The names of header_cards' indexes present now, in one query (every
    ingest asks; reflection through the inspector took ~25 ms on PostgreSQL)."""
    if is_sqlite(conn):
        return {row[1] for row in conn.exec_driver_sql("PRAGMA index_list(header_cards)")}
    rows = conn.exec_driver_sql(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'header_cards'")
    return {name for (name,) in rows}


def drop_card_constraints(conn: Connection, *, keep_primary: bool = False) -> None:
    """Drop header_cards' foreign key and, unless ``keep_primary``, its
    primary key (PostgreSQL), for a bulk load; the ingest adds them back."""
    if is_sqlite(conn):
        return
    serialize(conn, "card indexes")  # as for the indexes: concurrent bulk loads take turns
    conn.exec_driver_sql(f"ALTER TABLE header_cards DROP CONSTRAINT IF EXISTS {CARD_FKEY}")
    if keep_primary:
        return
    conn.exec_driver_sql(f"ALTER TABLE header_cards DROP CONSTRAINT IF EXISTS {CARD_PKEY}")
    # a key's index that a killed rebuild made but did not make the key yet
    conn.exec_driver_sql(f"DROP INDEX IF EXISTS {CARD_PKEY}")


# The primary key's index, made like any other index (with the card indexes,
# each on its own connection: see archive.ingest.ensure_card_keys), then
# made the key without another pass over the table.
CARD_PKEY_INDEX = f"CREATE UNIQUE INDEX {CARD_PKEY} ON header_cards (file_id, hdu_index, position)"


def missing_card_keys(conn: Connection) -> tuple[bool, bool, bool]:
    """Which of header_cards' keys are missing (PostgreSQL): (the primary
    key, its index, the foreign key). Two catalog queries, no table lock."""
    present = card_constraint_names(conn)
    pkey = CARD_PKEY not in present
    return pkey, pkey and CARD_PKEY not in card_index_names(conn), CARD_FKEY not in present


def add_card_constraints(conn: Connection, *, pkey: bool, fkey: bool) -> None:
    """Make the primary key of its index (made before: :data:`CARD_PKEY_INDEX`)
    and add the foreign key, whichever are asked for, in one statement:
    one pass over the table, to validate the foreign key.

    hdus is locked first: a chunk being written holds hdus (its rows
    went in) and then asks for header_cards; adding the foreign key the
    other way round (header_cards, then hdus) was a deadlock with it."""
    if is_sqlite(conn) or not (pkey or fkey):
        return
    actions = []
    if pkey:
        actions.append(f"ADD CONSTRAINT {CARD_PKEY} PRIMARY KEY USING INDEX {CARD_PKEY}")
    if fkey:
        conn.exec_driver_sql("LOCK TABLE hdus IN SHARE ROW EXCLUSIVE MODE")
        actions.append(
            f"ADD CONSTRAINT {CARD_FKEY} FOREIGN KEY (file_id, hdu_index) REFERENCES hdus (file_id, hdu_index) ON DELETE CASCADE"
        )
    conn.exec_driver_sql(f"ALTER TABLE header_cards {', '.join(actions)}")


def rows_in(conn: Connection, statement, column, ids) -> list:
    """The rows of ``statement`` whose ``column`` is one of ``ids``, asked
    500 ids at a time (SQLite binds at most 32,766 parameters); every row
    when ``ids`` is None."""
    if ids is None:
        return conn.execute(statement).all()
    ids = sorted(set(ids))
    return [row for start in range(0, len(ids), 500) for row in conn.execute(statement.where(column.in_(ids[start : start + 500])))]


def fetch_tuples(conn: Connection, statement) -> list[tuple]:
    """The rows of a Core SELECT as the driver returns them (plain tuples,
    no result processing): for statements that return very many rows whose
    columns need no conversion (integers, text). An IN list is bound value
    by value."""
    compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup)
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(compiled.string, params)
        return cursor.fetchall()
    finally:
        cursor.close()


# header_cards' columns but value_text: analyzed without it, PostgreSQL skips
# the multivariate statistics on (keyword, value_text) (migration 0011)
_CARD_COLUMNS_BUT_TEXT = "file_id, hdu_index, position, keyword, value_num, vtype, comment"


def analyze_after_bulk_load(conn: Connection, *, card_pairs: bool = True) -> None:
    """Fresh planner statistics for the tables a first ingest filled, so
    that the first queries are planned on what is there (PostgreSQL's
    autovacuum would come to it later; SQLite with an approximate pass).

    ``card_pairs`` False (PostgreSQL): header_cards without the statistics
    of keyword-value pairs, whose list of 1,000 pairs takes a sample of
    300,000 cards and seconds to build whatever the load's size."""
    if is_sqlite(conn):
        conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        conn.exec_driver_sql("ANALYZE")
        return
    for table in ("files", "hdus", "exposures"):
        conn.exec_driver_sql(f"ANALYZE {table}")
    if card_pairs:
        conn.exec_driver_sql("ANALYZE header_cards")
    else:
        conn.exec_driver_sql("SET LOCAL client_min_messages = error")  # no warning that the pairs were skipped
        conn.exec_driver_sql(f"ANALYZE header_cards ({_CARD_COLUMNS_BUT_TEXT})")


def insert_new_rows(conn: Connection, table, keys: Sequence[str], rows: list[dict], returning: Sequence[str]) -> list[tuple]:
    """INSERT ``rows`` (dicts with the same keys) ON CONFLICT (``keys``) DO
    NOTHING, returning the ``returning`` columns of the rows inserted.

    PostgreSQL gets one array per column (``unnest``): a multi-row VALUES of
    a few thousand parameters cost psycopg ~35 ms per statement to rewrite
    in Python, more than the server's insert."""
    if not rows:
        return []
    names = list(rows[0])
    conflict = f"ON CONFLICT ({', '.join(keys)}) DO NOTHING RETURNING {', '.join(returning)}"
    if is_sqlite(conn):
        # one statement of many rows (SQLite allows 32,766 parameters), values
        # as SQLAlchemy would bind them (datetimes as its text form)
        cursor = conn.connection.driver_connection.cursor()
        found = []
        try:
            for start in range(0, len(rows), 32_000 // len(names)):
                part = rows[start : start + 32_000 // len(names)]
                marks = ", ".join([f"({', '.join('?' * len(names))})"] * len(part))
                values = [sql_datetime(conn, v) if isinstance(v, datetime) else v for row in part for v in map(row.__getitem__, names)]
                cursor.execute(f"INSERT INTO {table.name} ({', '.join(names)}) VALUES {marks} {conflict}", values)
                found += cursor.fetchall()
        finally:
            cursor.close()
        return found
    arrays = ", ".join(f"%s::{table.c[name].type.compile(conn.dialect)}[]" for name in names)
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays}) {conflict}"
    with conn.connection.driver_connection.cursor() as cursor:
        cursor.execute(sql, [[row[name] for row in rows] for name in names])
        return cursor.fetchall()
