"""Binning, gain, CCD temperature and detector columns: from headers, real and made."""

from __future__ import annotations

import pytest
from test_keywords import norm, units

from archive.detectors import Detector, detectors_of_units, select_detectors
from archive.exceptions import ObsarchError
from archive.headers import read_headers
from archive.keywords import load_maps, normalize

DETECTOR_COLUMNS = ("xbin", "ybin", "gain", "ccd_temp", "detector", "detector_shape", "n_detectors")


@pytest.mark.parametrize(
    "cards, expected",
    [
        ({"XBINNING": 2, "YBINNING": 1}, (2, 1)),
        ({"CCDSUM": "2 2"}, (2, 2)),
        ({"CCDSUM": "1 4"}, (1, 4)),
        ({"BINNING": "3x3"}, (3, 3)),
        ({"HIERARCH ESO DET BINX": 1, "HIERARCH ESO DET BINY": 2}, (1, 2)),
        ({"XBINNING": 0, "YBINNING": 0}, (None, None)),
        ({"CCDSUM": "UNKNOWN"}, (None, None)),
        ({"CCDSUM": "2 2", "XBINNING": 2}, (2, 2)),  # a pair beats half of one
        ({}, (None, None)),
    ],
)
def test_binning(cards, expected):
    row = norm(cards)
    assert (row["xbin"], row["ybin"]) == expected


@pytest.mark.parametrize(
    "cards, gain",
    [
        ({"GAIN": 1.9}, 1.9),
        ({"EGAIN": 2.6}, 2.6),
        ({"HIERARCH ESO DET OUT1 CONAD": 0.97, "HIERARCH ESO DET OUT1 GAIN": 1.0357}, 0.97),  # e-/ADU, not ADU/e-
        ({"HIERARCH ESO DET OUT1 GAIN": 1.0357}, None),
        # MUSE: four amplifiers of different gain make no one gain of the chip
        ({"HIERARCH ESO DET OUT1 CONAD": 0.91, "HIERARCH ESO DET OUT2 CONAD": 0.94}, None),
        ({"HIERARCH ESO DET OUT1 CONAD": 0.91, "HIERARCH ESO DET OUT2 CONAD": 0.91}, 0.91),
        ({"GAIN": 0.0}, None),
        ({"GAIN": "high"}, None),
    ],
)
def test_gain_in_electrons_per_adu(cards, gain):
    assert norm(cards)["gain"] == gain


@pytest.mark.parametrize(
    "cards, celsius",
    [
        ({"CCD-TEMP": -20.04}, -20.04),
        ({"CCDATEMP": -20.03, "CCDSTEMP": -20.0}, -20.03),  # LCO: the measured one, not the set point
        ({"HIERARCH ESO DET CHIP TEMP": 163.0}, pytest.approx(-110.15)),  # kelvin
        ({"CCD-TEMP": 180.2}, pytest.approx(-92.95)),  # SAAO STE3 writes kelvin
        ({"CCD-TEMP": -300.0}, None),
        ({"SET-TEMP": -20.0}, None),
    ],
)
def test_ccd_temperature_in_celsius(cards, celsius):
    assert norm(cards)["ccd_temp"] == celsius


def test_kelvin_is_said_in_the_sources():
    import json

    assert "kelvin" in json.loads(norm({"CCD-TEMP": 180.2})["sources"])["ccd_temp"]


def _detector_units(*specs):
    made = units(*[{"EXTNAME": name} if name else {} for name, _ in specs])
    for unit, (_, shape) in zip(made, specs):
        unit.shape = shape
    return made


def test_detectors_are_image_extensions_without_masks():
    made = _detector_units((None, None), ("SCI", "1020x1523"), ("BPM", "1020x1523"))
    made[2].hdu_type = "compressed"
    assert detectors_of_units(made) == [Detector(1, "SCI", (1020, 1523))]


def test_muse_like_file_has_one_detector_per_channel():
    made = _detector_units((None, None), *[(f"CHAN{i:02d}", "4112x4096") for i in range(1, 25)])
    found = detectors_of_units(made)
    assert [d.name for d in found] == [f"CHAN{i:02d}" for i in range(1, 25)]
    row = normalize(made, "muse.fits", load_maps())
    assert (row["n_detectors"], row["detector_shape"], row["detector"]) == (24, "4112x4096", None)


def test_detectors_of_different_shapes_leave_the_shape_empty_and_say_why():
    import json

    made = _detector_units((None, None), ("CCD1", "64x32"), ("CCD2", "32x32"))
    row = normalize(made, "mosaic.fits", load_maps())
    assert row["detector_shape"] is None
    assert json.loads(row["sources"])["detector_shape"] == "detectors differ: 32x32, 64x32"


def test_a_detector_without_extname_is_named_by_its_keyword():
    made = units({}, {"CCDNAME": "amp2"}, {"HIERARCH ESO DET CHIP INDEX": 7})
    for unit in made[1:]:
        unit.shape, unit.extname = "16x16", None
    assert [d.name for d in detectors_of_units(made)] == ["amp2", "CHIP7"]


def test_hdu_option_restricts_and_names_unknown_detectors():
    found = [Detector(1, "CHAN01", (4, 4)), Detector(2, "CHAN02", (4, 4))]
    assert select_detectors(found, ("chan02",)) == [found[1]]
    with pytest.raises(ObsarchError, match=r"--hdu CHAN09: no such detector \(this file has CHAN01, CHAN02\)"):
        select_detectors(found, ("CHAN09",))


REAL = {
    "ccd_imaging/ogg0m404-kb82-20170815-1159-e91.fits.fz": (2, 2, 1.0, pytest.approx(-20.0320677), "ccdkb82-1", "1020x1523", 1),
    "ccd_imaging/UB17-001-c.fit": (1, 1, pytest.approx(2.6), pytest.approx(0.189, abs=1e-3), None, "1020x1530", 1),
    "ccd_imaging/a8280271.fits": (None, None, 1.9, pytest.approx(-92.95), None, "520x536", 1),
    # products of all 24 IFUs whose primary still names the first chip: no detector of their own,
    # and no gain: the four outputs' CONAD differ (0.97, 0.96, 0.91, 0.92; 0.91, 0.94, 0.88, 0.9)
    "eso_muse/MUSE.2017-06-16T01:34:56.867.fits": (1, 1, None, None, None, None, 0),
    "eso_muse/minicube.primary-header-only.fits": (1, 1, None, None, None, None, 0),
    "eso_muse/subcub_mosaic.fits": (None, None, None, None, None, "500x30x30", 1),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_headers(real_data, name):
    headers, _ = read_headers(real_data / name)
    row = normalize(headers, name, load_maps())
    assert tuple(row[c] for c in DETECTOR_COLUMNS) == REAL[name]


def test_lco_bpm_is_not_a_detector(real_data):
    headers, _ = read_headers(real_data / "ccd_imaging/ogg0m404-kb82-20170815-1159-e91.fits.fz")
    assert [(d.hdu_index, d.name) for d in detectors_of_units(headers)] == [(1, "SCI")]


def test_selection_names_on_ingested_real_frames(catalog, real_data):
    catalog.ingest([real_data / "ccd_imaging"])
    def names(selection):
        return sorted(catalog.query(selection, columns="relpath")["relpath"])
    lco = names("binning == '2x2'")
    assert len(lco) == 4 and all(n.startswith("ogg0m404") for n in lco)
    assert names("xbin == 2 and ybin == 2 and gain == 1 and ccd_temp < -20") == lco
    assert names("detector_shape == '1020x1523' and n_detectors == 1") == lco
    assert names("detector == 'ccdkb82-1'") == lco
    assert names("ccd_temp < -90") == ["a8280271.fits"]


def test_renormalize_fills_the_columns_of_files_ingested_before_them(catalog, real_data):
    from sqlalchemy import update
    from typer.testing import CliRunner

    from archive.models import Exposure
    from cli.main import app

    catalog.ingest([real_data / "ccd_imaging"])
    columns = "relpath,xbin,ybin,gain,ccd_temp,detector,detector_shape,n_detectors"
    before = catalog.query(None, columns=columns, sort="relpath")
    with catalog.engine.begin() as conn:  # as a catalog upgraded to 0009 has them
        conn.execute(update(Exposure).values(**{c: None for c in DETECTOR_COLUMNS}))
    assert catalog.query("xbin is not null or n_detectors is not null", columns="relpath").empty
    url = catalog.engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(app, ["--db", url, "db", "renormalize"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"renormalized {len(before)} exposures"
    after = catalog.query(None, columns=columns, sort="relpath")
    assert after.astype(object).where(after.notna(), None).values.tolist() == \
        before.astype(object).where(before.notna(), None).values.tolist()


def test_detectors_sharing_an_extname_are_told_apart_by_extver(tmp_path):
    import numpy as np
    from astropy.io import fits

    from processing import detectors as pixels

    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(np.zeros((4, 4), np.float32), name="SCI", ver=v) for v in (1, 2, 3)]
    hdus.append(fits.ImageHDU(np.zeros((4, 4), np.int16), name="DQ", ver=1))
    fits.HDUList(hdus).writeto(tmp_path / "gmos.fits")
    headers, _ = read_headers(tmp_path / "gmos.fits")
    expected = [(1, "SCI.1"), (2, "SCI.2"), (3, "SCI.3")]
    assert [(d.hdu_index, d.name) for d in detectors_of_units(headers)] == expected
    with pixels.opened(tmp_path / "gmos.fits") as hdul:
        assert [(d.hdu_index, d.name) for d in pixels.detectors_of(hdul)] == expected
        assert pixels.companions_of(hdul) == [4]


def test_catalog_and_file_agree_on_detectors(catalog, tmp_path):
    import numpy as np
    from astropy.io import fits

    from archive.detectors import detectors_of_files
    from processing import detectors as pixels

    hdus = [fits.PrimaryHDU(np.zeros((6, 5), np.float32))]
    hdus += [fits.ImageHDU(np.zeros((4, 4), np.float32), name="SCI", ver=v) for v in (1, 2)]
    unnamed = fits.ImageHDU(np.zeros((3, 3), np.float32))
    unnamed.header["CCDNAME"] = "amp7"
    fits.HDUList([*hdus, unnamed]).writeto(tmp_path / "mixed.fits")
    catalog.ingest([tmp_path / "mixed.fits"])
    with catalog.engine.connect() as conn:
        (stored,) = detectors_of_files(conn, [1]).values()
    with pixels.opened(tmp_path / "mixed.fits") as hdul:
        assert stored == pixels.detectors_of(hdul)
    assert [d.name for d in stored] == ["PRIMARY", "SCI.1", "SCI.2", "amp7"]


def test_renormalize_keeps_what_a_step_gave_a_product(catalog, tmp_path, rng):
    from factories import write_frame
    from sqlalchemy import update

    from archive.models import Exposure
    from archive.renormalize import renormalize
    from processing import calibration

    for i in range(3):
        write_frame(tmp_path / "raw" / f"b-{i}.fits", rng, {"IMAGETYP": "Bias Frame", "XBINNING": 2, "YBINNING": 2,
                                                            "CCD-TEMP": -20.0 - i, "DATE-OBS": f"2017-08-16T0{i}:00:00"})
    catalog.ingest([tmp_path / "raw"])
    assert calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "m").exit_code == 0
    master = "product == 'master_bias'"
    assert list(catalog.query(master, columns="binning,ccd_temp,n_detectors").iloc[0]) == ["2x2", -21.0, 1]
    with catalog.engine.begin() as conn:  # as a product made before 0009: n_detectors unknown
        conn.execute(update(Exposure).where(Exposure.frame_type == "bias", Exposure.frame_number.is_(None))
                     .values(n_detectors=None))
    renormalize(catalog.engine)
    # the mean temperature the step gave stays; its card says the same
    assert list(catalog.query(master, columns="binning,ccd_temp,n_detectors").iloc[0]) == ["2x2", -21.0, 1]


def test_renormalize_gives_a_product_no_frame_number(catalog, tmp_path, rng):
    """A product is no camera frame: the digits of its name (the raw frame's
    number in ngc3293-3862_cal.fits) give it none, at ingest or after."""
    from factories import write_frame

    from archive.renormalize import renormalize
    from processing import calibration

    for i in range(3):
        write_frame(tmp_path / "raw" / f"bias-{i + 1}.fits", rng, {"IMAGETYP": "Bias Frame", "DATE-OBS": f"2017-08-16T0{i}:00:00"})
    write_frame(tmp_path / "raw" / "ngc3293-3862.fits", rng, {"IMAGETYP": "Light Frame", "DATE-OBS": "2017-08-16T05:00:00"})
    catalog.ingest([tmp_path / "raw"])
    assert calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "m").exit_code == 0
    assert calibration.calibrate(catalog.engine, "frame_type == 'science'", use=("bias",), out_dir=tmp_path / "cal",
                                 workers=1).exit_code == 0

    def numbers():
        _, rows = catalog.rows("product is not null", columns="path,frame_number")
        return {(path.split("/")[-1], number) for path, number in rows}

    made = numbers()
    assert {name for name, _ in made} >= {"ngc3293-3862_cal.fits"} and all(number is None for _, number in made)
    renormalize(catalog.engine)
    assert numbers() == made
    assert catalog.exposure_ids("frame_number == 3862") == catalog.exposure_ids("frame_type == 'science' and product is null")


@pytest.mark.parametrize("gains, expected", [((1.5, 1.5), 1.5), ((1.5, 2.1), None)])
def test_a_file_has_a_gain_only_when_its_detectors_agree(tmp_path, gains, expected):
    import json

    import numpy as np
    from astropy.io import fits

    hdus = [fits.PrimaryHDU()]
    for number, gain in enumerate(gains, 1):
        hdus.append(fits.ImageHDU(np.zeros((4, 4), np.float32), name=f"CCD{number}"))
        hdus[-1].header["GAIN"] = gain
    fits.HDUList(hdus).writeto(tmp_path / "mosaic.fits")
    headers, _ = read_headers(tmp_path / "mosaic.fits")
    row = normalize(headers, "mosaic.fits", load_maps())
    assert row["gain"] == expected
    if expected is None:
        assert json.loads(row["sources"])["gain"] == "gains differ (GAIN): CCD1 1.5, CCD2 2.1"


def test_show_says_why_muse_has_no_gain(catalog, real_data):
    from typer.testing import CliRunner

    from cli.main import app

    catalog.ingest([real_data / "eso_muse"])
    (exposure_id,) = catalog.query("relpath like '%minicube%'", columns="id")["id"]
    url = catalog.engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(app, ["--db", url, "show", "--id", str(exposure_id)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "xbin=1  ybin=1  n_detectors=0" in lines[1] and "gain=" not in lines[1]
    assert lines[2] == "gain left empty: gains differ (ESO DET OUT1 CONAD): OUT1 0.91, OUT2 0.94, OUT3 0.88, OUT4 0.9"
