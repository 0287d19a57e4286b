"""X-ray products on the real files of shared/data/real/xray: kinds,
summaries checked against sums made here with astropy and against
MANIFEST.md, links, the spectra report, named metrics and regions."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tracemalloc
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from conftest import make_catalog
from factories import obsarch
from typer.testing import CliRunner

from processing import xray
from processing.xray_catalog import candidate_files, parse_duration_s, summarize

runner = CliRunner()

# From MANIFEST.md: (file, kind, EXPOSURE or None, rows of the summarized table)
MANIFEST = [
    ("3c273.pi", "spectrum", 38564.608926889, 1024),
    ("3c273_bg.pi", "spectrum", 38564.608926889, 1024),
    ("MNLup_2138_0670580101_EMOS1_S001_specbg.fits", "spectrum", 42589.3742691135, 800),
    ("target_sr.pha", "spectrum", 4812.266998952208, 1024),
    ("chandra_test.fits", "events", None, 4612),
    ("dummy_evt.evt", "events", 38221.4331837686, 937),
    ("xte_test.evt.gz", "events", None, 1000),
    ("LightCurve_bexvar.fits", "lightcurve", None, 3740),
    ("nu30002041016A01_cl_3to20keV_det1.fits", "image", 29526.04058639671, None),
]


run = obsarch  # run(url, *args, code=0)


def _mjd_utc(seconds, header, mjdref):
    whole, fraction = mjdref
    offset = (seconds + header.get("TIMEZERO", 0.0)) / 86400
    return Time(whole, fraction + offset, format="mjd", scale="tt").utc.mjd


# -- pure ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "kind"), [
    ({"HDUCLAS1": "RESPONSE", "HDUCLAS2": "SPECRESP", "EXTNAME": "SPECRESP"}, "arf"),  # OGIP ARF (was 'response')
    ({"HDUCLAS1": "RESPONSE", "HDUCLAS2": "RSP_MATRIX", "EXTNAME": "MATRIX"}, "response"),  # OGIP RMF
    ({"HDUCLAS1": "RESPONSE", "HDUCLAS2": "EBOUNDS", "EXTNAME": "EBOUNDS"}, None),  # the RMF's channel bounds
    ({"EXTNAME": "SPECRESP"}, "arf"),
    ({"HDUCLAS1": "RESPONSE", "EXTNAME": "SPECRESP"}, "arf"),  # no HDUCLAS2: its extension says ARF (was 'response')
    ({"HDUCLAS1": "RESPONSE", "EXTNAME": "MATRIX"}, "response"),
])
def test_ogip_responses_tell_an_arf_from_a_matrix(header, kind):
    assert xray.hdu_kind(header, is_table=True, has_data=True) == kind


@pytest.mark.parametrize(("name", "kind", "exposure", "rows"), MANIFEST)
def test_kind_and_table_size_as_the_manifest_says(real_data, name, kind, exposure, rows):
    summary = xray.summarize_file(str(real_data / "xray" / name))
    assert summary.kind == kind
    if exposure is not None:
        assert summary.exposure_s == pytest.approx(exposure, rel=1e-12)
    if kind == "spectrum":
        assert summary.channels == rows
    if kind == "events":
        assert summary.n_events == rows


@pytest.mark.parametrize("name", ["3c273.pi", "3c273_bg.pi", "MNLup_2138_0670580101_EMOS1_S001_specbg.fits", "target_sr.pha"])
def test_spectrum_counts_and_rate_are_astropy_sums(real_data, name):
    path = real_data / "xray" / name
    with fits.open(path) as hdul:
        counts = float(np.sum(hdul["SPECTRUM"].data["COUNTS"], dtype=float))
        exposure = hdul["SPECTRUM"].header["EXPOSURE"]
    summary = xray.summarize_file(str(path))
    assert summary.counts == counts
    assert summary.rate == pytest.approx(counts / exposure, rel=1e-12)


def test_spectrum_roles(real_data):
    roles = {name: xray.summarize_file(str(real_data / "xray" / name)).role
             for name in ("3c273.pi", "target_sr.pha", "MNLup_2138_0670580101_EMOS1_S001_specbg.fits")}
    assert roles == {"3c273.pi": "source", "target_sr.pha": "source",
                     "MNLup_2138_0670580101_EMOS1_S001_specbg.fits": "background"}


@pytest.mark.parametrize("name", ["chandra_test.fits", "dummy_evt.evt", "xte_test.evt.gz"])
def test_events_are_astropy_sums(real_data, name):
    path = real_data / "xray" / name
    with fits.open(path) as hdul:
        events = hdul[1]
        times = np.asarray(events.data.field(next(n for n in events.columns.names if n.upper() == "TIME")))
        gti = next(h for h in hdul[2:] if h.name in ("GTI", "STDGTI"))
        start, stop = (next(n for n in gti.columns.names if n.upper() == w) for w in ("START", "STOP"))
        good = float(np.sum(gti.data[stop] - gti.data[start]))
        exposure = events.header.get("EXPOSURE")
        live = events.header.get("DTCOR", events.header.get("DEADC", 1.0))  # the live fraction of the good time
    summary = xray.summarize_file(str(path))
    assert summary.n_events == len(times)
    assert summary.gti_exposure_s == pytest.approx(good, rel=1e-12)
    assert summary.time_span_s == pytest.approx(float(times.max() - times.min()), rel=1e-12)
    per = good * live if not exposure or exposure > good * 1.001 else exposure
    assert summary.rate == pytest.approx(len(times) / per, rel=1e-12)


def test_a_cut_event_list_is_rated_by_its_good_time_and_says_so(real_data):
    # MANIFEST: chandra_test.fits is trimmed to ~945 s while EXPOSURE describes the whole observation
    # (its DTCOR 0.907, the live fraction: 4.879 c/s per on time was 9% low)
    summary = xray.summarize_file(str(real_data / "xray" / "chandra_test.fits"))
    assert summary.gti_exposure_s == pytest.approx(945.3, abs=0.1)
    assert summary.rate == pytest.approx(4612 / (summary.gti_exposure_s * 0.90694721567205))
    assert summary.rate == pytest.approx(5.379, abs=5e-4)
    assert any("exceeds the good time intervals" in w and "x DTCOR 0.906947 (live time)" in w for w in summary.warnings)


def test_light_curve_mean_rate_and_fractional_rms(real_data):
    path = real_data / "xray" / "LightCurve_bexvar.fits"
    data = fits.getdata(path, "RATE")
    rate = data["RATE"][:, 0].astype(float)
    weight = data["FRACEXP"][:, 0] * data["TIMEDEL"]
    keep = np.isfinite(rate) & (weight > 0)
    mean = np.average(rate[keep], weights=weight[keep])
    rms = np.sqrt(np.average((rate[keep] - mean) ** 2, weights=weight[keep])) / mean
    summary = xray.summarize_file(str(path))
    assert summary.mean_rate == pytest.approx(mean, rel=1e-9)
    assert summary.frac_rms == pytest.approx(rms, rel=1e-9)
    assert any("3 energy bands" in w for w in summary.warnings)
    # its TSTART is four days after its DATE-OBS (and its first TIME): said, not taken as right
    assert ("TSTART and DATE-OBS (2019-11-03T01:08:06) are 4.1 days apart: mjd_start and mjd_stop follow TSTART; "
            "date_obs, mjd and night keep DATE-OBS") in summary.warnings


@pytest.mark.parametrize(
    ("name", "reference"),
    [("3c273.pi", "mjdref"), ("dummy_evt.evt", "mjdrefi"), ("target_sr.pha", "mjdrefi"), ("xte_test.evt.gz", "mjdrefi"),
     ("MNLup_2138_0670580101_EMOS1_S001_specbg.fits", "mjdref")],
)
def test_mjd_from_tstart_tstop_in_utc(real_data, name, reference):
    path = real_data / "xray" / name
    with fits.open(path) as hdul:
        timed = [h.header for h in hdul if "TSTART" in h.header and ("MJDREF" in h.header or "MJDREFI" in h.header)]
    header = timed[0]
    mjdref = (header["MJDREFI"], header["MJDREFF"]) if reference == "mjdrefi" else (int(header["MJDREF"]), header["MJDREF"] % 1)
    start = min(_mjd_utc(h["TSTART"], h, mjdref) for h in timed)
    stop = max(_mjd_utc(h["TSTOP"], h, mjdref) for h in timed)
    summary = xray.summarize_file(str(path))
    assert summary.mjd_start == pytest.approx(start, abs=1e-9)
    assert summary.mjd_stop == pytest.approx(stop, abs=1e-9)
    assert summary.mjd_mid == pytest.approx((start + stop) / 2, abs=1e-9)


@pytest.mark.parametrize(("name", "scale"), [("3c273.pi", "tt"), ("xte_test.evt.gz", "tt"), ("target_sr.pha", "utc")])
def test_mjd_start_agrees_with_date_obs(real_data, name, scale):
    # Chandra and RXTE write DATE-OBS in TT, Swift in UTC: both agree with
    # TSTART converted to UTC to within the second DATE-OBS is rounded to;
    # without the TT -> UTC step they would differ by 64-68 s
    header = fits.getheader(real_data / "xray" / name, 1)
    summary = xray.summarize_file(str(real_data / "xray" / name))
    date_obs = Time(header["DATE-OBS"], scale=scale).utc.mjd
    assert abs(summary.mjd_start - date_obs) * 86400 < 1.0
    assert not any("DATE-OBS" in w for w in summary.warnings)


def test_columns_are_read_in_chunks_not_whole(tmp_path, monkeypatch, rng):
    rows = 200_000
    columns = [fits.Column(name="TIME", format="D", array=np.sort(rng.uniform(0, 1e4, rows)))]
    columns += [fits.Column(name=f"C{i}", format="D", array=np.zeros(rows)) for i in range(5)]
    events = fits.BinTableHDU.from_columns(columns, name="EVENTS")
    events.header["HDUCLAS1"], events.header["EXPOSURE"] = "EVENTS", 1e4
    gti = fits.BinTableHDU.from_columns([fits.Column(name="START", format="D", array=[0.0]),
                                         fits.Column(name="STOP", format="D", array=[1e4])], name="GTI")
    path = tmp_path / "big.evt"
    fits.HDUList([fits.PrimaryHDU(), events, gti]).writeto(path)
    xray.summarize_file(str(path))  # imports and caches outside the measurement
    monkeypatch.setattr(xray, "CHUNK_ROWS", 10_000)
    tracemalloc.start()
    try:
        summary = xray.summarize_file(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.n_events == rows
    assert summary.time_span_s == pytest.approx(float(np.ptp(columns[0].array)))
    assert peak < rows * 8 / 4  # a quarter of the TIME column alone


def test_durations():
    assert parse_duration_s("5ks") == 5000.0
    assert parse_duration_s("5 ks") == 5000.0
    assert parse_duration_s("4812s") == 4812.0
    assert parse_duration_s("300") == 300.0
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s("5 min")


# -- catalog, both backends ---------------------------------------------------------------


@pytest.fixture
def xray_dir(tmp_path, real_data):
    """A copy of the X-ray files (the links are relative to each file, and
    some tests add or remove files next to them)."""
    target = tmp_path / "xray"
    shutil.copytree(real_data / "xray", target)
    return target


@pytest.fixture
def ingested(url, xray_dir):
    make_catalog(url)
    result = run(url, "ingest", str(xray_dir))
    return url, xray_dir, result


def _csv(text):
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def test_ingest_summarizes_and_links(ingested, real_data):
    url, directory, result = ingested
    assert "x-ray: 9 summarized, 0 up to date, 0 failed" in result.stdout
    assert "3c273.pi: RESPFILE '3c273.rmf': no such file" in result.stderr
    assert "target_sr.pha: BACKFILE is 'none': no background linked" in result.stderr
    rows = _csv(run(url, "query", "xray_kind == 'spectrum' and xray_role == 'source'", "--columns",
                    "relpath,counts,rate,net_rate,exposure_ks,background_file,response,arf", "--format", "csv").stdout)
    by_name = {r["relpath"]: r for r in rows}
    assert set(by_name) == {"3c273.pi", "target_sr.pha"}
    assert by_name["3c273.pi"]["background_file"] == str(directory / "3c273_bg.pi")
    assert by_name["3c273.pi"]["response"] == "" and by_name["3c273.pi"]["arf"] == ""
    with fits.open(directory / "3c273.pi") as source, fits.open(directory / "3c273_bg.pi") as background:
        s, b = source["SPECTRUM"], background["SPECTRUM"]
        net = (s.data["COUNTS"].sum() / s.header["EXPOSURE"]
               - b.data["COUNTS"].sum() / b.header["EXPOSURE"] * s.header["BACKSCAL"] / b.header["BACKSCAL"])
    assert float(by_name["3c273.pi"]["net_rate"]) == pytest.approx(net, rel=1e-9)
    assert float(by_name["3c273.pi"]["exposure_ks"]) == pytest.approx(38.564608926889)
    assert by_name["target_sr.pha"]["net_rate"] == ""  # BACKFILE none: no net rate, never a made-up one
    shown = run(url, "show", str(directory / "3c273.pi"), "--hdu", "0").stdout
    assert f"background_file={directory / '3c273_bg.pi'}" in shown
    assert "RESPFILE: 3c273.rmf (not linked)" in shown and "xray_role=source" in shown
    # the spectrum named by BACKFILE is a background, though its HDUCLAS2 says TOTAL
    out = run(url, "query", "xray_role == 'background'", "--columns", "relpath", "--format", "csv").stdout
    assert {r["relpath"] for r in _csv(out)} == {"3c273_bg.pi", "MNLup_2138_0670580101_EMOS1_S001_specbg.fits"}


def test_selections_over_summaries(ingested):
    url, _, _ = ingested
    out = run(url, "query", "xray_kind == 'events' and n_events > 900 and gti_exposure_ks < 2", "--columns", "relpath",
              "--format", "csv").stdout
    assert {r["relpath"] for r in _csv(out)} == {"chandra_test.fits", "xte_test.evt.gz"}
    out = run(url, "query", "rate > 0.01 and exposure_ks >= 5", "--columns", "relpath,rate", "--format", "csv").stdout
    assert {r["relpath"] for r in _csv(out)} == {"3c273.pi", "MNLup_2138_0670580101_EMOS1_S001_specbg.fits", "dummy_evt.evt",
                                                 "chandra_test.fits"}
    out = run(url, "query", "frac_rms > 0.1", "--columns", "relpath,mean_rate", "--format", "csv").stdout
    assert [r["relpath"] for r in _csv(out)] == ["LightCurve_bexvar.fits"]
    out = run(url, "query", "mission in ('xmm', 'nustar')", "--columns", "relpath,mission", "--format", "csv").stdout
    assert {(r["relpath"], r["mission"]) for r in _csv(out)} == {
        ("MNLup_2138_0670580101_EMOS1_S001_specbg.fits", "xmm"), ("dummy_evt.evt", "nustar"),
        ("nu30002041016A01_cl_3to20keV_det1.fits", "nustar")}


def test_report_spectra(ingested):
    url, _, _ = ingested
    rows = json.loads(run(url, "report", "spectra", "--format", "json").stdout)
    assert [r["obsid"] for r in rows] == ["459", "459", "0670580101", "00092220001"]  # by time
    assert [r["mjd_mid"] for r in rows] == sorted(r["mjd_mid"] for r in rows)
    rows = _csv(run(url, "report", "spectra", "--min-exposure", "5ks", "--format", "csv").stdout)
    assert "00092220001" not in {r["obsid"] for r in rows}  # 4.8 ks
    rows = _csv(run(url, "report", "spectra", "obsid == '00092220001'", "--min-exposure", "4812s", "--format", "csv").stdout)
    assert [(r["obsid"], r["role"], r["counts"]) for r in rows] == [("00092220001", "source", "58.0")]
    assert list(rows[0]) == ["obsid", "instrument", "object", "role", "mjd_mid", "counts", "rate", "net_rate", "exposure_ks",
                             "background_file", "response", "arf", "path"]  # the names `obsarch query` takes
    ecsv = run(url, "report", "spectra", "obsid == '459'", "--format", "ecsv").stdout
    assert ecsv.startswith("# %ECSV") and "3c273_bg.pi" in ecsv
    bad = run(url, "report", "spectra", "--min-exposure", "5 min", code=2)
    assert "'5 min' is not a duration: give a number with s or ks" in " ".join(re.sub("[│╭╮╰╯─]", " ", bad.stderr).split())


def test_background_ingested_later_is_linked_then(url, tmp_path, real_data):
    directory = tmp_path / "late"
    directory.mkdir()
    shutil.copy(real_data / "xray" / "3c273.pi", directory)
    run(url, "init")
    first = run(url, "ingest", str(directory))
    assert "BACKFILE '3c273_bg.pi': no such file" in first.stderr
    shutil.copy(real_data / "xray" / "3c273_bg.pi", directory)
    run(url, "ingest", str(directory))
    rows = _csv(run(url, "query", "relpath == '3c273.pi'", "--columns", "background_file,net_rate", "--format", "csv").stdout)
    assert rows[0]["background_file"] == str(directory / "3c273_bg.pi") and rows[0]["net_rate"] != ""


def test_summaries_of_another_file_version_are_not_shown(ingested, url):
    from sqlalchemy import update

    from archive.catalog import Catalog
    from archive.db import transaction
    from archive.models import File

    _, directory, _ = ingested
    catalog = Catalog(url)
    (file_id,) = catalog.exposure_ids("relpath == 'target_sr.pha'")
    with transaction(catalog.engine, write=True) as conn:
        conn.execute(update(File).where(File.id == file_id).values(version=2))
    assert catalog.query("relpath == 'target_sr.pha'", columns="counts")["counts"].isna().all()
    summary = summarize(catalog.engine)
    assert summary.summarized == [str(directory / "target_sr.pha")] and summary.skipped == 8
    assert catalog.query("relpath == 'target_sr.pha'", columns="counts")["counts"].tolist() == [58.0]
    catalog.engine.dispose()


def test_a_scan_of_optical_frames_opens_no_file(catalog, real_data):
    summary = catalog.ingest([real_data / "ccd_imaging"])
    with catalog.engine.connect() as conn:
        assert candidate_files(conn, run_id=summary.run_id) == {}


def test_an_eso_product_is_no_x_ray_file(url, tmp_path, real_data):
    """ESO classifies its HDUs too (MUSE: HDUCLASS 'ESO', HDUCLAS1 'IMAGE', as
    an X-ray image says): not summarized as an X-ray image, and not read
    again at every run (the real header-only MUSE file gave no summary, so
    it was never up to date)."""
    directory = tmp_path / "eso"
    directory.mkdir()
    data = fits.ImageHDU(np.zeros((4, 4), np.float32), name="DATA")
    data.header.update({"HDUCLASS": "ESO", "HDUCLAS1": "IMAGE", "HDUCLAS2": "DATA"})
    fits.HDUList([fits.PrimaryHDU(), data]).writeto(directory / "MUSE.fits")
    shutil.copy(real_data / "eso_muse" / "MUSE.2017-06-16T01:34:56.867.fits", directory)
    run(url, "init")
    run(url, "ingest", str(directory))
    assert "0 summarized, 0 up to date, 0 failed" in run(url, "xray", "summarize").stdout
    assert run(url, "query", "xray_kind is not null", "--format", "csv").stdout.splitlines()[1:] == []


def _spectrum(path, columns, **header):
    table = fits.BinTableHDU.from_columns(columns, name="SPECTRUM")
    table.header.update({"HDUCLAS1": "SPECTRUM", "HDUCLAS2": "TOTAL", "EXPOSURE": 1000.0, **header})
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)


def test_an_ingest_of_a_kind_obsarch_does_not_summarize_is_no_partial_result(url, tmp_path):
    """A Chandra grating pha2 is said 'not summarized', and the ingest still exits 0."""
    directory = tmp_path / "pha2"
    directory.mkdir()
    _spectrum(directory / "typeii.pha", [fits.Column(name="COUNTS", format="4J", array=np.ones((3, 4)))], HDUCLAS4="TYPE:II")
    run(url, "init")
    result = run(url, "ingest", str(directory))
    assert "x-ray: 0 summarized, 0 up to date, 1 failed" in result.stdout and "not summarized" in result.stderr


def test_a_negative_rate_channel_is_kept_but_a_negative_count_is_not(url, tmp_path):
    """A background-subtracted spectrum (Swift/BAT) has negative RATE channels: its rate stays."""
    directory = tmp_path / "bat"
    directory.mkdir()
    channel = fits.Column(name="CHANNEL", format="J", array=np.arange(4))
    _spectrum(directory / "rate.pha", [channel, fits.Column(name="RATE", format="E", array=np.array([0.5, -0.25, 0.25, 0.5]))])
    _spectrum(directory / "counts.pha", [channel, fits.Column(name="COUNTS", format="J", array=np.array([5, -1, 2, 1]))])
    run(url, "init")
    run(url, "ingest", str(directory))
    rows = _csv(run(url, "query", "xray_kind == 'spectrum'", "--columns", "relpath,rate", "--format", "csv").stdout)
    assert {r["relpath"]: r["rate"] for r in rows} == {"counts.pha": "", "rate.pha": "1.0"}


def test_metrics_a_tool_appends_to_keep_the_last_value(tmp_path):
    from processing.named_metrics import read_metrics_file

    (tmp_path / "m.txt").write_text("pileup=0.1\npileup=0.2\n")
    assert read_metrics_file(tmp_path / "m.txt") == {"pileup": 0.2}


def test_bad_x_ray_tables_are_refused_with_a_reason(url, tmp_path):
    directory = tmp_path / "bad"
    directory.mkdir()
    channel = fits.Column(name="CHANNEL", format="J", array=np.arange(4))
    _spectrum(directory / "nocounts.pha", [channel])
    _spectrum(directory / "typeii.pha", [fits.Column(name="COUNTS", format="4J", array=np.ones((3, 4)))], HDUCLAS4="TYPE:II")
    _spectrum(directory / "good.pha", [channel, fits.Column(name="COUNTS", format="J", array=np.arange(4))])
    run(url, "init")
    ingested = run(url, "ingest", str(directory), code=3)  # stored, but two have no counts: partial, as a step would say
    assert "x-ray: 1 summarized, 0 up to date, 2 failed" in ingested.stdout
    assert ingested.stderr.strip().splitlines()[-1] == "2 X-ray files could not be summarized"
    result = run(url, "xray", "summarize", "--force", code=3)
    assert "nocounts.pha: spectrum has neither a COUNTS nor a RATE column" in result.stderr
    assert "typeii.pha: type II spectrum (3 spectra in one table): not summarized" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "2 X-ray files could not be summarized"
    rows = _csv(run(url, "query", "xray_kind == 'spectrum'", "--columns", "relpath,counts", "--format", "csv").stdout)
    assert {r["relpath"]: r["counts"] for r in rows} == {"good.pha": "6.0", "nocounts.pha": "", "typeii.pha": ""}
    assert "not summarized: spectrum has neither" in run(url, "show", str(directory / "nocounts.pha")).stdout


# -- metrics ----------------------------------------------------------------------------


def test_metrics_set_by_a_person_and_selected(ingested):
    url, _, _ = ingested
    out = run(url, "metrics", "set", "obsid == '459'", "pileup=0.12", "single_frac=0.7").stdout
    assert "set on 2 exposures" in out
    run(url, "metrics", "set", "relpath == '3c273.pi'", "pileup=0.2")  # the latest counts
    rows = _csv(run(url, "query", "metric['pileup'] > 0.15", "--columns", "relpath,metric['pileup']", "--format", "csv").stdout)
    assert rows == [{"relpath": "3c273.pi", "metric['pileup']": "0.2"}]
    assert "metric pileup = 0.2  (person" in run(url, "show", str(ingested[1] / "3c273.pi")).stdout
    assert "pileup = 'high' is not a number" in run(url, "metrics", "set", "obsid == '459'", "pileup=high", code=2).stderr
    assert "'pileup' is not name=value" in run(url, "metrics", "set", "obsid == '459'", "pileup", code=2).stderr
    assert "no exposure matches" in run(url, "metrics", "set", "obsid == 'nope'", "pileup=1", code=1).stderr


_TOOL = """import json, sys
from astropy.io import fits
json.dump({"pileup": 0.31, "double_frac": 0.05}, open("pileup.json", "w"))
with fits.open(sys.argv[1]) as spectrum:
    spectrum.writeto("grouped.pi", overwrite=True)
"""


def test_metrics_from_a_wrapped_tool_with_lineage(ingested, tmp_path):
    from archive.catalog import Catalog
    from processing.runs import lineage

    url, directory, _ = ingested
    workdir = str(tmp_path / "runs" / "{item}")
    tool = tmp_path / "pileup_check.py"
    tool.write_text(_TOOL)
    out = run(url, "run", "relpath == '3c273.pi'", "--each", "exposure", "--workdir", workdir, "--metrics-from",
              "pileup.json", "--workers", "1", "--", sys.executable, str(tool), "{path}").stdout
    assert "1 done" in out
    assert "x-ray: 1 summarized" in out  # the product is an X-ray file too
    rows = _csv(run(url, "query", "metric['pileup'] > 0.3", "--columns", "relpath,metric['double_frac']", "--format", "csv").stdout)
    assert rows == [{"relpath": "3c273.pi", "metric['double_frac']": "0.05"}]
    shown = run(url, "show", str(directory / "3c273.pi")).stdout
    assert "metric pileup = 0.31  (tool, run " in shown
    catalog = Catalog(url)
    (product,) = catalog.exposure_ids("product == 'output' and xray_kind == 'spectrum' and counts == 736")
    tree = lineage(catalog.engine, product)
    spectrum, background = tree["inputs"]  # the tool read the spectrum and, through BACKFILE, its background
    assert (spectrum["role"], spectrum["path"]) == ("frame", str(directory / "3c273.pi"))
    assert [(i["role"], i["path"]) for i in spectrum["inputs"]] == [("background", str(directory / "3c273_bg.pi"))]
    assert (background["role"], background["path"]) == ("background", str(directory / "3c273_bg.pi"))
    catalog.engine.dispose()
    # a tool that wrote no metrics file fails its item with the reason
    result = run(url, "run", "relpath == 'target_sr.pha'", "--each", "exposure", "--workdir", workdir, "--metrics-from",
                 "pileup.json", "--workers", "1", "--", sys.executable, "-c", "pass", code=1)
    assert "the tool did not write pileup.json (--metrics-from)" in result.stderr.strip().splitlines()[-1]


# -- regions ----------------------------------------------------------------------------


def test_regions_attached_listed_and_passed_to_run(ingested, real_data, tmp_path):
    url, directory, _ = ingested
    region = real_data / "regions" / "30002041016A_StrayCatsI_704.reg"
    out = run(url, "regions", "attach", str(region), "--to", "obsid == '30002041016'").stdout
    assert "1 shape in image coordinates (circle) attached to 1 exposure" in out
    image = directory / "nu30002041016A01_cl_3to20keV_det1.fits"
    assert (f"region {region}  (ds9, image, 1 shapes: circle; attach; position not checked: image coordinates)"
            in run(url, "show", str(image)).stdout)
    rows = _csv(run(url, "query", "region like '%StrayCats%'", "--columns", "relpath,n_regions", "--format", "csv").stdout)
    assert rows == [{"relpath": image.name, "n_regions": "1"}]
    workdir = tmp_path / "runs"
    run(url, "run", "obsid == '30002041016'", "--each", "exposure", "--workdir", str(workdir / "{item}"), "--workers", "1",
        "--", sys.executable, "-c", "import sys; open('used.txt', 'w').write(sys.argv[1])", "{region}")
    (used,) = workdir.glob("*/used.txt")
    assert used.read_text() == str(region)


def test_run_each_obsid_never_hands_one_tool_two_observatories_files(url, tmp_path):
    """A Chandra and a NuSTAR file with OBS_ID 10027 were one item: the Chandra
    tool got a NuSTAR event list as part of "its" observation."""
    from factories import write_image

    for telescope in ("CHANDRA", "NuSTAR"):
        write_image(tmp_path / "raw" / f"{telescope}.fits", np.zeros((4, 4), np.float32), {"OBS_ID": "10027", "TELESCOP": telescope})
    write_image(tmp_path / "raw" / "other.fits", np.zeros((4, 4), np.float32), {"OBS_ID": "20001", "TELESCOP": "NuSTAR"})
    run(url, "init")
    run(url, "ingest", str(tmp_path / "raw"))
    out = run(url, "run", "--each", "obsid", "--workdir", str(tmp_path / "w" / "{item}"), "--workers", "1", "--",
              "sh", "-c", "echo {obsid} {paths} > seen").stdout
    assert "3 done" in out
    seen = {p.parent.name: p.read_text().split() for p in (tmp_path / "w").glob("*/seen")}
    assert seen == {"10027_CHANDRA": ["10027", str(tmp_path / "raw" / "CHANDRA.fits")],
                    "10027_NuSTAR": ["10027", str(tmp_path / "raw" / "NuSTAR.fits")],
                    "20001": ["20001", str(tmp_path / "raw" / "other.fits")]}


@pytest.mark.parametrize(
    ("name", "frame", "shapes", "excluded", "background"),
    [("test01_fk5.reg", "fk5", "source: circle, polygon, rectangle; background: ellipse (excluded)", 1, 1),  # "-ellipse(...) # background"
     ("test01_img.reg", "image", "source: circle, polygon, rectangle; background: ellipse (excluded)", 1, 1),
     ("srcA01.reg", "fk5", "circle", 0, 0),
     # SRCREG: one ellipse; BKGREG: an ellipse less two "!Ellipse" rows (the regions package drops the "!")
     ("acisf07999_000N001_r0035_reg3.fits", "physical", "source: ellipse; background: ellipse x3 (2 excluded)", 2, 3)],
)
def test_region_files_of_every_kind(real_data, name, frame, shapes, excluded, background):
    from processing.regions import read_region_file

    info = read_region_file(real_data / "regions" / name)
    assert (info.frame, info.shapes, info.n_excluded, info.n_background) == (frame, shapes, excluded, background)


@pytest.mark.parametrize(
    ("lines", "shapes", "excluded"),
    [(["-circle(150.0,2.6,10\")", "circle(150.01,2.61,20\")"], "circle x2 (1 excluded)", 1),
     (["circle(150.0,2.6,10\") # include=0", "box(150.01,2.61,20\",10\",0)"], "circle (excluded), rectangle", 1),
     (["circle(150.0,2.6,10\") # text={background}", "circle(150.01,2.61,20\")"], "circle x2", 0)],
)
def test_ds9_exclusion_shapes_are_counted_apart(tmp_path, lines, shapes, excluded):
    from processing.regions import read_region_file

    path = tmp_path / "src.reg"
    path.write_text("\n".join(["# Region file format: DS9 version 4.1", "fk5", *lines]) + "\n")
    info = read_region_file(path)
    assert (info.shapes, info.n_shapes, info.n_excluded, info.n_background) == (shapes, 2, excluded, 0)


@pytest.mark.parametrize(
    ("lines", "shapes", "n_background"),
    [(["global color=green background", "fk5", "circle(150.0,2.6,10\")", "circle(150.01,2.61,20\")"], "background: circle x2", 2),
     (["global color=green source=0", "fk5", "circle(150.0,2.6,10\")", "circle(150.01,2.61,20\") # source"],
      "source: circle; background: circle", 1),
     (["global color=green dashlist=8 3 width=1 include=1 source=1", "fk5", "circle(150.0,2.6,10\") # background",
       "circle(150.01,2.61,20\")"], "source: circle; background: circle", 1),
     (["fk5", "circle(150.0,2.6,10\") # source=0 color=red", "circle(150.01,2.61,20\")"], "source: circle; background: circle", 1),
     (["fk5", "circle(150.0,2.6,10\") # width=2 background", "circle(150.01,2.61,20\") # text={background}"],
      "source: circle; background: circle", 1),
     (["fk5; circle(150.0,2.6,10\") # background; box(150.01,2.61,20\",10\",0) # source"], "source: rectangle; background: circle", 1),
     (["fk5; circle(150.0,2.6,10\") # background; box(150.01,2.61,20\",10\",0)"], "source: rectangle; background: circle", 1),
     (["global color=red background; fk5; circle(150.0,2.6,10\") # source; box(150.01,2.61,20\",10\",0)"],
      "source: circle; background: rectangle", 1),
     (["fk5", "circle(150.0,2.6,10\") # source = 0", "circle(150.01,2.61,20\") # text={a;b} background=1"], "background: circle x2", 2),
     (["fk5", "circle(150.0,2.6,10\") # background", "circle(150.01,2.61,20\")", "text(150.0,2.6,{x # background})"],
      "source: circle, text; background: circle", 1)],
)
def test_ds9_roles_from_shapes_and_global_lines(tmp_path, lines, shapes, n_background):
    """A shape's own word or source= wins over the global line's."""
    from processing.regions import read_region_file

    path = tmp_path / "roles.reg"
    path.write_text("\n".join(["# Region file format: DS9 version 4.1", *lines]) + "\n")
    info = read_region_file(path)
    assert (info.shapes, info.n_background) == (shapes, n_background)


@pytest.mark.parametrize("encoded", [b"\xef\xbb\xbf# Region file format: DS9 version 4.1\nfk5\ncircle(150.0,2.6,10\") # text={M31}\n",
                                     b"# Region file format: DS9 version 4.1\nfk5\ncircle(150.0,2.6,10\") # text={\xc5ngstr\xf6m}\n"])
def test_a_region_file_with_a_byte_order_mark_or_a_latin1_label_is_read(tmp_path, encoded):
    """Both were refused whole ('cannot read the region file: utf-8 codec...')."""
    from processing.regions import read_region_file

    path = tmp_path / "odd.reg"
    path.write_bytes(encoded)
    info = read_region_file(path)
    assert (info.frame, info.shapes, info.skipped) == ("fk5", "circle", 0)


def test_a_region_line_of_unclosed_braces_is_refused_without_stalling(tmp_path):
    """Each unclosed '{' made the property pattern scan to the line's end: a
    200,000-brace line took minutes (a 1 MB one, about half an hour), and
    region files are read during an ingest. It is one line, at once."""
    import time

    from processing.regions import RegionReadError, read_region_file

    path = tmp_path / "braces.reg"
    path.write_text("# Region file format: DS9 version 4.1\nfk5\n#" + "{" * 200_000 + "\n")
    start = time.perf_counter()
    with pytest.raises(RegionReadError, match="no region the regions package can read"):
        read_region_file(path)
    assert time.perf_counter() - start < 20  # a guard against minutes, not a speed figure


@pytest.mark.parametrize("body, shape", [
    ('fk5\ncircle(nan,nan,5")\n', "1 (circle)"),
    ('fk5\ncircle(150.1,2.2,5")\ncircle(nan,2.2,5")\n', "2 (circle)"),
    ("image\ncircle(10,10,3)\nbox(10,10,nan,4,0)\n", "2 (rectangle)"),
    ("image\npolygon(1,1,nan,1,5,5)\n", "1 (polygon)"),
])
def test_a_shape_without_a_finite_position_or_size_refuses_the_file(tmp_path, body, shape):
    """circle(nan,nan,5") was attached, its position 'checked' against NaN."""
    from processing.regions import RegionReadError, read_region_file

    path = tmp_path / "odd.reg"
    path.write_text(body)
    with pytest.raises(RegionReadError) as refused:
        read_region_file(path)
    assert str(refused.value) == f"{path}: shape {shape} has a position or size that is not a finite number"


def _region_table(kind, shapes, radii):
    columns = [fits.Column(name="X", format="D", array=[10.0] * len(shapes)), fits.Column(name="Y", format="D", array=[20.0] * len(shapes)),
               fits.Column(name="SHAPE", format="16A", array=shapes), fits.Column(name="R", format="2D", array=radii)]
    hdu = fits.BinTableHDU.from_columns(columns, name="REGION")
    hdu.header["HDUCLAS1"], hdu.header["HDUCLAS2"] = "REGION", kind
    return hdu


def test_fits_region_roles_come_from_hduclas2(tmp_path):
    from processing.regions import read_region_file

    path = tmp_path / "pair.fits"
    fits.HDUList([fits.PrimaryHDU(), _region_table("SRC", ["CIRCLE"], [[5.0, 0.0]]),
                  _region_table("BKG", ["ANNULUS", "!CIRCLE"], [[5.0, 9.0], [2.0, 0.0]])]).writeto(path)
    info = read_region_file(path)
    assert (info.shapes, info.n_shapes, info.n_excluded, info.n_background) == (
        "source: circle; background: circle (excluded), circleannulus", 3, 1, 2)


def test_a_fits_region_table_with_an_unknown_shape_is_refused(url, real_data, tmp_path):
    path = tmp_path / "odd.fits"
    fits.HDUList([fits.PrimaryHDU(), _region_table("SRC", ["HEXAGON"], [[5.0, 0.0]])]).writeto(path)
    run(url, "init")
    result = run(url, "regions", "attach", str(path), "--to", "id > 0", code=1)
    assert result.stderr.strip() == f"error: {path}: not a region file the regions package can read: 'hexagon' is not a valid FITS region shape"


def test_unreadable_region_files_are_refused(ingested, real_data, tmp_path):
    url, _, _ = ingested
    ciao = real_data / "regions" / "test01_ciao.reg"
    result = run(url, "regions", "attach", str(ciao), "--to", "obsid == '459'", code=1)
    assert f"{ciao}: no region the regions package can read (4 shapes it cannot read)" in result.stderr
    empty = tmp_path / "empty.reg"
    empty.write_text("# Region file format: DS9 version 4.1\n")
    assert "no region the regions package can read" in run(url, "regions", "attach", str(empty), "--to", "obsid == '459'", code=1).stderr
    missing = tmp_path / "absent.reg"
    assert "cannot read the region file" in run(url, "regions", "attach", str(missing), "--to", "obsid == '459'", code=1).stderr
    header_only = real_data / "regions" / "sample_fits01.header"  # a header cut at 1,120 bytes: astropy warned in 3 lines
    with warnings.catch_warnings(record=True) as warned:  # a warning reaches a user's terminal: none may be left
        warnings.simplefilter("always")
        result = run(url, "regions", "attach", str(header_only), "--to", "obsid == '459'", code=1)
    assert [str(w.message) for w in warned] == []
    assert result.stderr.splitlines() == [f"error: {header_only}: cannot read the region file: Empty or corrupt FITS file"]


def test_region_files_next_to_the_data_are_attached_at_ingest(url, real_data):
    run(url, "init")
    out = run(url, "ingest", str(real_data / "regions")).stdout
    image = real_data / "regions" / "acisf07999_000N001_r0035_regevt3_srcimg.fits"
    region = real_data / "regions" / "acisf07999_000N001_r0035_reg3.fits"
    assert f"region {region} attached to {image} (position not checked: physical coordinates)" in out
    listed = _csv(run(url, "regions", "list", str(image), "--format", "csv").stdout)
    assert [(r["format"], r["frame"], r["n_shapes"], r["n_excluded"], r["n_background"], r["shapes"], r["position"], r["how"])
            for r in listed] == [("fits", "physical", "4", "2", "3", "source: ellipse; background: ellipse x3 (2 excluded)",
                                  "position not checked: physical coordinates", "ingest")]
    assert (f"region {region}  (fits, physical, 4 shapes: source: ellipse; background: ellipse x3 (2 excluded); ingest; "
            "position not checked: physical coordinates)") in run(url, "show", str(image)).stdout


def _region(path, ra, dec, radius='10"'):
    path.write_text(f"# Region file format: DS9 version 4.1\nfk5\ncircle({ra},{dec},{radius})\n")
    return path


def test_a_sky_region_far_from_the_pointing_is_refused_unless_forced(url, real_data):
    run(url, "init")
    run(url, "ingest", str(real_data / "regions"))
    region = real_data / "regions" / "srcA01.reg"  # the LMC; obsid 7999 points at 150.0154, +2.6659
    image = real_data / "regions" / "acisf07999_000N001_r0035_regevt3_srcimg.fits"
    result = run(url, "regions", "attach", str(region), "--to", f"relpath == '{image.name}'", code=1)
    assert result.stderr.strip() == (f"error: {region}: nearest shape 84.1 deg from the pointing of {image.name} (exposure 2), "
                                     "more than the 1 deg limit: not attached (--force attaches it anyway)")
    assert _csv(run(url, "regions", "list", str(image), "--format", "csv").stdout)[1:] == []
    both = run(url, "regions", "attach", str(region), "--to", "obsid == '7999'", code=1).stderr
    assert "and of 1 more exposure, more than the 1 deg limit: not attached" in both
    forced = run(url, "regions", "attach", str(region), "--to", f"relpath == '{image.name}'", "--force")
    assert f"{region}: 1 shape in fk5 coordinates (circle) attached to 1 exposure" in forced.stdout
    assert f"note: {image.name}: 84.1 deg from the pointing, more than 1 deg: attached with --force" in forced.stderr
    listed = _csv(run(url, "regions", "list", str(image), "--format", "csv").stdout)
    assert listed[-1]["position"] == "84.1 deg from the pointing, more than 1 deg: attached with --force"


def test_a_sky_region_near_the_pointing_is_attached_with_its_separation(url, real_data, tmp_path):
    """test01_fk5.reg and the image sample_fits01.header describes (as pyregion ships them)."""
    header = fits.Header.fromtextfile(str(real_data / "regions" / "sample_fits01.header"))
    directory = tmp_path / "data"
    directory.mkdir()
    fits.PrimaryHDU(np.zeros((header["NAXIS2"], header["NAXIS1"]), dtype=np.int16), header=header).writeto(directory / "test01.fits")
    run(url, "init")
    run(url, "ingest", str(directory))
    region = real_data / "regions" / "test01_fk5.reg"
    out = run(url, "regions", "attach", str(region), "--to", "relpath == 'test01.fits'")
    assert f"{region}: 4 shapes in fk5 coordinates (source: circle, polygon, rectangle; background: ellipse (excluded)) attached to 1 exposure" in out.stdout
    assert out.stderr == ""
    (listed,) = _csv(run(url, "regions", "list", str(directory / "test01.fits"), "--format", "csv").stdout)
    assert (listed["n_excluded"], listed["n_background"], listed["position"]) == ("1", "1", "0.00888 deg from the pointing")  # a polygon vertex


def test_the_limit_is_the_field_when_it_is_larger_than_a_degree(url, tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    hdu = fits.PrimaryHDU(np.zeros((100, 100), dtype=np.int16))
    hdu.header.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 0.0, "CRPIX1": 50.5,
                       "CRPIX2": 50.5, "CDELT1": -0.1, "CDELT2": 0.1, "DATE-OBS": "2024-01-01T00:00:00"})
    hdu.writeto(directory / "wide.fits")  # 10 x 10 deg: a field radius of 7.07 deg
    hdu.header.remove("CTYPE1"), hdu.header.remove("CTYPE2")
    hdu.writeto(directory / "nowhere.fits")  # no pointing
    run(url, "init")
    run(url, "ingest", str(directory))
    near = run(url, "regions", "attach", str(_region(tmp_path / "near.reg", 155.0, 0.0)), "--to", "relpath == 'wide.fits'")
    assert "attached to 1 exposure" in near.stdout
    far = run(url, "regions", "attach", str(_region(tmp_path / "far.reg", 158.0, 0.0)), "--to", "relpath == 'wide.fits'", code=1)
    assert "nearest shape 8 deg from the pointing of wide.fits (exposure 2), more than the 7.07 deg limit" in far.stderr
    unknown = run(url, "regions", "attach", str(tmp_path / "far.reg"), "--to", "relpath == 'nowhere.fits'")
    assert "note: position not checked: the exposure has no ra/dec (nowhere.fits)" in unknown.stderr


def test_a_region_named_after_far_data_is_not_attached_at_ingest(url, real_data, tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    image = directory / "acisf07999_000N001_r0035_regevt3_srcimg.fits"
    shutil.copy(real_data / "regions" / image.name, image)
    far = _region(directory / "acisf07999_000N001_r0035_regevt3_srcimg.reg", 84.918732, -69.742216)
    near = _region(directory / "acisf07999_000N001_r0035_regevt3_srcimg_src.reg", 150.02, 2.666)
    run(url, "init")
    result = run(url, "ingest", str(directory))
    assert (f"{far}: nearest shape 84.1 deg from the pointing of {image.name} (exposure 1), more than the 1 deg limit: "
            "not attached (regions attach --force attaches it)") in result.stderr
    assert f"region {near} attached to {image} (0.00459 deg from the pointing)" in result.stdout
    listed = _csv(run(url, "regions", "list", str(image), "--format", "csv").stdout)
    assert [r["path"] for r in listed] == [str(near)]


def test_a_fits_region_file_of_another_observation_is_refused_unless_forced(url, real_data, tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    spectrum = directory / "3c273.pi"  # Chandra obsid 459
    shutil.copy(real_data / "xray" / spectrum.name, spectrum)
    region = directory / "3c273_reg.fits"  # its name says 3c273.pi; its cards say Chandra obsid 7999
    shutil.copy(real_data / "regions" / "acisf07999_000N001_r0035_reg3.fits", region)
    run(url, "init")
    result = run(url, "ingest", str(directory))
    why = "made for CHANDRA obsid 7999, the exposure is CHANDRA obsid 459"
    assert f"{region}: {why}: 3c273.pi (exposure 1): not attached (regions attach --force attaches it)" in result.stderr
    assert "attached to" not in result.stdout
    refused = run(url, "regions", "attach", str(region), "--to", "obsid == '459'", code=1)
    assert refused.stderr.strip() == f"error: {region}: {why}: 3c273.pi (exposure 1): not attached (--force attaches it anyway)"
    assert _csv(run(url, "regions", "list", str(spectrum), "--format", "csv").stdout) == []
    forced = run(url, "regions", "attach", str(region), "--to", "obsid == '459'", "--force")
    assert f"note: 3c273.pi: position not checked: physical coordinates; {why}: attached with --force" in forced.stderr
    (listed,) = _csv(run(url, "regions", "list", str(spectrum), "--format", "csv").stdout)
    assert listed["position"] == f"position not checked: physical coordinates; {why}: attached with --force"


def test_the_frame_page_tells_source_from_background(url, real_data, tmp_path):
    from starlette.testclient import TestClient

    from archive.catalog import Catalog
    from web.app import create_app

    run(url, "init")
    run(url, "ingest", str(real_data / "regions"))
    catalog = Catalog(url)
    image = catalog.resolve(str(real_data / "regions" / "acisf07999_000N001_r0035_regevt3_srcimg.fits"))
    regions = catalog.resolve(str(real_data / "regions" / "acisf07999_000N001_r0035_reg3.fits"))
    with TestClient(create_app(catalog=catalog, thumbnails=tmp_path / "thumbs")) as http:
        page = http.get(f"/exposures/{image}").text
        tables = http.get(f"/exposures/{regions}").text  # a region file: tables only
    catalog.engine.dispose()
    assert "<td>4: source: ellipse; background: ellipse x3 (2 excluded)</td><td>2</td><td>3</td>" in page
    assert "position not checked: physical coordinates" in page
    assert 'id="preview"' in page
    # a file without an image says so, where its page showed a broken picture (the preview answers 404)
    assert 'id="preview"' not in tables and "no picture: the file has no image HDU" in tables


def test_region_owner_by_name():
    from processing.regions import owner_of

    data = ["3c273.pi", "3c273_bg.pi", "acisf07999_000N001_r0035_regevt3_srcimg.fits"]
    assert owner_of("3c273.reg", data) == "3c273.pi"
    assert owner_of("3c273_src.reg", data) == "3c273.pi"
    assert owner_of("3c273_bg.reg", data) == "3c273_bg.pi"
    assert owner_of("acisf07999_000N001_r0035_reg3.fits", data) == data[2]
    assert owner_of("src.reg", data) is None


def test_a_truncated_event_list_gives_no_numbers_from_its_table(real_data, tmp_path):
    path = tmp_path / "cut.evt"
    path.write_bytes((real_data / "xray" / "dummy_evt.evt").read_bytes()[:200_000])
    summary = xray.summarize_file(str(path))
    assert summary.error == "cannot read the EVENTS table: buffer is too small for requested array"
    assert (summary.n_events, summary.rate, summary.gti_exposure_s) == (None, None, None)
    assert any(w.startswith("File may have been truncated") for w in summary.warnings)


def test_a_light_curve_without_rates_is_refused(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="TIME", format="D", array=[0.0, 1.0])], name="RATE")
    table.header["HDUCLAS1"] = "LIGHTCURVE"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "lc.fits")
    summary = xray.summarize_file(str(tmp_path / "lc.fits"))
    assert (summary.kind, summary.error) == ("lightcurve", "light curve without a RATE column: not summarized")


@pytest.mark.parametrize(
    ("text", "message"),
    [('{"pileup": "high"}', "pileup = 'high' is not a number"),
     ('{"pileup": 0.1', "not valid JSON"),
     ('{"pileup": true}', "pileup = True is not a number"),
     ("pileup 0.1", "'pileup 0.1' is not name=value"),
     ("pileup=nan", "is not a finite number"),
     ("# nothing\n", "no numbers in it"),
     ('{"2x": 1}', "metric name '2x'")],
)
def test_bad_metrics_files_are_refused_with_a_reason(tmp_path, text, message):
    from archive.exceptions import ObsarchError
    from processing.named_metrics import MetricsFileError, read_metrics_file

    path = tmp_path / "m.txt"
    path.write_text(text)
    with pytest.raises((MetricsFileError, ObsarchError), match=re.escape(message)):
        read_metrics_file(path)


def test_metrics_files_of_both_forms(tmp_path):
    from processing.named_metrics import read_metrics_file

    (tmp_path / "a.json").write_text('{"Pileup": 0.12, "single_frac": 1}')
    (tmp_path / "b.txt").write_text("# from my tool\npileup = 0.12\n\nsingle_frac=1e0\n")
    assert read_metrics_file(tmp_path / "a.json") == read_metrics_file(tmp_path / "b.txt") == {"pileup": 0.12, "single_frac": 1.0}


# -- frame types: an event list is the observation, every other X-ray file a product of one ----


def _frame_types(url, selection=None):
    args = ["query", *([selection] if selection else []), "--columns", "relpath,frame_type,xray_kind", "--format", "csv"]
    return {r["relpath"]: (r["frame_type"], r["xray_kind"]) for r in _csv(run(url, *args).stdout)}


def test_frame_type_follows_the_x_ray_kind(ingested):
    """Events science; spectra (source and background), light curves and
    images other, as their xray_kind says: ``frame_type == 'science'`` (the
    selections of quality, calibrate, stack...) picks no spectrum."""
    url, _, _ = ingested
    found = _frame_types(url)
    assert len(found) == 9
    for name, (frame_type, kind) in found.items():
        assert kind, name
        assert frame_type == ("science" if kind == "events" else "other"), name
    assert {n for n, (t, _) in found.items() if t == "science"} == {"chandra_test.fits", "dummy_evt.evt", "xte_test.evt.gz"}


def test_summary_counts_no_spectrum_as_a_science_exposure(ingested):
    url, _, _ = ingested
    out = run(url, "summary").stdout
    assert "# raw exposures per frame_type\nframe_type\texposures\nother\t6\nscience\t3\n" in out


def test_frame_type_from_the_headers_agrees_with_the_summary_step(real_data):
    """Ingest (cards only) and the summary step (the opened file) name the same
    kind: the frame type is never decided by another rule than xray_kind's."""
    from archive.headers import read_headers
    from archive.xray_kinds import kind_of_units

    paths = sorted((real_data / "xray").iterdir()) + sorted((real_data / "regions").glob("*.fits"))
    paths += sorted((real_data / "eso_muse").glob("*.fits")) + sorted((real_data / "ccd_imaging").glob("*.fit*"))
    for path in paths:
        summary = xray.summarize_file(str(path))
        units, _ = read_headers(path)
        from_cards = kind_of_units(units)
        assert (from_cards[0] if from_cards else None) == (summary.kind if summary else None), path.name
    # a Chandra image binned from events says HDUCLAS1 EVENTS: an image, other, as its xray_kind
    from archive.keywords import load_maps, normalize

    units, _ = read_headers(real_data / "regions" / "acisf07999_000N001_r0035_regevt3_srcimg.fits")
    row = normalize(units, "acisf07999_000N001_r0035_regevt3_srcimg.fits", load_maps())
    assert row["frame_type"] == "other"
    assert json.loads(row["sources"])["frame_type"] == \
        "HDUCLAS1='EVENTS' in HDU 0: an X-ray image, not an exposure (see xray_kind)"


def test_renormalize_gives_a_stored_catalog_the_x_ray_frame_types(ingested):
    """A catalog ingested before the rule has its spectra and light curve as
    science, with HDUCLAS1 as their provenance: db renormalize corrects
    both, from the stored cards."""
    from sqlalchemy import create_engine, update

    from archive.models import Exposure, File

    url, _, _ = ingested
    engine = create_engine(url)
    with engine.begin() as conn:  # as the old rule stored them
        for name, value in (("3c273.pi", "SPECTRUM"), ("3c273_bg.pi", "SPECTRUM"), ("LightCurve_bexvar.fits", "LIGHTCURVE")):
            file_id = conn.execute(File.__table__.select().where(File.relpath == name)).first().id
            conn.execute(update(Exposure).where(Exposure.file_id == file_id).values(
                frame_type="science", sources=json.dumps({"frame_type": f"HDUCLAS1={value!r}"})))
    engine.dispose()
    assert _frame_types(url, "frame_type == 'science'").keys() == {
        "3c273.pi", "3c273_bg.pi", "LightCurve_bexvar.fits", "chandra_test.fits", "dummy_evt.evt", "xte_test.evt.gz"}
    assert run(url, "db", "renormalize").stdout.strip() == "renormalized 9 exposures"
    found = _frame_types(url)
    assert found["3c273.pi"] == ("other", "spectrum") and found["3c273_bg.pi"] == ("other", "spectrum")
    assert found["LightCurve_bexvar.fits"] == ("other", "lightcurve")
    assert found["chandra_test.fits"] == ("science", "events")
    engine = create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(Exposure.__table__.select().join(File, File.id == Exposure.file_id)
                              .where(File.relpath == "3c273_bg.pi")).first()
    engine.dispose()
    assert json.loads(stored.sources)["frame_type"] == \
        "HDUCLAS1='SPECTRUM' in HDU 1: an X-ray spectrum, not an exposure (see xray_kind)"


def test_an_event_list_has_no_image_to_calibrate(ingested):
    """calibrate and calib explain say an event list has no image, not that
    a master bias is missing."""
    url, _, _ = ingested
    out = run(url, "calib", "explain", "xray_kind == 'events'", "--format", "csv").stdout
    rows = _csv(out)
    assert len(rows) == 9 and {r["verdict"] for r in rows} == {"none"}
    assert {r["reason"] for r in rows} == {"no image to calibrate: the file has no image HDU (an X-ray event list is a "
                                           "table, a header-only file has no pixels)"}
    result = run(url, "calibrate", "frame_type == 'science'", code=1)  # only event lists: nothing to calibrate
    assert result.stderr.startswith("error: nothing to calibrate: the 3 science exposures of \"frame_type == 'science'\" "
                                    "hold no image")
    assert "master" not in result.stdout + result.stderr


def test_calibrate_leaves_an_event_list_out_and_says_so(url, tmp_path, real_data):
    """Beside optical frames an event list is left out with a note, no failure."""
    import test_steps

    test_steps.night(tmp_path / "mixed", np.random.default_rng(3))
    shutil.copy(real_data / "xray" / "chandra_test.fits", tmp_path / "mixed")
    run(url, "init")
    run(url, "ingest", str(tmp_path / "mixed"))
    run(url, "calib", "bias", "--out", str(tmp_path / "m"))
    run(url, "calib", "flat", "--band", "V", "--out", str(tmp_path / "m"))
    done = run(url, "calibrate", "frame_type == 'science'", "--out", str(tmp_path / "c"))
    assert "calibrate: left out 1 exposure with no image: chandra_test.fits" in done.stderr.splitlines()
    assert len(list((tmp_path / "c").glob("*_cal.fits"))) == 4


def test_group_positions_leaves_an_event_list_out_and_says_so(url, tmp_path, real_data, rng):
    """An event list holds no image to register: it joins no group of
    positions (it made one of its own, and cut the chain of the frame after
    it), and the command says so."""
    from factories import write_frame

    directory = tmp_path / "mixed"
    write_frame(directory / "a.fits", rng)
    write_frame(directory / "b.fits", rng)
    shutil.copy(real_data / "xray" / "chandra_test.fits", directory)
    run(url, "init")
    run(url, "ingest", str(directory))
    done = run(url, "group", "positions", "--radius", "20px", "--name", "p", "--selection", "frame_type == 'science'", code=3)
    assert "group: left out 1 exposure with no image: chandra_test.fits" in done.stderr.splitlines()
    assert "could not be registered onto the frame before them" in done.stderr  # noise frames: said, exit 3
    members = _csv(run(url, "query", "group == 'p-1' or group == 'p-2'", "--columns", "relpath", "--format", "csv").stdout)
    assert sorted(r["relpath"] for r in members) == ["a.fits", "b.fits"]
    alone = run(url, "group", "positions", "--radius", "20px", "--name", "q", "--selection", "xray_kind == 'events'", code=1)
    assert "the one exposure of the selection holds no image" in alone.stderr


def test_offsets_and_stack_leave_an_event_list_out_and_say_so(url, tmp_path, real_data, rng):
    """Registering or stacking `frame_type == 'science'` of a mixed archive
    leaves the event list out with a note: it is no failure (exit 0)."""
    from factories import star_field, write_image

    directory = tmp_path / "mixed"
    field = star_field(rng, shape=(128, 128), nstars=30)
    for number, shift in ((1, 0), (2, 3)):
        write_image(directory / f"f-{number}.fits", np.roll(field, shift, axis=1), {"FILTER": "V", "IMAGETYP": "LIGHT"})
    shutil.copy(real_data / "xray" / "chandra_test.fits", directory)
    run(url, "init")
    run(url, "ingest", str(directory))
    registered = run(url, "offsets", "compute", "frame_type == 'science'", "--reference", "1")
    assert "offsets-stars: left out 1 exposure with no image: chandra_test.fits" in registered.stderr.splitlines()
    stacked = run(url, "stack", "frame_type == 'science'", "--out", str(tmp_path / "stacks"))
    assert "stack: left out 1 exposure with no image: chandra_test.fits" in stacked.stderr.splitlines()
    onto = run(url, "offsets", "compute", "frame_type == 'science'", "--reference", "xray_kind == 'events'", code=1)
    assert onto.stderr.startswith("error: reference exposure ") and onto.stderr.strip().endswith("holds no image to register onto")


def test_stack_of_event_lists_only_says_why_nothing_is_stacked(url, tmp_path, real_data):
    shutil.copy(real_data / "xray" / "chandra_test.fits", tmp_path)
    run(url, "init")
    run(url, "ingest", str(tmp_path))
    result = run(url, "stack", "xray_kind == 'events'", "--out", str(tmp_path / "s"), code=1)
    assert result.stderr.strip() == \
        "error: no frames to stack in the selection: left out 1 exposure with no image: chandra_test.fits"


def test_an_optical_frame_that_says_hduclas1_image_keeps_its_imagetyp(tmp_path):
    """HDUCLAS1 = 'IMAGE' (OGIP's word, some optical pipelines write it) makes
    no X-ray file: the frame's IMAGETYP decides; a Chandra image stays other."""
    from archive.headers import read_headers
    from archive.keywords import load_maps, normalize

    def frame_type(**cards) -> str:
        path = tmp_path / "f.fits"
        fits.PrimaryHDU(np.zeros((8, 8), np.float32), header=fits.Header({"HDUCLAS1": "IMAGE", **cards})).writeto(path, overwrite=True)
        return normalize(read_headers(path)[0], "f.fits", load_maps())["frame_type"]

    assert frame_type(IMAGETYP="Light Frame") == "science"
    assert frame_type(IMAGETYP="Bias Frame") == "bias"
    assert frame_type(TELESCOP="CHANDRA", IMAGETYP="Light Frame") == "other"


def test_metric_and_duration_values_typed_wrong_are_usage_errors(url, tmp_path):
    from factories import write_image

    write_image(tmp_path / "raw" / "a.fits", np.zeros((4, 4), np.float32), {"OBS_ID": "1"})
    run(url, "init")
    run(url, "ingest", str(tmp_path / "raw"))
    assert run(url, "metrics", "set", "obsid == '1'", "pileup=inf", code=2).stderr.strip() == (
        "error: metrics set: pileup = 'inf' is not a finite number")
    assert run(url, "metrics", "set", "obsid == '1'", "pileup=abc", code=2).stderr.strip() == (
        "error: metrics set: pileup = 'abc' is not a number")
    assert run(url, "metrics", "set", "obsid == '1'", "pileup=1", "Pileup=2", code=2).stderr.strip() == (
        "error: metrics set: pileup is given twice")
    assert "'1e999ks' is not a finite duration" in run(url, "report", "spectra", "--min-exposure", "1e999ks", code=2).stderr


def test_a_binary_file_is_no_region_file_and_its_bytes_stay_off_the_terminal(url, tmp_path):
    import gzip

    from factories import write_image

    write_image(tmp_path / "raw" / "a.fits", np.zeros((4, 4), np.float32), {"OBS_ID": "1"})
    (tmp_path / "r.reg.gz").write_bytes(gzip.compress(b"circle(1,2,3)\n" * 50))
    (tmp_path / "r.bin").write_bytes(bytes(range(256)) * 4)
    run(url, "init")
    run(url, "ingest", str(tmp_path / "raw"))
    for name in ("r.reg.gz", "r.bin"):
        result = run(url, "regions", "attach", str(tmp_path / name), "--to", "obsid == '1'", code=1)
        assert result.stderr == f"error: {tmp_path / name}: not a region file (binary or compressed data)\n"


def test_a_tool_output_of_a_spectrum_is_stale_when_its_background_changes(url, tmp_path):
    """lineage named the background as an input, yet a changed background left
    the tool's output current and its run up to date."""
    directory = tmp_path / "spectra"
    directory.mkdir()
    channel = fits.Column(name="CHANNEL", format="J", array=np.arange(4))
    _spectrum(directory / "src.pha", [channel, fits.Column(name="COUNTS", format="J", array=np.full(4, 10))], BACKFILE="bkg.pha",
              BACKSCAL=1.0)
    _spectrum(directory / "bkg.pha", [channel, fits.Column(name="COUNTS", format="J", array=np.full(4, 2))], HDUCLAS2="BKG",
              BACKSCAL=1.0)
    run(url, "init")
    run(url, "ingest", str(directory))
    tool = ["--workdir", str(tmp_path / "w" / "{item}"), "--workers", "1", "--", "sh", "-c", "echo fitted > fit.txt"]
    assert "1 done" in run(url, "run", "relpath == 'src.pha'", *tool).stdout
    assert "0 done, 1 up to date" in run(url, "run", "relpath == 'src.pha'", *tool).stdout
    with fits.open(directory / "bkg.pha", mode="update") as hdul:
        hdul[1].data["COUNTS"] *= 3
    run(url, "ingest", str(directory))
    stale = run(url, "stale", "--format", "csv").stdout
    assert "fit.txt" in stale and "bkg.pha" in stale
    assert "1 done" in run(url, "run", "relpath == 'src.pha'", *tool).stdout


def test_a_file_two_spectra_link_is_one_input_of_the_run(url, tmp_path):
    """runs show listed the background twice when both spectra of an obsid named it."""
    from sqlalchemy import func, select

    from archive.catalog import Catalog
    from archive.models import File, RunInput

    directory = tmp_path / "spectra"
    directory.mkdir()
    channel = fits.Column(name="CHANNEL", format="J", array=np.arange(4))
    for name in ("src1.pha", "src2.pha"):
        _spectrum(directory / name, [channel, fits.Column(name="COUNTS", format="J", array=np.full(4, 10))],
                  BACKFILE="bkg.pha", BACKSCAL=1.0, OBS_ID="0001")
    _spectrum(directory / "bkg.pha", [channel, fits.Column(name="COUNTS", format="J", array=np.full(4, 2))], HDUCLAS2="BKG",
              BACKSCAL=1.0, OBS_ID="0001")
    run(url, "init")
    run(url, "ingest", str(directory))
    assert "1 done" in run(url, "run", "obsid == '0001'", "--each", "obsid", "--workdir", str(tmp_path / "w" / "{item}"),
                           "--workers", "1", "--", "sh", "-c", "true").stdout
    catalog = Catalog(url)
    with catalog.engine.connect() as conn:
        rows = conn.execute(select(RunInput.role, File.relpath, func.count()).join(File, File.id == RunInput.file_id)
                            .group_by(RunInput.role, File.relpath).order_by(RunInput.role, File.relpath)).all()
    catalog.engine.dispose()
    assert [tuple(r) for r in rows] == [("background", "bkg.pha", 1), ("frame", "bkg.pha", 1), ("frame", "src1.pha", 1),
                                        ("frame", "src2.pha", 1)]


@pytest.mark.parametrize(("ours", "theirs", "same"), [
    ("XMM", "XMM-Newton", True), ("XMM_NEWTON", "xmm", True), ("NuSTAR", "NUSTAR", True), ("SRG", "eROSITA", True),
    ("AXAF", "CHANDRA", True), ("CHANDRA", "XMM", False), ("SWIFT", "XTE", False),
])
def test_a_region_files_telescope_is_compared_by_name_not_spelling(ours, theirs, same):
    from processing.regions import _same

    assert _same(ours, theirs, "telescope") is same


@pytest.mark.parametrize(("ours", "theirs", "same"), [
    ("7999", "07999", True), ("0761220101", "761220101", True), ("93087-01-02-11", "93087-01-02-11", True),
    ("7999", "459", False), ("93087-01-02-11", "93087-01-02-12", False), ("7999", None, True),
])
def test_a_region_files_obsid_is_compared_as_a_number_when_both_are(ours, theirs, same):
    from processing.regions import _same

    assert _same(ours, theirs, "obsid") is same
