"""The command line as people and scripts meet it: whole output in pipes,
help without type placeholders, old spellings kept, every run listed, no
stray catalogs, configuration mistakes in one line."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import numpy.ma as ma
import pytest
import typer
from conftest import make_catalog
from factories import leaf_commands, night_of_frames, obsarch, write_frame
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


run = obsarch  # run(url, *args, code=0)


@pytest.fixture
def ingested(url, tmp_path, rng):
    night_of_frames(tmp_path / "a-directory-with-a-rather-long-name-to-test-wrapping" / "night", rng)
    write_frame(tmp_path / "odd.fits", rng, {"IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": 12.345678901234,
                                            "DATE-OBS": "2017-08-16T03:00:00.25"})
    make_catalog(url)
    run(url, "ingest", str(tmp_path))
    return url


def test_a_piped_table_is_whole_tab_separated_and_exact(ingested):
    out = run(ingested, "query", "exptime > 10", "--columns", "frame_number,path,exptime,mjd,date_obs").stdout
    lines = out.splitlines()
    assert lines[0].split("\t") == ["frame_number", "path", "exptime", "mjd", "date_obs"]
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 5 for row in rows)
    long = [row for row in rows if "rather-long-name" in row[1]]
    assert long and all(row[1].endswith(".fits") for row in long)  # a path is never cut
    odd = next(row for row in rows if row[1].endswith("odd.fits"))
    assert odd[0] == "" and odd[2] == "12.345678901234" and odd[3] == repr(57981.0 + (3 * 3600 + 0.25) / 86400)
    assert odd[4] == "2017-08-16T03:00:00.250000"
    assert all(row[0] == "" or row[0].isdigit() for row in rows)  # integers next to NULLs stay integers


def test_integers_and_times_are_the_same_in_every_format(ingested):
    selection = "frame_number == 3852 or exptime == 12.345678901234"
    text = run(ingested, "query", selection, "--columns", "frame_number,date_obs", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["frame_number"] for r in rows) == ["", "3852"]  # row order is the ids', not asserted here
    records = json.loads(run(ingested, "query", selection, "--columns", "frame_number,date_obs", "--format", "json").stdout)
    assert sorted(records, key=lambda r: r["frame_number"] is None)[0]["frame_number"] == 3852
    assert [r["frame_number"] for r in records].count(None) == 1
    tsv = run(ingested, "query", selection, "--columns", "frame_number,date_obs").stdout.splitlines()[1:]
    assert [r["date_obs"] for r in rows] == [r["date_obs"] for r in records] == [line.split("\t")[1] for line in tsv]
    assert all(r["date_obs"][:4] == "2017" and r["date_obs"][10] == "T" for r in rows)  # one ISO form


def test_help_shows_no_type_placeholders_and_groups_commands_in_panels():
    for path, _ in leaf_commands(typer.main.get_command(app)):
        text = runner.invoke(app, [*path, "--help"], terminal_width=200).stdout
        assert not any(p in text for p in ("<bool>", "<str>", "<int>", "<path>", "<list", "<float>")), (path, text)
    top = runner.invoke(app, ["--help"], terminal_width=200).stdout
    for panel in ("Catalog", "Quality", "Groups and offsets", "Processing", "Archives", "Administration"):
        assert f"─ {panel} " in top
    assert "groups " not in top and "flags " not in top  # the old spellings are hidden


def test_old_spellings_still_work(ingested):
    run(ingested, "group", "create", "B0", "3852-3854", "--reference", "3852")
    assert "3853" in run(ingested, "groups", "show", "B0").stdout
    assert "B0" in run(ingested, "groups", "list").stdout
    assert "flagged 2 exposures bad" in run(ingested, "flag", "3852,3853", "--grade", "bad").stdout
    assert "flagged 1 exposure ok" in run(ingested, "flag", "set", "3852", "--grade", "ok").stdout
    assert run(ingested, "flags", "history", "3852").stdout == run(ingested, "flag", "history", "3852").stdout


def test_counts_say_one_thing_and_many_things(ingested):
    assert run(ingested, "query", "frame_number == 3852").stderr.splitlines()[-1] == "1 exposure"
    assert run(ingested, "query", "frame_number >= 3852 and frame_number <= 3853").stderr.splitlines()[-1] == "2 exposures"
    assert "group B1: 1 exposure" in run(ingested, "group", "create", "B1", "3852").stdout


def test_runs_lists_every_run_and_shows_a_tools_output(ingested):
    run(ingested, "run", "3852", "--", "sh", "-c", "echo made {frame}; echo complaint >&2")
    listing = [line.split("\t") for line in run(ingested, "runs").stdout.splitlines()]
    assert listing[0][-1] == "parent"
    assert [(row[0], row[1], row[-1]) for row in listing[1:]] == [("2", "run:sh", "1"), ("1", "run:sh", ""), ("i1", "ingest", "")]
    parent = run(ingested, "runs", "show", "1").stdout
    assert "items (1):" in parent and "3852\t\tdone\t\t2" in parent  # the item, its state and its run
    shown = run(ingested, "runs", "show", "2").stdout
    assert "parent: 1" in shown and "step: run:sh" in shown and "made 3852" in shown and "complaint" in shown
    assert "frame\t" in shown and "ngc3293-3852.fits\t3852" in shown  # the input, by path and frame number
    assert json.loads(run(ingested, "runs", "show", "i1", "--format", "json").stdout)["step"] == "ingest"
    assert "no run 7 in the catalog" in run(ingested, "runs", "show", "7", code=1).stderr
    assert "'x' is no run id" in run(ingested, "runs", "show", "x", code=1).stderr


def test_run_with_no_selection_takes_every_word_after_dashes_as_the_tool(ingested, tmp_path, monkeypatch):
    """``run --each obsid -- ls`` read ``ls`` as the selection (a usage error):
    after ``--`` every word is the tool's."""
    monkeypatch.chdir(tmp_path)
    frames = [row["frame_number"] for row in json.loads(run(ingested, "query", "--format", "json").stdout)]
    result = run(ingested, "run", "--workers", "1", "--", "sh", "-c", "echo {id} > seen")
    assert len(list((tmp_path / "runs").glob("*/seen"))) == len(frames) and f"{len(frames)} done" in result.stdout
    odd = run(ingested, "run", "3852", "--workdir", "w/{item}", "--", "sh", "-c", "echo '--' {frame} > seen")
    assert (tmp_path / "w" / "3852" / "seen").read_text() == "-- 3852\n" and "1 done" in odd.stdout


def test_a_value_an_item_lacks_fails_that_item_and_is_never_filled_in_as_none(ingested, tmp_path, monkeypatch):
    """odd.fits has no frame number: ``{frame}`` reached the tool as 'None'."""
    monkeypatch.chdir(tmp_path)
    result = run(ingested, "run", "relpath glob '*odd.fits' or frame_number == 3852", "--workers", "1", "--",
                 "sh", "-c", "echo {frame} > seen", code=3)
    # the key of a frame without a number names its id, never taken for frame 1
    assert "  id 1: {frame} in 'echo {frame} > seen': this item has no frame number\n" in result.stderr
    assert (tmp_path / "runs" / "3852" / "seen").read_text() == "3852\n" and not (tmp_path / "runs" / "1").exists()
    typo = run(ingested, "run", "3852", "--", "echo", "{fram}", code=1)
    assert "{fram} in '{fram}' is not known for this item (known: dir, frame, id, item, obsid, path" in typo.stderr


def test_items_of_two_cameras_with_one_frame_number_never_share_a_directory(url, tmp_path, rng, monkeypatch):
    """Frame 111 of two cameras shared runs/111: one product, whose lineage
    named the item that did not make it. The second item is refused, and
    a placeholder that tells them apart runs both."""
    monkeypatch.chdir(tmp_path)
    for camera in ("SynCam", "OtherCam"):
        write_frame(tmp_path / "raw" / f"{camera}.fits", rng, {"INSTRUME": camera, "FRAMENUM": 111})
    run(url, "init")
    run(url, "ingest", str(tmp_path / "raw"))
    tool = ["--workers", "1", "--", "sh", "-c", "cp {path} out.fits"]
    shared = run(url, "run", "frame_number == 111", *tool, code=3)
    assert (f"the working directory of {tmp_path / 'raw' / 'SynCam.fits'}, {tmp_path / 'runs' / '111'}, is "
            f"{tmp_path / 'raw' / 'OtherCam.fits'}'s too: give --workdir "
            "a placeholder that tells them apart (--workdir 'runs/{id}')") in shared.stderr
    assert "1 done" in shared.stderr.strip().splitlines()[-1]
    assert "2 done" in run(url, "run", "frame_number == 111", "--workdir", "runs/{id}", *tool).stdout
    made = list((tmp_path / "runs").glob("*/out.fits"))
    assert len(made) == 3
    for path in made:
        (frame,) = [line.split()[1] for line in run(url, "lineage", str(path)).stdout.splitlines() if "[frame]" in line]
        assert open(frame, "rb").read() == path.read_bytes()


@pytest.mark.parametrize(("value", "said"), [("nan", "nan"), ("inf", "inf"), ("-1", "-1"), ("1e300", "1e+300")])
def test_run_refuses_a_timeout_that_is_no_number_of_seconds_before_anything_runs(ingested, tmp_path, monkeypatch, value, said):
    monkeypatch.chdir(tmp_path)
    result = run(ingested, "run", "3852", "--timeout", value, "--", "true", code=2)
    assert result.stderr.strip() == f"error: --timeout {said}: give seconds, from 0 (no limit) to 1e+09"
    assert not (tmp_path / "runs").exists()


def test_run_with_timeout_0_has_no_limit_and_an_unusable_workdir_is_one_line(ingested, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "1 done" in run(ingested, "run", "3852", "--timeout", "0", "--", "true").stdout
    (tmp_path / "afile").write_text("")
    bad = run(ingested, "run", "3852", "--force", "--workdir", str(tmp_path / "afile" / "{item}"), "--", "true", code=1)
    assert f"3852: cannot make the working directory {tmp_path / 'afile' / '3852'}: Not a directory" in bad.stderr


def test_lineage_of_a_tool_output_that_is_no_fits_file(ingested, tmp_path, monkeypatch):
    """products listed runs/3852/note.txt, and lineage said 'no exposure with file ... in the catalog'."""
    monkeypatch.chdir(tmp_path)
    run(ingested, "run", "3852", "--", "sh", "-c", "echo hi > note.txt")
    tree = run(ingested, "lineage", "runs/3852/note.txt").stdout.splitlines()
    assert tree[0].startswith(f"{tmp_path / 'runs' / '3852' / 'note.txt'}  <- run ") and " run:sh (" in tree[0]
    assert re.search(r" run:sh \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\)$", tree[0]), tree[0]  # ISO 8601, as everywhere
    assert tree[1].startswith("  [frame] ") and tree[1].endswith("ngc3293-3852.fits  (raw)")
    assert "no exposure with file runs/3852/other.txt" in run(ingested, "lineage", "runs/3852/other.txt", code=1).stderr


@pytest.mark.parametrize("command", [["query"], ["summary"], ["runs"], ["group", "list"], ["stale"], ["show", "3852"]])
def test_a_read_command_does_not_create_a_catalog(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OBSARCH_DB", raising=False)
    result = runner.invoke(app, command)
    assert result.exit_code == 1
    assert f"no obsarch catalog at sqlite:///obsarch.db ({tmp_path / 'obsarch.db'}); run `obsarch init` first" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("toml, message", [
    ("[quality]\nsatur = 4095\n", "unknown key 'quality.satur' in [quality]; known: detect_sigma"),
    ("[qualty]\n", "unknown key 'qualty' at the top level; known: keywords, quality, archives, calibration"),
    ("[quality]\nnpixels = 'five'\n", "quality.npixels: expected an integer, got 'five'"),
    ("[quality.rules.wind]\nabove = 'high'\n", "quality.rules.wind.above: expected a number, got 'high'"),
    ("[quality.rules.wind]\nabove = 1.4\n", "a new rule needs metric, grade, reason"),
    ("[keywords.bands]\nV = 3\n", "keywords.bands.V: expected text, got 3"),
])
def test_a_configuration_mistake_is_one_line_with_file_and_key(ingested, tmp_path, toml, message):
    config = tmp_path / "obsarch.toml"
    config.write_text(toml)
    result = runner.invoke(app, ["--db", ingested, "--config", str(config), "quality", "rules"])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert "obsarch.toml" in result.stderr and "__init__" not in result.stderr


def test_building_the_command_line_imports_no_heavy_library():
    """Start-up: a command imports what it uses, so the app and its help
    import neither the catalog's SQLAlchemy nor pandas, numpy, astropy or
    pydantic (benchmarks/startup.py measures the time)."""
    heavy = ("sqlalchemy", "pandas", "numpy", "astropy", "pydantic")
    code = ("import sys; from cli.main import app; from typer.main import get_command; get_command(app); "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# What a command must not import for the few rows it prints (the PostgreSQL
# dialect: not on a SQLite catalog); benchmarks/startup.py measures the time.
NOT_FOR_A_QUERY = ("pandas", "astropy", "numpy", "pydantic", "alembic", "sqlalchemy.dialects.postgresql",
                   "sqlalchemy.orm", "rich")


def imported_by(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``obsarch ARGS`` as the console script does, in a fresh process
    with stdout and stderr pipes; the result and the modules it imported."""
    listing = cwd / "modules.txt"
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: open({str(listing)!r}, 'w').write('\\n'.join(sys.modules)))\n"
            f"sys.argv[:] = ['obsarch', *{args!r}]\n"
            "from cli.main import run\nrun()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    return result, set(listing.read_text().split())


@pytest.mark.parametrize("args", [
    ["--version"],
    ["query", "frame_type == 'science' and hdr['OBJECT'] like 'NGC%'", "--limit", "10"],
    ["query", "band == 'V'", "--limit", "10", "--columns", "frame_number,band,hdr['AIRMASS']"],
])
def test_version_and_a_short_query_import_only_what_they_use(tmp_path, rng, args):
    night_of_frames(tmp_path / "night", rng)
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    run(url, "init")
    run(url, "ingest", str(tmp_path / "night"))
    result, modules = imported_by(["--db", url, *args] if args[0] != "--version" else args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert sorted(m for m in modules if m.split(".")[0] in NOT_FOR_A_QUERY or m in NOT_FOR_A_QUERY) == []
    if args[0] == "query":
        assert "cli.catalog" in modules and "cli.admin" not in modules  # only its own command module


@pytest.mark.parametrize("args", [["runs"], ["runs", "show", "i1"], ["summary"], ["errors"], ["products"], ["roots", "list"],
                                  ["sql", "select band, count(*), avg(exptime) from exposures group by band"], ["downloads"]])
def test_listing_commands_import_no_array_library(tmp_path, rng, args):
    """A listing prints rows from the database: pandas and numpy were a third
    of its start-up (0.25 s of 0.7 s), to print a few rows."""
    night_of_frames(tmp_path / "night", rng)
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    make_catalog(url)
    run(url, "ingest", str(tmp_path / "night"))
    result, modules = imported_by(["--db", url, *args], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert sorted(m for m in modules if m.split(".")[0] in ("pandas", "numpy", "astropy")) == []


@pytest.mark.parametrize("args, also_not", [
    (["group", "list"], ("numpy", "archive.ingest")), (["group", "show", "all"], ("numpy", "archive.ingest")),
    (["offsets", "show", "--group", "all"], ()), (["stale"], ("numpy", "archive.ingest")), (["flag", "history", "--id", "ID"], ()),
])
def test_listings_of_processing_import_no_pandas(tmp_path, rng, args, also_not):
    """Their modules compute with numpy; printing their rows needs no pandas
    (0.2 s of start-up). Listing groups, and products that no stack made,
    need neither numpy nor the ingest module either (group list 0.70 to 0.56
    s, stale 0.98 to 0.47 s on the demo, alternated)."""
    night_of_frames(tmp_path / "night", rng)
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    make_catalog(url)
    run(url, "ingest", str(tmp_path / "night"))
    run(url, "group", "create", "all", "frame_type == 'science'")
    run(url, "flag", "set", "frame_type == 'science'", "--grade", "ok")
    science = run(url, "query", "frame_type == 'science'", "--columns", "id", "--format", "csv").stdout.split()[1]
    result, modules = imported_by(["--db", url, *[science if arg == "ID" else arg for arg in args]], tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(m for m in modules if m.split(".")[0] == "pandas" or m in also_not) == []


def test_an_ingest_of_ccd_frames_imports_no_pixel_library_in_the_command(tmp_path, rng):
    """The command only plans and writes (its workers read the headers): with
    no X-ray file among the new ones, it imports neither astropy nor numpy."""
    night_of_frames(tmp_path / "night", rng)
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    run(url, "init")
    result, modules = imported_by(["--db", url, "ingest", str(tmp_path / "night")], tmp_path)
    assert result.returncode == 0 and "new" in result.stderr + result.stdout, result.stderr
    assert sorted(m for m in modules if m.split(".")[0] in ("astropy", "numpy", "pandas")) == []


def test_each_command_names_the_modules_that_register_it():
    """cli.main.MODULES, by which a run imports only its command's modules,
    says exactly which modules register each top-level command and group."""
    code = """
import importlib, json
from cli import main
from cli.app import app
def names():
    found = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    return found | {g.name for g in app.registered_groups if g.typer_instance.registered_commands}
def sizes():
    return {g.name: len(g.typer_instance.registered_commands) for g in app.registered_groups}
by_name = {}
for module in main.ALL:
    before, counts = names(), sizes()
    importlib.import_module("cli." + module)
    grown = {n for n, size in sizes().items() if size > counts.get(n, 0)}
    for name in (names() - before) | grown:
        by_name.setdefault(name, []).append(module)
print(json.dumps(by_name))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from cli.main import MODULES

    assert json.loads(result.stdout) == {name: list(modules) for name, modules in MODULES.items()}


@pytest.mark.parametrize("args", [["--help"], ["query", "--help"]])
def test_help_imports_no_catalog_library(tmp_path, args):
    """Help needs rich (it draws the help) and nothing of the catalog."""
    result, modules = imported_by(args, tmp_path)
    assert result.returncode == 0 and "Usage" in result.stdout
    heavy = ("pandas", "astropy", "numpy", "pydantic", "alembic", "sqlalchemy")
    assert sorted(m for m in modules if m.split(".")[0] in heavy) == []


def test_values_no_format_can_write_plainly_are_written_so_they_read_back(ingested):
    """Infinity was printed as JSON's invalid Infinity; a tab or a newline in
    a value became a space in a piped table, so the path shown was no path."""
    import json

    statement = ("select 'a\tb' as tab, 'c\nd' as newline, 'e\\f' as backslash, "
                 "cast('Infinity' as float) as big, -cast('Infinity' as float) as small, cast(1.5 as float) as x")
    if "sqlite" in ingested:
        statement = "select 'a' || char(9) || 'b' as tab, 'c' || char(10) || 'd' as newline, 'e\\f' as backslash, 9e999 as big, -9e999 as small, 1.5 as x"
    rows = json.loads(run(ingested, "sql", statement, "--format", "json").stdout)
    assert rows == [{"tab": "a\tb", "newline": "c\nd", "backslash": "e\\f", "big": "Infinity", "small": "-Infinity", "x": 1.5}]
    piped = run(ingested, "sql", statement).stdout.splitlines()
    assert piped == ["tab\tnewline\tbackslash\tbig\tsmall\tx", "a\\tb\tc\\nd\te\\\\f\tinf\t-inf\t1.5"]


# -- NaN is no NULL ---------------------------------------------------------------------------

NAN_NAMES = ["frame_number", "airmass", "note"]
NAN_ROWS = [(1, float("nan"), "a"), (2, None, None), (3, 1.25, "c")]  # a value that is not a number; no value


def _cells(fmt: str, out: str) -> list[list]:
    """The cells of rows printed in ``fmt``, as text (JSON: as parsed)."""
    if fmt == "csv":
        return list(csv.reader(io.StringIO(out)))[1:]
    if fmt == "table":
        return [line.split("\t") for line in out.splitlines()[1:]]
    if fmt == "json":
        return [list(record.values()) for record in json.loads(out)]
    from astropy.table import Table

    table = Table.read(out, format="ascii.ecsv")
    return [["masked" if value is ma.masked else str(value) for value in row] for row in table.iterrows()]


NAN_SHOWN = {
    "csv": [["1", "nan", "a"], ["2", "", ""], ["3", "1.25", "c"]],
    "table": [["1", "nan", "a"], ["2", "", ""], ["3", "1.25", "c"]],  # piped: tab-separated
    "json": [[1, "NaN", "a"], [2, None, None], [3, 1.25, "c"]],  # JSON has no NaN: a string, as "Infinity"
    "ecsv": [["1", "nan", "a"], ["2", "masked", "masked"], ["3", "1.25", "c"]],
}


@pytest.mark.parametrize("fmt", ["csv", "table", "json", "ecsv"])
def test_nan_and_null_are_told_apart_in_every_format(fmt, capsys):
    """NaN and NULL were both printed empty (CSV, a piped table), both null
    (JSON) or both "" (ECSV): a missing value and one that is not a number
    (a header's nan, a metric) could not be told apart. Rows as the database
    gives them, and a DataFrame of them (frame_of: `obsarch sql`, summaries)."""
    from archive.results import frame_of
    from cli.render import Format, readable, show_frame, show_rows

    show_rows(NAN_NAMES, NAN_ROWS, Format(fmt))
    assert _cells(fmt, capsys.readouterr().out) == NAN_SHOWN[fmt]
    show_frame(frame_of(NAN_ROWS, NAN_NAMES), Format(fmt))
    assert _cells(fmt, capsys.readouterr().out) == NAN_SHOWN[fmt]
    assert (readable(float("nan")), readable(None)) == ("nan", "")  # a table drawn in a terminal


def test_a_dataframes_own_missing_values_stay_empty(capsys):
    """In a float64 column pandas holds a missing value as NaN: a DataFrame
    made by pandas from rows with None prints it empty, not as nan."""
    import pandas as pd

    from cli.render import Format, show_frame

    show_frame(pd.DataFrame([(1, 2.5), (2, None)], columns=["id", "value"]), Format.csv)
    assert capsys.readouterr().out.splitlines() == ["id,value", "1,2.5", "2,"]


def test_query_and_sql_tell_a_stored_nan_from_null(ingested):
    """On PostgreSQL a float column holds NaN; SQLite stores a NaN as NULL,
    so there the catalog holds no NaN to show."""
    from sqlalchemy import update

    from archive.db import make_engine
    from archive.models import Exposure

    engine = make_engine(ingested)
    with engine.begin() as conn:
        conn.execute(update(Exposure).where(Exposure.frame_number == 3852).values(airmass=float("nan")))
        conn.execute(update(Exposure).where(Exposure.frame_number == 3853).values(airmass=None))
    engine.dispose()
    nan = "" if ingested.startswith("sqlite") else "nan"
    csv_out = run(ingested, "query", "3852,3853", "--columns", "frame_number,airmass", "--sort", "frame_number",
                  "--format", "csv").stdout
    assert csv_out.splitlines() == ["frame_number,airmass", f"3852,{nan}", "3853,"]
    sql = "select frame_number, airmass from exposures where frame_number in (3852, 3853) order by frame_number"
    records = json.loads(run(ingested, "sql", sql, "--format", "json").stdout)
    assert records == [{"frame_number": 3852, "airmass": "NaN" if nan else None}, {"frame_number": 3853, "airmass": None}]
    assert run(ingested, "sql", sql).stdout.splitlines()[1:] == [f"3852\t{nan}", "3853\t"]


def test_show_refuses_an_hdu_the_file_does_not_have(url, tmp_path, rng):
    """`obsarch show 3c273.pi --hdu 9` (3 HDUs) and `--hdu -1` printed the
    summary and no header, and exited 0: a user could not tell a typo from an
    empty HDU."""
    path = write_frame(tmp_path / "frames" / "mef.fits", rng, extensions=2)
    run(url, "init")
    run(url, "ingest", str(tmp_path / "frames"))
    for hdu in ("9", "-1", "3"):
        result = run(url, "show", str(path), "--hdu", hdu, code=2)
        assert result.stderr.splitlines() == [f"error: --hdu {hdu}: {path} has HDUs 0-2"]
        assert result.stdout == ""
    shown = run(url, "show", str(path), "--hdu", "2").stdout
    assert "HDU 2" in shown and "EXT2" in shown and "HDU 1" not in shown


def test_show_refuses_an_id_that_is_no_number(url):
    run(url, "init")
    for ref in ("abc", "1.5", "²"):
        result = run(url, "show", "--id", ref, code=2)
        assert result.stderr.splitlines() == [f"error: --id {ref}: an exposure id is a whole number, such as 3852"]
    assert "no exposure with exposure id 7 in the catalog" in run(url, "show", "--id", "7", code=1).stderr


def test_show_prints_an_invalid_card_alike_beside_an_unterminated_string(url, tmp_path):
    """A user's file holding AIRMASS = INDEF and NOTE = 'unterminated showed
    'AIRMASS  = = INDEF' and hdr['AIRMASS'] == 'INDEF' did not match it."""
    def header_file(name, *images):
        text = "".join(f"{i:<80}" for i in ("SIMPLE  =                    T", "BITPIX  =                    8",
                                            "NAXIS   =                    0", *images, "END"))
        (tmp_path / "frames" / name).write_bytes((text + " " * (-len(text) % 2880)).encode("ascii"))

    (tmp_path / "frames").mkdir()
    header_file("p1.fits", "AIRMASS = INDEF")
    header_file("p2.fits", "AIRMASS = INDEF", "NOTE    = 'unterminated")
    run(url, "init")
    run(url, "ingest", str(tmp_path / "frames"))
    for name in ("p1.fits", "p2.fits"):
        lines = run(url, "show", str(tmp_path / "frames" / name)).stdout.splitlines()
        assert "AIRMASS  = INDEF" in lines
    assert "NOTE     = 'unterminated" in lines
    matched = run(url, "query", "hdr['AIRMASS'] == 'INDEF'", "--columns", "path", "--format", "csv").stdout
    assert sorted(matched.splitlines()[1:]) == [str(tmp_path / "frames" / n) for n in ("p1.fits", "p2.fits")]


def _with_columns(group, prefix=()):
    """The commands and command groups (`obsarch runs`) that take --columns."""
    if any("--columns" in getattr(param, "opts", ()) for param in group.params):
        yield prefix
    for name, command in getattr(group, "commands", {}).items():
        yield from _with_columns(command, (*prefix, name))


def test_a_columns_list_that_cannot_be_read_is_a_usage_error_in_every_command(ingested):
    """`obsarch runs --columns bogus` exited 1 where `obsarch query` exits 2,
    as the README says of a --columns that cannot be read; `runs --columns ,` printed nothing."""
    commands = list(_with_columns(typer.main.get_command(app)))
    assert {" ".join(path) for path in commands} >= {"query", "runs", "offsets show"}
    for path in commands:
        for columns in ("bogus", ",", "frame_number,,"):
            result = run(ingested, *path, "--columns", columns, code=2)
            assert result.stdout == "" and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, path
    assert "error: --columns 'bogus': no column bogus; the columns are run, step" in run(ingested, "runs", "--columns", "bogus", code=2).stderr


def test_debug_shows_the_traceback_and_keeps_the_exit_status(tmp_path):
    """--debug printed the traceback by letting the exception out, and a
    usage error (2) exited 1."""
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    run(url, "init")
    usage, _ = imported_by(["--db", url, "--debug", "query", "band =="], tmp_path)
    assert usage.returncode == 2 and "Traceback" in usage.stderr and "SelectionError" in usage.stderr
    error, _ = imported_by(["--db", url, "--debug", "show", "99999"], tmp_path)
    assert error.returncode == 1 and "Traceback" in error.stderr and "NotFoundError" in error.stderr
    plain, _ = imported_by(["--db", url, "query", "band =="], tmp_path)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
