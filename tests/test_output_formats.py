"""What `obsarch sql` and `obsarch query` write in every format, on both
backends: every column (a repeated name renamed, with a note), and values the
database gives as Python objects (bytes, jsonb, numeric, time, uuid,
interval) as their text, the same in every format (a user trial)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from datetime import datetime

import pytest
from conftest import make_catalog
from factories import obsarch
from hypothesis import given, settings
from hypothesis import strategies as st

FORMATS = ["csv", "table", "json", "ecsv"]


@pytest.fixture
def db(url) -> str:
    make_catalog(url)
    return url


@pytest.fixture
def pg_db(backend, url) -> str:
    """A catalog on PostgreSQL, for its types SQLite has none of."""
    if backend == "sqlite":
        pytest.skip("a PostgreSQL type")
    make_catalog(url)
    return url


def cells(fmt: str, out: str) -> tuple[list[str], list[list]]:
    """The column names and rows printed in ``fmt``: text, as parsed (JSON, ECSV)."""
    if fmt == "csv":
        names, *rows = csv.reader(io.StringIO(out))
    elif fmt == "table":  # piped: tab-separated
        names, *rows = [line.split("\t") for line in out.splitlines()]
    elif fmt == "json":
        records = json.loads(out)
        names, rows = list(records[0]), [list(record.values()) for record in records]
    else:
        from astropy.table import Table

        table = Table.read(out, format="ascii.ecsv")
        names, rows = table.colnames, [[str(value) for value in row] for row in table.iterrows()]
    return names, rows


def test_a_repeated_name_keeps_every_column_in_every_format(db):
    """JSON kept the last column of a name ([{"a": 2}]) and ECSV failed with
    'DataFrame' object has no attribute 'dtype'."""
    for fmt in FORMATS:  # in one test: a catalog for each format would be most of the time
        result = obsarch(db, "sql", "select 1 as a, 2 as a, 3 as a", "--format", fmt)
        names, rows = cells(fmt, result.stdout)
        assert names == ["a", "a_2", "a_3"], fmt
        assert [[str(v) for v in row] for row in rows] == [["1", "2", "3"]], fmt
        assert result.stderr == "note: repeated column names renamed: column 2 (a) as a_2, column 3 (a) as a_3\n"


def test_unnamed_expressions_on_postgresql_are_all_written(db):
    """PostgreSQL names every unnamed expression ?column?: JSON kept only 'c'."""
    result = obsarch(db, "sql", "select 'a', 'b', 'c'", "--format", "json")
    if db.startswith("sqlite"):  # SQLite names an expression by its text
        assert json.loads(result.stdout) == [{"'a'": "a", "'b'": "b", "'c'": "c"}]
    else:
        assert json.loads(result.stdout) == [{"?column?": "a", "?column?_2": "b", "?column?_3": "c"}]


def test_query_with_a_column_named_twice(db):
    for fmt in FORMATS:
        result = obsarch(db, "query", "id < 3", "--columns", "relpath,relpath", "--format", fmt)
        if fmt != "json":  # no exposures: JSON's [] has no names
            assert cells(fmt, result.stdout)[0] == ["relpath", "relpath_2"], fmt
        assert "note: repeated column names renamed: column 2 (relpath) as relpath_2" in result.stderr


def test_a_renamed_name_does_not_take_one_the_statement_gave():
    from archive.formats import unique_names

    assert unique_names(["a", "a", "a_2", "b"]) == ["a", "a_3", "a_2", "b"]
    assert unique_names(["x", "y"]) == ["x", "y"]


# -- values the database gives as Python objects ------------------------------------------------

BYTES = {"sqlite": "select x'deadbeef' as b", "postgresql": "select '\\xdeadbeef'::bytea as b"}


def test_bytes_are_written_in_postgresqls_hex_form(db, backend):
    """bytea was b'\\xde\\xad\\xbe\\xef' (CSV, a table, JSON) or raw bytes, no
    UTF-8, in ECSV."""
    for fmt in FORMATS:
        out = obsarch(db, "sql", BYTES[backend], "--format", fmt).stdout
        # a piped table escapes a backslash as PostgreSQL's COPY does
        assert cells(fmt, out)[1] == [["\\\\xdeadbeef" if fmt == "table" else "\\xdeadbeef"]], fmt


POSTGRESQL_TYPES = ("select time '12:00' as tm, '00000000-0000-0000-0000-000000000001'::uuid as u, "
                    "interval '1 day 2 hours' as i, -interval '90 seconds' as back, interval '26 hours' as h, "
                    "interval '1 mon' as m, "
                    "123456789012345678901234567890::numeric as n, '{\"a\": 1}'::jsonb as j, inet '10.0.0.1' as ip")
POSTGRESQL_TEXT = ["12:00:00", "00000000-0000-0000-0000-000000000001", "1 day 02:00:00", "-00:01:30", "26:00:00", "1 mon",
                   "123456789012345678901234567890", '{"a": 1}', "10.0.0.1"]


def test_postgresql_types_are_written_as_their_text(pg_db):
    """ECSV failed ('Object of type time is not JSON serializable'), wrote a
    numeric as float64 1.2345678901234568e+29; CSV and a table wrote jsonb as
    Python's {'a': 1}."""
    for fmt in FORMATS:
        names, rows = cells(fmt, obsarch(pg_db, "sql", POSTGRESQL_TYPES, "--format", fmt).stdout)
        assert names == ["tm", "u", "i", "back", "h", "m", "n", "j", "ip"], fmt
        expected = [*POSTGRESQL_TEXT[:7], {"a": 1} if fmt == "json" else '{"a": 1}', POSTGRESQL_TEXT[8]]
        assert rows == [expected], fmt


def test_ecsv_keeps_numeric_a_number_where_a_number_holds_it_exactly(pg_db):
    """A sum (numeric, no fraction digits) is int64, an average float64; an
    integer float64 would change is text."""
    from astropy.table import Table

    statement = ("select avg(x) as mean, sum(x) as total, sum(x) * 100000000000000000000 as big "
                 "from (values (1), (2), (4)) as v(x)")
    table = Table.read(obsarch(pg_db, "sql", statement, "--format", "ecsv").stdout, format="ascii.ecsv")
    assert [table[name].dtype.kind for name in table.colnames] == ["f", "i", "U"]
    assert (table["total"][0], table["big"][0]) == (7, "700000000000000000000")


def test_json_output_is_valid_json(db, backend):
    """A NaN in an array (a list) failed: JSON has no NaN; a date in one was not JSON serializable."""
    statement = {
        "sqlite": "select 9e999 as big, -9e999 as small, x'00ff' as b, json_array(1, 2) as j",
        "postgresql": "select 'Infinity'::float8 as big, '-Infinity'::float8 as small, '\\x00ff'::bytea as b, "
                      "'NaN'::float8 as nan, 'NaN'::numeric as nnan, 1.50::numeric as n, "
                      "array['NaN'::float8, 1.5] as floats, array[date '2020-01-01'] as days",
    }[backend]

    def strict(constant):
        raise AssertionError(f"{constant} is no JSON")

    records = json.loads(obsarch(db, "sql", statement, "--format", "json").stdout, parse_constant=strict)
    expected = {"big": "Infinity", "small": "-Infinity", "b": "\\x00ff"}
    if backend == "sqlite":
        expected["j"] = "[1,2]"  # SQLite's JSON is text
    else:
        expected |= {"nan": "NaN", "nnan": "NaN", "n": "1.50", "floats": ["NaN", 1.5], "days": ["2020-01-01"]}
    assert records == [expected]



# -- values with control characters: exact in a pipe, escaped in a terminal ------------------------

ODD_NAMES = ["esc\x1b[31mred-0004.fits", "cr\rx-0005.fits", "tab\tand\\-0006.fits", "a[red]b:smile:-0007.fits",
             "csi\x9b31m-0008.fits"]  # an ANSI escape sequence, a carriage return, rich's markup and emoji code, C1's CSI


@pytest.fixture
def odd(db, tmp_path) -> str:
    """A catalog of files whose names hold characters a terminal or rich would take for something else."""
    from astropy.io import fits

    (tmp_path / "odd").mkdir()
    for name in ODD_NAMES:
        fits.PrimaryHDU(header=fits.Header({"OBJECT": "e"})).writeto(tmp_path / "odd" / name)
    obsarch(db, "ingest", str(tmp_path / "odd"))
    return db


@pytest.fixture
def terminal(monkeypatch):
    """stdout and stderr taken for a terminal by the commands' consoles (rich's TTY_COMPATIBLE), made afresh."""
    from cli import render

    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "200")
    for lazy in (render.console, render.err_console):
        monkeypatch.setattr(lazy, "_console", None)


_COPY_TEXT = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}  # a piped table's escapes, as PostgreSQL's COPY


def test_a_piped_value_is_written_exactly_in_every_format(odd):
    """click's echo strips ANSI escape sequences when stdout is no terminal:
    `obsarch query "object == 'e'" --columns relpath --format csv` printed
    escred-0004.fits, a file that does not exist (and so did ECSV and a piped table)."""
    for fmt in FORMATS:
        out = obsarch(odd, "query", "object == 'e'", "--columns", "relpath", "--format", fmt).stdout
        expected = ODD_NAMES
        if fmt == "csv":  # the row with a carriage return is quoted (test_csv_quotes_a_carriage_return)
            assert '\n"cr\rx-0005.fits"\n' in out
        names, rows = cells(fmt, out)
        shown = sorted(row[0] for row in rows)
        if fmt == "table":
            shown = sorted(re.sub(r"\\(.)", lambda m: _COPY_TEXT[m.group(1)], cell) for cell in shown)
        if fmt == "ecsv":  # written exactly, but astropy reads a carriage return back as a line feed
            assert '"cr\rx-0005.fits"' in out
            shown = sorted(name.replace("\n", "\r") for name in shown)
        assert shown == sorted(expected), fmt


def test_csv_quotes_a_carriage_return():
    """A bare carriage return in a CSV field ends the record for csv.reader
    ('new-line character seen in unquoted field') and for RFC 4180 readers."""
    from archive.formats import rows_to_csv

    assert list(csv.reader(io.StringIO(rows_to_csv(["relpath"], [("cr\rx.fits",)])))) == [["relpath"], ["cr\rx.fits"]]


def test_show_and_lineage_write_a_path_exactly_to_a_pipe(odd, tmp_path):
    """rich dropped a carriage return, made a tab spaces, read [red] as markup
    and :smile: as an emoji: show printed a[red]b:smile: as ab😄."""
    for name in ODD_NAMES:
        path = str((tmp_path / "odd" / name).resolve())
        assert obsarch(odd, "lineage", path).stdout == f"{path}  (raw)\n"
        assert obsarch(odd, "show", path).stdout.startswith(f"{path}  (exposure ")


def test_a_terminal_gets_a_values_control_characters_escaped(odd, tmp_path, terminal):
    """Sent raw, the escape sequence in a file name recoloured the terminal
    (rich passed it on); it is shown as \\x1b, neither sent nor dropped."""
    raw = ("\x1b[31m", "\x9b", "\r")
    for fmt in FORMATS:
        out = obsarch(odd, "query", "object == 'e'", "--columns", "relpath", "--format", fmt).stdout
        assert not any(c in out for c in raw), (fmt, out)
        if fmt == "json":  # JSON's own escapes: still JSON, and the same values
            assert sorted(r["relpath"] for r in json.loads(out)) == sorted(ODD_NAMES)
        else:
            for name in ("esc\\x1b[31mred-0004.fits", "cr\\x0dx-0005.fits", "csi\\x9b31m-0008.fits", "a[red]b:smile:-0007.fits"):
                assert name in out, (fmt, name, out)
    path = (tmp_path / "odd" / ODD_NAMES[0]).resolve()
    for args in (["lineage", str(path)], ["show", str(path)]):
        out = obsarch(odd, *args).stdout
        assert "\x1b[31m" not in out and str(path).replace("\x1b", "\\x1b") in out, args
    error = obsarch(odd, "show", "no\x1b[31mne.fits", code=1).stderr
    assert "\x1b[31m" not in error and "no\\x1b[31mne.fits" in error


def test_a_name_that_looks_like_markup_is_printed_as_it_is_in_a_terminal(ingested, terminal):
    """Messages hold values: `obsarch group create "[/x]" ...` in a terminal ended in rich's MarkupError
    ('closing tag [/x] doesn't match any open tag'), and [red] in a name coloured the rest of the line."""
    for name in ("[/x]", "a[red]b", "c:smile:"):
        result = obsarch(ingested, "group", "create", name, "3852-3855")
        assert re.sub(r"\x1b\[[0-9;]*m", "", result.stdout).strip() == f"group {name}: 4 exposures"


# a column of any mix, as SQLite may hold (which stores no NaN: it reads back as NULL)
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
    st.text(max_size=5), st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    st.dates(), st.decimals(allow_nan=False, places=3),
)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b or isinstance(a, datetime) and isinstance(b, datetime) and a == b


_NUMBERS = st.one_of(st.none(), st.integers(-10, 10), st.floats(-1e3, 1e3), st.just(math.nan))  # a PostgreSQL float column may hold NaN


@st.composite
def _rows(draw):
    """Rows of columns each of any mix (no NaN) or of numbers, some missing, some NaN."""
    height = draw(st.integers(0, 6))
    columns = [draw(st.lists(draw(st.sampled_from([_VALUES, _NUMBERS])), min_size=height, max_size=height))
               for _ in range(draw(st.integers(1, 3)))]
    return list(zip(*columns))


@settings(max_examples=500, deadline=None)
@given(_rows())
def test_listings_write_rows_as_a_frame_of_them_would_without_pandas(rows):
    """`obsarch sql`, `runs`, `summary`... print rows through typed_rows,
    without pandas: it gives what a DataFrame of the rows gave, value for value
    (a pandas Timestamp and a datetime compare equal, and print alike)."""
    from archive.formats import typed_rows
    from archive.results import frame_of, output_rows

    names = [f"c{i}" for i in range(len(rows[0]) if rows else 0)]
    typed, framed = typed_rows(rows, names), output_rows(frame_of(rows, names))
    assert len(typed) == len(framed)
    for mine, theirs in zip(typed, framed):
        assert all(_same(a, b) or (isinstance(b, float) and type(a) is float and a == b) for a, b in zip(mine, theirs, strict=True)), \
            (rows, mine, theirs)


def test_a_column_mixing_integers_and_floats_is_floats_as_a_frame_makes_it():
    from archive.formats import typed_rows

    assert typed_rows([(1, "a", None), (2.5, None, 3), (None, "b", 4)], ["x", "y", "z"]) == \
        [(1.0, "a", None), (2.5, None, 3), (None, "b", 4)]
    assert typed_rows([{"x": 1, "y": True}, {"x": 2.0, "y": 1}], ["x", "y"]) == [(1.0, True), (2.0, 1)]
