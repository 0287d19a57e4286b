"""What a newcomer's mistakes print: one line on stderr naming the thing and
the problem, exit 1. Each runs the real command."""

from __future__ import annotations

import uuid

import pytest
from conftest import PG_URL
from factories import night_of_frames, obsarch
from sqlalchemy import create_engine, text


def one_line(result) -> str:
    """stderr, checked to be exactly one line, without its newline."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def ingested(url, tmp_path, rng):
    night_of_frames(tmp_path / "night", rng)
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "night"))
    return url


def exposures(url) -> int:
    out = obsarch(url, "query", "--columns", "frame_number", "--format", "csv").stdout
    return len(out.splitlines()) - 1


# -- 1: a URL that names no catalog backend ------------------------------------------

@pytest.mark.parametrize("command", [["summary"], ["init"], ["sql", "select 1"]])
@pytest.mark.parametrize("given, shown, backend_name", [
    ("mysql://x@y/z", "mysql://x@y/z", "mysql"),
    ("mysql://u:secret@h/d", "mysql://u:***@h/d", "mysql"),  # the password is not printed
    ("oracle://h/d", "oracle://h/d", "oracle"),
])
def test_a_url_of_another_database_is_refused_naming_its_scheme(command, given, shown, backend_name):
    result = obsarch(given, *command, code=1)
    assert one_line(result) == (f"error: {shown}: obsarch catalogs are SQLite or PostgreSQL URLs "
                                f"(sqlite:///FILE, postgresql://HOST/DBNAME), not {backend_name}")


def test_a_postgresql_driver_that_is_not_installed_is_named():
    result = obsarch("postgresql+nosuchdriver://h/d", "summary", code=1)
    assert one_line(result) == ("error: postgresql+nosuchdriver://h/d: cannot load the driver nosuchdriver "
                                "(Can't load plugin: sqlalchemy.dialects:postgresql.nosuchdriver); "
                                "sqlite:/// and postgresql:// need none beyond obsarch's own")


def test_a_url_that_cannot_be_parsed_says_what_a_url_looks_like():
    result = obsarch("postgresql://h:port/db", "summary", code=1)
    assert one_line(result) == ("error: the catalog URL cannot be read (invalid literal for int() with base 10: "
                                "'port'); write sqlite:///FILE or postgresql://USER@HOST:PORT/DBNAME")


# -- 2: a file that is not a database ------------------------------------------------

@pytest.mark.parametrize("command", [["init"], ["summary"], ["db", "current"], ["db", "upgrade"], ["query"]])
def test_a_file_that_is_no_database_is_refused_and_left_as_it_was(tmp_path, command):
    path = tmp_path / "obsarch.db"
    path.write_text("hello\n")
    result = obsarch(str(path), *command, code=1)
    assert one_line(result) == f"error: cannot open the catalog at sqlite:///{path}: file is not a database"
    assert path.read_text() == "hello\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obsarch.db"]  # no -wal, no -shm left beside it


# -- 3: a PostgreSQL search_path naming no schema --------------------------------------

@pytest.mark.parametrize("command", [["init"], ["summary"], ["db", "upgrade"]])
def test_a_search_path_naming_a_missing_schema_says_how_to_create_it(backend, command):
    if backend != "postgresql":
        pytest.skip("a search_path is PostgreSQL's")
    schema = f"nope_{uuid.uuid4().hex[:8]}"
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    result = obsarch(url, *command, code=1)
    assert one_line(result) == (f"error: schema {schema} (the search_path of {url}) does not exist; "
                                f"create it first: CREATE SCHEMA {schema}")
    admin = create_engine(PG_URL)
    with admin.connect() as conn:
        made = conn.execute(text("SELECT count(*) FROM pg_namespace WHERE nspname = :n"), {"n": schema}).scalar()
    admin.dispose()
    assert made == 0
