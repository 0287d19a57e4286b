"""A corpus of bad input, made here, on both backends: each kind gets one
line naming the problem, the documented exit status, no traceback, and the
catalog's earlier data unchanged. (Archives that try to escape: test_unpack.)"""

from __future__ import annotations

import gzip
import os
import uuid
from pathlib import Path

import pytest
from conftest import make_catalog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from typer.testing import CliRunner

from archive import db
from archive.exceptions import ObsarchError
from archive.query import parse
from cli.main import app

runner = CliRunner()
BLOCK = 2880


def card(keyword: str, value: str | None = None) -> str:
    text_ = keyword.ljust(8) if value is None else f"{keyword.ljust(8)}= {value}"
    return text_[:80].ljust(80)


def cont(text_: str, more: bool = True) -> str:
    """A CONTINUE card (no value indicator)."""
    return f"CONTINUE  '{text_}{'&' if more else ''}'".ljust(80)


def raw_fits(cards: list[str], data: bytes = b"", extension: list[str] | None = None) -> bytes:
    def unit(cs: list[str]) -> bytes:
        header = "".join(cs) + "END".ljust(80)
        header += " " * (-len(header) % BLOCK)
        return header.encode("latin-1")

    out = unit(cards) + data + b"\0" * (-len(data) % BLOCK)
    if extension is not None:
        out += unit(extension)
    return out


def primary(*extra: str, naxis: str = "0", bitpix: str = "16") -> list[str]:
    return [card("SIMPLE", "T"), card("BITPIX", bitpix), card("NAXIS", naxis), *extra]


IMAGE_EXT = [card("XTENSION", "'IMAGE   '"), card("BITPIX", "16"), card("NAXIS", "1"), card("NAXIS1", "-5"),
             card("PCOUNT", "0"), card("GCOUNT", "1")]

# kind -> (file bytes, exit status, a piece of the line printed, whether the file is stored as an exposure)
FITS_CASES = {
    "empty file": (b"", 3, "empty", False),
    "text, not FITS": (b"hello world\n" * 300, 3, "bad.fits:", False),
    "no END card": ("".join(primary()).ljust(BLOCK).encode(), 3, "bad.fits:", False),
    "BITPIX 4294967296": (raw_fits(primary(bitpix="4294967296")), 3, "BITPIX = 4294967296", False),
    "BITPIX 7": (raw_fits(primary(bitpix="7")), 3, "BITPIX = 7", False),
    "NAXIS -1": (raw_fits(primary(naxis="-1")), 3, "NAXIS = -1", False),
    "NAXIS 1000": (raw_fits(primary(naxis="1000")), 3, "NAXIS = 1000", False),
    "negative NAXIS1 in an extension": (raw_fits(primary(card("EXTEND", "T")), extension=IMAGE_EXT), 3, "NAXIS1 = -5", False),
    "huge NAXIS1": (raw_fits(primary(card("NAXIS1", "99999999999999999"), naxis="1")), 3, "outside 0 to", False),
    "negative GCOUNT": (raw_fits(primary(card("GCOUNT", "-3"))), 3, "GCOUNT = -3", False),
    "no BITPIX": (raw_fits([card("SIMPLE", "T"), card("NAXIS", "0")]), 3, "BITPIX", False),
    "corrupt gzip": (gzip.compress(raw_fits(primary()))[:60], 3, "bad.fits:", False),
    "truncated data": (raw_fits(primary(card("NAXIS1", "100"), card("NAXIS2", "100"), naxis="2"))[:BLOCK + 100], 3, "trunc", False),
    "MJD-OBS 12345678901.5": (raw_fits(primary(card("MJD-OBS", "12345678901.5"))), 0, "date_obs left empty", True),
    "TSTART 1.0E20": (raw_fits(primary(card("TSTART", "1.0E20"), card("TELESCOP", "'XMM     '"))), 0, "", True),
    "DATE-OBS year 1": (raw_fits(primary(card("DATE-OBS", "'0001-01-01T00:00:00'"))), 0, "", True),
    "DATE-OBS year 9999": (raw_fits(primary(card("DATE-OBS", "'9999-12-31T23:59:59.999'"))), 0, "", True),
    "DATE-OBS garbage": (raw_fits(primary(card("DATE-OBS", "'yesterday'"))), 0, "", True),
    "20-digit FRAMENUM": (raw_fits(primary(card("FRAMENUM", "12345678901234567890"))), 0,
                          "frame_number left empty, FRAMENUM='12345678901234567890' kept as written", True),
    "59-character FILTER": (raw_fits(primary(card("FILTER", "'" + "B" * 59 + "'"))), 0, "", True),
    "OBJECT from CONTINUE cards": (raw_fits(primary(
        card("OBJECT", "'" + "x" * 67 + "&'"), *[cont("y" * 66) for _ in range(60)], cont("end", more=False))), 0, "", True),
    "40 axes": (raw_fits(primary(*[card(f"NAXIS{i}", "1") for i in range(1, 41)], naxis="40"), b"\0\0"), 0, "", True),
    "EXPTIME as text": (raw_fits(primary(card("EXPTIME", "'long'"))), 0, "", True),
    "EXPTIME NaN": (raw_fits(primary(card("EXPTIME", "NAN"))), 0, "", True),
    "RA nonsense": (raw_fits(primary(card("RA", "'99:99:99'"), card("DEC", "'+999:00:00'"))), 0, "", True),
    "duplicated keywords": (raw_fits(primary(card("FILTER", "'V'"), card("FILTER", "'R'"))), 0, "", True),
    "non-ASCII bytes": (raw_fits(primary("OBSERVER= 'J\xf6rg'".ljust(80))), 0, "", True),
    "NUL bytes in a card": (raw_fits(primary("OBSERVER= 'a\0b'".ljust(80))), 0, "", True),
    "complex value": (raw_fits(primary(card("CPLX", "(1.0, 2.0)"))), 0, "", True),
    "long HIERARCH": (raw_fits(primary(("HIERARCH ESO " + "X " * 25 + "= 1").ljust(80))), 0, "", True),
    "keyword without value": (raw_fits(primary(card("EMPTY", ""))), 0, "", True),
    "integer beyond 64 bits": (raw_fits(primary(card("BIG", "123456789012345678901234567890"))), 0, "", True),
}

# an unreadable selection is a usage error (2)
SELECTIONS = {
    "300 nested parentheses": ("(" * 300 + "band == 'V'" + ")" * 300, 2, "nested more than 100 deep"),
    "300 nots": ("not " * 300 + "band == 'V'", 2, "nested more than 100 deep"),
    "integer beyond 64 bits": ("frame_number == 123456789012345678901234567890", 2, "does not fit in 64 bits"),
    "NUL byte": ("band == 'V\0'", 2, "NUL byte"),
    "reversed glob range": ("object glob '[z-a]*'", 2, "no valid glob"),
    "unterminated string": ("band == 'V", 2, "selection"),
    "unknown name": ("bnd == 'V'", 2, "unknown name 'bnd'"),
    "empty in list": ("band in ()", 2, "selection"),
    "unterminated hdr": ("hdr['FILTER == 'V'", 2, "selection"),
    "invalid UTF-8 argument": ("band == '\udcff'", 2, "not valid UTF-8 at column 10 (near \"\\xff'\")"),  # the byte, as \xff
    "2,000-term or": (" or ".join(f"exptime == {i}" for i in range(2000)), 0, ""),
    "1,000 frame ranges": (",".join(f"{i}-{i + 1}" for i in range(0, 3000, 3)), 0, ""),
    "100,000-value in": ("frame_number in (" + ",".join(map(str, range(100_000))) + ")", 0, ""),
    "100,000 header values": ("hdr['OBJECT'] in (" + ",".join(f"'{i}'" for i in range(100_000)) + ")", 0, ""),
}

SQL_BOTH = {
    "delete": ("delete from files", "is read-only"),
    "two statements": ("select 1; delete from files", "one statement at a time"),
    "NUL byte": ("select 'a\0b'", "NUL byte"),
    "invalid UTF-8": ("select '\udcff'", "not valid UTF-8"),
}
SQL_SQLITE = {
    "VACUUM INTO": ("VACUUM INTO '{tmp}/copy.db'", "is read-only"),
    "ATTACH": ("ATTACH '{tmp}/other.db' AS other", "is read-only"),
    "writing pragma": ("PRAGMA journal_mode=DELETE", "is read-only"),
    "load_extension": ("select load_extension('{tmp}/x')", "is read-only"),
    # no query: SQLite ran them and exited 0 with nothing said, where PostgreSQL refuses them (a user trial)
    "BEGIN": ("begin immediate", "it runs one query (SELECT, WITH, VALUES or a PRAGMA that reads), not BEGIN"),
    "only comments": ("-- a note", "it runs one query (SELECT, WITH, VALUES or a PRAGMA that reads), not only comments"),
}
SQL_POSTGRES = {
    "COPY TO PROGRAM": ("COPY (select 1) TO PROGRAM 'touch {tmp}/pwned'", "is read-only"),
    "COPY TO a server file": ("COPY files TO '{tmp}/files.csv'", "is read-only"),
    "pg_read_file": ("select pg_read_file('/etc/hostname')", "is read-only"),
    "pg_terminate_backend": ("select pg_terminate_backend(pid) from pg_stat_activity where pid <> pg_backend_pid()", "is read-only"),
    "set_config role": ("select set_config('role', 'postgres', true)", "refuses set_config"),
    # a set_config put together at run time, inside a function that runs SQL text (found by a team trial)
    "query_to_xml": ("select query_to_xml(format('select set_%s(''role'',''postgres'',true), pg_read_file(''/etc/hostname'')', "
                     "'config'), true, false, '')", "refuses query_to_xml()"),
    "ts_stat": ("select * from ts_stat(format('select set_%s(''role'',''postgres'',true)::tsvector', 'config'))",
                "refuses ts_stat()"),
    "DO block": ("DO $$ BEGIN RESET ROLE; END $$", "is read-only"),
    "lo_export": ("select lo_export(1, '{tmp}/lo')", "is read-only"),
}


@pytest.fixture
def stocked(url, tmp_path):
    """A catalog holding two good frames; returns (url, snapshot function)."""
    from factories import write_frame

    make_catalog(url)
    for i in range(2):
        write_frame(tmp_path / "good" / f"g{i}.fits", header={"FRAMENUM": 100 + i})
    result = runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "good")])
    assert result.exit_code == 0, result.stderr

    def snapshot():
        engine = db.make_engine(url)
        with engine.connect() as conn:
            rows = conn.execute(text(
                "select f.relpath, f.status, e.frame_number, (select count(*) from header_cards c where c.file_id = f.id) "
                "from files f join exposures e on e.file_id = f.id where f.relpath like 'g%' order by f.relpath")).all()
        engine.dispose()
        return [tuple(r) for r in rows]

    before = snapshot()
    assert len(before) == 2
    return url, snapshot, before


def one_line(result, code: int, piece: str) -> None:
    output = result.stderr + result.stdout
    assert result.exit_code == code, output
    assert "Traceback" not in output and not isinstance(result.exception, Exception) or result.exit_code in (0, 1, 2, 3)
    if piece:
        lines = [line for line in result.stderr.splitlines() if piece in line]
        assert lines, result.stderr


@pytest.mark.parametrize("kind", list(FITS_CASES))
def test_bad_fits_costs_only_itself(stocked, tmp_path, kind):
    url, snapshot, before = stocked
    data, code, piece, stored = FITS_CASES[kind]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bad.fits").write_bytes(data)
    write_good = tmp_path / "bad" / "neighbour.fits"
    from factories import write_frame

    write_frame(write_good, header={"FRAMENUM": 555})
    result = runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "bad")])
    one_line(result, code, piece)
    if code == 3:
        assert result.stderr.strip().splitlines()[-1].startswith("1 file failed, the others were stored")
        # again: the neighbour unchanged, nothing stored, and said so (was "the others were stored")
        again = runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "bad")])
        assert again.exit_code == 3
        assert again.stderr.strip().splitlines()[-1] == ("1 file failed and no file was stored; the unchanged file stays as "
                                                         "stored; see `obsarch errors`")
    assert snapshot() == before
    engine = db.make_engine(url)
    with engine.connect() as conn:
        neighbour = conn.execute(text("select count(*) from exposures where frame_number = 555")).scalar()
        bad = conn.execute(text("select count(*) from files f join exposures e on e.file_id = f.id where relpath = 'bad.fits'")).scalar()
    engine.dispose()
    assert neighbour == 1 and bad == int(stored)
    again = runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "bad")])  # a re-run does not stop at the same place
    assert again.exit_code == code and "0 new" in again.stdout


def test_a_file_the_catalog_refuses_costs_only_itself(stocked, backend, tmp_path):
    """A 6,000-character INSTRUME is legal FITS; PostgreSQL's index on the
    instrument column refuses it. The batch is then stored file by file."""
    url, snapshot, before = stocked
    import hashlib

    from factories import write_frame

    noise = [hashlib.sha256(str(i).encode()).hexdigest()[:66] for i in range(90)]  # incompressible
    long = [card("INSTRUME", "'" + "I" * 67 + "&'"), *[cont(n) for n in noise], cont("end", more=False)]
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "long.fits").write_bytes(raw_fits(primary(*long)))
    for i in range(3):
        write_frame(tmp_path / "mixed" / f"n{i}.fits", header={"FRAMENUM": 700 + i})
    result = runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "mixed")])
    refused = backend == "postgresql"
    assert result.exit_code == (3 if refused else 0), result.stderr
    assert ("long.fits: the catalog refused it" in result.stderr) == refused
    assert (f"{3 + (not refused)} new" in result.stdout) and (f"{int(refused)} failed" in result.stdout)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(text("select count(*) from exposures where frame_number between 700 and 702")).scalar()
        status = conn.execute(text("select status from files where relpath = 'long.fits'")).scalar()
    engine.dispose()
    assert stored == 3 and status == ("unreadable" if refused else "present")
    assert snapshot() == before


def _fs_case(kind: str, where: Path) -> None:
    where.mkdir()
    if kind == "FIFO named .fits":
        os.mkfifo(where / "pipe.fits")
    elif kind == "broken symlink":
        (where / "gone.fits").symlink_to(where / "nowhere.fits")
    elif kind == "symlink loop":
        (where / "loop").symlink_to(where)
    elif kind == "invalid UTF-8 name":
        open(os.fsencode(where) + b"/bad\xff.fits", "wb").close()
    elif kind == "newline in a name":
        (where / "two\nlines.fits").write_bytes(b"")
    elif kind == "1,200 levels deep":
        deep = where
        for _ in range(1200):
            deep = deep / "d"
            try:
                deep.mkdir()
            except OSError:  # past PATH_MAX: what is there is deep enough
                break


FS_CASES = {"FIFO named .fits": "not a regular file", "broken symlink": "broken symbolic link",
            "invalid UTF-8 name": "not valid UTF-8", "newline in a name": "two\\nlines.fits",
            "symlink loop": "", "1,200 levels deep": ""}


@pytest.mark.parametrize("kind", list(FS_CASES))
def test_file_system_oddities(stocked, tmp_path, kind):
    url, snapshot, before = stocked
    _fs_case(kind, tmp_path / "odd")
    result = runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "odd")])
    piece = FS_CASES[kind]
    if kind == "1,200 levels deep":  # pytest's clean-up recurses: take the tree down from the bottom
        levels = [tmp_path / "odd"]
        while (levels[-1] / "d").is_dir():
            levels.append(levels[-1] / "d")
        for level in reversed(levels[1:]):
            level.rmdir()
    assert result.exit_code in (0, 1) and "Traceback" not in result.stderr
    if piece and kind != "newline in a name":  # the odd file alone failed: nothing to store is an error, not partial
        assert result.exit_code == 1 and piece in result.stderr, result.stderr
    assert snapshot() == before


@pytest.mark.parametrize("when", ["at once", "half-way"])
def test_a_directory_that_cannot_be_listed_costs_only_itself(stocked, tmp_path, monkeypatch, when):
    """Root reads any directory, so the refusal is made: os.scandir of
    'locked' fails at once, or after its first entry (a disk error half-way);
    the files listed before the error are stored, the rest is said."""
    from factories import write_frame

    from archive.catalog import Catalog

    url, snapshot, before = stocked
    write_frame(tmp_path / "night" / "open" / "a.fits", header={"FRAMENUM": 7})
    for name in ("b.fits", "c.fits"):
        write_frame(tmp_path / "night" / "locked" / name, header={"FRAMENUM": 8})
    real_scandir = os.scandir

    class HalfWay:
        def __init__(self, path):
            self.listing, self.given = real_scandir(path), 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.listing.close()

        def __iter__(self):
            return self

        def __next__(self):
            if self.given:
                raise OSError(5, "Input/output error")
            self.given += 1
            return next(self.listing)

    def scandir(path="."):
        if str(path).endswith("locked"):
            if when == "at once":
                raise PermissionError(13, "Permission denied")
            return HalfWay(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "night")])
    reason = "Permission denied" if when == "at once" else "Input/output error"
    one_line(result, 3, f"locked: cannot list directory: {reason}")
    monkeypatch.undo()
    assert snapshot() == before
    _, rows = Catalog(url).rows("relpath like 'open/%' or relpath like 'locked/%'", columns="relpath")
    stored = sorted(r[0] for r in rows)
    if when == "at once":
        assert stored == ["open/a.fits"]
    else:  # the one entry listed before the error (in the file system's order)
        assert len(stored) == 2 and stored[0] in ("locked/b.fits", "locked/c.fits") and stored[1] == "open/a.fits"


def test_ingest_of_a_missing_path(stocked):
    url, snapshot, before = stocked
    one_line(runner.invoke(app, ["--db", url, "ingest", "/no/such/dir"]), 1, "no such file or directory")
    # a name whose bytes are not UTF-8 (argv keeps them as surrogates) shows the byte
    one_line(runner.invoke(app, ["--db", url, "ingest", "/no/such/x\udcff"]), 1, "error: /no/such/x\\xff: no such file or directory")
    assert snapshot() == before


@pytest.mark.parametrize("kind", list(SELECTIONS))
def test_hostile_selections(stocked, kind):
    url, snapshot, before = stocked
    selection, code, piece = SELECTIONS[kind]
    result = runner.invoke(app, ["--db", url, "query", selection, "--format", "csv"])
    one_line(result, code, piece)
    assert snapshot() == before


@pytest.mark.parametrize("args, code, piece", [
    (["query", "--limit", "99999999999999999999999"], 2, ""),
    (["query", "--timeout", "-1"], 2, ""),
    (["show", "99999999999999999999999"], 1, ""),
])
def test_hostile_options(stocked, args, code, piece):
    url, snapshot, before = stocked
    one_line(runner.invoke(app, ["--db", url, *args]), code, piece)
    assert snapshot() == before


def _sql_cases(backend: str) -> dict:
    return {**SQL_BOTH, **(SQL_SQLITE if backend == "sqlite" else SQL_POSTGRES)}


@pytest.mark.parametrize("kind", sorted({*SQL_BOTH, *SQL_SQLITE, *SQL_POSTGRES}))
def test_sql_cannot_escape(stocked, backend, tmp_path, kind):
    url, snapshot, before = stocked
    cases = _sql_cases(backend)
    if kind not in cases:
        pytest.skip(f"{kind}: a {('PostgreSQL' if backend == 'sqlite' else 'SQLite')} statement")
    statement, piece = cases[kind]
    result = runner.invoke(app, ["--db", url, "sql", statement.format(tmp=tmp_path)])
    one_line(result, 1, piece)
    assert not any(p.name in ("pwned", "files.csv", "copy.db", "other.db", "lo") for p in tmp_path.iterdir())
    assert snapshot() == before


def test_sql_timeout_is_cancelled_on_the_server(stocked, backend):
    url, snapshot, before = stocked
    slow = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c" if backend == "sqlite"
            else "select pg_sleep(30)")
    tag = f"obsarch-test-{uuid.uuid4().hex[:8]}"
    result = runner.invoke(app, ["--db", tagged(url, tag, backend), "sql", "--timeout", "1", slow])
    one_line(result, 1, "timeout and was cancelled on the server" if backend == "postgresql" else "timeout and was cancelled (")
    if backend == "postgresql":
        engine = db.make_engine(url)
        assert active(engine, tag) == 0
        engine.dispose()


def tagged(url: str, tag: str, backend: str) -> str:
    """``url`` whose PostgreSQL connections carry ``tag`` as their application_name: the statement
    pg_stat_activity shows is the server-side cursor's FETCH, not the user's text."""
    return f"{url}&application_name={tag}" if backend == "postgresql" else url


def active(engine, tag: str) -> int:
    """How many statements connections tagged ``tag`` are running (PostgreSQL)."""
    with engine.connect() as conn:
        return conn.execute(text("select count(*) from pg_stat_activity where application_name = :tag and state = 'active'"),
                            {"tag": tag}).scalar()


def test_a_killed_sql_client_leaves_nothing_running(stocked, backend, tmp_path):
    if backend != "postgresql":
        pytest.skip("SQLite runs in the client's own process")
    import signal
    import subprocess
    import sys
    import time

    url, _, _ = stocked
    tag = f"obsarch-test-{uuid.uuid4().hex}"  # not the temporary directory's name: another run's may be sleeping still
    # its own timeout well past the wait: on a loaded CI machine the client took more than 30 s to start once
    errors = tmp_path / "stderr"
    with errors.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", "from cli.main import run; run()", "--db", tagged(url, tag, backend),
                                    "sql", "--timeout", "600", "select pg_sleep(600)"], env=os.environ.copy(),
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    engine = db.make_engine(url)

    def running() -> int:
        return active(engine, tag)

    deadline = time.monotonic() + 120
    while running() == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running() == 1, (process.poll(), errors.read_text())
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running() == 0
    engine.dispose()


def test_query_timeout(stocked, backend):
    url, _, _ = stocked
    from archive.catalog import Catalog
    from archive.exceptions import QueryTimeout

    catalog = Catalog(url)
    with catalog.engine.connect() as conn, pytest.raises(QueryTimeout, match="0.2 s timeout"), db.statement_timeout(conn, 0.2):
        slow = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c" if backend == "sqlite"
                else "select pg_sleep(5)")
        conn.execute(text(slow)).all()


def test_an_unexpected_error_is_one_line_and_debug_shows_it(stocked, monkeypatch):
    url, _, _ = stocked
    from archive import catalog

    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(catalog.Catalog, "rows", broken)  # what `obsarch query` calls
    result = runner.invoke(app, ["--db", url, "query", "band == 'V'"])
    assert result.exit_code == 1 and result.stderr.strip() == "error: unexpected KeyError: 'boom' (run with --debug for the traceback)"
    debug = runner.invoke(app, ["--db", url, "--debug", "query", "band == 'V'"])
    assert isinstance(debug.exception, KeyError)


# -- property-based: the parsers raise nothing but the project's own errors -------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(list("()'\"[]!=<>-,.*? \\\0\udcff") + ["and", "or", "not", "in", "band", "hdr", "glob",
                                                                          "1", "99999999999999999999", "e9"]),
                max_size=40).map(" ".join) | st.text(max_size=60))
def test_the_selection_parser_raises_only_its_own_errors(selection):
    try:
        parse(selection)
    except ObsarchError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=80, max_size=80) | st.sampled_from([
    card("SIMPLE", "T").encode(), card("BITPIX", "-32").encode(), card("NAXIS", "2").encode(), card("NAXIS1", "-1").encode(),
    b"CONTINUE  '&'".ljust(80), b"HIERARCH ESO A = 'x'".ljust(80), card("X", "'unterminated").encode(),
    card("Y", "(1,").encode(), card("Z", "1.0D99999").encode()]), max_size=12))
def test_the_card_parser_raises_only_its_own_errors(tmp_path_factory, cards):
    from archive.headers import read_headers

    path = tmp_path_factory.mktemp("fuzz") / "f.fits"
    header = b"".join(cards) + b"END".ljust(80)
    path.write_bytes(header + b" " * (-len(header) % BLOCK))
    try:
        read_headers(path)
    except ObsarchError:
        pass


# -- overlapping roots, concurrency, kills ---------------------------------------------------


def _tree(base: Path) -> Path:
    from factories import write_frame

    for sub, n in (("a", 3), ("b", 3), ("a/deep", 2)):
        for i in range(n):
            write_frame(base / sub / f"{sub.replace('/', '_')}{i}.fits", header={"FRAMENUM": 1000 + 10 * len(sub) + i + n})
    return base


def _file_rows(url: str) -> list[tuple]:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("select r.path || '/' || f.relpath, count(*) from files f join roots r on r.id = f.root_id "
                                 "group by r.path || '/' || f.relpath")).all()
    engine.dispose()
    return sorted(tuple(r) for r in rows)


@pytest.mark.parametrize("order", ["child first", "parent first"])
def test_overlapping_roots_keep_one_row_per_file(url, tmp_path, order):
    tree = _tree(tmp_path / "tree")
    runner.invoke(app, ["--db", url, "init"])
    paths = [tree / "a", tree] if order == "child first" else [tree, tree / "a"]
    for path in paths:
        result = runner.invoke(app, ["--db", url, "ingest", str(path)])
        assert result.exit_code == 0, result.stderr
    rows = _file_rows(url)
    assert len(rows) == 8 and all(n == 1 for _, n in rows)
    again = runner.invoke(app, ["--db", url, "ingest", str(tree)])
    assert "0 new" in again.stdout and "8 unchanged" in again.stdout and "0 missing" in again.stdout
    (tree / "a" / "a0.fits").unlink()
    gone = runner.invoke(app, ["--db", url, "ingest", str(tree)])
    assert "1 missing" in gone.stdout and len(_file_rows(url)) == 8


def test_four_concurrent_ingests_of_overlapping_trees(url, backend, tmp_path):
    if backend != "postgresql":
        pytest.skip("SQLite writers queue on one lock; the race was PostgreSQL's")
    import subprocess
    import sys

    tree = _tree(tmp_path / "tree")
    runner.invoke(app, ["--db", url, "init"])
    env = {**os.environ, "OBSARCH_BULK_MIN_FILES": "1"}  # every ingest takes the bulk path (index DDL) too
    commands = [[sys.executable, "-c", "from cli.main import run; run()", "--db", url, "ingest", str(path), "--workers", "1"]
                for path in (tree, tree / "a", tree, tree / "b")]
    processes = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], outputs
    rows = _file_rows(url)
    assert len(rows) == 8 and all(n == 1 for _, n in rows), rows
    engine = db.make_engine(url)
    with engine.connect() as conn:
        exposures = conn.execute(text("select count(*) from exposures")).scalar()
        indexes = conn.execute(text("select count(*) from pg_indexes where tablename = 'header_cards' "
                                    "and schemaname = current_schema()")).scalar()
        cards = conn.execute(text("select count(*), count(distinct (file_id, hdu_index, position)) from header_cards")).one()
    engine.dispose()
    assert exposures == 8 and indexes >= 3 and cards[0] == cards[1]


def test_a_killed_ingest_leaves_a_consistent_catalog_and_no_scratch(url, backend, tmp_path):
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from factories import write_frame

    for i in range(400):
        write_frame(tmp_path / "many" / f"f{i:03d}.fits", header={"FRAMENUM": 5000 + i}, shape=(4, 4))
    runner.invoke(app, ["--db", url, "init"])
    env = {**os.environ, "OBSARCH_INGEST_BATCH": "10"}
    process = subprocess.Popen([sys.executable, "-c", "from cli.main import run; run()", "--db", url, "ingest",
                                str(tmp_path / "many"), "--workers", "2"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = db.make_engine(url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(text("select count(*) from files")).scalar() >= 20:
                break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with engine.connect() as conn:  # each file whole or absent: every stored exposure has its cards
        orphans = conn.execute(text("select count(*) from exposures e where not exists "
                                    "(select 1 from header_cards c where c.file_id = e.file_id)")).scalar()
        stored = conn.execute(text("select count(*) from files")).scalar()
    assert orphans == 0
    result = runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "many")])
    assert result.exit_code == 0, result.stderr
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from exposures")).scalar() == 400
        runs = conn.execute(text("select state, n_new, n_failed, error from ingest_runs order by id")).all()
    engine.dispose()
    assert [r.state for r in runs] == ["interrupted", "done"]
    # the killed run says what its committed chunks stored (it said 0 new)
    assert (runs[0].n_new, runs[0].n_failed) == (stored, 0) and stored >= 20
    assert runs[0].error == f"its process ended without finishing it (killed?); {stored} files were stored before"
    assert runs[1].n_new == 400 - stored
    assert not list(Path(tempfile.gettempdir()).glob(f"obsarch-ingest-{process.pid}-*"))


def test_an_unreachable_archive_is_one_line_and_kept_in_the_queue(stocked, tmp_path):
    url, snapshot, before = stocked
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "offline.toml"
    dead = f"http://127.0.0.1:{port}"
    config.write_text(f'[archives]\nheasarc_vo = "{dead}/tap"\neso_query = "{dead}/eso"\nmast = "{dead}"\nsesame = "{dead}/s"\n')

    def run(*args):
        return runner.invoke(app, ["--db", url, "--config", str(config), *args])

    one_line(run("archive", "search", "heasarc", "--mission", "xmm", "--target", "10.0 20.0"), 1,
             "heasarc: the archive cannot be reached")
    one_line(run("archive", "search", "mast", "--mission", "hst", "--target", "10.0 20.0"), 1, "mast: the archive cannot be reached")
    one_line(run("fetch", "eso", "--instrument", "MUSE", "--target", "NGC 6397"), 1, "eso: the archive cannot be reached")
    fetched = run("fetch", "xmm", "0123456789", "--dest", str(tmp_path / "d"))
    one_line(fetched, 1, "heasarc: the archive cannot be reached")
    assert len(fetched.stderr.splitlines()) == 1, fetched.stderr  # no blank line left by a progress bar off a terminal
    table = run("downloads", "--format", "csv").stdout
    assert "0123456789" in table and "NGC 6397" in table and table.count("failed") == 2
    retried = run("fetch", "--retry-failed")
    # every retry failed: nothing was downloaded, so an error (1), not partial (3)
    assert retried.exit_code == 1 and "cannot be reached" in retried.stderr
    assert retried.stderr.splitlines()[-1] == ("2 of 2 files failed: see `obsarch downloads`; "
                                               "`obsarch fetch --retry-failed` tries them again")
    assert snapshot() == before


@pytest.fixture
def pg_admin(backend):
    """(make_user, make_catalog, run_as) on PostgreSQL: login roles and catalogs in schemas of their own, all
    dropped after the test (with the catalogs' reader roles)."""
    if backend != "postgresql":
        pytest.skip("roles are PostgreSQL's")
    from conftest import PG_URL, drop_schema
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    admin, users, schemas = create_engine(PG_URL), [], []

    def make_user(*grants: str) -> str:
        user = f"obsarch_test_{uuid.uuid4().hex[:8]}"
        with admin.begin() as conn:
            conn.execute(text(f"CREATE ROLE {user} LOGIN"))
            for grant in grants:
                conn.execute(text(grant.format(user=user)))
        users.append(user)
        return user

    def make_catalog(owner: str | None = None) -> tuple[str, str]:
        """A catalog in a new schema, made by ``owner`` (whose schema it is) or the admin."""
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}" + (f" AUTHORIZATION {owner}" if owner else "")))
        schemas.append(schema)
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"
        result = run_as(owner, url, "init") if owner else runner.invoke(app, ["--db", url, "init"])
        assert result.exit_code == 0, result.stderr
        return url, schema

    def run_as(user: str, url: str, *args: str):
        return runner.invoke(app, ["--db", make_url(url).set(username=user).render_as_string(hide_password=False), *args])

    yield make_user, make_catalog, run_as
    for schema in schemas:
        drop_schema(admin, schema)
    with admin.begin() as conn:
        for user in users:
            conn.execute(text(f"DROP OWNED BY {user}"))
            conn.execute(text(f"DROP ROLE {user}"))
    admin.dispose()


def test_sql_as_a_user_who_cannot_set_the_role(stocked, pg_admin):
    from conftest import reader_of

    url, _, _ = stocked
    make_user, _, run_as = pg_admin
    schema = url.rsplit("%3D", 1)[1]
    user = make_user(f"GRANT USAGE ON SCHEMA {schema} TO {{user}}", f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {{user}}")
    result = run_as(user, url, "sql", "select count(*) from files")
    one_line(result, 1, "cannot SET ROLE to it")
    role = reader_of(url)
    assert f"reads as {role}, the reader role of this catalog (schema {schema})" in result.stderr
    assert result.stderr.rstrip().endswith(f"an administrator runs: GRANT {role} TO {user}")


def test_a_user_granted_one_catalogs_reader_cannot_read_another_catalog(stocked, pg_admin):
    """One role for the whole server (obsarch_reader) let a user granted it for one catalog read every
    team's catalog through `obsarch sql` (found by a team trial): now each catalog has its own."""
    from conftest import reader_of

    url_a, _, _ = stocked
    make_user, make_catalog, run_as = pg_admin
    schema_a = url_a.rsplit("%3D", 1)[1]
    url_b, schema_b = make_catalog()
    reader_a, reader_b = reader_of(url_a), reader_of(url_b)
    assert reader_a != reader_b
    bob = make_user(f"GRANT {reader_a} TO {{user}}")

    result = run_as(bob, url_a, "sql", "select count(*) as n from files", "--format", "csv")
    assert (result.exit_code, result.stdout) == (0, "n\n2\n"), result.stderr
    one_line(run_as(bob, url_a, "sql", f"select count(*) from {schema_b}.files"), 1,
             f"reads as {reader_a}, which may read this catalog's schema {schema_a} only, not {schema_b}: "
             f"permission denied for schema {schema_b}")
    one_line(run_as(bob, url_b, "sql", "select count(*) from files"), 1, f"the user {bob} may not use schema {schema_b}")
    # past the catalog check (a grant of the schema and its version table), still not past B's reader role
    carol = make_user(f"GRANT {reader_a} TO {{user}}", f"GRANT USAGE ON SCHEMA {schema_b} TO {{user}}",
                      f"GRANT SELECT ON {schema_b}.alembic_version TO {{user}}")
    result = run_as(carol, url_b, "sql", "select count(*) from files")
    one_line(result, 1, f"an administrator runs: GRANT {reader_b} TO {carol}")


@pytest.mark.parametrize("catalogs", [1, 2])
def test_the_shared_reader_role_reads_no_catalog(stocked, pg_admin, catalogs):
    """The advice obsarch gave before (GRANT obsarch_reader TO bob) opens no catalog now."""
    url, _, _ = stocked
    _, make_catalog, _ = pg_admin
    schemas = [url.rsplit("%3D", 1)[1]] + [make_catalog()[1] for _ in range(catalogs - 1)]
    engine = db.make_engine(url)
    with engine.connect() as conn:
        for schema in schemas:
            assert not conn.execute(text("select has_schema_privilege('obsarch_reader', :s, 'USAGE')"), {"s": schema}).scalar()
            assert not conn.execute(text(
                "select count(*) from pg_tables where schemaname = :s and has_table_privilege('obsarch_reader', "
                "format('%I.%I', schemaname, tablename), 'SELECT')"), {"s": schema}).scalar()
    engine.dispose()


def test_a_table_another_member_makes_later_is_read_once_they_upgrade(stocked, pg_admin):
    """Default privileges apply only to the tables of the user who set them: a table another member
    makes later is refused by `obsarch sql` with what to do, and read once that member upgrades;
    from then on their new tables are read at once."""
    url, _, _ = stocked
    make_user, _, run_as = pg_admin
    from conftest import reader_of

    schema, reader = url.rsplit("%3D", 1)[1], reader_of(url)
    carol = make_user(f"GRANT {reader} TO {{user}}", f"GRANT CREATE ON SCHEMA {schema} TO {{user}}")
    admin = db.make_engine(make_url_as(url, carol))
    with admin.begin() as conn:
        conn.execute(text("create table notes (x integer)"))
        conn.execute(text("insert into notes values (7)"))
    result = runner.invoke(app, ["--db", url, "sql", "select x from notes"])
    one_line(result, 1, f"reads as {reader}, which may not read the table notes of this catalog: its owner {carol} made it "
                        f"without giving it to the reader; {carol} runs `obsarch db upgrade`, "
                        f"or GRANT SELECT ON {schema}.notes TO {reader}")
    assert run_as(carol, url, "db", "upgrade").exit_code == 0
    assert run_as(carol, url, "sql", "select x from notes", "--format", "csv").stdout == "x\n7\n"
    with admin.begin() as conn:
        conn.execute(text("create table more_notes (y integer)"))
    admin.dispose()
    assert runner.invoke(app, ["--db", url, "sql", "select y from more_notes", "--format", "csv"]).stdout == "y\n"


def test_a_catalog_made_by_a_user_who_cannot_create_roles_gets_its_reader_from_an_admins_upgrade(pg_admin):
    """Its upgrade cannot make the reader role: `obsarch sql` says who must do what, and an
    administrator's `obsarch db upgrade` (at head, nothing to migrate) makes it and gives it the tables."""
    from conftest import PG_URL, reader_of

    make_user, make_catalog, run_as = pg_admin
    dana = make_user()
    url, schema = make_catalog(owner=dana)
    role = reader_of(url)
    one_line(run_as(dana, url, "sql", "select count(*) from files"), 1,
             f"reads as {role}, the reader role of this catalog (schema {schema}), which does not exist: the user who "
             f"upgraded the catalog may not create roles; one who may runs `obsarch db upgrade`, then GRANT {role} TO {dana}")
    assert runner.invoke(app, ["--db", url, "db", "upgrade"]).exit_code == 0
    admin = db.make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"GRANT {role} TO {dana}"))
    admin.dispose()
    result = run_as(dana, url, "sql", "select count(*) as n from files", "--format", "csv")
    assert (result.exit_code, result.stdout) == (0, "n\n0\n"), result.stderr


def test_a_reader_not_given_its_schema_says_so_and_an_upgrade_gives_it(stocked, pg_admin):
    """Without USAGE of the catalog's schema PostgreSQL passes the schema over: it was
    "relation files does not exist"."""
    from conftest import reader_of

    url, _, _ = stocked
    schema, reader = url.rsplit("%3D", 1)[1], reader_of(url)
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"REVOKE USAGE ON SCHEMA {schema} FROM {reader}"))
    engine.dispose()
    one_line(runner.invoke(app, ["--db", url, "sql", "select count(*) from files"]), 1,
             f"reads as {reader}, which was not given this catalog's schema {schema}: its owner runs `obsarch db upgrade`, "
             f"or GRANT USAGE ON SCHEMA {schema} TO {reader}")
    assert runner.invoke(app, ["--db", url, "db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["--db", url, "sql", "select count(*) as n from files", "--format", "csv"]).stdout == "n\n2\n"


def test_promoted_keywords_are_read_by_the_reader(stocked, backend):
    url, _, _ = stocked
    assert runner.invoke(app, ["--db", url, "db", "promote", "FRAMENUM"]).exit_code == 0
    result = runner.invoke(app, ["--db", url, "sql", "select * from exposures", "--format", "csv"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3, result.stderr


def make_url_as(url: str, user: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(db.resolve_url(url)).set(username=user).render_as_string(hide_password=False)


def test_runs_of_dead_processes_are_marked_interrupted_at_the_next_ingest(stocked, tmp_path):
    import socket
    import subprocess
    import sys

    url, _, _ = stocked
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("insert into runs (step, params_json, params_hash, code_version, host, \"user\", pid, started_at, state) "
                          "values ('stack', '{}', 'x', 'x', :host, 'u', :pid, CURRENT_TIMESTAMP, 'running')"),
                     {"host": socket.gethostname(), "pid": pid})
        conn.execute(text("insert into ingest_runs (started_at, state, paths, host, \"user\", pid, code_version, n_new, "
                          "n_changed, n_unchanged, n_missing, n_failed) values (CURRENT_TIMESTAMP, 'running', '/x', :host, "
                          "'u', :pid, 'x', 0, 0, 0, 0, 0)"), {"host": socket.gethostname(), "pid": pid})
    (tmp_path / "scratch").mkdir()
    left = tmp_path / "scratch" / f"obsarch-ingest-{pid}-abc"
    left.mkdir()
    from archive.ingest import remove_dead_scratch

    assert remove_dead_scratch(str(tmp_path / "scratch")) == 1 and not left.exists()
    assert runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "good")]).exit_code == 0
    with engine.connect() as conn:
        assert conn.execute(text("select state from runs where pid = :pid"), {"pid": pid}).scalar() == "interrupted"
        assert conn.execute(text("select state from ingest_runs where pid = :pid"), {"pid": pid}).scalar() == "interrupted"
    engine.dispose()


@pytest.mark.parametrize("blank", ["", "   "])
@pytest.mark.parametrize("command", [
    ["flag", "set", "{}", "--grade", "bad"],
    ["group", "create", "ALL", "{}"],
    ["metrics", "set", "{}", "pileup=0.1"],
    ["regions", "attach", "{region}", "--to", "{}"],
])
def test_a_command_that_changes_exposures_refuses_an_empty_selection(stocked, tmp_path, command, blank):
    """An empty shell variable must not regrade, group or annotate every exposure."""
    url, _, _ = stocked
    region = tmp_path / "r.reg"
    region.write_text("image\ncircle(10,10,3)\n")
    args = [a.replace("{region}", str(region)).replace("{}", blank) if "{" in a else a for a in command]
    result = runner.invoke(app, ["--db", url, *args])
    name = " ".join(command[:2])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f'error: {name} needs frame numbers or a selection, and the one given is empty '
                                          '(for every exposure, say so: "id > 0")']
    engine = db.make_engine(url)
    with engine.connect() as conn:
        counts = [conn.execute(text(f"select count(*) from {table}")).scalar_one()
                  for table in ("flags", "groups", "named_metrics", "region_files")]
    engine.dispose()
    assert counts == [0, 0, 0, 0]


@pytest.mark.parametrize("args, code, line", [
    # integers beyond what a column holds find nothing (PostgreSQL refused the parameter: "unexpected DataError")
    (["query", "id == 9223372036854775807"], 0, "0 exposures"),
    (["query", "hdr[2147483648]['X'] == 1"], 0, "note: no file has a value for header keyword X"),
    (["show", "--id", "9223372036854775807"], 1, "error: no exposure with exposure id 9223372036854775807 in the catalog"),
    (["show", "99999999999999999999"], 1, "error: no exposure with frame number 99999999999999999999 in the catalog"),
    (["runs", "show", "99999999999999999999"], 1,
     "error: no run 99999999999999999999 in the catalog (ingest runs are i1, i2...)"),
    (["flag", "set", "id == 9223372036854775807", "--grade", "bad"], 1,
     "error: no exposure matches 'id == 9223372036854775807'; nothing flagged"),
    # option values a command cannot take: usage errors (2), before anything runs
    (["query", "id > 0", "--timeout", "1e999"], 2,
     "error: invalid value for '--timeout': inf is no number of seconds; give seconds, or 0 for no limit (see "),
    # past PostgreSQL's statement_timeout (2**31 - 1 ms): was 'unexpected InvalidParameterValue', exit 1
    (["sql", "select 1", "--timeout", "3000000"], 2,
     "error: invalid value for '--timeout': 3e+06 s is beyond the longest timeout, 2147483 s (24 days); 0 for no limit (see "),
    (["group", "pointing", "--method", "dbscan", "--radius", "1e999deg"], 2, "error: the angle '1e999deg' is not between 0 and 180 degrees"),
    (["group", "pointing", "--method", "dbscan", "--radius", "abc"], 2,
     "error: cannot read the angle 'abc': give e.g. 30arcsec, 2arcmin or 0.5deg"),
    (["group", "pointing", "--method", "kmeans", "--k", "0"], 2, "error: kmeans needs --k, the number of clusters (1 or more)"),
    (["group", "pointing", "--method", "optics", "--radius", "1deg"], 2, "error: unknown pointing method 'optics'; use kmeans or dbscan"),
    (["group", "create", " ", "100"], 2, "error: a group needs a name that is not blank"),
    (["group", "create", "x" * 130, "100"], 2,
     f"error: the group name {'x' * 40!r}... is 130 characters, at most 128: give a shorter --name, or fewer keys"),
    (["group", "positions", "--radius", "0px"], 2, "error: --radius '0px': give a distance in pixels, e.g. 20px"),
    (["offsets", "compute", "100", "--method", "foo"], 2, "error: unknown method 'foo'; use stars, centroid or wcs"),
    (["offsets", "compute", "100", "--method", "centroid", "--box", "1:2"], 2,
     "error: --box '1:2': give x1:x2,y1:y2 in 1-based pixels, e.g. 437:485,1171:1204"),
    (["offsets", "compute", "100", "--method", "centroid"], 2, "error: the centroid method needs --box x1:x2,y1:y2 around one star"),
    (["offsets", "compute"], 2, "error: say which exposures: a selection, --group NAME or --groups PATTERN"),
    (["flag", "set", "100", "--grade", "Bad"], 2, "error: unknown grade 'Bad'; use one of great, ok, marginal, bad"),
    (["flag", "set", "100", "--grade", "ok", "--by", "caf\udce9"], 2,
     "error: 'caf\\xe9' is not valid UTF-8 text: names, notes and values are stored as UTF-8"),
    (["group", "create", "\udcff", "100"], 2, "error: '\\xff' is not valid UTF-8 text: names, notes and values are stored as UTF-8"),
    (["calib", "bias", "--memory", "abc"], 2, "error: --memory 'abc': give a size such as 2GB or 500MB"),
    (["calib", "bias", "--method", "nosuch"], 2, "error: --method 'nosuch': use median, mean, sigclip, sigclip-median"),
    (["calib", "bias", "--nearest", "0", "--to", "2017-08-16"], 2, "error: --nearest 0: give how many frames, 1 or more"),
    (["calib", "bias", "--nearest", "2"], 2, "error: --nearest needs --to: a date, a time, an MJD, a frame number or a selection"),
    # archive options checked before any request leaves (they reached the network unchecked)
    (["fetch", "xmm", "0123456789", "--parallel", "-1"], 2, "error: invalid value for '--parallel': -1 is below 1 (see "),
    (["fetch", "xmm", "0123456789", "--timeout", "inf"], 2,
     "error: invalid value for '--timeout': inf: give a number of seconds above 0 (see "),
    (["fetch", "eso", "--instrument", "MUSE", "--night", "2017-02-30"], 2,
     "error: invalid value for '--night': '2017-02-30' is no date written YYYY-MM-DD (see "),
    (["ingest", ""], 2, "error: ingest: an empty path names no file or directory (for this directory, say '.')"),
    (["ingest", "  "], 2, "error: ingest: an empty path names no file or directory (for this directory, say '.')"),
    (["run", "--each", "bogus", "100", "--", "true"], 2, "error: --each 'bogus': use exposure, obsid or group"),
])
def test_values_beyond_a_column_or_an_option_are_one_line(stocked, args, code, line):
    url, snapshot, before = stocked
    result = runner.invoke(app, ["--db", url, *args])
    assert result.exit_code == code, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last == line or line.endswith("(see ") and last.startswith(line)
    assert "unexpected" not in result.stderr and snapshot() == before
