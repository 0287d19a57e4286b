"""A selection asking for a value its name can never hold is refused; one
asking for a value no exposure holds still runs, and says so with the
nearest value the catalog has. Either way a typo does not pass for an
empty answer. Hints on both backends."""

from __future__ import annotations

import pytest
from factories import write_frame

from archive.exceptions import SelectionError
from archive.query import Compiler, parse


@pytest.mark.parametrize("selection, message", [
    ("grade == 'bda'", "grade is one of great, ok, marginal, bad, ungraded: not 'bda'; did you mean 'bad'?"),
    ("grade in ('ok', 'grate')", "grade is one of great, ok, marginal, bad, ungraded: not 'grate'; did you mean 'great'?"),
    ("status != 'gone'", "status is one of present, missing, unreadable: not 'gone'"),
    ("flag_source == 'robot'", "flag_source is one of person, rule: not 'robot'"),
    ("night == '2017-13-45'", "night is a date written YYYY-MM-DD (the evening's date): '2017-13-45' is not one"),
    ("night in ('2017-08-01', '2017-8-3')",
     "night is a date written YYYY-MM-DD (the evening's date): '2017-8-3' is not one"),
    # in an order, as text: '2025-6-24' comes after every night of 2025 and matched none (a user trial)
    ("night >= '2025-6-24'", "night is compared as its text YYYY-MM-DD (the evening's date), or from a start of it "
                             "(2017, 2017-08): '2025-6-24' is neither"),
    ("night > '2021-02-30'", "night is compared as its text YYYY-MM-DD (the evening's date), or from a start of it "
                             "(2017, 2017-08): '2021-02-30' is neither"),
    ("night between '2025-06-24' and '2025-13-45'", "night is compared as its text YYYY-MM-DD (the evening's date), "
                                                    "or from a start of it (2017, 2017-08): '2025-13-45' is neither"),
    # like and glob match text: SQLite matched a number's text form, PostgreSQL failed with a traceback
    ("exptime like '3%'", "exptime is a number: like matches text; compare it with ==, <, > or between"),
    ("frame_number like '11%'", "frame_number is a number: like matches text; compare it with ==, <, > or between"),
    ("date_obs glob '2017*'", "date_obs is a time: glob matches text; compare it with ==, <, > or between"),
])
def test_a_value_the_name_cannot_hold_is_refused(selection, message):
    with pytest.raises(SelectionError) as caught:
        Compiler("sqlite")(parse(selection))
    assert str(caught.value) == message


def test_a_number_beyond_float_range_is_refused():
    with pytest.raises(SelectionError, match=r"the number 1e400 is beyond the largest a catalog stores"):
        parse("exptime > 1e400")


@pytest.mark.parametrize("selection", ["grade == 'ungraded'", "grade != 'bad'", "night like '2017-08%'",
                                       "night < '2017-08-16'", "status in ('present', 'missing')", "exptime > 1e300",
                                       "night >= '2017-08' and night < '2018'",  # text ranges, as always
                                       "night between '2017-08' and '2017-09'"])
def test_values_it_can_hold_pass(selection):
    Compiler("sqlite")(parse(selection))


def test_values_no_exposure_has_are_named_with_the_nearest(catalog, tmp_path, rng):
    write_frame(tmp_path / "night" / "a.fits", rng, {"FILTER": "V", "IMAGETYP": "Light Frame"})
    write_frame(tmp_path / "night" / "b.fits", rng, {"FILTER": "R", "IMAGETYP": "Bias Frame"})
    catalog.ingest([tmp_path / "night"])
    hints = catalog.hints("frame_type == 'sceince' and band in ('V', 'Vv') and night == '2017-08-15' and group == 'B0'")
    assert hints == ["no exposure has frame_type 'sceince'; did you mean 'science'?",
                     "no exposure has band 'Vv'; did you mean 'V'?",
                     "no group is named 'B0'"]
    assert catalog.hints("frame_type == 'science' and band == 'V'") == []
    assert catalog.hints("instrument == 'zzz'") == ["no exposure has instrument 'zzz' (it has 'TestCam')"]
    assert catalog.hints("band != 'Vv' and not band == 'Vv'") == []  # asking for its absence is no typo


def test_a_night_no_exposure_has_is_named_with_the_nearest_in_time(catalog, tmp_path, rng):
    """As text '2014-07-27' is nearer '2018-07-27' than '2017-08-15'; in time it is not."""
    for name, when in (("a", "2017-08-15T23:00:00"), ("b", "2018-07-27T23:00:00"), ("c", "2012-01-03T23:00:00")):
        write_frame(tmp_path / "nights" / f"{name}.fits", rng, {"FILTER": "V", "DATE-OBS": when})
    catalog.ingest([tmp_path / "nights"])
    nights = sorted(catalog.query("band == 'V'", columns="night")["night"])
    assert nights == ["2012-01-03", "2017-08-15", "2018-07-27"]
    assert catalog.hints("night == '2014-07-27'") == [
        "no exposure has night '2014-07-27'; the nearest night with exposures is '2012-01-03'"]
    assert catalog.hints("night == '2017-08-16' and band == 'V'") == [
        "no exposure has night '2017-08-16'; the nearest night with exposures is '2017-08-15'"]
    assert catalog.hints("night in ('2018-07-27', '2018-07-30')") == [
        "no exposure has night '2018-07-30'; the nearest night with exposures is '2018-07-27'"]


def test_obsarch_query_says_why_it_found_nothing_and_when_a_limit_cut(url, tmp_path, rng):
    from factories import obsarch

    for n in range(3):
        write_frame(tmp_path / "night" / f"f{n}.fits", rng, {"FILTER": "V"})
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "night"))
    empty = obsarch(url, "query", "frame_type == 'sceince'")
    assert empty.stderr.splitlines() == ["0 exposures", "note: no exposure has frame_type 'sceince'; did you mean 'science'?"]
    assert obsarch(url, "query", "band == 'V'", "--limit", "2").stderr.strip() == "2 exposures (the first 2: more match)"
    assert obsarch(url, "query", "band == 'V'", "--limit", "3").stderr.strip() == "3 exposures"
    assert obsarch(url, "query", "band == 'V'", "--limit", str(2**63 - 1)).stderr.strip() == "3 exposures"
    as_csv = obsarch(url, "query", "band == 'V'", "--limit", "2", "--format", "csv")
    assert len(as_csv.stdout.splitlines()) == 3 and as_csv.stderr.strip() == "note: the first 2 exposures: more match"
    assert obsarch(url, "query", "grade == 'bda'", code=2).stderr.strip() == \
        "error: selection \"grade == 'bda'\": grade is one of great, ok, marginal, bad, ungraded: not 'bda'; did you mean 'bad'?"


def test_a_header_column_no_file_has_and_a_logical_compared_with_text_are_named(url, tmp_path, rng):
    """--columns "hdr['FILTR']" gave an empty column and exit 0 without a word,
    and hdr['LOGF'] == 'F' said LOGF 'is a number' (a user trial)."""
    from factories import obsarch

    for n in range(2):
        write_frame(tmp_path / "night" / f"f{n}.fits", rng, {"FILTER": "V", "LOGF": n == 0})
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "night"))
    typo = obsarch(url, "query", "", "--columns", "relpath,hdr['FILTR'],hdr['FILTER']", "--format", "csv")
    assert typo.stdout.splitlines()[1:] == ["f0.fits,,V", "f1.fits,,V"]
    assert typo.stderr.splitlines() == ["note: no file has a value for header keyword FILTR; did you mean FILTER?"]
    assert obsarch(url, "query", "", "--columns", "relpath,hdr['FILTER']", "--format", "csv").stderr == ""
    logical = obsarch(url, "query", "hdr['LOGF'] == 'F'")
    assert logical.stderr.splitlines()[-1] == ("note: hdr['LOGF'] is a logical (T or F) in every file that has it: "
                                               "compare it with true or false")
    shown = obsarch(url, "query", "hdr['LOGF'] == false", "--columns", "relpath,hdr['LOGF']", "--format", "csv")
    assert shown.stdout.splitlines()[1:] == ["f1.fits,False"]
