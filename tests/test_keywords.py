"""Normalization: header cards -> exposure columns."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from astropy.io import fits

from archive.exceptions import ConfigError
from archive.headers import HeaderUnit, parse_cards
from archive.keywords import load_maps, normalize, parse_fits_date

MAPS = load_maps()


def units(*headers: dict) -> list[HeaderUnit]:
    result = []
    for index, cards in enumerate(headers):
        header = fits.Header()
        for key, value in cards.items():
            header[key] = value
        text = header.tostring(padding=False)
        unit = HeaderUnit(index, parse_cards(text[: text.rindex("END")]), "image", extname=cards.get("EXTNAME"))
        result.append(unit)
    return result


def norm(header: dict, filename: str = "frame.fits", *extensions: dict, maps=MAPS) -> dict:
    return normalize(units(header, *extensions), filename, maps)


@pytest.mark.parametrize(
    "cards, frame_type",
    [
        ({"IMAGETYP": "Light Frame"}, "science"),
        ({"IMAGETYP": "Bias Frame"}, "bias"),
        ({"IMAGETYP": "Dark Frame"}, "dark"),
        ({"IMAGETYP": "Flat Field"}, "flat"),
        ({"IMAGETYP": "LIGHT"}, "science"),
        ({"IMAGETYP": "zero"}, "bias"),
        ({"IMAGETYP": "object"}, "science"),
        ({"OBSTYPE": "EXPOSE"}, "science"),
        ({"OBSTYPE": "SKYFLAT"}, "twilight"),
        ({"PICTTYPE": 2}, "bias"),
        ({"HIERARCH ESO DPR TYPE": "FLAT,LAMP"}, "flat"),
        ({"HIERARCH ESO DPR TYPE": "WAVE"}, "arc"),
        ({"HIERARCH ESO PRO CATG": "MASTER_BIAS"}, "bias"),
        ({"IMAGETYP": "focus run"}, "other"),
        ({"OBJECT": "M31"}, None),
    ],
)
def test_frame_type(cards, frame_type):
    assert norm(cards)["frame_type"] == frame_type


@pytest.mark.parametrize(
    "cards, band",
    [
        ({"FILTER": "V"}, "V"),
        ({"FILTER": "rp"}, "r"),
        ({"FILTER": "r'"}, "r"),
        ({"FILTER": "R"}, "R"),
        ({"FILTER": "Clear"}, "clear"),
        ({"FILTER": "Halpha"}, "Halpha"),
        ({"FILTER": "OIII-3nm"}, "OIII-3nm"),
        ({"FILTER1": "gp", "FILTER2": "NOTPRESENT"}, "g"),
        ({"FILTER1": "air", "FILTER2": "V"}, "air+V"),
        ({"HIERARCH ESO INS FILT1 NAME": "R_SPECIAL"}, "R_SPECIAL"),
        ({"FILTER": "FILTER"}, None),
        ({"FILTER": "NONE"}, None),
        ({"FILTERS": 48}, None),
    ],
)
def test_band(cards, band):
    assert norm(cards)["band"] == band


def test_exptime_of_xray_files_is_exposure_not_frame_time():
    optical = norm({"EXPTIME": 30.0, "EXPOSURE": 30.0})
    xray = norm({"TELESCOP": "CHANDRA", "EXPTIME": 3.2, "EXPOSURE": 38564.6})
    events = norm({}, "evt.fits", {"EXTNAME": "EVENTS", "EXPTIME": 0.4, "LIVETIME": 18279.3})
    assert optical["exptime"] == 30.0
    assert xray["exptime"] == 38564.6
    assert events["exptime"] == 18279.3


@pytest.mark.parametrize(
    "cards, expected",
    [
        ({"DATE-OBS": "2017-08-16T15:08:34.717"}, datetime(2017, 8, 16, 15, 8, 34, 717000)),
        ({"DATE-OBS": "2017-12-19T18:33:43.317-0700"}, datetime(2017, 12, 20, 1, 33, 43, 317000)),
        ({"DATE-OBS": "2013-07-13", "UT": "00:57:33"}, datetime(2013, 7, 13, 0, 57, 33)),
        ({"DATE-OBS": "2013-07-13", "TIME-OBS": "23:59:59.5"}, datetime(2013, 7, 13, 23, 59, 59, 500000)),
        ({"DATE-OBS": "11/03/76", "UT": "17:38:00"}, datetime(1976, 3, 11, 17, 38)),
        ({"MJD-OBS": 57981.5}, datetime(2017, 8, 16, 12, 0)),
        ({"DATE-OBS": "2013-07-13", "MJD-OBS": 56486.0}, None),  # day-rounded MJD is no time
        ({"TSTART": 86400.0, "MJDREFI": 55197, "MJDREFF": 0.0}, datetime(2010, 1, 2)),
        ({"DATE-OBS": "garbage"}, None),
        ({"DATE-OBS": "2013-07-13", "UT": 5685.0}, None),  # MUSE's UT is seconds, not a clock
    ],
)
def test_date_obs(cards, expected):
    assert norm(cards)["date_obs"] == expected


def test_tt_times_are_converted_to_utc():
    row = norm({"DATE-OBS": "2000-01-10T06:47:15", "TIMESYS": "TT"})
    assert row["date_obs"] == datetime(2000, 1, 10, 6, 46, 10, 816000)


@pytest.mark.parametrize("primary, extension, expected, said", [
    # XMM: the primary's DATE-OBS beside no TIMESYS is UTC; the events' TT is theirs
    ({"DATE-OBS": "2011-08-12T00:30:58"}, {"TIMESYS": "TT", "TSTART": 366424387.921}, datetime(2011, 8, 12, 0, 30, 58), None),
    # eROSITA: the card says UTC under a TIMESYS of TT
    ({"DATE-OBS": ("2019-11-03T01:08:06", "Start Time (UTC) of exposure"), "TIMESYS": "TT"}, {},
     datetime(2019, 11, 3, 1, 8, 6), "UTC, as the comment of DATE-OBS says (TIMESYS TT not applied)"),
    # Swift: DATE-OBS is the file's TSTART in UTC, 68 s from it in TT
    ({"DATE-OBS": "2016-01-02T16:12:05", "TIMESYS": "TT", "MJDREFI": 51910, "MJDREFF": 7.428703703703703e-04,
      "TSTART": 473443929.2}, {}, datetime(2016, 1, 2, 16, 12, 5), "UTC, as TSTART in UTC says (TIMESYS TT not applied)"),
    # Chandra: DATE-OBS is TSTART in TT: converted
    ({"DATE-OBS": "2008-10-04T00:44:07", "TIMESYS": "TT", "MJDREF": 50814.0, "TSTART": 339468247.43}, {},
     datetime(2008, 10, 4, 0, 43, 1, 816000), "TT"),
])
def test_a_time_scale_holds_where_the_header_says(primary, extension, expected, said):
    """DATE-OBS of XMM, eROSITA and Swift files was moved 64-69 s early as if TT."""
    row = norm(primary, "x.fits", extension) if extension else norm(primary)
    assert row["date_obs"] == expected
    assert json.loads(row["sources"]).get("timesys") == said


def test_an_xray_exposure_of_0_is_no_exposure_time():
    """eROSITA's merged light curve says EXPOSURE, ONTIME and LIVETIME 0: its
    exptime was 0 s, a bias's, while the X-ray summary said 'EXPOSURE is 0: not used'."""
    with pytest.warns(UserWarning) as told:
        row = norm({"TELESCOP": "eROSITA", "EXPOSURE": 0.0, "ONTIME": 0.0, "LIVETIME": 0.0}, "lc.fits")
    assert row["exptime"] is None
    assert [str(w.message) for w in told] == ["lc.fits: exptime left empty, EXPOSURE='0.0' kept as written: "
                                              "0 in an X-ray file: no exposure time"]
    assert norm({"TELESCOP": "CHANDRA", "EXPOSURE": 0.0, "LIVETIME": 3000.0})["exptime"] == 3000.0
    assert norm({"EXPTIME": 0.0})["exptime"] == 0.0  # an optical 0 s is a bias


def test_mjd_follows_date_obs():
    assert norm({"DATE-OBS": "2017-08-16T12:00:00"})["mjd"] == pytest.approx(57981.5)


@pytest.mark.parametrize(
    "cards, night",
    [
        ({"DATE-OBS": "2017-08-16T15:08:34", "DAY-OBS": "20170815"}, "2017-08-15"),
        ({"DATE-OBS": "2017-12-20T08:36:12-0700"}, "2017-12-19"),
        ({"DATE-OBS": "2014-07-28T04:00:00", "HIERARCH ESO TEL GEOLON": -70.4}, "2014-07-27"),
        ({"DATE-OBS": "2014-07-27T23:30:00", "HIERARCH ESO TEL GEOLON": -70.4}, "2014-07-27"),
        ({"DATE-OBS": "2017-08-16T15:08:34", "OBSGEO-X": -5466057.5, "OBSGEO-Y": -2404265.1}, "2017-08-15"),
        ({"DATE-OBS": "2018-08-23T08:49:30", "SITELONG": "-96 27 12"}, "2018-08-22"),
        ({"DATE-OBS": "2025-06-25T03:16:10"}, "2025-06-24"),
        ({"TELESCOP": "XMM", "DATE-OBS": "2011-08-12T00:30:58"}, "2011-08-12"),
        ({}, None),
    ],
)
def test_night(cards, night):
    assert norm(cards)["night"] == night


@pytest.mark.parametrize(
    "cards, ra, dec",
    [
        ({"RA": 31.312099, "DEC": 46.769087}, 31.312099, 46.769087),
        ({"RA": " 22:04:08", "DEC": "-00:55:31"}, 331.0333333, -0.9252778),
        ({"RA": "20 57 04.40", "DEC": "+31 39 39.6"}, 314.2683333, 31.661),
        ({"OBJCTRA": "14 03 13", "OBJCTDEC": "+54 20 41"}, 210.8041667, 54.3447222),
        ({"RA": "31.5", "DEC": "-2.25"}, 31.5, -2.25),
        ({"RA_PNT": 149.1, "DEC_PNT": 69.7}, 149.1, 69.7),
        ({"RA": 400.0, "DEC": 10.0}, None, None),
        ({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 20.0, "CRPIX1": 16.5,
          "CRPIX2": 16.5, "CDELT1": -0.001, "CDELT2": 0.001, "NAXIS": 2, "NAXIS1": 32, "NAXIS2": 32}, 10.0, 20.0),
        ({}, None, None),
    ],
)
def test_pointing(cards, ra, dec):
    unit = units(cards)
    unit[0].shape = "32x32"
    row = normalize(unit, "f.fits", MAPS)
    assert row["ra"] == (pytest.approx(ra) if ra is not None else None)
    assert row["dec"] == (pytest.approx(dec) if dec is not None else None)


@pytest.mark.parametrize(
    "cards, airmass",
    [
        ({"AIRMASS": 1.5}, 1.5),
        ({"SECZ": 1.176}, 1.176),
        ({"HIERARCH ESO TEL AIRM START": 1.269, "HIERARCH ESO TEL AIRM END": 1.247}, 1.258),
        ({"HIERARCH ESO OBS AIRM": 5.0}, None),  # an OB constraint, not an airmass
        ({"AIRMASS": 0.3}, None),
    ],
)
def test_airmass(cards, airmass):
    assert norm(cards)["airmass"] == (pytest.approx(airmass) if airmass else None)


def test_a_mean_airmass_says_it_is_a_mean():
    import json

    sources = json.loads(norm({"HIERARCH ESO TEL AIRM START": 1.031, "HIERARCH ESO TEL AIRM END": 1.011})["sources"])
    assert sources["airmass"] == "mean of ESO TEL AIRM START='1.031' and ESO TEL AIRM END='1.011'"


def test_values_from_the_first_extension_when_the_primary_is_a_stub():
    row = norm({}, "lco.fits.fz", {"FILTER": "rp", "EXPTIME": 11.938, "FRAMENUM": 1159, "OBSTYPE": "EXPOSE"})
    assert (row["band"], row["exptime"], row["frame_number"], row["frame_type"]) == ("r", 11.938, 1159, "science")


def test_primary_values_win_over_extensions():
    assert norm({"EXPTIME": 10.0}, "f.fits", {"EXPTIME": 99.0})["exptime"] == 10.0


@pytest.mark.parametrize(
    "filename, number",
    [("ngc3293-3852.fits", 3852), ("UB17-001-c.fit", 1), ("d3920.fits.gz", 3920),
     ("MUSE.2017-06-16T01:34:56.867.fits", None), ("bias.fits", None)],
)
def test_frame_number_from_file_name(filename, number):
    assert norm({}, filename)["frame_number"] == number


def test_obsid_placeholders_are_null():
    assert norm({"HIERARCH ESO OBS ID": -2147483648})["obsid"] is None
    assert norm({"OBSID": "UNSPECIFIED"})["obsid"] is None
    assert norm({"OBS_ID": "0761220101"})["obsid"] == "0761220101"


def test_sources_say_where_each_value_came_from():
    import json

    row = norm({"IMAGETYP": "Light Frame", "FILTER": "rp"})
    sources = json.loads(row["sources"])
    assert sources["frame_type"] == "IMAGETYP='Light Frame'"
    assert sources["band"] == "FILTER='rp'"


def test_user_maps_override_the_defaults():
    maps = load_maps({"keywords": {
        "frame_types": {"focus run": "other", "sci": "science"},
        "bands": {"Bessell-V": "V"},
        "sources": {"frame_type": ["OBSMODE"]},
        "frame_number": {"filename_pattern": r"_n(\d+)\."},
    }})
    row = norm({"OBSMODE": "SCI", "FILTER": "Bessell-V"}, "x_n77.fits", maps=maps)
    assert (row["frame_type"], row["band"], row["frame_number"]) == ("science", "V", 77)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"keywords": {"frame_number": {"filename_pattern": "(unclosed"}}}, "not a regular expression"),
        ({"keywords": {"placeholders": ["x"]}}, "not in the expected form"),
    ],
)
def test_bad_keyword_config_is_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        load_maps(config)


def test_parse_fits_date_forms():
    assert parse_fits_date("2017-08-16").isoformat() == "2017-08-16"
    assert parse_fits_date("11/03/76").isoformat() == "1976-03-11"
    assert parse_fits_date("31/02/76") is None


@pytest.mark.parametrize(
    "longitude",
    [
        {"LONG-OBS": 289.27},  # Cerro Pachon, 0-360 east
        {"SITELONG": "-70:44:00"},
        {"HIERARCH ESO TEL GEOLON": -70.73},
        {"OBSGEO-L": 289.27},
        {"SITELONG": "289:16:12"},
    ],
)
def test_a_longitude_in_0_to_360_gives_the_night_of_the_same_meridian(longitude):
    """A user's two files of one site, 08:00 local in Chile: LONG-OBS = 289.27
    gave the night 2021-03-06 and SITELONG = '-70:44:00' gave 2021-03-05."""
    assert norm({"DATE-OBS": "2021-03-06T12:00:00", **longitude})["night"] == "2021-03-05"


@pytest.mark.parametrize(
    "longitude, night",
    [
        ({"SITELONG": 210.0}, "2021-03-05"),  # 02:00 local at -150
        ({"LONG-OBS": -150.0}, "2021-03-05"),
        ({"LONG-OBS": 149.07}, "2021-03-06"),  # Siding Spring, 21:56 local: east-positive stays east
        ({"LONG-OBS": -210.93}, "2021-03-06"),
        ({"LONG-OBS": 180.0}, "2021-03-06"),  # midnight local, either way round
        ({"LONG-OBS": -180.0}, "2021-03-06"),
        ({"LONG-OBS": 359.9}, "2021-03-05"),  # just west of Greenwich: 11:59 local
    ],
)
def test_a_longitude_is_read_in_minus_180_to_180(longitude, night):
    assert norm({"DATE-OBS": "2021-03-06T12:00:00", **longitude})["night"] == night
