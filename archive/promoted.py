"""Header keywords promoted to indexed columns of ``exposures`` (``obsarch db promote``).

A keyword condition is answered from ``header_cards``: one index range per
condition, intersected with the rest of the selection. When both sides pick
many exposures the two ranges come out in different orders, and over
1,000,000 exposures ``hdr['OBSERVER'] == 'eve' and band == 'V'`` (66,000
matches) took 60-110 ms however they were joined. A promoted keyword's value
is also kept in a column of ``exposures`` with an index of its own and one
beside each indexed text column (``(band, value, id)``, ...), so such a
selection is one index range.

The cards stay the truth. The column holds, for each exposure, the value of
its file's cards of the keyword of one kind: ``number`` (numeric and logical
cards, as ``value_num``) or ``text`` (the others, as written). A selection
uses the column only where it gives the rows the cards give: comparisons
with a value of that kind on any HDU; a logical, an HDU given by number, a
pattern on a number or ``is null`` still read the cards. A keyword whose
value one column cannot hold for some file (two different values in its
HDUs, or text longer than the card index takes) is refused; an ingest that
brings such a file demotes the keyword and says so.

Ingest fills the columns of the files it wrote at its end (:func:`refresh`):
until then a changed file's column holds its old value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, inspect, text

from archive.db import is_sqlite, serialize, transaction
from archive.exceptions import NotFoundError, ObsarchError
from archive.headers import normalize_keyword
from archive.models import LONG_TEXT, NUMERIC, SHORT_TEXT, TEXT_INDEX_LIMIT

# each promoted keyword gets an index (value, id) and one (partner, value, id)
# per partner: the indexed text columns of exposures a selection pairs it with
PARTNERS = ("instrument", "obsid", "frame_type", "band", "night")
KINDS = {"number": NUMERIC, "text": SHORT_TEXT}
_KEYWORD = re.compile(r"[A-Z0-9_ .\-]{1,68}")  # FITS keywords and HIERARCH names, as stored


@dataclass(frozen=True)
class Promotion:
    keyword: str
    column: str
    kind: str
    exposures: int = 0  # how many hold a value (counted when promoting and listing)


def promotions(conn) -> dict[str, Promotion]:
    """The promoted keywords: keyword -> :class:`Promotion`."""
    rows = conn.execute(text("SELECT keyword, column_name, kind FROM promoted_keywords")).all()
    return {keyword: Promotion(keyword, column, kind) for keyword, column, kind in rows}


def listing(engine: Engine) -> list[Promotion]:
    with engine.connect() as conn:
        found = promotions(conn)
        return [Promotion(p.keyword, p.column, p.kind,
                          conn.execute(text(f"SELECT count(*) FROM exposures WHERE {p.column} IS NOT NULL")).scalar_one())
                for p in sorted(found.values(), key=lambda p: p.keyword)]


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
    of that kind for it, or text too long for an index."""
    keyword = normalize_keyword(keyword)
    if not _KEYWORD.fullmatch(keyword):
        raise ObsarchError(f"{keyword!r} is not a header keyword (letters, digits, '-', '_', and spaces of HIERARCH names)")
    if kind is not None and kind not in KINDS:
        raise ObsarchError(f"kind is number or text, not {kind!r}")
    with transaction(engine, write=True) as conn:
        serialize(conn, "promoted keywords")
        if keyword in promotions(conn):
            raise ObsarchError(f"{keyword} is promoted already (obsarch db promote --list)")
        counts = {"number": _count(conn, keyword, NUMERIC),
                  "text": _count(conn, keyword, SHORT_TEXT) + _count(conn, keyword, LONG_TEXT)}
        if kind is None:
            if not any(counts.values()):
                raise NotFoundError(f"no file has a card {keyword} with a value: nothing to promote")
            kind = max(counts, key=counts.get)
        elif not counts[kind]:
            raise NotFoundError(f"no file has a card {keyword} with a {kind} value: nothing to promote")
        if problem := _conflict(conn, keyword, kind):
            raise ObsarchError(f"{keyword} cannot be one column: {problem}; selections read it from the cards")
        taken = {c["name"] for c in inspect(conn).get_columns("exposures")}
        column = column_name(keyword, taken)
        conn.exec_driver_sql(f"ALTER TABLE exposures ADD COLUMN {column} {_sql_type(conn, kind)}")
        filled = _fill(conn, keyword, column, kind)
        for name, columns in _indexes(column):
            conn.exec_driver_sql(f"CREATE INDEX {name} ON exposures ({', '.join(columns)})")
        last_run = _filled_through(conn)
        conn.execute(text("INSERT INTO promoted_keywords (keyword, column_name, kind, filled_run, created_at) "
                          "VALUES (:k, :c, :kind, :r, :t)"),
                     {"k": keyword, "c": column, "kind": kind, "r": last_run, "t": datetime.now()})
    _statistics(engine)
    return Promotion(keyword, column, kind, filled)


def demote(engine: Engine, keyword: str) -> Promotion:
    """Drop a promoted keyword's column and indexes; selections read the cards again."""
    keyword = normalize_keyword(keyword)
    with transaction(engine, write=True) as conn:
        serialize(conn, "promoted keywords")
        found = promotions(conn).get(keyword)
        if found is None:
            raise NotFoundError(f"{keyword} is not promoted (obsarch db promote --list)")
        _drop(conn, found)
    return found


def refresh(engine: Engine, run_id: int, *, statistics: bool = False) -> list[str]:
    """Fill the promoted columns of the files ingest runs wrote since they
    were last filled (this run's, and any an interrupted run left); demote a
    keyword one of those files holds two values of. ``run_id`` is the
    ingest run that calls it; ``statistics`` after a bulk load, whose
    approximate ANALYZE hid what the promoted indexes are worth. Returns
    what to tell."""
    notes = []
    with transaction(engine, write=True) as conn:
        serialize(conn, "promoted keywords")
        found = promotions(conn)
        if not found:
            return notes
        last_run = _filled_through(conn, run_id)
        filled = dict(conn.execute(text("SELECT keyword, filled_run FROM promoted_keywords")).all())
        for keyword, p in found.items():
            since = filled[keyword]
            if problem := _conflict(conn, keyword, p.kind, since):
                _drop(conn, p)
                notes.append(f"{keyword} is no longer promoted: {problem}; selections read it from the cards "
                             "(`obsarch db promote` it again once no file holds two values)")
                continue
            conn.execute(text(f"UPDATE exposures SET {p.column} = NULL WHERE id IN ({_WRITTEN})"), {"since": since})
            _fill(conn, keyword, p.column, p.kind, since)
            conn.execute(text("UPDATE promoted_keywords SET filled_run = :r WHERE keyword = :k"), {"r": last_run, "k": keyword})
    if statistics:
        _statistics(engine)
    return notes


# -- helpers -------------------------------------------------------------------


# the files ingest runs after run :since wrote (new or changed)
_WRITTEN = "SELECT id FROM files WHERE run_id > :since"


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


def _conflict(conn, keyword: str, kind: str, since: int | None = None) -> str | None:
    """Why one column cannot hold ``keyword`` for the files (written after
    run ``since``, or all): the first file with two values, or with text
    longer than the index takes; None when it can."""
    only = f" AND file_id IN ({_WRITTEN})" if since is not None else ""
    params = {"k": keyword, "since": since}
    value = _values(kind)
    row = conn.execute(text(
        f"SELECT file_id, min({value}), max({value}) FROM header_cards WHERE keyword = :k AND {KINDS[kind]}{only} "
        f"GROUP BY file_id HAVING min({value}) <> max({value}) LIMIT 1"), params).first()
    if row is not None:
        return f"{_path(conn, row[0])} has two values ({row[1]!r} and {row[2]!r}) in its HDUs"
    if kind == "text":
        row = conn.execute(text(f"SELECT file_id FROM header_cards WHERE keyword = :k AND {LONG_TEXT}{only} LIMIT 1"), params).first()
        if row is not None:
            return f"{_path(conn, row[0])} has a value longer than {TEXT_INDEX_LIMIT} characters"
    return None


def _path(conn, file_id: int) -> str:
    row = conn.execute(text("SELECT r.path, f.relpath FROM files f JOIN roots r ON r.id = f.root_id WHERE f.id = :id"),
                       {"id": file_id}).first()
    return f"{row[0].rstrip('/')}/{row[1]}" if row else f"file {file_id}"


def _fill(conn, keyword: str, column: str, kind: str, since: int | None = None) -> int:
    """Set ``column`` from the cards (of the files written after run
    ``since``, or all); returns how many exposures got a value."""
    only = f" AND file_id IN ({_WRITTEN})" if since is not None else ""
    value = _values(kind)
    result = conn.execute(text(
        f"UPDATE exposures SET {column} = v.value FROM (SELECT file_id, min({value}) AS value FROM header_cards "
        f"WHERE keyword = :k AND {KINDS[kind]}{only} GROUP BY file_id) AS v WHERE exposures.id = v.file_id"),
        {"k": keyword, "since": since})
    return result.rowcount


def _sql_type(conn, kind: str) -> str:
    if kind == "text":
        return "TEXT"
    return "REAL" if is_sqlite(conn) else "DOUBLE PRECISION"


def _indexes(column: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(f"ix_exposures_{column}", (column, "id"))] + [
        (f"ix_exposures_{partner}_{column}", (partner, column, "id")) for partner in PARTNERS]


def _drop(conn, p: Promotion) -> None:
    for name, _ in _indexes(p.column):
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    conn.exec_driver_sql(f"ALTER TABLE exposures DROP COLUMN {p.column}")
    conn.execute(text("DELETE FROM promoted_keywords WHERE keyword = :k"), {"k": p.keyword})


def _statistics(engine: Engine) -> None:
    """Planner statistics for the promoted columns' indexes.

    SQLite: a whole pass over every index of exposures. A first ingest's
    approximate ANALYZE leaves every index looking alike (1,001 rows per
    value): the planner then took the keyword's own index over ``(band,
    keyword)`` (23 ms where the pair takes 4), or ``(band, id)`` for a range
    (81 ms). PostgreSQL: also the visibility map, without which an index range
    still reads each row."""
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
