"""What the README's tour shows on the demo, and what `summary` and
`report quality` say they count, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from factories import obsarch, write_image

from archive.catalog import Catalog
from cli.demo import make_night
from processing import calibration


@pytest.fixture
def demo(url, tmp_path):
    """The demo, made by `obsarch demo` on the backend under test."""
    result = obsarch(url, "demo", str(tmp_path / "demo"))
    return url, tmp_path / "demo", result


def test_the_demo_summarizes_its_xray_files_as_an_ingest_does(demo):
    url, _, made = demo
    assert "x-ray: 10 summarized, 0 up to date, 0 failed" in made.stdout
    catalog = Catalog(url)
    spectra = catalog.query("xray_kind == 'spectrum'", columns="obsid,xray_role,rate,net_rate,exposure_ks,background_file,response,arf",
                            sort="obsid,xray_role")
    assert spectra[["obsid", "xray_role"]].values.tolist() == [
        ["0013140101", "background"], ["0013140101", "source"], ["0761220101", "background"], ["0761220101", "source"]]
    source = spectra[spectra["xray_role"] == "source"]
    assert (source["rate"] > 5).all() and source["exposure_ks"].tolist() == [12.0, 1.7]
    assert (source["net_rate"] < source["rate"]).all() and (source["net_rate"] > 5).all()
    for column, name in (("background_file", "pn_bkg.pha"), ("response", "pn.rmf"), ("arf", "pn.arf")):
        assert source[column].str.endswith(name).all(), column
    events = catalog.query("xray_kind == 'events'", columns="obsid,n_events,rate,exposure_ks,gti_exposure_ks,time_span_ks",
                           sort="obsid")
    assert events["gti_exposure_ks"].tolist() == [12.0, 1.7]  # the GTI extension is read
    assert events["exposure_ks"].tolist() == [12.0, 1.7]  # no EXPOSURE beyond the GTIs, so no warning
    assert (events["rate"] > 5).all() and (events["time_span_ks"] > events["gti_exposure_ks"]).all()  # flares cut


def test_the_tours_xray_lines_list_rows_on_the_demo(demo):
    url, _, _ = demo
    assert "4 spectra" in obsarch(url, "report", "spectra", "obsid in ('0013140101', '0761220101')").stderr
    assert "2 spectra" in obsarch(url, "report", "spectra", "--min-exposure", "5ks").stderr  # the 12 ks obsid's two
    rows = obsarch(url, "query", "xray_role == 'source' and rate > 5 and exposure_ks >= 5", "--columns", "obsid").stdout
    assert rows.split() == ["obsid", "0013140101"]
    rows = obsarch(url, "query", "xray_kind == 'events' and gti_exposure_ks < 2", "--columns", "obsid").stdout
    assert rows.split() == ["obsid", "0761220101"]
    assert "0 summarized, 10 up to date" in obsarch(url, "xray", "summarize").stdout


def test_the_demo_is_the_same_every_time(tmp_path):
    first, second = make_night(tmp_path / "a"), make_night(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))


def _night_with_a_master(directory, rng):
    """Three bias frames and two V science frames, and a master bias made of the biases."""
    for i in range(3):
        write_image(directory / "raw" / f"b{i}.fits", rng.normal(500, 3, (16, 16)).astype(np.float32),
                    {"IMAGETYP": "Bias Frame", "FILTER": None, "EXPTIME": 0.0, "DATE-OBS": f"2017-08-16T0{i}:00:00"})
    for i in range(2):
        write_image(directory / "raw" / f"s{i}.fits", rng.normal(900, 3, (16, 16)).astype(np.float32),
                    {"IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": 60.0, "DATE-OBS": f"2017-08-16T04:0{i}:00"})


def test_summary_says_it_counts_raw_exposures_and_how_many_products_it_left_out(catalog, url, tmp_path, rng):
    _night_with_a_master(tmp_path, rng)
    catalog.ingest([tmp_path / "raw"])
    shown = obsarch(url, "summary")
    assert shown.stderr == ""  # nothing left out: nothing said
    calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters")
    shown = obsarch(url, "summary")
    assert "raw exposures only; 1 product left out (1 master_bias): see `obsarch products`" in shown.stderr
    assert "# raw exposures per frame_type\nframe_type\texposures\nbias\t3\nscience\t2\n" in shown.stdout
    assert "# files per status\n" in shown.stdout
    assert "4 exposures" in obsarch(url, "query", "frame_type == 'bias'").stderr  # query counts the master too
    # the biases have no band: empty last on both backends (SQLite listed it first, PostgreSQL last)
    assert "# raw exposures per band\nband\texposures\nV\t2\n\t3\n" in shown.stdout
    assert [(n["band"], n["exposures"]) for n in catalog.nights()] == [("V", 2), (None, 3)]


def test_report_quality_says_what_its_table_and_page_count(catalog, url, tmp_path, rng):
    _night_with_a_master(tmp_path, rng)
    write_image(tmp_path / "raw" / "x.fits", rng.normal(900, 3, (16, 16)).astype(np.float32),
                {"IMAGETYP": "Light Frame", "FILTER": None, "INSTRUME": "OtherCam", "EXPTIME": 60.0,
                 "DATE-OBS": "2017-08-16T05:00:00"})
    catalog.ingest([tmp_path / "raw"])
    shown = obsarch(url, "report", "quality", "--html", str(tmp_path / "report")).stdout
    assert "# science exposures (products included) per night, band and grade\n" in shown
    assert "\t\t1\n" in shown  # the science frame without a band keeps its row (pivot_table drops NaN keys)
    last = shown.strip().splitlines()[-1]
    assert last.startswith(f"wrote {tmp_path / 'report' / 'index.html'} (6 frames, 0 without a thumbnail), "
                           "every type and instrument: 3 bias, 3 science; ")
    assert last.endswith(", 1 OtherCam")
    shown = obsarch(url, "report", "quality", "--html", str(tmp_path / "v"), "--selection", "band == 'V'").stdout
    assert "(2 frames, 0 without a thumbnail), selected by \"band == 'V'\": 2 science; 2 " in shown.strip().splitlines()[-1]

