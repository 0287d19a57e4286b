"""A keyword selection answers the same whatever shape the compiler gives it.

On SQLite, a keyword equality next to an indexed column that picks fewer
exposures than the value has cards becomes ``EXISTS (a card of this
exposure)`` instead of ``id IN (the cards' file ids)``, and a keyword
condition with many cards beside an indexed equality is intersected with
the rest (archive.query, Compiler._header and ids_statement). Both shapes must give the same ids, on both backends:
NULL columns, missing keywords, a keyword in several HDUs, numbers and text
under the same keyword, long text, logicals.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from astropy.io import fits
from factories import write_frame

from archive import query
from archive.models import Exposure
from archive.query import select_exposures

N = 60
OBSERVERS = ["eve", "eve", "kim", "ann", None]  # None: no OBSERVER card


def _file(i: int) -> dict:
    """What file i holds (the test's own record of it)."""
    return {
        "i": i,
        "band": None if i % 11 == 0 else "V" if i % 3 else "B",
        "night_day": 16 if i % 2 else 17,
        "observer": 42 if i % 13 == 0 else OBSERVERS[i % 5],  # a number under a text keyword
        "ext_observer": "kim" if i % 4 == 0 else None,  # the same keyword in HDU 1
        "long": i % 9 == 0,
        "flagged": i % 6 == 0,
    }


@pytest.fixture
def shapes(catalog, tmp_path):
    rng = np.random.default_rng(7)
    directory = tmp_path / "shapes"
    for i in range(N):
        f = _file(i)
        header = {"FILTER": f["band"], "DATE-OBS": f"2017-08-{f['night_day']}T03:00:00", "OBSERVER": f["observer"],
                  "LONGSTR": "x" * 300 if f["long"] else None, "FLAGGED": f["flagged"], "FRAMENUM": i}
        path = write_frame(directory / f"f{i:03d}.fits", rng, header, extensions=1)
        if f["ext_observer"]:
            with fits.open(path, mode="update") as hdus:
                hdus[1].header["OBSERVER"] = f["ext_observer"]
    catalog.ingest([directory])
    return catalog


def _by_file(catalog) -> dict[int, dict]:
    """Exposure id -> the test's record of its file."""
    from sqlalchemy import select

    from archive.models import File

    with catalog.engine.connect() as conn:
        rows = conn.execute(select(Exposure.id, File.relpath).join(File, File.id == Exposure.file_id)).all()
    return {exposure_id: _file(int(relpath.removesuffix(".fits").rsplit("f", 1)[1])) for exposure_id, relpath in rows}


def _observers(f: dict, hdu: int | None = None) -> list:
    values = {0: f["observer"], 1: f["ext_observer"]}
    return [v for h, v in values.items() if v is not None and (hdu is None or h == hdu)]


SELECTIONS = [
    ("hdr['OBSERVER'] == 'eve' and band == 'V'", lambda f: "eve" in _observers(f) and f["band"] == "V"),
    ("band == 'V' and hdr['OBSERVER'] == 'kim'", lambda f: "kim" in _observers(f) and f["band"] == "V"),
    ("hdr['OBSERVER'] == 'kim' and band == 'B'", lambda f: "kim" in _observers(f) and f["band"] == "B"),
    ("hdr[1]['OBSERVER'] == 'kim' and band == 'V'", lambda f: "kim" in _observers(f, 1) and f["band"] == "V"),
    ("hdr[0]['OBSERVER'] == 'kim' and band == 'V'", lambda f: "kim" in _observers(f, 0) and f["band"] == "V"),
    ("hdr['OBSERVER'] == 42 and band in ('V', 'B')", lambda f: 42 in _observers(f) and f["band"] in ("V", "B")),
    ("hdr['OBSERVER'] == 'eve' and band in ('B')", lambda f: "eve" in _observers(f) and f["band"] == "B"),
    ("not hdr['OBSERVER'] == 'eve' and band == 'V'", lambda f: "eve" not in _observers(f) and f["band"] == "V"),
    ("hdr['OBSERVER'] != 'eve' and band == 'V'",
     lambda f: any(v != "eve" for v in _observers(f) if isinstance(v, str)) and f["band"] == "V"),
    ("hdr['OBSERVER'] == 'eve' and band == 'V' and night == '2017-08-15'",
     lambda f: "eve" in _observers(f) and f["band"] == "V" and f["night_day"] == 16),
    ("hdr['OBSERVER'] == 'eve' and band is null", lambda f: "eve" in _observers(f) and f["band"] is None),
    ("(hdr['OBSERVER'] == 'eve' or hdr['OBSERVER'] == 'ann') and band == 'V'",
     lambda f: {"eve", "ann"} & set(_observers(f)) and f["band"] == "V"),
    ("hdr['OBSERVER'] == 'nobody' and band == 'V'", lambda f: False),
    ("hdr['NOSUCHKEY'] == 'eve' and band == 'V'", lambda f: False),
    ("hdr['LONGSTR'] == '" + "x" * 300 + "' and band == 'V'", lambda f: f["long"] and f["band"] == "V"),
    ("hdr['FLAGGED'] == true and band == 'V'", lambda f: f["flagged"] and f["band"] == "V"),
    ("hdr['FLAGGED'] == false and band == 'B'", lambda f: not f["flagged"] and f["band"] == "B"),
    ("hdr['FRAMENUM'] == 12 and band == 'B'", lambda f: f["i"] == 12),
    ("hdr['FRAMENUM'] == 12 and band == 'B' or hdr['FRAMENUM'] == 15", lambda f: f["i"] in (12, 15)),
    ("hdr['OBSERVER'] == 'eve'", lambda f: "eve" in _observers(f)),
    # ranges beside an indexed equality: intersected when they have many cards
    ("hdr['FRAMENUM'] > 20 and band == 'V'", lambda f: f["i"] > 20 and f["band"] == "V"),
    ("band == 'B' and hdr['FRAMENUM'] between 10 and 40", lambda f: 10 <= f["i"] <= 40 and f["band"] == "B"),
    ("band == 'B' and hdr['FRAMENUM'] not between 10 and 40", lambda f: not 10 <= f["i"] <= 40 and f["band"] == "B"),
    ("band == 'B' and not hdr['FRAMENUM'] < 30", lambda f: not f["i"] < 30 and f["band"] == "B"),
    ("hdr['FRAMENUM'] >= 30 and hdr['OBSERVER'] == 'eve' and band == 'V'",
     lambda f: f["i"] >= 30 and "eve" in _observers(f) and f["band"] == "V"),
    ("hdr['OBSERVER'] > 'b' and band == 'V'",
     lambda f: any(isinstance(v, str) and v > "b" for v in _observers(f)) and f["band"] == "V"),
]


@pytest.mark.parametrize("selection, holds", SELECTIONS)
def test_each_shape_gives_the_same_ids(shapes, selection, holds):
    files = _by_file(shapes)
    expected = sorted(i for i, f in files.items() if holds(f))
    with shapes.engine.connect() as conn:
        plain = [row[0] for row in conn.execute(select_exposures(selection, shapes.dialect).order_by(Exposure.id))]
    assert plain == expected
    assert shapes.exposure_ids(selection) == expected
    assert sorted(shapes.rows(selection, columns="id")[1]) == [(i,) for i in expected]


def test_sqlite_tests_each_exposure_when_the_column_picks_fewer(shapes):
    """The shape chosen, on SQLite: EXISTS only where it reads less."""
    if shapes.dialect != "sqlite":
        pytest.skip("PostgreSQL plans the semi-join itself")
    with shapes.engine.connect() as conn:
        def sql(selection):
            return str(select_exposures(selection, "sqlite", conn=conn))

        # 'eve' is on 2 files in 5, band 'B' on a third of them: EXISTS
        assert "EXISTS" in sql("hdr['OBSERVER'] == 'eve' and band == 'B'")
        # no indexed column beside it: the list of its files
        assert "EXISTS" not in sql("hdr['OBSERVER'] == 'eve' and exptime > 1")
        assert "EXISTS" not in sql("hdr['OBSERVER'] == 'eve'")
        # a rare value (one frame number): the list of its files
        assert "EXISTS" not in sql("hdr['FRAMENUM'] == 12 and band == 'V'")
        # not an equality: no seek on (keyword, value, file id)
        assert "EXISTS" not in sql("hdr['OBSERVER'] like 'e%' and band == 'B'")
        # a column picking more than DRIVING_ROWS_CAP: the list
        original = query.DRIVING_ROWS_CAP
        query.DRIVING_ROWS_CAP = 5
        try:
            assert "EXISTS" not in sql("hdr['OBSERVER'] == 'eve' and band == 'B'")
        finally:
            query.DRIVING_ROWS_CAP = original


@pytest.mark.parametrize("selection, holds", SELECTIONS)
def test_the_merged_shape_gives_the_same_ids(shapes, selection, holds, monkeypatch):
    """With caps low enough that every common value and column counts as
    many, SQLite's ids come from INTERSECT ... ORDER BY (ids_statement):
    still the same ids."""
    monkeypatch.setattr(query, "DRIVING_ROWS_CAP", 4)
    files = _by_file(shapes)
    assert shapes.exposure_ids(selection) == sorted(i for i, f in files.items() if holds(f))


def test_sqlite_merges_a_common_value_with_a_column_picking_many(shapes, monkeypatch):
    if shapes.dialect != "sqlite":
        pytest.skip("PostgreSQL merges the semi-join itself")
    with shapes.engine.connect() as conn:
        def sql(selection):
            return str(query.ids_statement(selection, "sqlite", conn))

        assert "INTERSECT" not in sql("hdr['OBSERVER'] == 'eve' and band == 'V'")  # 60 files: under the caps
        monkeypatch.setattr(query, "DRIVING_ROWS_CAP", 4)
        merged = sql("hdr['OBSERVER'] == 'eve' and band == 'V' and night == '2017-08-15'")
        assert "INTERSECT" in merged and merged.index("band") < merged.index("INTERSECT") < merged.index("header_cards")
        assert "INTERSECT" not in sql("hdr['FLAGGED'] == true and band == 'V'")  # a logical: no index range
        assert "INTERSECT" not in sql("hdr['OBSERVER'] like 'e%' and band == 'V'")  # not an equality
        assert "INTERSECT" not in sql("hdr['OBSERVER'] == 'eve' or band == 'V'")
        # a range with many cards is intersected too (its file ids sorted first); its negation is not
        assert "INTERSECT" in sql("hdr['FRAMENUM'] > 20 and band == 'V'")
        assert "INTERSECT" in sql("band == 'V' and hdr['FRAMENUM'] between 10 and 40")
        assert "INTERSECT" not in sql("band == 'V' and hdr['FRAMENUM'] not between 10 and 40")
        assert "INTERSECT" not in sql("band == 'V' and not hdr['FRAMENUM'] > 20")
        assert "INTERSECT" not in sql("hdr['FRAMENUM'] > 20 and exptime > 1")  # no indexed equality beside it
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(query.ids_statement(
            "hdr['OBSERVER'] == 'eve' and band == 'V'", "sqlite", conn).compile(conn, compile_kwargs={"literal_binds": True}))).all()
        assert any("MERGE (INTERSECT)" in row[-1] for row in plan)


def test_postgresql_merges_two_id_ordered_ranges_in_one_process(shapes):
    """A keyword equality beside an indexed equality: PostgreSQL's parallel
    merge reads the value's cards once per worker, so the catalog runs it
    without workers (same ids); other selections keep the server's setting."""
    from sqlalchemy import event

    assert query.merges_sorted_ranges(query.parse("hdr['OBSERVER'] == 'eve' and band == 'V'"))
    assert query.merges_sorted_ranges(query.parse("band in ('V', 'B') and hdr['OBSERVER'] == 'eve' and exptime > 1"))
    assert not query.merges_sorted_ranges(query.parse("hdr['OBSERVER'] == 'eve'"))
    assert not query.merges_sorted_ranges(query.parse("hdr['OBSERVER'] > 'e' and band == 'V'"))
    assert not query.merges_sorted_ranges(query.parse("hdr['OBSERVER'] == 'eve' or band == 'V'"))
    assert not query.merges_sorted_ranges(None)
    seen: list[str] = []
    event.listen(shapes.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    files = _by_file(shapes)
    expected = sorted(i for i, f in files.items() if "eve" in _observers(f) and f["band"] == "V")
    assert shapes.exposure_ids("hdr['OBSERVER'] == 'eve' and band == 'V'") == expected
    assert sorted(shapes.rows("hdr['OBSERVER'] == 'eve' and band == 'V'", columns="id")[1]) == [(i,) for i in expected]
    serial = [s for s in seen if "max_parallel_workers_per_gather" in s]
    assert len(serial) == (2 if shapes.dialect == "postgresql" else 0)
    seen.clear()
    shapes.exposure_ids("hdr['OBSERVER'] > 'e' and band == 'V'")
    assert not any("max_parallel_workers_per_gather" in s for s in seen)


def test_a_text_range_on_a_keyword_is_an_index_range(shapes):
    """``hdr['OBSERVER'] > 'e'`` compares bytes on both backends; on
    PostgreSQL the card index was built in the database's collation, which a
    range collated "C" cannot use: every OBSERVER card was read and
    filtered (migration 0023 collates the card columns "C")."""
    selection = "hdr['OBSERVER'] between 'e' and 'kim'"
    with shapes.engine.connect() as conn:
        sql = str(query.ids_statement(selection, shapes.dialect, conn).compile(conn, compile_kwargs={"literal_binds": True}))
        if shapes.dialect == "sqlite":
            plan = " ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "ix_header_cards_text (keyword=? AND value_text>? AND value_text<?)" in plan, plan
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a table this small would be read whole
            plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql))
            assert re.search(r"Index Cond: \(\(keyword = 'OBSERVER'::text\) AND \(value_text >= 'e'::text\) AND \(value_text <= 'kim'::text\)\)",
                             plan), plan
    files = _by_file(shapes)
    expected = sorted(i for i, f in files.items() if any(isinstance(v, str) and "e" <= v <= "kim" for v in _observers(f)))
    assert expected and shapes.exposure_ids(selection) == expected
