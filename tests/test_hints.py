"""No silent empty answer, no count that disagrees with its list: a value
an X-ray name cannot hold is refused, a keyword no file has or compared
with the wrong kind of value is named when nothing matched, a frame
number shared by many exposures lists them all or says how many more, and
`obsarch runs` says when more runs exist than it shows. Both backends."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import typer
from astropy.io import fits
from conftest import make_catalog
from factories import obsarch, write_frame
from typer.testing import CliRunner

from archive.exceptions import SelectionError
from archive.query import Compiler, parse
from cli.main import app


@pytest.mark.parametrize("selection, message", [
    ("xray_kind == 'event'",
     "xray_kind is one of spectrum, events, lightcurve, response, arf, image, region, gti: not 'event'; did you mean 'events'?"),
    ("xray_role == 'bkg'", "xray_role is one of source, background: not 'bkg'; did you mean 'background'?"),
    ("xray_role in ('source', 'src')", "xray_role is one of source, background: not 'src'; did you mean 'source'?"),
])
def test_a_value_an_x_ray_name_cannot_hold_is_refused(selection, message):
    with pytest.raises(SelectionError) as caught:
        Compiler("sqlite")(parse(selection))
    assert str(caught.value) == message


@pytest.mark.parametrize("selection", ["xray_kind == 'events'", "xray_role == 'background'", "xray_role is null"])
def test_the_values_x_ray_names_hold_pass(selection):
    Compiler("sqlite")(parse(selection))


def test_every_kind_a_summary_names_is_one_the_language_allows():
    from archive.query import FIELDS
    from processing import xray

    assert set(xray.KIND_ORDER) == set(FIELDS["xray_kind"].values)


def _spectrum(path, **header):
    channel = fits.Column(name="CHANNEL", format="J", array=np.arange(4))
    counts = fits.Column(name="COUNTS", format="J", array=np.arange(4))
    table = fits.BinTableHDU.from_columns([channel, counts], name="SPECTRUM")
    table.header.update({"HDUCLAS1": "SPECTRUM", "HDUCLAS2": "TOTAL", "EXPOSURE": 1000.0, **header})
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)


@pytest.fixture
def mixed(url, tmp_path, rng) -> str:
    """A catalog of two optical frames and an XMM spectrum behind the Medium filter."""
    write_frame(tmp_path / "night" / "a-0001.fits", rng, {"FILTER": "V", "EXPTIME": 30.0})
    write_frame(tmp_path / "night" / "a-0002.fits", rng, {"FILTER": "R", "EXPTIME": 60.0})
    _spectrum(tmp_path / "night" / "pn.pha", TELESCOP="XMM", FILTER="Medium")
    make_catalog(url)
    obsarch(url, "ingest", str(tmp_path / "night"))
    return url


@pytest.mark.parametrize("selection, hint", [
    ("xray_filter == 'medium'", "no exposure has xray_filter 'medium'; did you mean 'Medium'?"),
    # the object as the catalog of a paper writes it, or in lower case: nothing said (a newcomer on the demo)
    ("object == 'NGC3293'", "no exposure has object 'NGC3293'; did you mean 'NGC 3293'?"),
    ("object == 'ngc 3293' and exptime > 10", "no exposure has object 'ngc 3293'; did you mean 'NGC 3293'?"),
    ("band == 'v'", "no exposure has band 'v'; did you mean 'V'?"),
    ("hdr['EXPTIM'] > 1", "no file has a value for header keyword EXPTIM; did you mean EXPTIME?"),
    ("hdr[0]['EXPTIM'] between 1 and 100", "no file has a value for header keyword EXPTIM; did you mean EXPTIME?"),
    ("hdr['EXPTIME'] > '100'", "hdr['EXPTIME'] is a number in every file that has it: compare it with a number"),
    ("hdr['EXPTIME'] in ('30', '60')", "hdr['EXPTIME'] is a number in every file that has it: compare it with a number"),
    ("hdr['FILTER'] == 5", "hdr['FILTER'] is text in every file that has it: compare it with a quoted string"),
    ("hdr['ZZTOP'] is not null", "no file has a value for header keyword ZZTOP"),
])
def test_obsarch_query_says_why_it_found_nothing(mixed, selection, hint):
    result = obsarch(mixed, "query", selection)
    assert result.stderr.splitlines() == ["0 exposures", f"note: {hint}"]


@pytest.mark.parametrize("selection", [
    "xray_filter == 'Medium'", "hdr['EXPTIME'] > 100", "object == 'NGC 3293' and exptime > 100", "hdr['ZZTOP'] is null", "not hdr['EXPTIM'] > 1",
    "hdr['EXPTIME'] > 100 or hdr['EXPTIME'] > '100'",  # the number and the text both asked: no one wrong kind
])
def test_no_hint_when_the_values_and_keywords_are_there(mixed, selection):
    from archive.catalog import Catalog

    catalog = Catalog(mixed)
    try:
        assert catalog.hints(selection) == []
    finally:
        catalog.engine.dispose()


def test_the_web_search_page_shows_the_hints(mixed, tmp_path):
    from archive.catalog import Catalog

    warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
    from starlette.testclient import TestClient

    from web.app import create_app

    catalog = Catalog(mixed)
    try:
        with TestClient(create_app(catalog=catalog, thumbnails=tmp_path / "thumbs")) as client:
            page = client.get("/exposures", params={"q": "xray_filter == 'medium' and hdr['EXPTIM'] > 1"})
    finally:
        catalog.engine.dispose()
    assert page.status_code == 200
    assert "no exposure has xray_filter &#39;medium&#39;; did you mean &#39;Medium&#39;?" in page.text
    assert "no file has a value for header keyword EXPTIM; did you mean EXPTIME?" in page.text


@pytest.mark.parametrize("shared, listed", [(3, "all"), (7, "5 and 2 more")])
def test_show_of_a_frame_number_many_exposures_share_lists_them_or_says_how_many_more(url, tmp_path, rng, shared, listed):
    for k in range(shared):
        write_frame(tmp_path / "night" / f"cam{k}" / "f-0001.fits", rng, {"INSTRUME": f"Cam{k}"})
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "night"))
    message = obsarch(url, "show", "1", code=1).stderr
    head, _, rest = message.removeprefix("error: ").partition(": ")
    assert head == f"frame 1 is {shared} exposures"
    named = [f"cam{k}/f-0001.fits" for k in range(shared) if f"cam{k}/f-0001.fits" in rest]
    if listed == "all":
        assert len(named) == shared and "more" not in rest
    else:
        assert len(named) == 5
        assert "and 2 more (obsarch query 1 lists them all); name one with --id or its path" in " ".join(rest.split())
        listed_all = obsarch(url, "query", "1", "--columns", "relpath", "--format", "csv").stdout.split()
        assert sorted(listed_all[1:]) == [f"cam{k}/f-0001.fits" for k in range(shared)]


def test_runs_says_when_more_runs_exist_than_it_shows(url, tmp_path, rng):
    write_frame(tmp_path / "night" / "a-0001.fits", rng)
    obsarch(url, "init")
    for _ in range(3):
        obsarch(url, "ingest", str(tmp_path / "night"))
    cut = obsarch(url, "runs", "--limit", "2")
    assert cut.stdout.count("\tingest\t") == 2 and cut.stderr.strip() == "note: the newest 2 runs: more exist (--limit N shows N)"
    as_csv = obsarch(url, "runs", "--limit", "2", "--format", "csv")
    assert len(as_csv.stdout.splitlines()) == 3 and as_csv.stderr.strip() == "note: the newest 2 runs: more exist (--limit N shows N)"
    whole = obsarch(url, "runs", "--limit", "3")
    assert whole.stdout.count("\tingest\t") == 3 and whole.stderr == ""


@pytest.mark.parametrize("limit, shown, more, asked", [(None, 5, False, None), (0, 0, True, 1), (2, 2, True, 3),
                                                       (5, 5, False, 6), (2**63 - 1, 5, False, 2**63 - 1)])
def test_first_rows_reads_one_past_the_limit_to_say_more_exist(limit, shown, more, asked):
    """`obsarch runs` and the web app's processing page both tell whether
    more runs exist than they show, by the one rule of first_rows."""
    import pandas as pd

    from archive.catalog import first_rows

    for made in (list, lambda rows: pd.DataFrame({"id": rows})):
        calls = []

        def fetch(n, made=made, calls=calls):
            calls.append(n)
            return made(list(range(5))[:n])

        rows, said = first_rows(fetch, limit)
        assert (len(rows), said, calls) == (shown, more, [asked])
        assert list(rows if isinstance(rows, list) else rows["id"]) == list(range(shown))


def test_every_group_that_runs_by_itself_has_help_with_an_example():
    group = typer.main.get_command(app)
    runs_by_itself = [name for name, command in group.commands.items() if getattr(command, "invoke_without_command", False)]
    assert "runs" in runs_by_itself
    for name in runs_by_itself:
        shown = CliRunner().invoke(app, [name, "--help"], prog_name="obsarch")
        assert shown.exit_code == 0 and f"Example: obsarch {name}" in shown.stdout, name
