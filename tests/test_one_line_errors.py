"""What a newcomer's mistakes print: one line on stderr naming the thing and
the problem, exit 1 (error) or 2 (usage); a closed pipe downstream is no
error (exit 0, quiet). Each runs the real command."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from conftest import PG_URL, drop_schema
from factories import obsarch
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from cli.main import app


def one_line(result) -> str:
    """stderr, checked to be exactly one line, without its newline."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


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
    result = obsarch(given, *command, code=2)  # a value the person gave: usage
    assert one_line(result) == (f"error: {shown}: obsarch catalogs are SQLite or PostgreSQL URLs "
                                f"(sqlite:///FILE, postgresql://HOST/DBNAME), not {backend_name}")


def test_a_postgresql_driver_that_is_not_installed_is_named():
    result = obsarch("postgresql+nosuchdriver://h/d", "summary", code=1)
    assert one_line(result) == ("error: postgresql+nosuchdriver://h/d: cannot load the driver nosuchdriver "
                                "(Can't load plugin: sqlalchemy.dialects:postgresql.nosuchdriver); "
                                "sqlite:/// and postgresql:// need none beyond obsarch's own")


def test_a_url_that_cannot_be_parsed_says_what_a_url_looks_like():
    result = obsarch("postgresql://h:port/db", "summary", code=2)
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


@pytest.mark.parametrize("command, doing", [(["init"], "upgrade"), (["db", "upgrade"], "upgrade"),
                                            (["demo", "night"], "open")])
def test_a_catalog_file_in_a_missing_directory_is_named_with_it(tmp_path, command, doing, monkeypatch):
    """SQLite says only 'unable to open database file'; the demo said it as an unexpected OperationalError."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "no" / "such" / "obsarch.db"
    result = obsarch(str(path), *command, code=1)
    assert one_line(result) == f"error: cannot {doing} the catalog at sqlite:///{path}: its directory {path.parent} does not exist"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the demo wrote no night for a catalog it could not open


@pytest.mark.parametrize("command", [["init"], ["db", "upgrade"]])
def test_a_catalog_path_under_a_file_names_the_file(tmp_path, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a file\n")
    path = tmp_path / "notes.txt" / "obsarch.db"
    result = obsarch(str(path), *command, code=1)
    assert one_line(result).endswith(f": {tmp_path / 'notes.txt'} is a file, not a directory")


@pytest.mark.parametrize("command", [["init"], ["query"], ["demo", "night"]])
def test_a_directory_given_as_the_catalog_is_refused_naming_a_file_in_it(tmp_path, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = obsarch(str(tmp_path), *command, code=1)
    assert one_line(result).endswith(f": {tmp_path} is a directory: name a file in it (--db {tmp_path / 'obsarch.db'})")


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


@pytest.fixture
def schemas(backend):
    """Makes PostgreSQL schemas on demand (``schemas(catalog=True)``), each dropped after the test."""
    if backend != "postgresql":
        pytest.skip("a search_path is PostgreSQL's")
    admin, made = create_engine(PG_URL), []

    def make(catalog: bool = False) -> str:
        name = f"sp_{uuid.uuid4().hex[:10]}"
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {name}"))
        made.append(name)
        if catalog:
            obsarch(path_url(name), "init")
        return name

    yield make
    for name in made:
        drop_schema(admin, name)
    admin.dispose()


def path_url(*schemas: str) -> str:
    return f"{PG_URL}?options=-csearch_path%3D{'%2C'.join(schemas)}"


def files_in(schema: str) -> int:
    admin = create_engine(PG_URL)
    with admin.connect() as conn:
        count = conn.execute(text(f"SELECT count(*) FROM {schema}.files")).scalar()
    admin.dispose()
    return count


@pytest.mark.parametrize("command", [["summary"], ["ingest", "{tmp}"], ["sql", "select 1"]])
def test_a_search_path_whose_first_schema_is_missing_is_refused_not_passed_over(schemas, tmp_path, command):
    """team2,public with no team2: PostgreSQL would work in public, another team's catalog (found by a team trial)."""
    team = schemas(catalog=True)
    missing = f"nope_{uuid.uuid4().hex[:8]}"
    url = path_url(missing, team)
    result = obsarch(url, *[arg.format(tmp=tmp_path) for arg in command], code=1)
    assert one_line(result) == (f"error: schema {missing} (the search_path of {url}) does not exist; "
                                f"create it first: CREATE SCHEMA {missing}, or take it out of the search_path: "
                                f"obsarch works in its first schema only, not in {team}")
    assert files_in(team) == 0


def test_an_empty_first_schema_is_not_passed_over_for_a_later_catalog(schemas, tmp_path):
    """team2,public where only public holds a catalog: it passed the check and then ingest failed on
    "relation ix_header_cards_long already exists" (found by a team trial); now the catalog is team2's."""
    from factories import write_frame

    team, empty = schemas(catalog=True), schemas()
    url = path_url(empty, team)
    result = obsarch(url, "summary", code=1)
    assert one_line(result) == (f"error: no obsarch catalog at {url} (schema {empty}, the first of its search_path, holds "
                                f"none; the catalog in {team} is used only when {team} comes first); run `obsarch init` "
                                "first (or name one with --db or $OBSARCH_DB)")
    obsarch(url, "init")  # makes the catalog in the first schema, though a later one holds one
    for i in range(2):
        write_frame(tmp_path / "f" / f"g{i}.fits", header={"FRAMENUM": 100 + i})
    assert "2 new" in obsarch(url, "ingest", str(tmp_path / "f")).stdout
    assert (files_in(empty), files_in(team)) == (2, 0)


@pytest.mark.parametrize("path, names", [
    ('"$user", public', ["$user", "public"]),
    ("Team2,public", ["team2", "public"]),
    ('"Team 2" , "a""b",x', ["Team 2", 'a"b', "x"]),
    ("", []),
])
def test_search_path_schemas_reads_names_as_the_server_does(path, names):
    from archive.db import search_path_schemas

    assert search_path_schemas(path) == names


# -- 4: an OSError on a path -------------------------------------------------------

def test_an_unwritable_path_is_named_with_the_systems_reason(ingested):
    before = exposures(ingested)
    result = obsarch(ingested, "report", "quality", "--html", "/proc/forbidden", code=1)
    assert one_line(result) == "error: /proc/forbidden: No such file or directory"
    assert exposures(ingested) == before


# -- 5: a reader that went away ------------------------------------------------------

def closed_stdout(url: str, *args: str) -> subprocess.CompletedProcess:
    """Run obsarch in a process whose stdout is a pipe nobody reads: closed
    before the command starts, so every write meets a closed pipe."""
    process = subprocess.Popen([sys.executable, "-c", "from cli.main import run; run()", "--db", url, *args],
                               env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    stderr = process.stderr.read()
    process.stderr.close()
    return subprocess.CompletedProcess(process.args, process.wait(), "", stderr)


@pytest.mark.parametrize("command", [
    ["calib", "explain", "band == 'V' and frame_type == 'science'"],  # typer.echo and the plain writer
    ["show", "3852"],  # rich markup: rich's console, which would exit 1
    ["query"],
    ["query", "--format", "json"],
    ["summary"],
    ["--help"],  # Typer's help, through rich's own console
    ["query", "--help"],
])
def test_a_closed_pipe_downstream_ends_any_command_quietly(ingested, command):
    before = exposures(ingested)
    result = closed_stdout(ingested, *command)
    # what a command says on stderr anyway may stay (summary: what it counts); no error
    assert result.returncode == 0 and not any(word in result.stderr for word in ("error", "Traceback", "unexpected"))
    assert exposures(ingested) == before


def test_an_error_still_reaches_stderr_when_stdout_is_closed(ingested):
    result = closed_stdout(ingested, "show", "9999")
    assert result.returncode == 1 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


def test_a_broken_pipe_that_is_not_stdouts_stays_an_error(ingested, monkeypatch):
    """A socket's broken pipe (an archive that hung up) is not a reader that went away."""
    from archive.catalog import Catalog

    def hung_up(self):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(Catalog, "summary_rows", hung_up)
    result = obsarch(ingested, "summary", code=1)
    assert one_line(result) == "error: unexpected BrokenPipeError: [Errno 32] Broken pipe (run with --debug for the traceback)"


# -- 6: usage errors -----------------------------------------------------------------

@pytest.mark.parametrize("args, line", [
    (["query", "band == 'V'", "--format", "xml"],
     "invalid value for '--format': 'xml' is not one of 'table', 'csv', 'json', 'ecsv' (see obsarch query --help)"),
    (["query", "--limit", "-1"], "invalid value for '--limit': -1 is below 0 (see obsarch query --help)"),
    (["querry"], "no such command 'querry'. Did you mean 'query'? (see obsarch --help)"),
    (["show"], "missing argument 'ref' (see obsarch show --help)"),
    (["calib", "explai"], "no such command 'explai'. Did you mean 'explain'? (see obsarch calib --help)"),
    (["sql", "select 1", "--timeout", "-1"],
     "invalid value for '--timeout': -1 is below 0; give seconds, or 0 for no limit (see obsarch sql --help)"),
    (["query", "--nope"], "no such option: --nope (see obsarch query --help)"),
    (["summary", "--db", "sqlite:///x.db"],
     "summary has no option --db: it is obsarch's own, given before the command (obsarch --db ... summary)"),
    (["group", "list", "--debug"],
     "group list has no option --debug: it is obsarch's own, given before the command (obsarch --debug ... group list)"),
])
def test_a_usage_error_is_one_line_and_exit_2(tmp_path, args, line):
    result = CliRunner().invoke(app, ["--db", f"sqlite:///{tmp_path / 'none.db'}", *args], prog_name="obsarch")
    assert (result.exit_code, result.stdout, one_line(result)) == (2, "", f"error: {line}")
    assert not (tmp_path / "none.db").exists()


def test_a_group_without_a_command_still_shows_its_help():
    result = CliRunner().invoke(app, ["calib"], prog_name="obsarch")
    assert result.exit_code == 2 and "Usage: obsarch calib" in result.stdout and "error" not in result.stderr
