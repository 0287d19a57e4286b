"""Promoted keywords (archive.promoted, ``obsarch db promote``): a keyword
kept in an indexed column of exposures answers exactly what its cards
answer, on both backends; a keyword one column cannot hold is refused, and
an ingest keeps the columns right or demotes the keyword."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from factories import obsarch, write_frame
from sqlalchemy import inspect, text
from test_query_shapes import _by_file, shapes  # noqa: F401  (the odd catalog, a fixture)

from archive import promoted
from archive.exceptions import DatabaseError, NotFoundError, ObsarchError
from archive.query import ids_statement

# (selection, what holds for a file of test_query_shapes' catalog): FRAMENUM is
# a number on the primary HDU (0..59), FILTER the band's text (absent for some),
# FLAGGED a logical, OBSERVER text in two HDUs (eve in one, kim in the other)
SELECTIONS = [
    ("hdr['FRAMENUM'] > 20 and band == 'V'", lambda f: f["i"] > 20 and f["band"] == "V"),
    ("hdr['FRAMENUM'] == 12", lambda f: f["i"] == 12),
    ("hdr['FRAMENUM'] == 12 or hdr['FRAMENUM'] in (15, 16)", lambda f: f["i"] in (12, 15, 16)),
    ("band == 'B' and hdr['FRAMENUM'] between 10 and 40", lambda f: 10 <= f["i"] <= 40 and f["band"] == "B"),
    ("band == 'B' and hdr['FRAMENUM'] not between 10 and 40", lambda f: not 10 <= f["i"] <= 40 and f["band"] == "B"),
    ("not hdr['FRAMENUM'] < 30", lambda f: not f["i"] < 30),
    ("hdr['FRAMENUM'] != 3 and night == '2017-08-16'", lambda f: f["i"] != 3 and f["night_day"] == 17),
    ("hdr['FRAMENUM'] == '12'", lambda f: False),  # text against a number card: no card matches, nor the column
    ("hdr['FRAMENUM'] is not null and band == 'B'", lambda f: f["band"] == "B"),
    ("hdr[0]['FRAMENUM'] >= 58", lambda f: f["i"] >= 58),
    ("hdr[1]['FRAMENUM'] >= 58", lambda f: False),
    ("hdr['FILTER'] == 'V' and night == '2017-08-15'", lambda f: f["band"] == "V" and f["night_day"] == 16),
    ("not hdr['FILTER'] == 'B'", lambda f: f["band"] != "B"),
    ("hdr['FILTER'] != 'B'", lambda f: f["band"] == "V"),
    ("hdr['FILTER'] like 'v%'", lambda f: f["band"] == "V"),
    ("hdr['FILTER'] glob 'B*' and hdr['FRAMENUM'] < 30", lambda f: f["band"] == "B" and f["i"] < 30),
    ("hdr['FILTER'] in ('V', 'B', 'R')", lambda f: f["band"] is not None),
    ("hdr['FILTER'] is null", lambda f: f["band"] is None),
    ("hdr['FILTER'] == 1", lambda f: False),  # a number against text cards
    ("hdr['FLAGGED'] == true and band == 'V'", lambda f: f["flagged"] and f["band"] == "V"),
    ("hdr['FLAGGED'] == 1 and band == 'V'", lambda f: f["flagged"] and f["band"] == "V"),
    ("hdr['FLAGGED'] == false", lambda f: not f["flagged"]),
    ("hdr['OBSERVER'] == 'kim' and band == 'V'", lambda f: "kim" in (f["observer"], f["ext_observer"]) and f["band"] == "V"),
]


@pytest.fixture
def promoted_shapes(shapes):  # noqa: F811
    for keyword in ("FRAMENUM", "FILTER", "FLAGGED"):
        promoted.promote(shapes.engine, keyword)
    return shapes


def _ids(catalog, selection):
    return catalog.exposure_ids(selection)


@pytest.mark.parametrize("selection, holds", SELECTIONS)
def test_a_promoted_keyword_answers_what_its_cards_answer(shapes, selection, holds):  # noqa: F811
    files = _by_file(shapes)
    expected = sorted(i for i, f in files.items() if holds(f))
    assert _ids(shapes, selection) == expected  # from the cards
    for keyword in ("FRAMENUM", "FILTER", "FLAGGED"):
        promoted.promote(shapes.engine, keyword)
    assert _ids(shapes, selection) == expected
    assert sorted(shapes.rows(selection, columns="id")[1]) == [(i,) for i in expected]


def test_the_column_replaces_the_cards_only_where_it_gives_the_same_rows(promoted_shapes):
    with promoted_shapes.engine.connect() as conn:
        def sql(selection):
            return str(ids_statement(selection, promoted_shapes.dialect, conn))

        assert "kw_framenum" in sql("hdr['FRAMENUM'] > 20 and band == 'V'")
        assert "header_cards" not in sql("hdr['FRAMENUM'] > 20 and band == 'V'")
        assert "kw_filter" in sql("hdr['FILTER'] like 'v%'")
        for cards in ("hdr[0]['FRAMENUM'] > 20", "hdr['FRAMENUM'] == '12'", "hdr['FILTER'] is null",
                      "hdr['FLAGGED'] == true", "hdr['OBSERVER'] == 'kim'"):
            assert "header_cards" in sql(cards), cards
        assert "kw_flagged" in sql("hdr['FLAGGED'] == 1")


def test_an_unselective_pair_is_one_index_range(promoted_shapes):
    with promoted_shapes.engine.connect() as conn:
        statement = ids_statement("hdr['FRAMENUM'] > 20 and band == 'V'", promoted_shapes.dialect, conn)
        sql = str(statement.compile(conn, compile_kwargs={"literal_binds": True}))
        if promoted_shapes.dialect == "sqlite":
            # 60 rows: the planner may rightly prefer another index; INDEXED BY fails unless this one can answer
            sql = sql.replace("FROM exposures", "FROM exposures INDEXED BY ix_exposures_band_kw_framenum")
            plan = " ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
            assert "(band=? AND kw_framenum>?)" in plan, plan
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # 60 rows: make the planner show the index it can use
            plan = " ".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))
            assert "ix_exposures_band_kw_framenum" in plan, plan


def test_a_keyword_with_two_values_in_one_file_is_refused_and_nothing_changes(shapes):  # noqa: F811
    with pytest.raises(ObsarchError, match=r"OBSERVER cannot be one column: .*f\d{3}\.fits has two values \('\w+' and '\w+'\) in its HDUs"):
        promoted.promote(shapes.engine, "observer")
    with pytest.raises(ObsarchError, match=r"LONGSTR cannot be one column: .*f\d{3}\.fits has a value longer than 256 characters"):
        promoted.promote(shapes.engine, "LONGSTR")
    with pytest.raises(NotFoundError, match="no file has a card NOSUCH with a value"):
        promoted.promote(shapes.engine, "NOSUCH")
    with pytest.raises(NotFoundError, match="no file has a card FILTER with a number value"):
        promoted.promote(shapes.engine, "FILTER", "number")
    with pytest.raises(ObsarchError, match="is not a header keyword"):
        promoted.promote(shapes.engine, "A;DROP TABLE exposures")
    columns = {c["name"] for c in inspect(shapes.engine).get_columns("exposures")}
    assert not [c for c in columns if c.startswith("kw_")]
    assert promoted.listing(shapes.engine) == []


def test_promote_twice_and_demote(promoted_shapes):
    with pytest.raises(ObsarchError, match="FRAMENUM is promoted already"):
        promoted.promote(promoted_shapes.engine, "FRAMENUM")
    listed = {p.keyword: p for p in promoted.listing(promoted_shapes.engine)}
    assert (listed["FRAMENUM"].kind, listed["FRAMENUM"].exposures) == ("number", 60)
    assert (listed["FILTER"].kind, listed["FILTER"].exposures) == ("text", 54)  # 6 files have no FILTER
    promoted.demote(promoted_shapes.engine, "framenum")
    columns = {c["name"] for c in inspect(promoted_shapes.engine).get_columns("exposures")}
    assert "kw_framenum" not in columns and "kw_filter" in columns
    assert promoted_shapes.exposure_ids("hdr['FRAMENUM'] == 12") == [e for e, f in _by_file(promoted_shapes).items() if f["i"] == 12]
    with pytest.raises(NotFoundError, match="FRAMENUM is not promoted"):
        promoted.demote(promoted_shapes.engine, "FRAMENUM")


def test_ingest_fills_the_columns_of_new_and_changed_files(promoted_shapes, tmp_path):
    catalog = promoted_shapes
    directory = tmp_path / "shapes"
    changed = directory / "f012.fits"
    with fits.open(changed, mode="update") as hdus:
        hdus[0].header["FRAMENUM"] = 112
        del hdus[0].header["FILTER"]
    write_frame(directory / "f100.fits", np.random.default_rng(1), {"FRAMENUM": 100, "FILTER": "R"})
    summary = catalog.ingest([directory])
    assert (summary.new, summary.changed, summary.notes) == (1, 1, [])
    by_number = {n: e for e, n in _framenums(catalog)}
    assert catalog.exposure_ids("hdr['FRAMENUM'] == 12") == []
    assert catalog.exposure_ids("hdr['FRAMENUM'] >= 100") == sorted([by_number[112], by_number[100]])
    assert catalog.exposure_ids("hdr['FILTER'] == 'R'") == [by_number[100]]
    assert by_number[112] in catalog.exposure_ids("hdr['FILTER'] is null")
    assert by_number[112] not in catalog.exposure_ids("hdr['FILTER'] like '%'")  # its old 'B' left the column


def test_an_ingest_bringing_two_values_leaves_the_column_unused_and_says_so(promoted_shapes, tmp_path):
    catalog = promoted_shapes
    path = write_frame(tmp_path / "shapes" / "f200.fits", np.random.default_rng(2), {"FRAMENUM": 200}, extensions=1)
    with fits.open(path, mode="update") as hdus:
        hdus[1].header["FRAMENUM"] = 201
    summary = catalog.ingest([tmp_path / "shapes"])
    assert len(summary.notes) == 1
    assert summary.notes[0].startswith("FRAMENUM is no longer read from its column: ")
    assert "f200.fits has two values (200.0 and 201.0) in its HDUs" in summary.notes[0]
    assert "`obsarch db demote FRAMENUM` drops the column" in summary.notes[0]
    listed = {p.keyword: p.state for p in promoted.listing(catalog.engine)}
    assert listed["FRAMENUM"].startswith("not used: ") and listed["FILTER"] == "in use"
    new = max(e for e, _ in _framenums(catalog))
    with catalog.engine.connect() as conn:
        assert "kw_framenum" not in str(ids_statement("hdr['FRAMENUM'] == 201", catalog.dialect, conn))
    assert catalog.exposure_ids("hdr['FRAMENUM'] == 201") == [new]  # from the cards
    assert catalog.ingest([tmp_path / "shapes"]).notes == []  # said once
    promoted.demote(catalog.engine, "FRAMENUM")
    with pytest.raises(ObsarchError, match="f200.fits has two values"):
        promoted.promote(catalog.engine, "FRAMENUM")


def test_an_interrupted_ingest_leaves_its_files_to_the_cards_until_the_next_fills_them(promoted_shapes, tmp_path):
    catalog = promoted_shapes
    rng = np.random.default_rng(3)
    for i in range(300, 340):
        write_frame(tmp_path / "shapes" / f"f{i}.fits", rng, {"FRAMENUM": i, "FILTER": "R"})

    def interrupt(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        catalog.ingest([tmp_path / "shapes"], progress=interrupt, workers=1)
    stored = len(catalog.exposure_ids("hdr['FRAMENUM'] >= 300"))
    assert 0 < stored  # some chunks were written, the refresh never ran
    with catalog.engine.connect() as conn:
        assert "header_cards" in str(ids_statement("hdr['FRAMENUM'] >= 300", catalog.dialect, conn))
    assert {p.state for p in promoted.listing(catalog.engine)} == {f"not used until the next ingest fills {stored} files"}
    assert len(catalog.exposure_ids("hdr['FILTER'] == 'R'")) == stored
    catalog.ingest([tmp_path / "shapes"])
    assert {p.state for p in promoted.listing(catalog.engine)} == {"in use"}
    with catalog.engine.connect() as conn:
        assert "kw_framenum" in str(ids_statement("hdr['FRAMENUM'] >= 300", catalog.dialect, conn))
    assert len(catalog.exposure_ids("hdr['FRAMENUM'] >= 300")) == len(catalog.exposure_ids("hdr['FILTER'] == 'R'")) == 40


def test_an_ingest_still_running_is_filled_by_its_own_refresh(promoted_shapes):
    """A promotion made while an ingest runs must not mark that run's files
    as filled: they may be written after the promotion read the cards."""
    engine = promoted_shapes.engine
    promoted.demote(engine, "FRAMENUM")
    with engine.begin() as conn:
        last = conn.execute(text("SELECT max(id) FROM ingest_runs")).scalar_one()
        conn.execute(text("UPDATE ingest_runs SET state = 'running' WHERE id = :id"), {"id": last})
    promoted.promote(engine, "FRAMENUM")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT filled_run FROM promoted_keywords WHERE keyword = 'FRAMENUM'")).scalar_one() == last - 1
    assert promoted.refresh(engine, last) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT filled_run FROM promoted_keywords WHERE keyword = 'FRAMENUM'")).scalar_one() == last


def _framenums(catalog):
    with catalog.engine.connect() as conn:
        return conn.execute(text(
            "SELECT file_id, value_num FROM header_cards WHERE keyword = 'FRAMENUM' AND hdu_index = 0")).all()


def test_the_commands(promoted_shapes, url):
    result = obsarch(url, "db", "promote", "--list")
    assert result.stdout.splitlines()[0].split() == ["keyword", "column", "kind", "exposures", "state"]
    assert "FRAMENUM\tkw_framenum\tnumber\t60\tin use" in result.stdout
    assert "give it no keyword (TELESCOP)" in obsarch(url, "db", "promote", "TELESCOP", "--list", code=2).stderr
    assert "--kind is the kind of the keywords to promote" in obsarch(url, "db", "promote", "--kind", "text", code=2).stderr
    assert "'' is not a header keyword" in obsarch(url, "db", "demote", "", code=1).stderr
    assert "is not a header keyword: at most 68" in obsarch(url, "db", "promote", "A" * 69, code=1).stderr
    assert "kind is number or text, not 'date'" in obsarch(url, "db", "promote", "DATE-OBS", "--kind", "date", code=1).stderr
    assert "FRAMENUM" in result.stdout
    result = obsarch(url, "db", "promote", "OBSERVER", code=1)
    assert "error: OBSERVER cannot be one column:" in result.stderr
    result = obsarch(url, "db", "promote", "DATE-OBS", "OBSERVER", "--kind", "Text", code=3)
    assert "promoted DATE-OBS (text) to exposures.kw_date_obs: 60 exposures hold a value, 6 indexes" in result.stdout
    assert "OBSERVER" in result.stderr
    result = obsarch(url, "db", "demote", "DATE-OBS", "NOPE", code=3)
    assert "demoted DATE-OBS: exposures.kw_date_obs dropped" in result.stdout
    assert "error: NOPE is not promoted" in result.stderr
    obsarch(url, "db", "demote", "NOPE", code=1)


def test_a_downgrade_drops_the_promoted_columns(promoted_shapes):
    from alembic import command

    from archive import db

    engine = promoted_shapes.engine
    command.downgrade(db.alembic_config(engine), "0017")
    assert not [c["name"] for c in inspect(engine).get_columns("exposures") if c["name"].startswith("kw_")]
    assert not [i["name"] for i in inspect(engine).get_indexes("exposures") if "kw_" in i["name"]]
    db.upgrade(engine)
    assert promoted.listing(engine) == []
    assert promoted_shapes.exposure_ids("hdr['FRAMENUM'] == 12") == [e for e, f in _by_file(promoted_shapes).items() if f["i"] == 12]


@pytest.mark.parametrize("selection, holds", [
    ("hdr['FILTER'] not in ('V', null)", lambda f: f["band"] == "B"),
    ("hdr['FILTER'] in ('V', null)", lambda f: f["band"] != "B"),
    ("not hdr['FRAMENUM'] in (3, null)", lambda f: f["i"] != 3),
    ("band not in ('V', null)", lambda f: f["band"] == "B"),
    ("hdr['FILTER'] == null", lambda f: f["band"] is None),
    ("hdr['FILTER'] != null", lambda f: f["band"] is not None),
])
def test_null_in_a_list_is_no_card_with_or_without_promotion(shapes, selection, holds):  # noqa: F811
    """SQL's ``x IN ('V', NULL)`` is unknown, not false, for x = 'B', and a
    NOT of it dropped the row; from the column it dropped it even for a
    keyword (the cards' ``id IN (...)`` never is unknown)."""
    expected = sorted(e for e, f in _by_file(shapes).items() if holds(f))
    assert _ids(shapes, selection) == expected
    promoted.promote(shapes.engine, "FILTER")
    promoted.promote(shapes.engine, "FRAMENUM")
    assert _ids(shapes, selection) == expected


@pytest.mark.parametrize("selection, message", [
    ("hdr['FILTER'] < null", "hdr['FILTER'] < null: null is compared only with == and != (or is null)"),
    ("exptime >= null", "exptime >= null: null is compared only"),
    ("hdr['FILTER'] between null and 'Z'", "hdr['FILTER'] between needs two values, not null"),
    ("hdr['FRAMENUM'] between 1 and 'z'", "hdr['FRAMENUM'] between 1 and 'z': both ends are numbers, or both text"),
])
def test_comparisons_that_mean_nothing_are_refused(shapes, selection, message):  # noqa: F811
    result = obsarch(shapes.engine.url.render_as_string(hide_password=False), "query", selection, code=2)
    assert message in result.stderr


def test_a_product_gets_its_promoted_columns(raw_night):
    from processing import calibration

    catalog, tmp = raw_night
    promoted.promote(catalog.engine, "EXPTIME")
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "masters")
    with catalog.engine.connect() as conn:
        product = conn.execute(text("SELECT file_id FROM products WHERE kind = 'master_bias'")).scalar_one()
        assert "kw_exptime" in str(ids_statement("hdr['EXPTIME'] == 0", catalog.dialect, conn))
    assert product in catalog.exposure_ids("hdr['EXPTIME'] == 0")
    promoted.demote(catalog.engine, "EXPTIME")
    assert product in catalog.exposure_ids("hdr['EXPTIME'] == 0")


@pytest.fixture
def raw_night(catalog, tmp_path, rng):
    from factories import night_of_frames

    night_of_frames(tmp_path / "raw", rng)
    catalog.ingest([tmp_path / "raw"])
    return catalog, tmp_path


def test_postgresql_waits_for_the_table_a_moment_and_says_why(promoted_shapes, monkeypatch):
    """A session with an open transaction that read exposures holds it; a
    promote or demote waits LOCK_TIMEOUT_S, then says so, changing nothing.
    A selection holds the table from reading the promoted keywords to its
    end, so no column is dropped between the two."""
    if promoted_shapes.dialect != "postgresql":
        pytest.skip("SQLite changes a table under its database lock")
    monkeypatch.setattr(promoted, "LOCK_TIMEOUT_S", 1)
    engine = promoted_shapes.engine
    with engine.connect() as reader:
        assert set(promoted.promotions(reader)) == {"FRAMENUM", "FILTER", "FLAGGED"}  # a compiler's read
        with pytest.raises(DatabaseError, match="the exposures table stayed in use for 1 s .* nothing changed"):
            promoted.demote(engine, "FRAMENUM")
        reader.rollback()
    promoted.demote(engine, "FRAMENUM")
    assert {p.keyword for p in promoted.listing(engine)} == {"FILTER", "FLAGGED"}


def test_null_means_is_null_for_every_name():
    """``== null``, ``in (null)`` and ``is null`` agree, set-valued names too
    (a group's ``== null`` compared its members' values before)."""
    from archive.query import Compiler, parse

    def sql(selection):
        return str(Compiler("sqlite")(parse(selection)).compile(compile_kwargs={"literal_binds": True}))

    for name in ("group", "group_role", "band", "hdr['FILTER']"):
        assert sql(f"{name} == null") == sql(f"{name} is null") == sql(f"{name} in (null)"), name
        assert sql(f"{name} != null") == sql(f"{name} is not null"), name


def test_a_promote_in_progress_is_left_alone_and_an_abandoned_one_cleared(shapes):  # noqa: F811
    import os
    import socket
    import subprocess

    engine = shapes.engine
    finished = subprocess.Popen(["true"])
    finished.wait()
    host = socket.gethostname()
    with engine.begin() as conn:
        for column, keyword, pid in (("kw_live", "LIVE", os.getpid()), ("kw_dead", "DEAD", finished.pid)):
            conn.exec_driver_sql(f"ALTER TABLE exposures ADD COLUMN {column} REAL")
            conn.execute(text("INSERT INTO promoted_keywords (keyword, column_name, kind, filled_run, broken, created_at) "
                              "VALUES (:k, :c, 'number', -1, :b, CURRENT_TIMESTAMP)"),
                         {"k": keyword, "c": column, "b": f"being promoted by process {pid} on {host}"})
    promoted.promote(engine, "FRAMENUM")
    columns = {c["name"] for c in inspect(engine).get_columns("exposures")}
    assert {"kw_live", "kw_framenum"} <= columns and "kw_dead" not in columns
    states = {p.keyword: p.state for p in promoted.listing(engine)}
    assert states == {"LIVE": f"not used: being promoted by process {os.getpid()} on {host}", "FRAMENUM": "in use"}
    with engine.connect() as conn:
        assert "kw_live" not in str(ids_statement("hdr['LIVE'] == 1", shapes.dialect, conn))


def test_postgresql_promote_lets_readers_in_and_makes_writers_wait_while_it_fills(shapes, monkeypatch):  # noqa: F811
    """An ingest's chunk updating an exposure while the fill held its rows
    deadlocked with the index builds; writers now wait for the fill."""
    if shapes.dialect != "postgresql":
        pytest.skip("SQLite writers wait for the database lock")
    seen = {}
    fill = promoted._fill

    def probing(conn, *args):
        filled = fill(conn, *args)
        with shapes.engine.connect() as other:
            other.exec_driver_sql("SET lock_timeout = '300ms'")
            seen["read"] = other.exec_driver_sql("SELECT count(*) FROM exposures").scalar()
            try:
                other.exec_driver_sql("UPDATE exposures SET band = band WHERE id = (SELECT min(id) FROM exposures)")
                seen["write"] = "went through"
            except Exception as exc:  # noqa: BLE001
                seen["write"] = "waited" if "lock timeout" in str(exc) else str(exc)
            other.rollback()
        return filled

    monkeypatch.setattr(promoted, "_fill", probing)
    promoted.promote(shapes.engine, "FRAMENUM")
    assert seen == {"read": 60, "write": "waited"}


def test_a_text_range_beside_an_indexed_equality_is_one_index_range_over_a_million_exposures(promoted_shapes):
    """SQLite's planner, with no histograms, takes a one-sided range to keep
    a quarter of the rows: ``hdr['OBSERVER'] >= 'kim' and band == 'V'`` over
    1,000,000 exposures (benchmarks/ingest.py) read band == 'V' by (band,
    id) with a row lookup each, 130 ms, where (band, column, id) takes 3 ms.
    Here the statistics ANALYZE gave the catalog are scaled to a million
    exposures, which is what made the planner choose so."""
    catalog = promoted_shapes
    selection = "hdr['FILTER'] >= 'V' and band == 'V'"
    if catalog.dialect == "sqlite":
        with catalog.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE exposures")
            for index, stat in conn.execute(text("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'exposures'")).all():
                counts = [int(n) for n in stat.split()]
                scale = 1_000_000 / counts[0]
                scaled = " ".join(str(round(n * scale) if n > 1 or i == 0 else n) for i, n in enumerate(counts))
                conn.execute(text("UPDATE sqlite_stat1 SET stat = :s WHERE tbl = 'exposures' AND idx IS :i"), {"s": scaled, "i": index})
        catalog.engine.dispose()  # a new connection reads the statistics
    with catalog.engine.connect() as conn:
        sql = str(ids_statement(selection, catalog.dialect, conn).compile(conn, compile_kwargs={"literal_binds": True}))
        if catalog.dialect == "sqlite":
            plan = " ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # 60 rows: make the planner show the index it can use
            plan = " ".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))
    assert "ix_exposures_band_kw_filter" in plan, plan
    expected = sorted(i for i, f in _by_file(catalog).items() if f["band"] == "V")
    assert expected and catalog.exposure_ids(selection) == expected
