"""What the README's tour shows on the demo, on both backends."""

from __future__ import annotations

import pytest
from factories import obsarch

from archive.catalog import Catalog
from cli.demo import make_night


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

