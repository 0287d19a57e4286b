"""Answers a newcomer found wrong: each test fails on the wrong answer."""

from __future__ import annotations

import csv
import io
import warnings

import pytest
from factories import obsarch, star_field, write_image

from processing import grouping, offsets

# -- offsets show --group: every member, with the offset current for it ----------------------

_WCS = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 100.0, "CRPIX2": 100.0,
        "CDELT1": -0.0003, "CDELT2": 0.0003, "CUNIT1": "deg", "CUNIT2": "deg"}
_SHIFTS = {1: (0.0, 0.0), 2: (10.0, -5.0), 3: (-4.0, 3.0), 4: (1.0, 1.0)}  # CRPIX moves: dx onto frame r is s_r - s


def _wcs_frames(directory, rng):
    for number, (sx, sy) in _SHIFTS.items():
        write_image(directory / f"w-{number}.fits", star_field(rng, (200, 200)),
                    {**_WCS, "CRPIX1": 100.0 + sx, "CRPIX2": 100.0 + sy})


@pytest.fixture
def regrouped(catalog, tmp_path, rng):
    """Group B0 (frames 1-3, reference 1) registered, then frames 2-4 again in
    group R onto frame 2: frames 2 and 3 now have R's offsets as current."""
    _wcs_frames(tmp_path / "w", rng)
    catalog.ingest([tmp_path / "w"])
    engine = catalog.engine
    grouping.create_group(engine, "B0", "1-3", reference="1")
    grouping.create_group(engine, "R", "2-4", reference="2")
    for name in ("B0", "R"):
        group_id, ids, reference = offsets.group_exposures(engine, name)  # each has its reference member
        offsets.compute_offsets(engine, ids, reference, method="wcs", group_id=group_id, workers=1, executor="serial")
    return catalog


def test_group_table_lists_every_member_with_its_current_offset(regrouped):
    rows = {r["frame_number"]: r for r in offsets.offsets_table(regrouped.engine, group="B0")}
    assert sorted(rows) == [1, 2, 3]  # was empty: filtered on the current offset's own group
    assert (rows[1]["measured_in"], rows[1]["own"], rows[1]["reference_frame"]) == ("B0", True, 1)
    for number in (2, 3):
        assert (rows[number]["measured_in"], rows[number]["own"], rows[number]["reference_frame"]) == ("R", False, 2)
    # the same dx the selection language gives
    frame = regrouped.query("group == 'B0'", columns="frame_number,dx,dy")
    for number, dx, dy in frame.itertuples(index=False):
        assert (rows[number]["dx"], rows[number]["dy"]) == pytest.approx((dx, dy))
    assert rows[3]["dx"] == pytest.approx(_SHIFTS[2][0] - _SHIFTS[3][0], abs=1e-6)  # onto frame 2, not 1


def test_group_table_shows_members_never_registered(catalog, tmp_path, rng):
    _wcs_frames(tmp_path / "w", rng)
    catalog.ingest([tmp_path / "w"])
    grouping.create_group(catalog.engine, "B0", "1-3", reference="1")
    offsets.compute_offsets(catalog.engine, offsets.select_ids(catalog.engine, "1-2"), catalog.resolve("1"), method="wcs",
                            workers=1, executor="serial")
    rows = {r["frame_number"]: r for r in offsets.offsets_table(catalog.engine, group="B0")}
    assert rows[3]["status"] == "none" and rows[3]["dx"] is None
    assert rows[2]["measured_in"] == "selection" and rows[2]["own"] is False
    assert [r["frame_number"] for r in offsets.offsets_table(catalog.engine)] == [1, 2]  # without --group: offsets only


def test_offsets_show_group_after_another_groups_run(regrouped, url):
    result = obsarch(url, "offsets", "show", "--group", "B0", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["frame_number"], r["measured_in"], r["reference_frame"]) for r in rows] == [
        ("1", "B0", "1"), ("2", "R", "2"), ("3", "R", "2")]
    assert "2 of 3 members of B0 have a current offset measured in another run (R onto frame 2)" in result.stderr
    assert "no group named 'nope'" in obsarch(url, "offsets", "show", "--group", "nope", code=1).stderr


# -- exposure times: a unit in the card's comment is honoured ------------------------------


def _units(cards: dict, *extensions: dict):
    from astropy.io import fits

    from archive.headers import HeaderUnit, parse_cards

    result = []
    for index, header_cards in enumerate((cards, *extensions)):
        header = fits.Header()
        for key, value in header_cards.items():
            header[key] = value
        text = header.tostring(padding=False)
        result.append(HeaderUnit(index, parse_cards(text[: text.rindex("END")]), "image", extname=header_cards.get("EXTNAME")))
    return result


def _normalize(cards: dict, filename: str = "plate.fits", *extensions: dict) -> dict:
    from archive.keywords import load_maps, normalize

    return normalize(_units(cards, *extensions), filename, load_maps())


@pytest.mark.parametrize(
    "card, seconds, warned",
    [
        (("EXPOSURE", 70.0, "Exposure time minutes"), 4200.0, "'EXPOSURE = 70.0 / Exposure time minutes' is in minutes: converted to 4200 s"),
        (("EXPTIME", 2.5, "[min] Exposure"), 150.0, "is in minutes: converted to 150 s"),
        (("EXPTIME", 0.5, "Exposure time (h)"), 1800.0, "is in hours: converted to 1800 s"),
        (("EXPTIME", 250.0, "Exposure time in milliseconds"), 0.25, "is in milliseconds: converted to 0.25 s"),
        (("EXPTIME", 30.0, "[ms]"), 0.03, "is in milliseconds"),
        (("EXPTIME", 11.938, "[s] Exposure length"), 11.938, None),
        (("EXPTIME", 150.04, "integration time in secs"), 150.04, None),
        (("EXPTIME", 90.0, "[sec] Duration of exposure"), 90.0, None),
        (("EXPTIME", 60.0, "Exposure time in Seconds"), 60.0, None),
        (("EXPTIME", 900.0, "Integration time"), 900.0, None),
        (("EXPTIME", 60.0, "[adu] not a time"), 60.0, "names the unit [adu], not understood: kept as written (60"),
        (("EXPTIME", 60.0, "time in seconds (min)"), 60.0, "names several time units, not understood"),
        # prose, not units: a word counts only right after "in" or "time", in lower case or a whole capital word
        (("EXPTIME", 60.0, "in seconds, was 1 min"), 60.0, None),
        (("EXPTIME", 60.0, "Exposure time, HR mode"), 60.0, None),
        (("EXPTIME", 60.0, "Exposure time of day flat"), 60.0, None),
        (("EXPTIME", 60.0, "Requested exposure (min 0.001)"), 60.0, None),
        (("EXPTIME", 60.0, "exposure time (min of amplifiers)"), 60.0, None),
        (("EXPTIME", 60.0, "Total exposure time in MS mode"), 60.0, None),
        (("EXPTIME", 2.0, "EXPOSURE TIME IN MINUTES"), 120.0, "is in minutes: converted to 120 s"),
        (("EXPTIME", 2.0, "exposure time in minutes"), 120.0, "is in minutes: converted to 120 s"),
    ],
)
def test_exptime_in_the_unit_its_comment_gives(card, seconds, warned):
    from archive.keywords import NormalizationWarning

    keyword, value, comment = card
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = _normalize({keyword: (value, comment)})
    assert row["exptime"] == pytest.approx(seconds)
    messages = [str(w.message) for w in caught if w.category is NormalizationWarning]
    if warned is None:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith("plate.fits: exptime: ") and warned in messages[0], messages


def test_converted_exptime_is_stored_and_the_ingest_says_so(url, tmp_path, rng):
    from factories import write_frame

    write_frame(tmp_path / "p" / "plate-1.fits", rng, {"EXPTIME": None, "EXPOSURE": (70.0, "Exposure time minutes")})
    obsarch(url, "init")
    out = obsarch(url, "ingest", str(tmp_path / "p"))
    said = out.stdout + out.stderr
    assert "plate-1.fits: exptime: 'EXPOSURE = 70.0 / Exposure time minutes' is in minutes: converted to 4200 s" in said
    shown = obsarch(url, "query", "exptime == 4200", "--columns", "relpath,exptime", "--format", "csv").stdout
    assert shown.split() == ["relpath,exptime", "plate-1.fits,4200.0"]


def test_real_dss_plate_exposure_in_minutes(url, real_data):
    obsarch(url, "init")
    out = obsarch(url, "ingest", str(real_data / "header_quirks"))
    assert "dss.14.29.56-62.41.05.fits.gz: exptime: 'EXPOSURE = 7.0000000000000E+01 / Exposure time minutes' is in " \
           "minutes: converted to 4200 s" in out.stdout + out.stderr
    shown = obsarch(url, "query", "relpath like '%dss.14.29%'", "--columns", "exptime", "--format", "csv").stdout
    assert shown.split() == ["exptime", "4200.0"]


# -- frame numbers from file names: a delimited run of digits, or none ---------------------------


@pytest.mark.parametrize(
    "filename, number",
    [
        ("HATP-32171220013343.FITS", None),  # was 32171220013343: HAT-P-32's "32" glued to a time stamp
        ("night-20170815.fits", None),  # a date is no frame number
        ("M31_2017-08-15.fits", None),  # nor is the end of one
        ("M31_2017_08_15.fits", None),
        ("IMG_20231012_221533.fits", None),  # nor a time after a date
        ("m31_20170815T031245.fits", None),
        ("Light_M31_20231012-221533.fit", None),
        ("ogg0m406-kb27-20170805-0339-e91.fits.fz", 339),  # LCO: the frame after the day; -e91 a reduction level
        ("frame-123456.fits", 123456),
        ("frame-12345678.fits", None),
        ("frame-1234567.fits", 1234567),
        ("ngc3293-3852.fits", 3852),
        ("UB17-033-c.fit", 33),
        ("d3920.fits.gz", 3920),
        ("dss.14.29.56-62.41.05.fits.gz", None),
    ],
)
def test_frame_number_from_a_file_name_is_a_delimited_run_of_digits(filename, number):
    assert _normalize({}, filename)["frame_number"] == number


# Every real file that has a frame number (all others have none): a header
# card (LCO's FRAMENUM) or the digit run that ends the name.
REAL_FRAME_NUMBERS = {
    "ccd_imaging/UB17-001-c.fit": 1, "ccd_imaging/UB17-033-c.fit": 33, "ccd_imaging/a8280271.fits": 8280271,
    "ccd_imaging/biastest1.fit": 1, "ccd_imaging/calib-001-bi.fit": 1, "ccd_imaging/calib-001-d.fit": 1,
    "ccd_imaging/calib-002-bi.fit": 2, "ccd_imaging/calib-002-d.fit": 2, "ccd_imaging/center_cutout_1.fits": 1,
    "ccd_imaging/darktest1.fit": 1, "ccd_imaging/flat-001-c.fit": 1, "ccd_imaging/flat-002-c.fit": 2,
    "ccd_imaging/ogg0m404-kb82-20170815-1159-e91.fits.fz": 1159, "ccd_imaging/ogg0m404-kb82-20170815-1160-e91.fits.fz": 1160,
    "ccd_imaging/ogg0m404-kb82-20170815-1161-e91.fits.fz": 1161, "ccd_imaging/ogg0m404-kb82-20170816-0339-e91.fits.fz": 339,
}


def test_real_frame_numbers(catalog, real_data):
    catalog.ingest([real_data])
    frame = catalog.query("frame_number is not null", columns="relpath,frame_number")
    numbered = {path: int(n) for path, n in frame.itertuples(index=False)}
    assert numbered == REAL_FRAME_NUMBERS
    assert catalog.query("relpath like '%HATP-32%' and frame_number is null").shape[0] == 4


# -- X-ray filters are not bands ----------------------------------------------------------------


def test_an_xray_filter_is_no_band():
    import json

    row = _normalize({"TELESCOP": "XMM", "INSTRUME": "EMOS1", "FILTER": "Medium", "EXPOSURE": (42589.37, "[s]")}, "spec.fits")
    assert row["band"] is None
    assert json.loads(row["sources"])["band"] == "FILTER='Medium': an X-ray filter, not a band (see xray_filter)"
    assert _normalize({"TELESCOP": "Test 1m", "FILTER": "Medium"})["band"] == "Medium"  # an optical filter stays a band
    assert _normalize({"FILTER": "Medium"}, "x.fits", {"EXTNAME": "EVENTS"})["band"] is None  # X-ray by its HDUs
    # the optical/UV telescopes of X-ray missions keep their photometric bands
    assert _normalize({"TELESCOP": "SWIFT", "INSTRUME": "UVOTA", "FILTER": "V"})["band"] == "V"
    assert _normalize({"TELESCOP": "XMM", "INSTRUME": "OM", "FILTER": "UVW1"})["band"] == "UVW1"


def test_real_xmm_filter_is_queryable_and_out_of_the_band_summary(url, real_data):
    obsarch(url, "init")
    obsarch(url, "ingest", str(real_data / "xray"))
    shown = obsarch(url, "query", "xray_filter == 'Medium'", "--columns", "relpath,band,xray_filter", "--format", "csv").stdout
    assert shown.split() == ["relpath,band,xray_filter", "MNLup_2138_0670580101_EMOS1_S001_specbg.fits,,Medium"]
    assert obsarch(url, "query", "band is not null", "--columns", "relpath", "--format", "csv").stdout.split() == ["relpath"]
    assert obsarch(url, "query", "xray_filter is not null", "--columns", "relpath", "--format", "csv").stdout.split()[1:] == [
        "MNLup_2138_0670580101_EMOS1_S001_specbg.fits"]  # FILTER = 'NONE' (Swift), 'FILTER' (eROSITA): no filter named
    assert "Medium" not in obsarch(url, "summary").stdout


def test_renormalize_corrects_what_catalogs_stored_under_the_old_rules(url, tmp_path, rng):
    """A catalog ingested before the fixes keeps 70 s, a glued frame number
    and an X-ray filter as band until `obsarch db renormalize` computes them
    again from the stored cards (an unchanged file is not read again)."""
    from factories import write_frame
    from sqlalchemy import update

    from archive.db import make_engine
    from archive.models import Exposure

    write_frame(tmp_path / "p" / "HATP-32171220013343.fits", rng, {"EXPTIME": None, "EXPOSURE": (70.0, "Exposure time minutes")})
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "p"))
    engine = make_engine(url)
    with engine.begin() as conn:  # as the old rules stored them, provenance included
        conn.execute(update(Exposure).values(
            exptime=70.0, frame_number=32171220013343,
            sources='{"frame_number": "file name \'HATP-32171220013343.fits\'"}'))
    old = obsarch(url, "query", "--columns", "exptime,frame_number", "--format", "csv").stdout.split()
    assert old == ["exptime,frame_number", "70.0,32171220013343"]
    assert obsarch(url, "db", "renormalize").stdout.strip() == "renormalized 1 exposure"
    assert obsarch(url, "query", "--columns", "exptime,frame_number", "--format", "csv").stdout.split() == \
        ["exptime,frame_number", "4200.0,"]
    sources = obsarch(url, "sql", "select sources from exposures").stdout
    assert "HATP-32171220013343" not in sources  # no provenance left for a frame number it no longer has
    engine.dispose()


def test_a_card_astropy_cannot_parse_does_not_stop_a_frame_being_used(url, tmp_path, rng):
    """IRAF's unquoted AIRMASS = INDEF: the ingest keeps it as text, and
    reading the frame's pixels for a step must not fail on it (group
    positions stopped with 'unexpected VerifyError')."""
    from factories import write_frame

    from processing.quality import load_image

    path = write_frame(tmp_path / "n" / "indef.fits", rng, {"AIRMASS": None})
    data = path.read_bytes()
    at = data.index(b"READOUTM=")
    path.write_bytes(data[:at] + b"AIRMASS = INDEF".ljust(80) + data[at + 80:])
    image, header, index = load_image(path)
    assert image.shape == (32, 32) and index == 0 and "AIRMASS" not in header and header["FILTER"] == "V"
    write_frame(tmp_path / "n" / "other.fits", rng)
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "n"))
    done = obsarch(url, "group", "positions", "--radius", "20px", "--name", "p", code=3)  # noise: no star to register
    assert "VerifyError" not in done.stdout + done.stderr
    assert "group: 1 of 1 frames could not be registered onto the frame before them, so each starts a group of its own" in done.stderr


def test_renormalize_says_what_it_left_empty_as_one_line_per_file(url, tmp_path, rng):
    """db renormalize printed Python's warning lines (the module's path and
    source line); it says what ingest says, one line naming the file."""
    from factories import write_frame

    write_frame(tmp_path / "w" / "odd.fits", rng, {"MJD-OBS": 12345678901.5, "DATE-OBS": None})
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path / "w"))
    done = obsarch(url, "db", "renormalize")
    assert done.stdout.strip() == "renormalized 1 exposure"
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("warning: odd.fits: ") and "MJD-OBS" in line for line in lines), lines
    assert "keywords.py" not in done.stderr and "NormalizationWarning" not in done.stderr


def test_a_date_before_year_1000_is_stored_so_that_it_reads_back(catalog, tmp_path, rng):
    """SQLite got '999-06-01 ...' (strftime does not pad the year), which
    SQLAlchemy cannot read: every later query of the catalog failed."""
    from datetime import datetime

    from factories import write_frame

    write_frame(tmp_path / "old" / "old.fits", rng, {"DATE-OBS": "0999-06-01T12:00:00"})
    write_frame(tmp_path / "old" / "new.fits", rng, {"DATE-OBS": "2017-08-16T01:00:00"})
    catalog.ingest([tmp_path / "old"])
    frame = catalog.query(columns="relpath,date_obs", sort="date_obs")
    assert frame["relpath"].tolist() == ["old.fits", "new.fits"]
    assert frame["date_obs"].tolist()[0] == datetime(999, 6, 1, 12, 0)
    assert catalog.query("date_obs < '1000-01-01'", columns="relpath")["relpath"].tolist() == ["old.fits"]
