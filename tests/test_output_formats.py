"""What `obsarch sql` and `obsarch query` write in every format, on both
backends: every column (a repeated name renamed, with a note) (a user trial)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from factories import obsarch

FORMATS = ["csv", "table", "json", "ecsv"]


@pytest.fixture
def db(url) -> str:
    obsarch(url, "init")
    return url


@pytest.fixture
def pg_db(backend, url) -> str:
    """A catalog on PostgreSQL, for its types SQLite has none of."""
    if backend == "sqlite":
        pytest.skip("a PostgreSQL type")
    obsarch(url, "init")
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
