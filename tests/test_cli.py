"""The command line, through typer's CliRunner, on both backends."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import time

import numpy as np
import pytest
import typer
from factories import leaf_commands, obsarch, write_frame
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


run = obsarch  # run(url, *args, code=0)


def test_every_command_has_help_with_an_example():
    group = typer.main.get_command(app)
    names = []
    for path, command in leaf_commands(group):
        names.append(" ".join(path))
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert command.help and "Example: obsarch" in command.help, path
    assert {"init", "ingest", "query", "show", "summary", "errors", "sql", "roots move", "db upgrade"} <= set(names)


def test_tour(ingested, tmp_path):
    out = run(ingested, "query", "band == 'V' and frame_type == 'science' and exptime >= 60",
              "--columns", "frame_number,date_obs,exptime,path", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["frame_number"] for r in rows] == ["3868", "3869", "3870", "3871"]
    assert rows[0]["path"].endswith("night/ngc3293-3868.fits")

    out = run(ingested, "query", "3852-3854,3875", "--columns", "frame_number", "--format", "json").stdout
    assert [r["frame_number"] for r in json.loads(out)] == [3852, 3853, 3854, 3875]

    out = run(ingested, "query", "hdr['EXPTIME'] > 100", "--format", "ecsv").stdout
    assert out.startswith("# %ECSV") and "hdr['EXPTIME']" in out
    # an average is PostgreSQL's numeric (a Decimal): was 'unexpected TypeError: ... not JSON serializable'
    out = run(ingested, "sql", "select avg(size) as mean, sum(size) as total from files", "--format", "ecsv").stdout
    assert "# - {name: mean, datatype: float64}" in out and "# - {name: total, datatype:" in out

    table = run(ingested, "query", "frame_type == 'bias'").stdout
    assert "3852" in table and "bias" in table

    shown = run(ingested, "show", "3852").stdout
    assert "IMAGETYP = 'Bias Frame'" in shown and "HDU 0" in shown and "frame_type=bias" in shown

    summary = run(ingested, "summary").stdout
    assert "frame_type" in summary and "science" in summary

    out = run(ingested, "sql", "select band, count(*) as n from exposures group by band order by band", "--format", "csv").stdout
    assert "V,7" in out

    assert "0 files with problems" in run(ingested, "errors").stderr
    assert "done" in run(ingested, "runs").stdout
    assert "night" in run(ingested, "roots", "list", "--format", "csv").stdout


def test_limit_zero_says_whether_any_matches(ingested):
    """--limit 0 said '0 exposures (the first 0: more match)' (a newcomer)."""
    assert "none shown (--limit 0): some match" in run(ingested, "query", "band == 'V'", "--limit", "0").stderr
    assert "0 exposures: none matches" in run(ingested, "query", "band == 'U'", "--limit", "0").stderr
    assert "2 exposures (the first 2: more match)" in run(ingested, "query", "band == 'V'", "--limit", "2").stderr


def test_rescan_prints_the_counts(ingested, tmp_path):
    out = run(ingested, "ingest", str(tmp_path / "night")).stdout
    assert "0 new, 0 changed, 24 unchanged, 0 missing, 0 failed" in out


def test_the_command_reads_the_tree_ahead_and_the_scan_takes_it(ingested, tmp_path, monkeypatch):
    """`obsarch ingest` starts reading the tree before it imports the
    catalog code, and its scan takes those listings (archive/prescan.py)."""
    from archive import prescan

    taken = []
    real_take = prescan.Prescan.take

    def take(self, paths):
        found = real_take(self, paths)
        taken.append(len(found))
        return found

    monkeypatch.setattr(prescan.Prescan, "take", take)
    old = time.time_ns() - 60_000_000_000  # not changed in the last seconds: its listing is kept (prescan.RACY_NS)
    os.utime(tmp_path / "night", ns=(old, old))
    out = run(ingested, "ingest", str(tmp_path / "night")).stdout
    assert "0 new, 0 changed, 24 unchanged, 0 missing, 0 failed" in out
    if prescan.read_directory is not None:
        assert taken and taken[0] >= 1  # the night's directory, read ahead


def test_query_columns_all_shows_every_single_valued_name(ingested):
    """Every one, the usual columns first: a terminal table leaves out from the right what does not fit,
    and `--columns all` in a terminal showed id, file_id, path, relpath, root, status, size and version
    and left out frame_number, band and exptime (a newcomer trying the README)."""
    from archive.query import DEFAULT_COLUMNS, FIELDS

    header = run(ingested, "query", "3852", "--columns", "all", "--format", "csv").stdout.splitlines()[0].split(",")
    assert header[: len(DEFAULT_COLUMNS)] == list(DEFAULT_COLUMNS)
    assert sorted(header) == sorted(name for name, definition in FIELDS.items() if definition.kind != "set")
    assert {"frame_number", "path", "exptime", "fwhm", "grade"} <= set(header) and "group" not in header


def test_show_by_path_and_id(ingested, tmp_path):
    by_path = run(ingested, "show", str(tmp_path / "night" / "ngc3293-3860.fits")).stdout
    by_id = run(ingested, "show", "--id", "9").stdout
    assert "ngc3293-3860.fits" in by_path and "exposure 9" in by_id


def test_show_by_a_relative_path_with_dots_and_a_linked_directory(ingested, tmp_path, monkeypatch):
    (tmp_path / "link").symlink_to(tmp_path / "night")
    monkeypatch.chdir(tmp_path / "night")
    first = run(ingested, "show", "ngc3293-3860.fits").stdout.splitlines()[0]
    assert first.startswith(f"{tmp_path / 'night' / 'ngc3293-3860.fits'}  (exposure ")
    assert run(ingested, "show", "../night/./ngc3293-3860.fits").stdout.splitlines()[0] == first
    assert run(ingested, "show", str(tmp_path / "link" / "ngc3293-3860.fits")).stdout.splitlines()[0] == first


def test_roots_move(ingested, tmp_path):
    (tmp_path / "night").rename(tmp_path / "moved")
    out = run(ingested, "roots", "move", str(tmp_path / "night"), str(tmp_path / "moved")).stdout
    assert "24 files" in out
    out = run(ingested, "ingest", str(tmp_path / "moved")).stdout
    assert "24 unchanged" in out


def test_db_commands(url):
    run(url, "init")
    assert "up to date" in run(url, "db", "current").stdout
    from archive.db import head_revision

    history = run(url, "db", "history").stdout.splitlines()
    # one line per migration, newest first: a title of two lines (0009's) once wrapped onto a line of its own
    assert all(re.match(r"\d{4}  \S", line) for line in history) and history[-1].startswith("0001  catalog")
    assert history[0].startswith(head_revision())
    assert f"schema {head_revision()}: already up to date" in run(url, "db", "upgrade").stdout


def test_a_catalog_at_a_schema_this_obsarch_does_not_carry_is_told_so(url):
    """A later obsarch's catalog (0099) was told to run `obsarch db upgrade`,
    which then failed with 'unexpected CommandError'."""
    from sqlalchemy import text

    from archive.db import head_revision, make_engine

    run(url, "init")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("update alembic_version set version_num = '0099'"))
    engine.dispose()
    told = (f"is at schema 0099, which this obsarch (schema {head_revision()}) does not know: a later obsarch made it "
            "(install that one), or it is not an obsarch catalog")
    assert told in obsarch(url, "query", code=1).stderr
    assert told in obsarch(url, "db", "upgrade", code=1).stderr
    assert "unknown to this obsarch" in run(url, "db", "current").stdout
    assert "unknown schema revision 'bogus'; this obsarch carries 0001 to" in obsarch(url, "db", "upgrade", "bogus", code=2).stderr


def test_default_url_is_obsarch_db_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OBSARCH_DB", raising=False)
    assert runner.invoke(app, ["init"]).exit_code == 0
    assert (tmp_path / "obsarch.db").is_file()
    monkeypatch.setenv("OBSARCH_DB", f"sqlite:///{tmp_path / 'other.db'}")
    assert runner.invoke(app, ["init"]).exit_code == 0
    assert (tmp_path / "other.db").is_file()


# -- what a user sees when something is wrong: one line, exit status 1 -----------


def one_line_error(result, expected: str, code: int = 1):
    assert result.exit_code == code, (result.stdout, result.exception)
    message = result.stderr.strip()
    assert message.startswith("error: ") and expected in message, message
    assert "Traceback" not in result.stderr
    return message


def test_refuses_a_missing_catalog(url):
    one_line_error(runner.invoke(app, ["--db", url, "query"]), "no obsarch catalog at")
    one_line_error(runner.invoke(app, ["--db", url, "query"]), "run `obsarch init` first")


def test_refuses_an_out_of_date_schema_until_upgraded(url, tmp_path, rng):
    from archive.db import head_revision, make_engine, upgrade

    write_frame(tmp_path / "night" / "f-1.fits", rng)
    engine = make_engine(url)
    upgrade(engine, "0001")  # a catalog made by an older obsarch
    engine.dispose()
    for command in (["query"], ["ingest", str(tmp_path / "night")], ["summary"], ["sql", "select 1"], ["show", "1"]):
        message = one_line_error(runner.invoke(app, ["--db", url, *command]), "run `obsarch db upgrade`")
        assert f"is at schema 0001, this obsarch needs {head_revision()}" in message
    assert f"0001 -> {head_revision()}" in run(url, "db", "upgrade").stdout
    assert "1 new" in run(url, "ingest", str(tmp_path / "night")).stdout


@pytest.mark.parametrize(
    "statement, expected",
    [
        ("delete from files", "`obsarch sql` is read-only; the statement was refused"),
        ("drop table exposures", "`obsarch sql` is read-only; the statement was refused"),
        ("update exposures set band = 'X'", "`obsarch sql` is read-only; the statement was refused"),
        ("select 1; delete from files", "one statement at a time"),
        ("commit; delete from files", "one statement at a time"),
        ("selec band from exposures", "SQL error"),
    ],
)
def test_sql_cannot_write(ingested, statement, expected):
    one_line_error(runner.invoke(app, ["--db", ingested, "sql", statement]), expected)
    out = run(ingested, "sql", "select count(*) as n from files", "--format", "csv").stdout
    assert out.splitlines()[1] == "24"


def test_sql_mistakes_read_the_same_on_both_backends(ingested):
    """The user's own text, never the EXPLAIN obsarch runs first (PostgreSQL);
    an empty statement is a usage error on both."""
    message = one_line_error(runner.invoke(app, ["--db", ingested, "sql", "select * from nosuchtable"]), "SQL error")
    assert "nosuchtable" in message and "EXPLAIN" not in message and "LINE 1" not in message
    message = one_line_error(runner.invoke(app, ["--db", ingested, "sql", "select nosuchcolumn from files"]), "SQL error")
    assert "nosuchcolumn" in message and "EXPLAIN" not in message
    result = runner.invoke(app, ["--db", ingested, "sql", "  "])
    assert result.exit_code == 2 and "needs a statement" in result.stderr


@pytest.mark.parametrize("args", [
    ["-- a note\nselect 1 as one", "--format", "csv"],
    ["--format", "csv", "--a note\nselect 1 as one"],
    ["--format", "csv", "--", "-- a note\nselect 1 as one"],
], ids=["comment first", "comment after an option", "after --"])
def test_sql_takes_a_statement_that_begins_with_a_comment(catalog, url, args):
    """It was "no such option: -- a note\\x0aselect 1" (found by a team trial)."""
    assert run(url, "sql", *args).stdout.splitlines() == ["one", "1"]


def test_an_option_whose_value_begins_with_a_dash_keeps_it(ingested):
    run(ingested, "flag", "set", "3852", "--grade", "bad", "--note", "-- clouds, then clear")
    assert "-- clouds, then clear" in run(ingested, "flag", "history", "3852").stdout


def counting_to(n: int | None, backend: str, source: str) -> str:
    """A statement of the rows 1..n (endless for None), made by the server."""
    if source == "generate_series":
        if backend == "sqlite":
            pytest.skip("generate_series is PostgreSQL's")
        return f"select g as x from generate_series(1, {n}) g"
    stop = "" if n is None else f" where x < {n}"
    return f"with recursive c(x) as (select 1 union all select x + 1 from c{stop}) select x from c"


def stopped_line(cap: int) -> str:
    return (f"stopped after {cap} row{'s' if cap != 1 else ''} (--max-rows {cap}); the statement returns more: "
            "page with LIMIT and OFFSET, or raise --max-rows")


@pytest.mark.parametrize("source", ["recursive", "generate_series"])
@pytest.mark.parametrize("rows, cap, code", [(10, 3, 3), (10, 9, 3), (10, 10, 0), (10, 11, 0)])
def test_sql_stops_at_max_rows_and_says_so(catalog, url, backend, source, rows, cap, code):
    """More rows than --max-rows: the first ones, a line saying how to get the rest, exit 3 (partial);
    exactly as many or fewer: all of them, exit 0."""
    result = runner.invoke(app, ["--db", url, "sql", counting_to(rows, backend, source), "--max-rows", str(cap), "--format", "csv"])
    assert result.exit_code == code, result.stderr
    assert result.stdout.splitlines() == ["x", *map(str, range(1, min(rows, cap) + 1))]
    assert result.stderr.splitlines() == ([stopped_line(cap)] if code == 3 else [])


def test_sql_of_endless_rows_holds_only_max_rows(catalog, url, backend):
    """Rows are fetched in batches up to the cap (a server-side cursor on PostgreSQL): every row was
    fetched before, and a statement of a billion rows took 1.8 GB (found by a team trial); an endless
    one ran to the timeout."""
    result = runner.invoke(app, ["--db", url, "sql", counting_to(None, backend, "recursive"), "--max-rows", "25000",
                                 "--timeout", "60", "--format", "csv"])
    assert result.exit_code == 3, result.stderr
    assert len(result.stdout.splitlines()) == 25001 and result.stdout.splitlines()[-1] == "25000"
    assert result.stderr.splitlines() == [stopped_line(25000)]


def zeros(chars: int, backend: str) -> str:
    """A value of ``chars`` characters '0', made by the server."""
    return f"hex(zeroblob({chars // 2}))" if backend == "sqlite" else f"repeat('0', {chars})"


def test_sql_stops_where_the_rows_pass_max_mb_and_says_so(catalog, url, backend):
    """Rows of big values stop at --max-mb as at --max-rows (exit 3, one line): a 600 MB blob took 4 GB as JSON,
    and as ECSV ended in 'unexpected TypeError: string too large to store inside array' (found trying hostile SQL)."""
    statement = f"with recursive c(x) as (select 1 union all select x + 1 from c) select x, {zeros(300_000, backend)} as z from c"
    result = runner.invoke(app, ["--db", url, "sql", statement, "--max-mb", "1", "--format", "csv"])
    assert result.exit_code == 3, result.stderr
    assert [line[:2] for line in result.stdout.splitlines()] == ["x,", "1,", "2,", "3,"]
    assert result.stderr.splitlines() == ["stopped after 3 rows: with the next, the rows would pass 1 MB (--max-mb 1); "
                                          "the statement returns more: page with LIMIT and OFFSET, or raise --max-mb"]


def test_sql_refuses_a_first_row_larger_than_max_mb_in_one_line(catalog, url, backend):
    """The same line on both backends; a value the statement only measures is no row and is answered."""
    result = runner.invoke(app, ["--db", url, "sql", f"select {zeros(2_000_000, backend)} as z", "--max-mb", "1"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == ("error: the first row is larger than 1 MB, which `obsarch sql` does not show (--max-mb 1): "
                             "select a part of it (substr, length) or raise --max-mb\n")
    assert run(url, "sql", f"select length({zeros(2_000_000, backend)}) as n", "--max-mb", "1", "--format", "csv").stdout == "n\n2000000\n"


def test_sql_max_mb_counts_every_row_and_kind_of_value(catalog, url, backend):
    """Batches grow from one row by the largest row so far: a tiny first row let the next batch take 10,000 rows of
    450 KB (2.7 GB on SQLite, 5.4 GB on PostgreSQL, a review); a big row after small ones stops the rows on both
    backends alike; the row read only to say more exist is not counted (--max-rows was blamed on --max-mb)."""
    rows = "with recursive c(x) as (select 1 union all select x + 1 from c where x < 3000) select x"
    tiny_first = f"{rows}, case when x = 1 then '' else {zeros(450_000, backend)} end as z from c"
    result = runner.invoke(app, ["--db", url, "sql", tiny_first, "--max-mb", "1", "--format", "csv"])
    assert result.exit_code == 3 and [line[:2] for line in result.stdout.splitlines()] == ["x,", "1,", "2,", "3,"]
    assert result.stderr.startswith("stopped after 3 rows: with the next, the rows would pass 1 MB (--max-mb 1)")
    big_third = f"{rows}, case when x = 3 then {zeros(2_000_000, backend)} else 'a' end as z from c"
    result = runner.invoke(app, ["--db", url, "sql", big_third, "--max-mb", "1", "--format", "csv"])
    assert (result.exit_code, result.stdout) == (3, "x,z\n1,a\n2,a\n")
    assert result.stderr.startswith("stopped after 2 rows: with the next, the rows would pass 1 MB")
    even = f"{rows}, {zeros(400_000, backend)} as z from c"
    result = runner.invoke(app, ["--db", url, "sql", even, "--max-mb", "1", "--max-rows", "2", "--format", "csv"])
    assert result.exit_code == 3 and result.stderr.splitlines() == [stopped_line(2)]
    if backend == "postgresql":  # an array is counted as it prints, not as nothing
        result = runner.invoke(app, ["--db", url, "sql", "select array_agg(repeat('0', 1000)) from generate_series(1, 2000)",
                                     "--max-mb", "1"])
        assert result.exit_code == 1 and result.stderr.startswith("error: the first row is larger than 1 MB")


@pytest.mark.parametrize("size", ["nan", "0", "300", "-1"])
def test_sql_max_mb_out_of_range_is_a_usage_error(size):
    result = runner.invoke(app, ["--db", "sqlite:///nowhere.db", "sql", "select 1", "--max-mb", size])
    assert result.exit_code == 2
    assert f"invalid value for '--max-mb': {float(size):g} is not a size from 0.001 to 200 MB" in result.stderr


def test_a_terminal_table_cuts_a_huge_cell_and_says_so(monkeypatch):
    """A terminal table folded a 20 MB value into a million lines (79 s); pipes and other formats keep it whole."""
    import io

    from rich.console import Console

    from cli import render

    screen = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=screen, force_terminal=True, width=100))
    render._rich_table(["h", "one"], [("0" * 5_000_000, 1)], None, None)
    shown = screen.getvalue()
    assert "(cut: 5,000,000 characters; pipe or --format csv shows them all)" in " ".join(shown.replace("│", " ").split())
    assert len(shown) < 20_000


def test_a_terminal_table_folds_the_columns_a_person_named_before_leaving_one_out(monkeypatch):
    """--columns id,...,path,...,hdr['OBJECT'] at 100 columns left out
    hdr['OBJECT'], the column asked about, and said to name columns with
    --columns (a newcomer); the default columns still leave out from the right."""
    import io

    from rich.console import Console

    from cli import render

    names = ["id", "frame_number", "path", "frame_type", "band", "exptime", "date_obs", "hdr['OBJECT']"]
    rows = [(11, 3862, "/tmp/demo/ngc3293/ngc3293-3862.fits", "science", "V", 60.0, "2017-08-16T01:00:00", "NGC 3293")]
    for named, shown in ((True, "NGC 3293"), (False, None)):
        screen, notes = io.StringIO(), io.StringIO()
        monkeypatch.setattr(render, "console", Console(file=screen, force_terminal=True, width=100))
        monkeypatch.setattr(render, "err_console", Console(file=notes, width=100))
        render.show_rows(names, rows, named=named)
        assert (shown in screen.getvalue()) if shown else (
            "not shown: hdr['OBJECT'] (the terminal is 100 wide: name columns with --columns" in notes.getvalue())
        assert max(len(re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in screen.getvalue().splitlines()) <= 100
    screen, notes = io.StringIO(), io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=screen, force_terminal=True, width=50))
    monkeypatch.setattr(render, "err_console", Console(file=notes, width=200))
    render.show_rows(names, rows, named=True)
    assert "hdr['OBJECT'] (the terminal is 50 wide: pipe the output or use --format csv)" in notes.getvalue()
    notes.truncate(0)
    render.show_rows(names, rows)  # a command without --columns (flag history) said to name columns with it
    assert "hdr['OBJECT'] (the terminal is 50 wide: pipe the output or use --format csv)" in notes.getvalue()


def test_sql_help_states_the_row_cap():
    result = runner.invoke(app, ["sql", "--help"], terminal_width=200)
    assert "--max-rows" in result.stdout and "default 100000" in " ".join(result.stdout.split())


def test_sql_keeps_integers_beside_nulls(ingested):
    out = run(ingested, "sql", "select id, case when id = 1 then null else id end as maybe from files "
                               "order by id limit 2", "--format", "csv").stdout
    assert out.splitlines() == ["id,maybe", "1,", "2,2"]


@pytest.mark.parametrize(
    "args, expected, code",
    [
        # a selection, column, sort or key list that cannot be read is a usage error
        (["query", "band =="], "expected a value", 2),
        (["query", "bnd == 'V'"], "unknown name 'bnd' at column 1; did you mean band?", 2),
        (["query", "band == 'V'", "--columns", "frame_number,,path"],
         "columns 'frame_number,,path': expected a name (a column or hdr['KEY']), found ',' at column 14", 2),
        (["query", "band == 'V'", "--columns", "exptime,bnd"], "columns 'exptime,bnd': unknown name 'bnd' at column 9; did you mean band?", 2),
        (["query", "band == 'V'", "--sort", "-exptme"], "sort '-exptme': unknown name 'exptme' at column 2; did you mean exptime?", 2),
        (["query", "band == 'V'", "--sort", "exptime, -bnd"], "sort 'exptime, -bnd': unknown name 'bnd' at column 11", 2),
        (["query", "band == 'V'", "--sort", "exptime,--band"], "sort 'exptime,--band': expected a name", 2),
        (["group", "by", "band,bnd"], "keys 'band,bnd': unknown name 'bnd' at column 6; did you mean band?", 2),
        (["query", "bnd == 1", "--sort", "band", "--columns", "band"], "selection 'bnd == 1': unknown name 'bnd' at column 1", 2),
        (["offsets", "compute", "bnd == 1"], "selection 'bnd == 1': unknown name 'bnd' at column 1", 2),
        (["show", "99999"], "no exposure with frame number 99999", 1),
        (["show", "/no/such/file.fits"], "no exposure with file /no/such/file.fits", 1),
        (["ingest", "/no/such/dir"], "/no/such/dir: no such file or directory", 1),
        (["roots", "move", "/nowhere", "/"], "not a root of this catalog", 1),
    ],
)
def test_bad_input_gets_one_clear_line(ingested, args, expected, code):
    one_line_error(runner.invoke(app, ["--db", ingested, *args]), expected, code)


def test_sort_lists_several_names_each_way(ingested):
    result = runner.invoke(app, ["--db", ingested, "query", "--columns", "band,exptime", "--sort", " +band , -exptime",
                                 "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in result.stdout.splitlines()[1:]]
    assert rows == sorted(rows, key=lambda r: (r[0] == "", r[0], -float(r[1])))  # no band last, on both backends
    assert rows[-1][0] == "" and rows[0][0] != ""


def test_ambiguous_frame_number_names_the_candidates(url, tmp_path, rng):
    write_frame(tmp_path / "a" / "x-0001.fits", rng)
    write_frame(tmp_path / "b" / "y-0001.fits", rng)
    run(url, "init")
    run(url, "ingest", str(tmp_path))
    message = one_line_error(runner.invoke(app, ["--db", url, "show", "1"]), "frame 1 is 2 exposures")
    assert "name one with --id or its path" in message

    # flag set refused it too: it flagged both (a newcomer's `flag set 3852` on a demo made twice), exit 0
    message = one_line_error(runner.invoke(app, ["--db", url, "flag", "set", "1", "--grade", "bad"]),
                             "frame 1 is 2 exposures: ", code=2)
    assert "a/x-0001.fits (id " in message and "b/y-0001.fits (id " in message and "nothing flagged" in message
    assert "flagged 1 exposure bad" in run(url, "flag", "set", "1 and relpath == 'b/y-0001.fits'", "--grade", "bad").stdout
    out = run(url, "query", "grade == 'bad'", "--columns", "relpath", "--format", "csv").stdout
    assert out.splitlines()[1:] == ["b/y-0001.fits"]


def test_bad_config_file(ingested, tmp_path):
    bad = tmp_path / "obsarch.toml"
    bad.write_text("[keywords\n")
    result = runner.invoke(app, ["--db", ingested, "--config", str(bad), "ingest", str(tmp_path / "night")])
    one_line_error(result, "not valid TOML")


def test_ingest_reports_bad_files(url, tmp_path, rng):
    write_frame(tmp_path / "good.fits", rng)
    (tmp_path / "empty.fits").write_bytes(b"")
    run(url, "init")
    result = run(url, "ingest", str(tmp_path), code=3)  # partial: the good file is stored
    assert "1 new" in result.stdout and "1 failed" in result.stdout
    assert "empty.fits: empty file" in result.stderr
    out = run(url, "errors", "--format", "csv").stdout
    assert "empty.fits,unreadable,empty file" in out


def test_ingest_of_nothing_but_bad_files_is_an_error(url, tmp_path):
    """Not a partial result: exit 1, and no word of others stored."""
    (tmp_path / "notfits.fits").write_text("hello, I am text\n")
    run(url, "init")
    result = run(url, "ingest", str(tmp_path / "notfits.fits"), code=1)
    assert "0 new" in result.stdout and "1 failed" in result.stdout
    assert "1 file failed and no other file was found; see `obsarch errors`" in result.stderr
    assert "others were stored" not in result.stderr


def test_debug_shows_the_traceback(url):
    from archive.exceptions import CatalogNotFound

    result = runner.invoke(app, ["--db", url, "--debug", "query"])
    assert isinstance(result.exception, CatalogNotFound)


def test_demo(tmp_path, monkeypatch):
    monkeypatch.delenv("OBSARCH_DB", raising=False)  # else the demo goes into the catalog it names
    result = runner.invoke(app, ["demo", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.stdout
    assert "ingested: 65 new" in result.stdout  # 55 frames and 2 XMM obsids of 5 files each
    assert "x-ray: 10 summarized, 0 up to date, 0 failed" in result.stdout  # as `obsarch ingest` would
    assert "ngc3293-3866.fits" in result.stdout
    # the query it shows is the one it ran: five rows of ten, and it says so (it showed five as the whole answer)
    assert "--limit 5\n" in result.stdout and "5 exposures (the first 5: more match)" in result.stdout
    # One observation, one start: the events' DATE-OBS is in TT (their TIMESYS), read back as
    # the UTC start the response files (UTC) give
    from archive.catalog import Catalog

    _, rows = Catalog(f"sqlite:///{tmp_path / 'demo' / 'obsarch.db'}").rows(
        "obsid == '0761220101'", columns="relpath,date_obs,mjd,mjd_start")
    starts = {path.split("/")[-1]: (date_obs, mjd, mjd_start) for path, date_obs, mjd, mjd_start in rows}
    events = starts["P0761220101PNS003PIEVLI0000.fits"]
    assert abs((events[0] - starts["pn.arf"][0]).total_seconds()) < 0.01
    assert abs(events[1] - starts["pn.arf"][1]) * 86400 < 0.01 and events[2] >= events[1]  # the first GTI may start later


def test_the_demo_goes_into_the_catalog_obsarch_db_names(tmp_path, monkeypatch):
    """The demo wrote DIRECTORY/obsarch.db while $OBSARCH_DB named another
    catalog, which the tour's commands then used: an empty one."""
    from archive.catalog import Catalog

    elsewhere = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("OBSARCH_DB", elsewhere)
    result = runner.invoke(app, ["demo", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.stdout
    assert not (tmp_path / "demo" / "obsarch.db").exists()
    assert len(Catalog(elsewhere).query("frame_type == 'bias'")) > 0


def test_a_scratch_file_that_cannot_be_written_stops_the_ingest_in_one_line(tmp_path, rng, monkeypatch):
    from archive import ingest as ingest_module
    from archive.catalog import Catalog

    url = f"sqlite:///{tmp_path / 'cat.db'}"  # scratch files are SQLite's way of loading cards
    write_frame(tmp_path / "first" / "kept.fits", rng)
    run(url, "init")
    run(url, "ingest", str(tmp_path / "first"))
    for i in range(70):  # enough for the worker pool, which writes scratch files
        write_frame(tmp_path / "more" / f"f{i:03d}.fits", rng, shape=(4, 4))
    not_a_directory = tmp_path / "not-a-directory"
    not_a_directory.write_text("")
    monkeypatch.setattr(ingest_module.tempfile, "mkdtemp", lambda **_: str(not_a_directory))
    result = runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "more"), "--workers", "2"])
    message = one_line_error(result, "cannot write the ingest's scratch file")
    assert str(not_a_directory) in message and "\n" not in message
    catalog = Catalog(url)
    assert catalog.query(None, columns="relpath")["relpath"].tolist() == ["kept.fits"]  # what was stored stays
    assert catalog.runs()["state"].tolist() == ["failed", "done"]  # newest first


def test_two_inits_of_one_new_catalog_at_once_both_succeed(url):
    """On PostgreSQL the second init's CREATE TABLE failed on pg_type's unique
    index ('duplicate key value'); now it waits for the first and finds the
    schema made. On SQLite the database lock queues them."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-c", "import sys; sys.argv[0] = 'obsarch'; from cli.main import run; run()", "--db", url, "init"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in processes]
    assert [code for code, _ in results] == [0, 0], results
    assert "up to date" in run(url, "db", "current").stdout


def test_a_command_closes_the_connections_it_opened(ingested):
    """A command run in a process that goes on (the tests, a notebook) left
    each PostgreSQL connection to the garbage collector, whose ResourceWarning
    then surfaced in whatever ran next."""
    import gc
    import warnings

    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for args in (["query", "frame_type == 'bias'"], ["summary"], ["db", "upgrade"], ["query", "no_such_column == 1"],
                     ["sql", "select count(*) from exposures"], ["group", "list"]):
            runner.invoke(app, ["--db", ingested, *args])
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_the_demo_refuses_a_second_night_on_the_first(tmp_path, monkeypatch):
    """Run twice on one directory the demo ingested its night again (55 new,
    10 changed: every frame number twice, and the tour's `show 3852`
    refused); into a catalog that holds files, the tour would find both.
    Each is refused in one line, before anything is written."""
    monkeypatch.delenv("OBSARCH_DB", raising=False)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["demo", str(tmp_path / "demo")])
    assert result.exit_code == 1
    assert f"{tmp_path / 'demo'}: not empty (a demo made before?)" in result.stderr
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["notes.txt"]

    team = tmp_path / "team.db"
    write_frame(tmp_path / "mine" / "a.fits", np.random.default_rng(1), {})
    assert runner.invoke(app, ["--db", f"sqlite:///{team}", "init"]).exit_code == 0
    assert runner.invoke(app, ["--db", f"sqlite:///{team}", "ingest", str(tmp_path / "mine")]).exit_code == 0
    result = runner.invoke(app, ["--db", f"sqlite:///{team}", "demo", str(tmp_path / "fresh")])
    assert result.exit_code == 1
    assert "the catalog already holds 1 file; the demo's tour needs one of its own" in result.stderr
    assert not (tmp_path / "fresh").exists()  # refused before anything is made (or a catalog upgraded: a review)
    with sqlite3.connect(team) as conn:  # its schema as it was
        conn.execute("update alembic_version set version_num = '0021'")
    result = runner.invoke(app, ["--db", f"sqlite:///{team}", "demo", str(tmp_path / "fresh")])
    assert result.exit_code == 1 and "already holds 1 file" in result.stderr
    with sqlite3.connect(team) as conn:
        assert conn.execute("select version_num from alembic_version").fetchone() == ("0021",)


def test_an_ingest_that_finds_no_fits_file_says_so(url, tmp_path):
    """An empty directory, or only links and notes, was 0 new ... and a line
    calling a link to a directory a file."""
    (tmp_path / "night").mkdir()
    (tmp_path / "night" / "notes.txt").write_text("seeing 1.2")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "night" / "frames").symlink_to(tmp_path / "elsewhere")
    run(url, "init")
    result = run(url, "ingest", str(tmp_path / "night"))
    assert "0 new, 0 changed, 0 unchanged, 0 missing, 0 failed" in result.stdout
    assert "; 2 entries without a FITS name ignored" in result.stdout
    assert f"note: no FITS file in {tmp_path / 'night'} (names ending .fits .fit .fts" in result.stderr
    assert "links to directories are not followed" in result.stderr
