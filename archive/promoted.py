"""Header keywords promoted to indexed columns of ``exposures`` (``obsarch db promote``).

A keyword condition is answered from ``header_cards``: one index range per
condition, intersected with the rest of the selection. When both sides pick
many exposures the two ranges come out in different orders, and over
1,000,000 exposures ``hdr['OBSERVER'] == 'eve' and band == 'V'`` (66,000
matches) took 56-110 ms however they were joined. A promoted keyword's value
is also kept in a column of ``exposures`` with an index of its own and one
beside each indexed text column (``(band, value, id)``, ...), so such a
selection is one index range (18-37 ms).

The cards stay the truth. The column holds, for each exposure, the value of
its file's cards of the keyword of one kind: ``number`` (numeric and logical
cards, as ``value_num``) or ``text`` (the others, as written). A selection
uses the column only where it gives the rows the cards give:

- comparisons with a value of the column's kind on any HDU (a logical, an
  HDU given by number, a pattern on a number, ``is null`` or a list holding
  ``null`` read the cards);
- while the column holds every file: not while an ingest run has written
  files since the column was last filled (that run's end, or the next
  run's, fills them), and not once a file holds two values of the keyword
  (in two HDUs) or text longer than the card index takes. Such a keyword
  is refused by ``promote``; an ingest or a step that brings such a file
  leaves the column unused and says so, and ``obsarch db demote`` drops it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, inspect, text

from archive.db import is_sqlite, process_alive, serialize, transaction
from archive.exceptions import DatabaseError, NotFoundError, ObsarchError
from archive.headers import normalize_keyword
from archive.models import BYTE_ORDER, LONG_TEXT, NUMERIC, SHORT_TEXT, TEXT_INDEX_LIMIT

# each promoted keyword gets an index (value, id) and one (partner, value, id)
# per partner: the indexed text columns of exposures a selection pairs it with
PARTNERS = ("instrument", "obsid", "frame_type", "band", "night")
KINDS = {"number": NUMERIC, "text": SHORT_TEXT}
MAX_KEYWORD = 68  # a HIERARCH card's keyword, at most
_KEYWORD = re.compile(r"[A-Z0-9_ .\-]+")  # FITS keywords and HIERARCH names, as stored
LOCK_TIMEOUT_S = 10  # PostgreSQL: waiting this long for the exposures table to be free is refused


@dataclass(frozen=True)
class Promotion:
    keyword: str
    column: str
    kind: str
    exposures: int = 0  # how many hold a value (counted when promoting and listing)
    state: str = "in use"  # or why selections read the cards instead


def promotions(conn) -> dict[str, Promotion]:
    """The promoted keywords whose columns selections may use now: keyword
    -> :class:`Promotion`. On PostgreSQL the exposures table is then held
    (ACCESS SHARE) to the end of the caller's transaction, so a demote
    cannot drop a column between this answer and the query that uses it."""
    rows = conn.execute(text(  # naming exposures takes its lock, whatever the plan
        "SELECT keyword, column_name, kind FROM promoted_keywords p WHERE broken IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM files WHERE run_id > p.filled_run) "
        "AND NOT EXISTS (SELECT 1 FROM exposures WHERE 1 = 0)")).all()
    return {keyword: Promotion(keyword, column, kind) for keyword, column, kind in rows}


def listing(engine: Engine) -> list[Promotion]:
    found = []
    with engine.connect() as conn:
        for keyword, column, kind, filled, broken in conn.execute(text(
                "SELECT keyword, column_name, kind, filled_run, broken FROM promoted_keywords ORDER BY keyword")).all():
            held = conn.execute(text(f"SELECT count(*) FROM exposures WHERE {column} IS NOT NULL")).scalar_one()
            pending = conn.execute(text("SELECT count(*) FROM files WHERE run_id > :r"), {"r": filled}).scalar_one()
            state = (f"not used: {broken}" if broken else
                     f"not used until the next ingest fills {pending} files" if pending else "in use")
            found.append(Promotion(keyword, column, kind, held, state))
    return found


def column_name(keyword: str, taken: set[str]) -> str:
    """``kw_`` and the keyword in lower case, other characters as ``_``
    (``ESO DET OUT1 CONAD`` -> ``kw_eso_det_out1_conad``), made unique
    and short enough for every index name on PostgreSQL (63 bytes)."""
    base = "kw_" + (re.sub(r"[^a-z0-9]+", "_", keyword.lower()).strip("_") or "blank")[:30]
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def promote(engine: Engine, keyword: str, kind: str | None = None) -> Promotion:
    """Add ``keyword``'s column to ``exposures``, fill it from the cards and
    index it. ``kind`` (number or text) defaults to the kind most of its
    cards have. Refused, with nothing changed, when a file holds two values
    of that kind for it, or text too long for an index.

    In steps, so that selections go on meanwhile: the checks (reading),
    the column added (a moment's exclusive lock), filled and indexed (rows
    written, the table readable), and only then listed for the compiler.
    A promote killed between the steps is listed as being promoted by a
    dead process; the next promote on this host drops its column."""
    keyword = _checked(keyword)
    if kind is not None and kind.lower() not in KINDS:
        raise ObsarchError(f"kind is number or text, not {kind!r}")
    kind = kind.lower() if kind else None
    with transaction(engine) as conn:  # refused before the table changes (a column slot is never given back on PostgreSQL)
        if keyword in _listed(conn, settled=True):
            raise ObsarchError(f"{keyword} is promoted already (obsarch db promote --list)")
        counts = {"number": _count(conn, keyword, NUMERIC),
                  "text": _count(conn, keyword, SHORT_TEXT) + _count(conn, keyword, LONG_TEXT)}
        if kind is None:
            if not any(counts.values()):
                raise NotFoundError(f"no file has a card {keyword} with a value: nothing to promote")
            kind = max(counts, key=counts.get)
        elif not counts[kind]:
            raise NotFoundError(f"no file has a card {keyword} with a {kind} value: nothing to promote")
        _refuse_conflict(conn, keyword, kind)
    with _exclusive(engine) as conn:
        _clear_abandoned(conn)
        if keyword in _listed(conn):
            raise ObsarchError(f"{keyword} is promoted already (obsarch db promote --list)")
        column = column_name(keyword, {c["name"] for c in inspect(conn).get_columns("exposures")})
        conn.exec_driver_sql(f"ALTER TABLE exposures ADD COLUMN {column} {_sql_type(conn, kind)}")
        # listed at once, as being promoted: no selection uses it, a concurrent promote leaves it alone
        conn.execute(text("INSERT INTO promoted_keywords (keyword, column_name, kind, filled_run, broken, created_at) "
                          "VALUES (:k, :c, :kind, -1, :b, :t)"),
                     {"k": keyword, "c": column, "kind": kind, "b": _in_progress(), "t": datetime.now()})
    try:
        with transaction(engine, write=True) as conn:
            serialize(conn, "promoted keywords")
            if not is_sqlite(conn):  # readers go on; writers (an ingest's chunks) wait, or the index builds deadlock with them
                conn.exec_driver_sql("LOCK TABLE exposures IN SHARE ROW EXCLUSIVE MODE")
            filled_run = _filled_through(conn)  # first: files of runs after it are pending, and read again
            _refuse_conflict(conn, keyword, kind)  # again: an ingest may have ended since the first look
            filled = _fill(conn, keyword, column, kind, *_ALL)
            for name, parts in _indexes(column):
                conn.exec_driver_sql(f"CREATE INDEX {name} ON exposures ({', '.join(parts)})")
            conn.execute(text("UPDATE promoted_keywords SET filled_run = :r, broken = NULL WHERE keyword = :k"),
                         {"r": filled_run, "k": keyword})
    except BaseException:
        with _exclusive(engine) as conn:
            conn.execute(text("DELETE FROM promoted_keywords WHERE keyword = :k"), {"k": keyword})
            _drop_column(conn, column)
        raise
    _statistics(engine)
    return Promotion(keyword, column, kind, filled)


_PROGRESS = re.compile(r"being promoted by process (\d+) on (\S+)")


def _in_progress() -> str:
    return f"being promoted by process {os.getpid()} on {socket.gethostname()}"


def _clear_abandoned(conn) -> None:
    """Drop the columns of promotes whose process died on this host (a
    kill -9 between the steps); one on another host stays until demoted."""
    for keyword, column, broken in conn.execute(text(
            "SELECT keyword, column_name, broken FROM promoted_keywords WHERE broken LIKE 'being promoted%'")).all():
        found = _PROGRESS.fullmatch(broken)
        if found and found[2] == socket.gethostname() and not process_alive(int(found[1])):
            conn.execute(text("DELETE FROM promoted_keywords WHERE keyword = :k"), {"k": keyword})
            _drop_column(conn, column)


def _refuse_conflict(conn, keyword: str, kind: str) -> None:
    if problem := _conflict(conn, keyword, kind, *_ALL):
        raise ObsarchError(f"{keyword} cannot be one column: {problem}; selections read it from the cards")


def demote(engine: Engine, keyword: str) -> Promotion:
    """Drop a promoted keyword's column and indexes; selections read the cards again."""
    keyword = _checked(keyword)
    with _exclusive(engine) as conn:
        column = _listed(conn).get(keyword)
        if column is None:
            raise NotFoundError(f"{keyword} is not promoted (obsarch db promote --list)")
        conn.execute(text("DELETE FROM promoted_keywords WHERE keyword = :k"), {"k": keyword})
        _drop_column(conn, column)
    return Promotion(keyword, column, "")


def refresh(engine: Engine, run_id: int, *, statistics: bool = False) -> list[str]:
    """Fill the promoted columns of the files ingest runs wrote since they
    were last filled (this run's, and any an interrupted run left). A
    keyword one of those files holds two values of is no longer used.
    ``run_id`` is the ingest run that calls it; ``statistics`` after a bulk
    load, whose approximate ANALYZE hid what the promoted indexes are
    worth. Returns what to tell."""
    notes = []
    with transaction(engine, write=True) as conn:
        serialize(conn, "promoted keywords")
        rows = conn.execute(text("SELECT keyword, column_name, kind, filled_run FROM promoted_keywords "
                                 "WHERE broken IS NULL")).all()
        if not rows:
            return notes
        last_run = _filled_through(conn, run_id)
        for keyword, column, kind, since in rows:
            scope = (f"file_id IN ({_WRITTEN})", {"since": since})
            if problem := _conflict(conn, keyword, kind, *scope):
                notes.append(_unused(conn, keyword, problem))
                continue
            conn.execute(text(f"UPDATE exposures SET {column} = NULL WHERE id IN ({_WRITTEN})"), {"since": since})
            _fill(conn, keyword, column, kind, *scope)
            conn.execute(text("UPDATE promoted_keywords SET filled_run = :r WHERE keyword = :k"), {"r": last_run, "k": keyword})
    if statistics:
        _statistics(engine)
    return notes


def fill_file(conn, file_id: int) -> list[str]:
    """Inside the transaction that wrote ``file_id``'s cards and exposure
    outside an ingest run (a step's product): its promoted columns, or the
    keyword left unused when the file holds two values of it."""
    notes = []
    for keyword, column, kind in conn.execute(text(
            "SELECT keyword, column_name, kind FROM promoted_keywords WHERE broken IS NULL")).all():
        scope = ("file_id = :file", {"file": file_id})
        if problem := _conflict(conn, keyword, kind, *scope):
            notes.append(_unused(conn, keyword, problem))
            continue
        conn.execute(text(f"UPDATE exposures SET {column} = NULL WHERE id = :file"), {"file": file_id})
        _fill(conn, keyword, column, kind, *scope)
    return notes


# -- helpers -------------------------------------------------------------------

# the files ingest runs after run :since wrote (new or changed); files.run_id is indexed
_WRITTEN = "SELECT id FROM files WHERE run_id > :since"
_ALL = ("1 = 1", {})


def _checked(keyword: str) -> str:
    keyword = normalize_keyword(keyword)
    if not keyword or len(keyword) > MAX_KEYWORD or not _KEYWORD.fullmatch(keyword):
        raise ObsarchError(f"{keyword!r} is not a header keyword: at most {MAX_KEYWORD} letters, digits, "
                           "'-', '_', '.' and the spaces of HIERARCH names")
    return keyword


def _listed(conn, settled: bool = False) -> dict[str, str]:
    """Every promoted keyword -> its column, used or not (``settled``: but
    those being promoted)."""
    where = " WHERE broken IS NULL OR broken NOT LIKE 'being promoted%'" if settled else ""
    return dict(conn.execute(text(f"SELECT keyword, column_name FROM promoted_keywords{where}")).all())


def _unused(conn, keyword: str, problem: str) -> str:
    conn.execute(text("UPDATE promoted_keywords SET broken = :b WHERE keyword = :k"), {"b": problem, "k": keyword})
    return (f"{keyword} is no longer read from its column: {problem}; selections read it from the cards "
            f"(`obsarch db demote {keyword}` drops the column)")


def _filled_through(conn, current: int | None = None) -> int:
    """The last ingest run whose files are all written: an ingest still
    running (but ``current``, which is filling now) may write more later."""
    running = conn.execute(text("SELECT min(id) FROM ingest_runs WHERE state = 'running' AND id <> :current"),
                           {"current": current or 0}).scalar()
    if running is not None:
        return running - 1
    return conn.execute(text("SELECT coalesce(max(id), 0) FROM ingest_runs")).scalar_one()


def _count(conn, keyword: str, where: str) -> int:
    return conn.execute(text(f"SELECT count(*) FROM header_cards WHERE keyword = :k AND {where}"), {"k": keyword}).scalar_one()


def _values(kind: str) -> str:
    return "value_num" if kind == "number" else "value_text"


def _conflict(conn, keyword: str, kind: str, scope: str, params: dict) -> str | None:
    """Why one column cannot hold ``keyword`` for the files ``scope`` (a
    condition on header_cards) picks: the first file with two values, or
    with text longer than the index takes; None when it can."""
    params = {"k": keyword, **params}
    value = _values(kind)
    row = conn.execute(text(
        f"SELECT file_id, min({value}), max({value}) FROM header_cards WHERE keyword = :k AND {KINDS[kind]} AND {scope} "
        f"GROUP BY file_id HAVING min({value}) <> max({value}) LIMIT 1"), params).first()
    if row is not None:
        return f"{_path(conn, row[0])} has two values ({row[1]!r} and {row[2]!r}) in its HDUs"
    if kind == "text":
        row = conn.execute(text(f"SELECT file_id FROM header_cards WHERE keyword = :k AND {LONG_TEXT} AND {scope} LIMIT 1"),
                           params).first()
        if row is not None:
            return f"{_path(conn, row[0])} has a value longer than {TEXT_INDEX_LIMIT} characters"
    return None


def _path(conn, file_id: int) -> str:
    row = conn.execute(text("SELECT r.path, f.relpath FROM files f JOIN roots r ON r.id = f.root_id WHERE f.id = :id"),
                       {"id": file_id}).first()
    return f"{row[0].rstrip('/')}/{row[1]}" if row else f"file {file_id}"


def _fill(conn, keyword: str, column: str, kind: str, scope: str, params: dict) -> int:
    """Set ``column`` from the cards of the files ``scope`` picks; returns
    how many exposures got a value."""
    value = _values(kind)
    result = conn.execute(text(
        f"UPDATE exposures SET {column} = v.value FROM (SELECT file_id, min({value}) AS value FROM header_cards "
        f"WHERE keyword = :k AND {KINDS[kind]} AND {scope} GROUP BY file_id) AS v WHERE exposures.id = v.file_id"),
        {"k": keyword, **params})
    return result.rowcount


def _sql_type(conn, kind: str) -> str:
    if kind == "text":  # ordered as the cards it holds (models.CARD_TEXT_TYPE): a selection's ranges use its indexes
        return "TEXT" if is_sqlite(conn) else f'TEXT COLLATE "{BYTE_ORDER}"'
    return "REAL" if is_sqlite(conn) else "DOUBLE PRECISION"


def _indexes(column: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(f"ix_exposures_{column}", (column, "id"))] + [
        (f"ix_exposures_{partner}_{column}", (partner, column, "id")) for partner in PARTNERS]


def _drop_column(conn, column: str) -> None:
    for name, _ in _indexes(column):
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    if column in {c["name"] for c in inspect(conn).get_columns("exposures")}:
        conn.exec_driver_sql(f"ALTER TABLE exposures DROP COLUMN {column}")


@contextmanager
def _exclusive(engine: Engine) -> Iterator:
    """A writer's transaction that changes the exposures table's columns.
    On PostgreSQL it waits at most LOCK_TIMEOUT_S for the table: every open
    transaction that read exposures (a notebook, psql, a long query) holds
    it, and every selection would queue behind the wait."""
    try:
        with transaction(engine, write=True) as conn:
            serialize(conn, "promoted keywords")
            if not is_sqlite(conn):
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
                conn.exec_driver_sql("LOCK TABLE exposures IN ACCESS EXCLUSIVE MODE")
            yield conn
    except DatabaseError as exc:
        if "lock timeout" not in str(exc):
            raise
        raise DatabaseError(f"the exposures table stayed in use for {LOCK_TIMEOUT_S} s (another transaction reads or "
                            "writes it: an open psql or notebook session, a long query, an ingest); nothing changed, "
                            "try again when it ends") from None


def _statistics(engine: Engine) -> None:
    """Planner statistics for the promoted columns' indexes.

    SQLite: a whole pass over every index of exposures. A first ingest's
    approximate ANALYZE leaves every index looking alike (1,001 rows per
    value): the planner then took the keyword's own index over ``(band,
    keyword)`` (23 ms where the pair takes 4), or ``(band, id)`` for a range
    (81 ms). PostgreSQL: also the visibility map, without which an index
    range still reads each row."""
    if is_sqlite(engine):
        with transaction(engine, write=True) as conn:
            limit = conn.exec_driver_sql("PRAGMA analysis_limit").scalar()
            conn.exec_driver_sql("PRAGMA analysis_limit=0")
            try:
                conn.exec_driver_sql("ANALYZE exposures")  # the partners' own indexes too: the planner weighs both
            finally:
                conn.exec_driver_sql(f"PRAGMA analysis_limit={int(limit or 0)}")
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE) exposures")
