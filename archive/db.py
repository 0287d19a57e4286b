"""Engines, transactions and every difference between SQLite and PostgreSQL.

The rest of the code speaks SQLAlchemy; what depends on the backend (pragmas,
how a write transaction begins, bulk loading, read-only access) lives here.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from archive.exceptions import (
    CatalogNotFound,
    DatabaseError,
    ReadOnlyViolation,
    SchemaOutOfDate,
)

DEFAULT_URL = "sqlite:///obsarch.db"
ENV_VAR = "OBSARCH_DB"
SQLITE_BUSY_TIMEOUT_S = 120


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


def make_engine(url: str | None = None, *, read_only: bool = False) -> Engine:
    """An engine for the catalog at ``url`` (see :func:`resolve_url`)."""
    url = resolve_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, read_only)
    engine = create_engine(url, pool_pre_ping=True)
    if read_only:
        # Per connection rather than a connect option, so that options given
        # in the URL (a search_path, say) are kept.
        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn, _record):
            with dbapi_conn.cursor() as cursor:
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            dbapi_conn.commit()

    return engine


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
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

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


def _writer(engine: Engine) -> Engine:
    return engine.execution_options(obsarch_write=True)


@contextmanager
def transaction(engine: Engine, *, write: bool = False, attach: str | None = None) -> Iterator[Connection]:
    """A Core connection inside one transaction (committed on success).

    ``attach`` (SQLite): a scratch database file attached as ``scratch`` for
    the transaction; SQLite attaches and detaches only outside one.
    """
    bind = _writer(engine) if write else engine
    try:
        with bind.connect() as conn:
            driver = conn.connection.driver_connection
            if attach:
                driver.execute("ATTACH DATABASE ? AS scratch", (attach,))
            try:
                with conn.begin():
                    yield conn
            finally:
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
    The copy runs inside SQLite: ~4x faster than inserting rows from Python."""
    cursor = conn.connection.driver_connection.cursor()
    cursor.execute("CREATE TEMP TABLE IF NOT EXISTS scratch_ids (local INTEGER PRIMARY KEY, file_id INTEGER)")
    cursor.execute("DELETE FROM temp.scratch_ids")
    cursor.executemany("INSERT INTO temp.scratch_ids VALUES (?, ?)", file_ids.items())
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
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


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
    command checks it before doing anything)."""
    if missing_file(engine):
        return None
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def check_schema(engine: Engine) -> None:
    """Refuse a catalog that is missing or not at this code's schema."""
    where = engine.url.render_as_string(hide_password=True)
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot open the catalog at {where}: {_one_line(exc)}") from exc
    head = head_revision(engine)
    if current == head:
        return
    if current is None:
        tables = set() if missing_file(engine) else set(inspect(engine).get_table_names())
        if "files" in tables:
            raise SchemaOutOfDate(
                f"the catalog at {where} has no schema version; run `obsarch db upgrade`"
            )
        raise CatalogNotFound(
            f"no obsarch catalog at {where}; run `obsarch init` first (or name one with --db or ${ENV_VAR})"
        )
    raise SchemaOutOfDate(
        f"the catalog at {where} is at schema {current}, this obsarch needs {head}; "
        "run `obsarch db upgrade`"
    )


# -- read-only SQL ---------------------------------------------------------

_WRITE_REFUSALS = re.compile(
    r"readonly database|read-only transaction|attempt to write|query_only", re.IGNORECASE
)


def run_read_only(url: str | None, sql: str) -> tuple[list[str], list[tuple]]:
    """Run one statement on a read-only connection; return column names and rows."""
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as conn:
            driver_conn = conn.connection.driver_connection
            cursor = driver_conn.cursor()
            try:
                if is_sqlite(conn):
                    cursor.execute(sql)
                else:
                    # A prepared statement cannot hold a second statement
                    # (one that commits and turns read-only off, say).
                    cursor.execute(sql, prepare=True)
                names = [d[0] for d in cursor.description or []]
                rows = [tuple(r) for r in cursor.fetchall()] if names else []
            finally:
                cursor.close()
            conn.rollback()
            return names, rows
    except Exception as exc:  # driver errors differ per backend; all become one line
        message = _one_line(exc)
        if "multiple commands" in message or "one statement at a time" in message:
            raise ReadOnlyViolation("`obsarch sql` runs one statement at a time") from exc
        if _WRITE_REFUSALS.search(message):
            raise ReadOnlyViolation(
                f"`obsarch sql` is read-only; the statement was refused: {message}"
            ) from exc
        raise DatabaseError(f"SQL error: {message}") from exc
    finally:
        engine.dispose()


def insert_ignoring_conflicts(conn: Connection, table, keys: Sequence[str]):
    """INSERT ... ON CONFLICT (keys) DO NOTHING, to execute with a list of
    rows (and RETURNING, which SQLAlchemy batches for both backends)."""
    if is_sqlite(conn):
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table).on_conflict_do_nothing(index_elements=list(keys))


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


def drop_card_constraints(conn: Connection) -> None:
    if is_sqlite(conn):
        return
    conn.exec_driver_sql(f"ALTER TABLE header_cards DROP CONSTRAINT IF EXISTS {CARD_FKEY}")
    conn.exec_driver_sql(f"ALTER TABLE header_cards DROP CONSTRAINT IF EXISTS {CARD_PKEY}")


def add_card_constraints(conn: Connection) -> None:
    """Add back whichever of the two a bulk load (perhaps killed) dropped."""
    if is_sqlite(conn):
        return
    present = card_constraint_names(conn)
    if CARD_PKEY not in present:
        conn.exec_driver_sql(f"ALTER TABLE header_cards ADD CONSTRAINT {CARD_PKEY} PRIMARY KEY (file_id, hdu_index, position)")
    if CARD_FKEY not in present:
        conn.exec_driver_sql(
            f"ALTER TABLE header_cards ADD CONSTRAINT {CARD_FKEY} FOREIGN KEY (file_id, hdu_index) "
            "REFERENCES hdus (file_id, hdu_index) ON DELETE CASCADE"
        )


def fetch_tuples(conn: Connection, statement) -> list[tuple]:
    """The rows of a Core SELECT as the driver returns them (plain tuples,
    no result processing): for statements that return very many rows whose
    columns need no conversion (integers, text)."""
    compiled = statement.compile(dialect=conn.dialect)
    params = compiled.params
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup)
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(compiled.string, params)
        return cursor.fetchall()
    finally:
        cursor.close()


def analyze_after_bulk_load(conn: Connection) -> None:
    """Fresh planner statistics for the tables a first ingest filled, so
    that the first queries are planned on what is there (PostgreSQL's
    autovacuum would come to it later; SQLite with an approximate pass)."""
    if is_sqlite(conn):
        conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        conn.exec_driver_sql("ANALYZE")
        return
    for table in ("files", "hdus", "exposures", "header_cards"):
        conn.exec_driver_sql(f"ANALYZE {table}")
