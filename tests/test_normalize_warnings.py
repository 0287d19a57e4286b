"""A card value a rule reads but cannot make its column's value gives one
warning naming the column, the card as written and why; the column stays
empty (or takes its value from the next card, and says which), and the card
keeps the value. Good values at the edges give their value and no warning;
an absent card gives none. Through ``catalog.ingest`` (its summary and the
stored errors) and through the commands, on both backends."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
from factories import obsarch
from sqlalchemy import select, text

from archive.models import Exposure, File

BLOCK = 2880
BEYOND = "beyond the dates a catalog holds (years 1-9999)"


def card(keyword: str, value: str) -> str:
    """One card, its value exactly as given (strings in quotes)."""
    return f"{keyword.ljust(8)}= {value}".ljust(80)


def write_header(path: Path, *cards: str) -> Path:
    """A header-only FITS file holding just ``cards``: nothing else can warn."""
    header = "".join([card("SIMPLE", "T"), card("BITPIX", "16"), card("NAXIS", "0"), *cards, "END".ljust(80)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((header + " " * (-len(header) % BLOCK)).encode("ascii"))
    return path


def stored(catalog, name: str, columns=("date_obs", "mjd", "night", "exptime", "frame_number")) -> dict:
    with catalog.engine.connect() as conn:
        row = conn.execute(select(*[getattr(Exposure, c) for c in columns]).join(File, File.id == Exposure.file_id)
                           .where(File.relpath == name)).one()
    return dict(zip(columns, row))


# name -> (cards as written, the columns they give, the warning or None)
CASES = {
    # -- dates and MJDs past what a catalog holds, and strings that are no date
    "year 10000": ([card("DATE-OBS", "'10000-01-01T00:00:00'")], {"date_obs": None, "mjd": None, "night": None},
                   f"date_obs left empty, DATE-OBS='10000-01-01T00:00:00' kept as written: {BEYOND}"),
    "MJD 1e300": ([card("MJD-OBS", "1.0E+300")], {"date_obs": None, "mjd": None, "night": None},
                  f"date_obs left empty, MJD-OBS='1.0E+300' kept as written: {BEYOND}"),
    "MJD 12345678901.5": ([card("MJD-OBS", "12345678901.5")], {"date_obs": None, "night": None},
                          f"date_obs left empty, MJD-OBS='12345678901.5' kept as written: {BEYOND}"),
    "February 30": ([card("DATE-OBS", "'2020-02-30'")], {"date_obs": None, "night": None},
                    "date_obs left empty, DATE-OBS='2020-02-30' kept as written: not a date (day is out of range for month)"),
    "hour 25": ([card("DATE-OBS", "'2017-08-15T25:00:00'")], {"date_obs": None, "night": None},
                "date_obs left empty, DATE-OBS='2017-08-15T25:00:00' kept as written: not a date (hour must be 0 to 23)"),
    "month 13": ([card("DATE-OBS", "'2017-13-45T99:99:99'")], {"date_obs": None, "night": None},
                 "date_obs left empty, DATE-OBS='2017-13-45T99:99:99' kept as written: not a date (month must be 1 to 12)"),
    "past 9999 once in UTC": ([card("DATE-OBS", "'9999-12-31T23:00:00-0700'")], {"date_obs": None, "night": None},
                              f"date_obs left empty, DATE-OBS='9999-12-31T23:00:00-0700' kept as written: {BEYOND} once in UTC"),
    "time of day 25:00": ([card("DATE-OBS", "'2017-08-15'"), card("TIME-OBS", "'25:00:00'")], {"date_obs": None},
                          "date_obs left empty, TIME-OBS='25:00:00' kept as written: not a time of day (hour must be 0 to 23)"),
    "a bad date, then a good MJD": (
        [card("DATE-OBS", "'2020-02-30'"), card("MJD-OBS", "57981.5")],
        {"date_obs": datetime(2017, 8, 16, 12), "night": "2017-08-16"},
        "date_obs from MJD-OBS='57981.5', DATE-OBS='2020-02-30' not used: not a date (day is out of range for month)"),
    # -- the night: a DAY-OBS that is no date, and one past what a catalog holds
    "DAY-OBS month 13": ([card("DATE-OBS", "'2017-08-16T03:00:00'"), card("DAY-OBS", "'20171345'")],
                         {"date_obs": datetime(2017, 8, 16, 3), "night": "2017-08-15"},
                         "night from UTC date of the start minus 12 h (no site longitude), DAY-OBS='20171345' not used: "
                         "not a date (month must be 1 to 12)"),
    "night before year 1": ([card("DATE-OBS", "'0001-01-01T00:00:00'")],
                            {"mjd": -678575.0, "night": None},  # date_obs not read back: see below
                            f"night left empty, DATE-OBS='0001-01-01T00:00:00' kept as written: its night is {BEYOND}"),
    # -- numbers with a range
    "20-digit frame number": ([card("FRAMENUM", "12345678901234567890")], {"frame_number": None},
                              "frame_number left empty, FRAMENUM='12345678901234567890' kept as written: "
                              "does not fit in 64 bits"),
    "frame number 12.5": ([card("FRAMENUM", "12.5")], {"frame_number": None},
                          "frame_number left empty, FRAMENUM='12.5' kept as written: not a whole number"),
    "negative exposure time": ([card("EXPTIME", "-5.0")], {"exptime": None},
                               "exptime left empty, EXPTIME='-5.0' kept as written: negative (an exposure time is 0 or more)"),
    "exposure time as text": ([card("EXPTIME", "'60'")], {"exptime": None},
                              "exptime left empty, EXPTIME='60' kept as written: written as text, not as a number"),
    # -- good values at the edges: their value, no warning
    "9999-12-31": ([card("DATE-OBS", "'9999-12-31T23:59:59.999'")],
                   {"date_obs": datetime(9999, 12, 31, 23, 59, 59, 999000), "night": "9999-12-31"}, None),
    "9999-12-31 east of Greenwich": ([card("DATE-OBS", "'9999-12-31T23:00:00'"), card("LONG-OBS", "170.0")],
                                     {"date_obs": datetime(9999, 12, 31, 23), "night": "9999-12-31"}, None),
    "MJD of the last day": ([card("MJD-OBS", "2973483.5")], {"date_obs": datetime(9999, 12, 31, 12), "mjd": 2973483.5}, None),
    "MJD 0.5": ([card("MJD-OBS", "0.5")], {"date_obs": datetime(1858, 11, 17, 12), "mjd": 0.5}, None),
    # MJD 0 (and any whole MJD: SAAO's day) is no start time by the rule; it is not a bad value
    "MJD 0": ([card("MJD-OBS", "0.0")], {"date_obs": None, "mjd": None}, None),
    "leap day": ([card("DATE-OBS", "'2020-02-29T12:00:00'")],
                 {"date_obs": datetime(2020, 2, 29, 12), "night": "2020-02-29"}, None),
    "fractional seconds": ([card("DATE-OBS", "'2017-08-15T03:12:45.123456'")],
                           {"date_obs": datetime(2017, 8, 15, 3, 12, 45, 123456), "night": "2017-08-14"}, None),
    "Z for UTC": ([card("DATE-OBS", "'2017-08-15T03:12:45Z'")],
                  {"date_obs": datetime(2017, 8, 15, 3, 12, 45), "night": "2017-08-14"}, None),
    "date and time of day": ([card("DATE-OBS", "'2013-07-13'"), card("TIME-OBS", "'23:59:59.5'")],
                             {"date_obs": datetime(2013, 7, 13, 23, 59, 59, 500000)}, None),
    "largest frame number": ([card("FRAMENUM", str(2**63 - 1))], {"frame_number": 2**63 - 1}, None),
    "exposure time 0": ([card("EXPTIME", "0.0")], {"exptime": 0.0}, None),
    # -- absent cards say nothing
    "no cards": ([], {"date_obs": None, "mjd": None, "night": None, "exptime": None, "frame_number": None}, None),
    "placeholders": ([card("DATE-OBS", "'UNKNOWN'"), card("EXPTIME", "'N/A'")], {"date_obs": None, "exptime": None}, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_value_a_column_cannot_take_is_told_once(catalog, tmp_path, name):
    cards, expected, warning = CASES[name]
    path = write_header(tmp_path / "frames" / "frame.fits", *cards)
    summary = catalog.ingest([tmp_path / "frames"])
    assert summary.new == 1 and summary.failed == 0
    # only the columns the case names: SQLite keeps year 1 as '1-01-01 ...' (db.sql_datetime's
    # strftime does not pad the year), which SQLAlchemy cannot read back
    row = stored(catalog, "frame.fits", tuple(expected))
    for column, value in expected.items():
        if isinstance(value, float):
            assert row[column] == pytest.approx(value, abs=1e-6), column
        else:
            assert row[column] == value, column
    told = [] if warning is None else [warning]
    assert summary.errors == [(str(path), w) for w in told]
    errors = catalog.errors()
    assert errors.to_dict("records") == [{"path": str(path), "status": "present", "reason": w} for w in told]
    with catalog.engine.connect() as conn:
        reasons = conn.execute(text("select reason from ingest_errors")).scalars().all()
    assert reasons == told


def test_a_good_card_first_leaves_a_bad_one_after_it_unread(catalog, tmp_path):
    """Only what a rule reads is judged: a good DATE-OBS wins, the MJD-OBS behind it is not looked at."""
    write_header(tmp_path / "frames" / "frame.fits", card("DATE-OBS", "'2017-08-16T03:00:00'"), card("MJD-OBS", "1.0E+300"))
    summary = catalog.ingest([tmp_path / "frames"])
    assert summary.errors == []
    assert stored(catalog, "frame.fits")["date_obs"] == datetime(2017, 8, 16, 3)


def test_the_commands_show_the_line(url, tmp_path):
    """`obsarch ingest` prints the line under the file's path; `obsarch errors` lists it; the card keeps the value."""
    write_header(tmp_path / "frames" / "bad.fits", card("DATE-OBS", "'2020-02-30'"))
    path = tmp_path / "frames" / "bad.fits"
    line = "date_obs left empty, DATE-OBS='2020-02-30' kept as written: not a date (day is out of range for month)"
    obsarch(url, "init")
    result = obsarch(url, "ingest", str(tmp_path / "frames"))
    assert "1 new" in result.stdout and "0 failed" in result.stdout
    assert result.stderr.splitlines() == [f"  {path}: {line}"]
    listed = obsarch(url, "errors")
    assert listed.stdout.splitlines()[1:] == [f"{path}\tpresent\t{line}"]
    assert "1 file with problems" in listed.stderr
    shown = obsarch(url, "query", "hdr['DATE-OBS'] == '2020-02-30'", "--columns", "date_obs,hdr['DATE-OBS']",
                    "--format", "csv")
    assert shown.stdout.splitlines()[1:] == [",2020-02-30"]


# The README's promise, example by example: the column empty, a warning naming
# the file, the card as written.
README_EXAMPLES = {
    "MJD-OBS 12345678901.5": ("MJD-OBS", "12345678901.5", "date_obs", "12345678901.5"),
    "a date past year 9999": ("DATE-OBS", "'10000-01-01T00:00:00'", "date_obs", "10000-01-01T00:00:00"),
    "`DATE-OBS = '2020-02-30'`": ("DATE-OBS", "'2020-02-30'", "date_obs", "2020-02-30"),
    "a date with no time of day and no TIME-OBS or UT card": ("DATE-OBS", "'2021-03-06'", "date_obs", "2021-03-06"),
    "a 20-digit frame number": ("FRAMENUM", "12345678901234567890", "frame_number", "12345678901234567890"),
}


def test_the_readme_still_makes_the_promise():
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    promise = re.search(r"A value a rule reads but cannot use \((.*?)\) is not used for its column, which stays empty "
                        r"unless another card gives it, with a warning naming the file, the card and why .*?; the card "
                        r"keeps it as written\.", readme)
    assert promise, "the README's Reliability section no longer says this"
    assert [e.strip() for e in promise[1].split(",")] == list(README_EXAMPLES)


@pytest.mark.parametrize("example", list(README_EXAMPLES))
def test_the_readme_promise_holds(url, tmp_path, example):
    keyword, written, column, kept = README_EXAMPLES[example]
    path = write_header(tmp_path / "frames" / "odd.fits", card(keyword, written))
    obsarch(url, "init")
    result = obsarch(url, "ingest", str(tmp_path / "frames"))
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"  {path}: {column} left empty, {keyword}='{kept}' kept as written: ")
    listed = obsarch(url, "errors").stdout.splitlines()[1:]
    assert len(listed) == 1 and listed[0].startswith(f"{path}\tpresent\t{column} left empty, ")
    assert obsarch(url, "query", "", "--columns", column, "--format", "csv").stdout.splitlines()[1:] == ['""']
    kept_as = obsarch(url, "sql", f"select value_text from header_cards where keyword = '{keyword}'", "--format", "csv")
    assert kept_as.stdout.splitlines()[1:] == [kept]


# The other rules with a range, straight through normalize: (cards, column, its value, the warning or None)
OTHER_RULES = {
    "airmass 0.3": ({"AIRMASS": 0.3}, "airmass", None,
                    "airmass left empty, AIRMASS='0.3' kept as written: not an airmass (1 to 100)"),
    "airmass 1": ({"AIRMASS": 1.0}, "airmass", 1.0, None),
    "ESO airmass end 0": ({"HIERARCH ESO TEL AIRM START": 1.2, "HIERARCH ESO TEL AIRM END": 0.0}, "airmass", 1.2,
                          "airmass from ESO TEL AIRM START='1.2', ESO TEL AIRM END='0.0' not used: not an airmass (1 to 100)"),
    "gain -1": ({"GAIN": -1.0}, "gain", None, "gain left empty, GAIN='-1.0' kept as written: not a gain (a gain is above 0)"),
    "gain 0 then EGAIN": ({"GAIN": 0.0, "EGAIN": 1.5}, "gain", 1.5,
                          "gain from EGAIN='1.5', GAIN='0.0' not used: not a gain (a gain is above 0)"),
    "CCD-TEMP -300": ({"CCD-TEMP": -300.0}, "ccd_temp", None,
                      "ccd_temp left empty, CCD-TEMP='-300.0' kept as written: below absolute zero (-273.15 C)"),
    "CCD-TEMP -273.15": ({"CCD-TEMP": -273.15}, "ccd_temp", -273.15, None),
    "XBINNING 0": ({"XBINNING": 0, "YBINNING": 2}, "xbin", None,
                   "xbin left empty, XBINNING='0' kept as written: not a binning (a whole number of 1 or more)"),
    "CCDSUM 'a b'": ({"CCDSUM": "a b"}, "xbin", None,
                     "xbin and ybin left empty, CCDSUM='a b' kept as written: "
                     "not a binning (two whole numbers of 1 or more, such as '2 2')"),
    "CCDSUM '2 2'": ({"CCDSUM": "2 2"}, "xbin", 2, None),
    "LONG-OBS 400, then SITELONG": ({"DATE-OBS": "2018-08-23T08:49:30", "LONG-OBS": 400.0, "SITELONG": "-96 27 12"}, "night",
                                    "2018-08-22", "night from SITELONG='-96 27 12', LONG-OBS='400.0' not used: "
                                    "not a longitude (-360 to 360 degrees)"),
    "RA 400": ({"RA": 400.0, "DEC": 10.0}, "ra", None,
               "ra and dec left empty, RA='400.0' kept as written: not a right ascension (0 to 360 degrees, or 0 to 24 hours)"),
    "RA 0, DEC -90": ({"RA": 0.0, "DEC": -90.0}, "dec", -90.0, None),
    "LONG-OBS 400": ({"DATE-OBS": "2017-08-16T03:00:00", "LONG-OBS": 400.0}, "night", "2017-08-15",
                     "night from UTC date of the start minus 12 h (no site longitude), LONG-OBS='400.0' not used: "
                     "not a longitude (-360 to 360 degrees)"),
}


@pytest.mark.parametrize("name", list(OTHER_RULES))
def test_the_other_rules_with_a_range(name):
    import warnings

    from test_keywords import norm

    from archive.keywords import NormalizationWarning

    cards, column, value, warning = OTHER_RULES[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = norm(cards)
    assert row[column] == (pytest.approx(value) if isinstance(value, float) else value)
    told = [str(w.message) for w in caught if w.category is NormalizationWarning]
    assert told == ([] if warning is None else [f"frame.fits: {warning}"])


def test_a_card_that_is_no_fits_value_is_told_once(catalog, tmp_path):
    """EXPTIME = NAN is an invalid card, told as such: not a second time by its column."""
    path = write_header(tmp_path / "frames" / "frame.fits", card("EXPTIME", "NAN"))
    summary = catalog.ingest([tmp_path / "frames"])
    assert summary.errors == [(str(path), "HDU 0: invalid card kept as text: EXPTIME = 'NAN'")]
    assert stored(catalog, "frame.fits", ("exptime",)) == {"exptime": None}


UNTIMED = ("a date with no time of day (no TIME-OBS, UT, UTSTART, UT-START or TIME_OBS card gives one), "
           "so mjd and night are not computed from it")


@pytest.mark.parametrize("written, kept", [("'2021-03-06'", "2021-03-06"), ("'11/03/76'", "11/03/76")])
def test_a_date_with_no_time_of_day_is_told(catalog, tmp_path, written, kept):
    """A user's DATE-OBS = '2021-03-06' with no TIME-OBS or UT left date_obs,
    mjd and night empty and said nothing, where any other unusable date is told."""
    path = write_header(tmp_path / "frames" / "frame.fits", card("DATE-OBS", written))
    summary = catalog.ingest([tmp_path / "frames"])
    line = f"date_obs left empty, DATE-OBS='{kept}' kept as written: {UNTIMED}"
    assert summary.new == 1 and summary.failed == 0
    assert summary.errors == [(str(path), line)]
    assert catalog.errors().to_dict("records") == [{"path": str(path), "status": "present", "reason": line}]
    assert stored(catalog, "frame.fits", ("date_obs", "mjd", "night")) == {"date_obs": None, "mjd": None, "night": None}


# (cards beside a date-only DATE-OBS, date_obs, night, told): only a date that leaves date_obs empty is told
DATE_ONLY = {
    "alone": ({}, None, None, True),
    "and TIME-OBS": ({"TIME-OBS": "03:00:00"}, datetime(2021, 3, 6, 3), "2021-03-05", False),
    "and a fractional MJD-OBS": ({"MJD-OBS": 59279.5}, datetime(2021, 3, 6, 12), "2021-03-06", False),
    "and DAY-OBS": ({"DAY-OBS": "20210305"}, None, "2021-03-05", True),
    "and a placeholder TIME-OBS": ({"TIME-OBS": "UNKNOWN"}, None, None, True),
}


@pytest.mark.parametrize("name", list(DATE_ONLY))
def test_a_date_only_card_is_told_when_nothing_gives_the_time(name):
    import warnings

    from test_keywords import norm

    from archive.keywords import NormalizationWarning

    cards, date_obs, night, is_told = DATE_ONLY[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = norm({"DATE-OBS": "2021-03-06", **cards})
    assert (row["date_obs"], row["night"]) == (date_obs, night)
    told = [str(w.message) for w in caught if w.category is NormalizationWarning]
    assert told == ([f"frame.fits: date_obs left empty, DATE-OBS='2021-03-06' kept as written: {UNTIMED}"] if is_told else [])


def test_the_commands_show_the_date_with_no_time_of_day(url, tmp_path):
    path = write_header(tmp_path / "frames" / "old.fits", card("DATE-OBS", "'11/03/76'"))
    line = f"date_obs left empty, DATE-OBS='11/03/76' kept as written: {UNTIMED}"
    obsarch(url, "init")
    assert obsarch(url, "ingest", str(tmp_path / "frames")).stderr.splitlines() == [f"  {path}: {line}"]
    assert obsarch(url, "errors").stdout.splitlines()[1:] == [f"{path}\tpresent\t{line}"]
