"""The card table's keys and indexes made again after a bulk load on
PostgreSQL: at once on several connections, from whatever state a killed
load or a killed rebuild left, without a deadlock with a chunk being written."""

from __future__ import annotations

import threading
import time

import pytest
from factories import write_frame
from sqlalchemy import create_engine, text

from archive import ingest as ingest_module
from archive.db import CARD_FKEY, CARD_PKEY
from archive.ingest import _drop_card_constraints, _drop_card_indexes


@pytest.fixture
def pg_catalog(catalog, backend, tmp_path, rng):
    if backend != "postgresql":
        pytest.skip("the card table keeps its keys on SQLite")
    for i in range(6):
        write_frame(tmp_path / "data" / f"f{i}.fits", rng, {"EXPTIME": float(i), "LONGSTR": "x" * 300}, shape=(4, 4))
    assert catalog.ingest([tmp_path / "data"]).new == 6
    catalog.rescan = lambda: catalog.ingest([tmp_path / "data"])  # nothing to read: makes what is missing
    return catalog


def _keys(engine) -> dict[str, tuple]:
    """Every constraint and index of header_cards: name -> definition (and
    for constraints, whether validated)."""
    with engine.connect() as conn:
        constraints = conn.execute(text(
            "SELECT conname, contype, pg_get_constraintdef(oid), convalidated FROM pg_constraint "
            "WHERE conrelid = 'header_cards'::regclass")).all()
        indexes = conn.execute(text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = 'header_cards'")).all()
    return {**{name: tuple(rest) for name, *rest in constraints}, **{f"index {name}": (d,) for name, d in indexes}}


def _run(engine, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


DROP_FKEY = f"ALTER TABLE header_cards DROP CONSTRAINT {CARD_FKEY}"
DROP_PKEY = f"ALTER TABLE header_cards DROP CONSTRAINT {CARD_PKEY}"
PKEY_INDEX_ONLY = f"CREATE UNIQUE INDEX {CARD_PKEY} ON header_cards (file_id, hdu_index, position)"


@pytest.mark.parametrize("state", [
    "all dropped",  # killed while loading
    "indexes made, keys not",  # killed before the primary key was made of its index
    "keys and one index",
    "foreign key only",
    "primary key only",
])
def test_whatever_is_missing_is_made_again_as_the_migrations_made_it(pg_catalog, state):
    engine = pg_catalog.engine
    before = _keys(engine)
    assert before[CARD_FKEY][2] and before[CARD_PKEY][0] == "p" and len(before) == 6
    if state == "all dropped":
        _drop_card_indexes(engine)
        _drop_card_constraints(engine)
    elif state == "indexes made, keys not":
        _run(engine, DROP_FKEY, DROP_PKEY, PKEY_INDEX_ONLY)
    elif state == "keys and one index":
        _run(engine, "DROP INDEX ix_header_cards_text")
    elif state == "foreign key only":
        _run(engine, DROP_FKEY)
    else:
        _run(engine, DROP_FKEY, DROP_PKEY)
    assert _keys(engine) != before
    assert pg_catalog.rescan().unchanged == 6
    assert _keys(engine) == before  # the partial predicates, and the foreign key validated
    assert pg_catalog.query("hdr['LONGSTR'] == '" + "x" * 300 + "'")["exptime"].tolist() == [0, 1, 2, 3, 4, 5]


def test_a_bulk_load_drops_a_key_index_a_killed_rebuild_left(pg_catalog, tmp_path, rng, monkeypatch):
    """Killed after the primary key's index was made, before it became the
    key: the next bulk load drops that index with the keys, loads without
    it, and makes it again."""
    engine = pg_catalog.engine
    before = _keys(engine)
    _run(engine, DROP_FKEY, DROP_PKEY, PKEY_INDEX_ONLY)
    seen = []
    real = ingest_module._drop_card_constraints
    monkeypatch.setattr(ingest_module, "_drop_card_constraints", lambda e, **kw: (real(e, **kw), seen.append(_keys(e))))
    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 10)
    for i in range(12):
        write_frame(tmp_path / "more" / f"g{i}.fits", rng, {"EXPTIME": 10.0 + i}, shape=(4, 4))
    assert pg_catalog.ingest([tmp_path / "more"]).new == 12
    assert seen == [{}]  # nothing left on the table while it loaded
    assert _keys(engine) == before


def test_the_indexes_are_made_at_once_on_several_connections(pg_catalog):
    """All four (the primary key's among them) wait for a lock together:
    each was started on a connection of its own before any ended."""
    engine = pg_catalog.engine
    before = _keys(engine)
    _drop_card_indexes(engine)
    _drop_card_constraints(engine)
    blocker = create_engine(engine.url)
    errors = []
    with blocker.connect() as conn:
        conn.execute(text("LOCK TABLE header_cards IN ROW EXCLUSIVE MODE"))  # as a chunk being written
        worker = threading.Thread(target=lambda: _catch(errors, pg_catalog.rescan))
        worker.start()
        deadline = time.time() + 30
        while _waiting_builds(blocker) < 4:
            assert time.time() < deadline, "the index builds did not all start"
            time.sleep(0.05)
        conn.rollback()
    worker.join(60)
    blocker.dispose()
    assert not worker.is_alive() and errors == []
    assert _keys(engine) == before


def _catch(errors: list, function, *args) -> None:
    try:
        function(*args)
    except Exception as exc:  # reported by the test
        errors.append(exc)


def _waiting_builds(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted "
            "AND l.relation = 'header_cards'::regclass AND a.query LIKE 'CREATE %INDEX%'")).scalar()


def test_adding_the_foreign_key_waits_for_a_chunk_being_written_without_a_deadlock(pg_catalog):
    """A chunk holds hdus (its rows went in) and then writes header_cards;
    adding the foreign key locks hdus first, so it waits for the chunk
    instead of holding header_cards against it (which PostgreSQL broke as a
    deadlock after a second)."""
    engine = pg_catalog.engine
    before = _keys(engine)
    _run(engine, DROP_FKEY)
    chunk_engine = create_engine(engine.url)
    errors = []
    with chunk_engine.connect() as chunk:
        chunk.execute(text("SET LOCAL deadlock_timeout = '100ms'"))
        file_id = chunk.execute(text("SELECT min(file_id) FROM hdus")).scalar()
        chunk.execute(text("INSERT INTO hdus (file_id, hdu_index, hdu_type, ncards) VALUES (:f, 99, 'IMAGE', 0)"), {"f": file_id})
        worker = threading.Thread(target=lambda: _catch(errors, pg_catalog.rescan))
        worker.start()
        deadline = time.time() + 30
        while not _waiting_for_lock(chunk_engine, "hdus"):
            assert time.time() < deadline, "the foreign key was not added"
            time.sleep(0.05)
        chunk.execute(text(
            "INSERT INTO header_cards (file_id, hdu_index, position, keyword, vtype) VALUES (:f, 99, 0, 'END', 'C')"),
            {"f": file_id})
        chunk.commit()
    worker.join(60)
    chunk_engine.dispose()
    assert not worker.is_alive() and errors == []
    assert _keys(engine) == before


def _waiting_for_lock(engine, table: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = CAST(:t AS regclass)"), {"t": table}).scalar())


@pytest.mark.parametrize("pool", [
    {"pool_size": 1, "max_overflow": 0},  # one connection: all made on it, in turn
    {"pool_size": 2, "max_overflow": 0},  # one spare: made one after the other
    {"poolclass": "NullPool"},
    {"poolclass": "StaticPool"},
])
def test_a_catalog_on_a_small_pool_gets_its_keys_back_without_waiting_for_a_connection(pg_catalog, tmp_path, pool):
    from sqlalchemy import pool as pools

    from archive.catalog import Catalog

    engine = pg_catalog.engine
    before = _keys(engine)
    _drop_card_indexes(engine)
    _drop_card_constraints(engine)
    options = {"poolclass": getattr(pools, pool["poolclass"])} if "poolclass" in pool else {**pool, "pool_timeout": 5}
    small = Catalog(engine=create_engine(engine.url, **options))
    assert small.ingest([tmp_path / "data"]).unchanged == 6
    small.engine.dispose()
    assert _keys(engine) == before


def test_adding_the_keys_again_after_a_deadlock_and_only_then(monkeypatch):
    """The foreign key's ALTER is one side of a deadlock with a chunk that
    replaces a changed file (cards, then HDUs): PostgreSQL ends one of the
    two, and the key's side runs again; any other error is raised at once."""
    from archive import ingest
    from archive.exceptions import DatabaseError

    class Driver(Exception):
        def __init__(self, sqlstate):
            self.sqlstate = sqlstate

    def failing(sqlstate, times):
        calls = []

        def work():
            calls.append(1)
            if len(calls) <= times:
                try:
                    raise Driver(sqlstate)
                except Driver as exc:
                    raise DatabaseError("deadlock detected") from exc
        return work, calls

    monkeypatch.setattr(ingest.time, "sleep", lambda seconds: None)
    work, calls = failing("40P01", 2)
    ingest._with_deadlock_retry(work)
    assert len(calls) == 3
    work, calls = failing("23505", 1)  # a unique violation is no deadlock
    with pytest.raises(DatabaseError):
        ingest._with_deadlock_retry(work)
    assert len(calls) == 1
    work, calls = failing("40P01", ingest.DEADLOCK_RETRIES)  # not forever
    with pytest.raises(DatabaseError):
        ingest._with_deadlock_retry(work)
    assert len(calls) == ingest.DEADLOCK_RETRIES


def test_a_ctrl_c_cancels_the_builds_under_way(pg_catalog):
    """A Ctrl-C during the builds made at once cancels them on the server:
    their threads end within seconds, not when the builds would have (at
    tens of millions of cards, minutes the user would wait at exit)."""
    import os
    import signal

    statements = ["SELECT pg_sleep(60)", "SELECT pg_sleep(60)"]
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # a real signal, as Ctrl-C sends
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ingest_module._build_at_once(pg_catalog.engine, statements, 2)
    deadline = time.monotonic() + 10
    while any(t.name.startswith("obsarch-index") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(t.name.startswith("obsarch-index") for t in threading.enumerate())
    assert time.monotonic() - start < 15
    with pg_catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' "
                                 "AND state = 'active'")).scalar() == 0


def test_a_bulk_load_does_not_wait_on_a_reader_left_open(pg_catalog, tmp_path, rng, monkeypatch):
    """A psql session left in a transaction that read header_cards held the
    bulk load's DROP INDEX, and every keyword query queued behind it, until
    the session ended (21 s in a team trial, hours with a notebook)."""
    engine = pg_catalog.engine
    before = _keys(engine)
    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 10)
    monkeypatch.setattr(ingest_module, "BULK_LOCK_TIMEOUT_S", 1)
    for i in range(12):
        write_frame(tmp_path / "more" / f"g{i}.fits", rng, {"EXPTIME": 10.0 + i}, shape=(4, 4))
    reader = create_engine(engine.url)
    with reader.connect() as conn:
        conn.execute(text("SELECT count(*) FROM header_cards")).scalar()  # the transaction stays open
        start = time.monotonic()
        summary = pg_catalog.ingest([tmp_path / "more"])
        waited = time.monotonic() - start
        conn.rollback()
    reader.dispose()
    assert summary.new == 12 and waited < 15
    assert summary.notes == ["the card table stayed in use for 1 s (an open transaction: a psql or notebook session, a long "
                             "query): loaded with its indexes and keys in place, slower"]
    assert _keys(engine) == before
    assert pg_catalog.query("hdr['EXPTIME'] >= 10").shape[0] == 12
