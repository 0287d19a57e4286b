"""Ingest at scale, on both backends: headers read on dask workers, cards
sent as COPY text, the card table's keys dropped and rebuilt by a bulk load."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest
from factories import missing, write_frame
from sqlalchemy import create_engine, inspect, select, text
from typer.testing import CliRunner

from archive import ingest as ingest_module
from archive.cardtext import card_text, hdu_lines, with_file_id
from archive.catalog import Catalog
from archive.models import Exposure, HeaderCard
from cli.main import app

runner = CliRunner()


def _frames(directory, rng, n, odd=None):
    for i in range(n):
        header = {"EXPTIME": float(i), "FRAMENUM": 100 + i, **(odd or {})}
        write_frame(directory / f"f{i:03d}.fits", rng, header, shape=(4, 4), extensions=i % 2)
    return directory


def _cards(catalog) -> list[tuple]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            select(HeaderCard.hdu_index, HeaderCard.position, HeaderCard.keyword, HeaderCard.value_text,
                   HeaderCard.value_num, HeaderCard.vtype, HeaderCard.comment, Exposure.frame_number)
            .join(Exposure, Exposure.id == HeaderCard.file_id)
            .order_by(Exposure.frame_number, HeaderCard.hdu_index, HeaderCard.position)
        ).all()
    return [tuple(r) for r in rows]


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local


def test_headers_read_on_dask_workers_give_the_same_catalog(catalog, url, tmp_path, rng, cluster):
    from archive.catalog import Catalog

    data = _frames(tmp_path / "data", rng, 12)
    summary = catalog.ingest([data], executor="dask", scheduler=cluster.scheduler_address)
    assert (summary.new, summary.failed) == (12, 0)
    assert catalog.query("exptime >= 10")["exptime"].tolist() == [10.0, 11.0]
    # The same files read by the process pool of another catalog: the same cards.
    other_url = url.replace("catalog.db", "other.db") if url.startswith("sqlite") else None
    if other_url:
        other = Catalog.create(other_url)
        other.ingest([data], workers=1)
        assert _cards(other) == _cards(catalog)
        other.engine.dispose()
    again = catalog.ingest([data], executor="dask", scheduler=cluster.scheduler_address)
    assert (again.new, again.unchanged) == (0, 12)


def test_ingest_command_takes_a_dask_scheduler(url, tmp_path, rng, cluster):
    data = _frames(tmp_path / "data", rng, 3)
    assert runner.invoke(app, ["--db", url, "init"]).exit_code == 0
    result = runner.invoke(app, ["--db", url, "ingest", str(data), "--executor", "dask", "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "3 new" in result.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--executor", "dask", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach the dask scheduler at tcp://127.0.0.1:9"),
        (["--scheduler", "tcp://127.0.0.1:9"], "--scheduler needs --executor dask"),
        (["--executor", "threads"], "unknown executor 'threads' for ingest; use pool, serial or dask"),
    ],
)
def test_bad_executor_options_are_one_line(url, tmp_path, rng, options, message, monkeypatch):
    monkeypatch.setattr("archive.ingest_dask.CONNECT_TIMEOUT", "1s")  # the scheduler's port is closed: no need to wait 10 s
    data = _frames(tmp_path / "data", rng, 1)
    runner.invoke(app, ["--db", url, "init"])
    result = runner.invoke(app, ["--db", url, "ingest", str(data), *options])
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_odd_characters_survive_the_copy_text(catalog, tmp_path, rng):
    # a backslash (Windows paths in headers) and NULL-looking text must come back exact
    odd = {"ORIGPATH": "C:\\data\\night\\N001.fit", "NOTE": "\\N is not null", "TABS": "a\\tb"}
    data = _frames(tmp_path / "data", rng, 2, odd)
    catalog.ingest([data], workers=1)
    for keyword, value in odd.items():
        assert catalog.query(f"hdr['{keyword}'] == '{value.replace(chr(92), chr(92) * 2)}'").shape[0] == 2, keyword


def test_copy_lines_escape_what_copy_would_misread():
    cards = [
        (0, "SIMPLE", "T", 1.0, "b", "conforms"),
        (1, "PATH", "a\\b\tc", None, "s", None),
        (2, "EMPTY", "", None, "s", "line\nend"),
        (3, "UNDEF", None, None, "u", None),
    ]
    lines = hdu_lines(1, cards).splitlines()
    assert lines == [
        "1\t0\tSIMPLE\tT\t1.0\tb\tconforms",
        "1\t1\tPATH\ta\\\\b\\tc\t\\N\ts\t\\N",
        "1\t2\tEMPTY\t\t\\N\ts\tline\\nend",
        "1\t3\tUNDEF\t\\N\t\\N\tu\t\\N",
    ]
    assert hdu_lines(0, cards[:1]) == "0\t0\tSIMPLE\tT\t1.0\tb\tconforms\n"
    (local, block), = card_text([(4, 0, cards[:1]), (4, 1, cards[3:])]).blocks
    assert local == 4
    assert with_file_id(77, block) == b"77\t0\t0\tSIMPLE\tT\t1.0\tb\tconforms\n77\t1\t3\tUNDEF\t\\N\t\\N\tu\t\\N\n"


def _keys(catalog) -> tuple[str | None, list[str]]:
    with catalog.engine.connect() as conn:
        inspector = inspect(conn)
        return (inspector.get_pk_constraint("header_cards").get("name"),
                [fk["name"] for fk in inspector.get_foreign_keys("header_cards")])


def test_bulk_load_takes_back_the_card_keys(catalog, tmp_path, rng, monkeypatch):
    from test_migrations import schema_diff

    monkeypatch.setattr(ingest_module, "BULK_MIN_FILES", 10)
    dropped = []
    real = ingest_module._drop_card_constraints
    monkeypatch.setattr(ingest_module, "_drop_card_constraints", lambda engine, **kw: (dropped.append(_keys(catalog)), real(engine, **kw)))
    before = _keys(catalog)
    catalog.ingest([_frames(tmp_path / "data", rng, 12)])
    assert dropped == [before]
    assert _keys(catalog) == before and schema_diff(catalog.engine) == []
    with catalog.engine.connect() as conn:
        assert conn.execute(select(HeaderCard.file_id).limit(1)).scalar() is not None


def test_compiled_copy_lines_match_the_python_ones(monkeypatch):
    import random

    from archive import cardtext

    if cardtext._compiled_copy_lines is None:
        missing("the card parser was not compiled")
    rng = random.Random(5)
    alphabet = "AZaz09 '=/-.\\\t\n\r\x00é"
    cards = [
        (i, "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))),
         rng.choice([None, "", "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))]),
         rng.choice([None, 0.0, -1.5e300, 3.0, 1 / 3]), rng.choice("sifbuxC"),
         rng.choice([None, "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))]))
        for i in range(2000)
    ]
    compiled = [cardtext.hdu_lines(2, cards[i : i + 5]) for i in range(0, len(cards), 5)]
    monkeypatch.setattr(cardtext, "_compiled_copy_lines", None)
    assert compiled == [cardtext.hdu_lines(2, cards[i : i + 5]) for i in range(0, len(cards), 5)]


def test_postgresql_knows_which_keyword_goes_with_which_value(catalog, backend, tmp_path, rng):
    if backend != "postgresql":
        pytest.skip("multivariate statistics are PostgreSQL's")
    from sqlalchemy import text

    with catalog.engine.connect() as conn:
        names = conn.execute(text(
            "SELECT stxname, stxstattarget FROM pg_statistic_ext WHERE stxnamespace = current_schema()::regnamespace"
        )).all()
    assert [tuple(n) for n in names] == [("st_header_cards_keyword_text", 1000)]


def test_card_indexes_made_again_keep_their_postgresql_predicates(url, backend, tmp_path):
    """A bulk load drops the card indexes and makes them again from the models;
    on PostgreSQL they must come back partial, as the migrations made them,
    also through Catalog(engine=...), which does not go through make_engine
    (in a fresh process: the predicates are added once per process)."""
    if backend == "sqlite":
        pytest.skip("the predicates added at run time are PostgreSQL's")
    Catalog.create(url).engine.dispose()
    code = ("import sys\nfrom sqlalchemy import create_engine\nfrom archive.catalog import Catalog\n"
            "from archive.ingest import _drop_card_indexes, ensure_card_indexes\n"
            "catalog = Catalog(engine=create_engine(sys.argv[1]))\n"
            "_drop_card_indexes(catalog.engine)\nensure_card_indexes(catalog.engine)\n")
    subprocess.run([sys.executable, "-c", code, url], check=True, cwd=tmp_path)
    engine = create_engine(url)
    with engine.connect() as conn:
        definitions = dict(conn.execute(text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'header_cards' "
            "AND schemaname = current_schema() AND indexname LIKE 'ix_%'")).all())
    engine.dispose()
    assert definitions and all(" WHERE " in definition for definition in definitions.values()), definitions


def test_new_files_load_without_sqlite_checking_each_card_and_leave_no_orphan(tmp_path, rng):
    """A chunk of new files is copied with SQLite's foreign-key checks off
    (they cost twice the copy); every card still has its HDU, a changed file
    still replaces its cards, and the pooled connection gets its checks back."""
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    data = _frames(tmp_path / "data", rng, 70)  # enough for the worker pool and its scratch files
    catalog = Catalog.create(url)
    gc.unfreeze()
    assert catalog.ingest([data], workers=2).new == 70
    assert gc.get_freeze_count() == 0  # the pool forked with the objects frozen; a library caller gets them back
    write_frame(data / "f001.fits", rng, {"EXPTIME": 99.0, "FRAMENUM": 101}, shape=(4, 4))
    assert catalog.ingest([data], workers=2).changed == 1
    with catalog.engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert driver.execute("PRAGMA foreign_key_check").fetchall() == []
        cards = driver.execute("SELECT count(*) FROM header_cards").fetchone()[0]
        expected = driver.execute("SELECT sum(ncards) FROM hdus").fetchone()[0]
    assert cards == expected > 70 * 8
    assert catalog.query("frame_number == 101")["exptime"].tolist() == [99.0]


def test_cards_whose_hdu_is_not_stored_are_refused_whole(tmp_path):
    from archive.db import copy_scratch_cards, transaction, write_scratch_cards
    from archive.exceptions import DatabaseError

    catalog = Catalog.create(f"sqlite:///{tmp_path / 'cat.db'}")
    (tmp_path / "scratch").mkdir()
    card = (1, "EXPTIME", "1.0", 1.0, "f", None)
    scratch = write_scratch_cards(str(tmp_path / "scratch"), [(0, 0, [card])])
    with pytest.raises(DatabaseError, match="cards of file 7 HDU 0 have no HDU row"):
        with transaction(catalog.engine, write=True, attach=scratch, foreign_keys=False) as conn:
            copy_scratch_cards(conn, {0: 7})  # file 7 has no HDU 0: no file at all
    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM header_cards")).scalar_one() == 0
