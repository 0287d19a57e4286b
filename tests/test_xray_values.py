"""X-ray summaries of hostile files: the numbers are right or left empty
with a warning that says why, never stored as if right (GTIs that overlap
or run backwards, times in days or milliseconds, NaN in a table, AREASCAL,
a BACKFILE naming its own file, bad time cards, negative counts, bad
EXPOSURE cards). The files are made here with a seeded rng."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from factories import obsarch

from processing import xray

run = obsarch  # run(url, *args, code=0)

ON_TIME = "rate per GTI exposure (on time: no DTCOR or DEADC between 0 and 1, dead time not taken off)"
T0, SPAN, MJDREF = 5e8, 1e4, 50814.0  # mission seconds of the first event, the list's length, XMM's MJDREF
TIME_CARDS = {"MJDREF": MJDREF, "TIMESYS": "TT", "TSTART": T0, "TSTOP": T0 + SPAN}


def _events(path, rng, *, n=1000, gti=((T0, T0 + SPAN),), exposure=SPAN, per_second=1.0, time_unit=None,
            gti_per_second=1.0, gti_unit=None, **cards):
    """An event list of ``n`` events over SPAN seconds and its STDGTI;
    ``per_second`` converts the times to the file's unit; ``cards`` go into
    every header (None removes one)."""
    times = np.sort(rng.uniform(T0, T0 + SPAN, n)) * per_second
    events = fits.BinTableHDU.from_columns([fits.Column("TIME", "D", unit=time_unit, array=times),
                                            fits.Column("PI", "J", array=rng.integers(0, 1024, n))], name="EVENTS")
    rows = np.asarray(gti, dtype=float).reshape(-1, 2) * gti_per_second
    table = fits.BinTableHDU.from_columns([fits.Column("START", "D", unit=gti_unit, array=rows[:, 0]),
                                           fits.Column("STOP", "D", unit=gti_unit, array=rows[:, 1])], name="STDGTI")
    hdus = [fits.PrimaryHDU(), events, table]
    events.header.update({"HDUCLAS1": "EVENTS", **({"EXPOSURE": exposure} if exposure is not None else {})})
    table.header["HDUCLAS1"] = "GTI"
    for hdu in hdus:
        hdu.header.update(TIME_CARDS)
        for key, value in cards.items():
            hdu.header.remove(key, ignore_missing=True) if value is None else hdu.header.set(key, value)
    fits.HDUList(hdus).writeto(path)
    return times / per_second


def _spectrum(path, counts, *, column="COUNTS", primary=None, **cards):
    """A type I spectrum of ``counts`` per channel; ``cards`` in its SPECTRUM
    header (None removes one), ``primary`` in the primary header."""
    counts = np.asarray(counts)
    form = "J" if counts.dtype.kind == "i" else "E"
    table = fits.BinTableHDU.from_columns([fits.Column("CHANNEL", "J", array=np.arange(len(counts))),
                                           fits.Column(column, form, array=counts)], name="SPECTRUM")
    table.header.update({"HDUCLAS1": "SPECTRUM", "HDUCLAS2": "TOTAL", "EXPOSURE": SPAN, "BACKSCAL": 1.0, "AREASCAL": 1.0,
                         "BACKFILE": "none", **TIME_CARDS})
    for key, value in cards.items():  # a (value, comment) pair too
        if value is None:
            table.header.remove(key, ignore_missing=True)
        else:
            table.header[key] = value
    fits.HDUList([fits.PrimaryHDU(header=fits.Header(list((primary or {}).items()))), table]).writeto(path)


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def _ingested(url, directory):
    run(url, "init")
    return run(url, "ingest", str(directory))


def _rows(url, selection, columns):
    out = run(url, "query", selection, "--columns", f"relpath,{columns}", "--format", "csv").stdout
    return {row.pop("relpath"): row for row in _csv(out)}


# -- #1, #2: good time intervals -------------------------------------------------------------


def test_a_gti_row_that_stops_before_it_starts_gives_no_gti_exposure_and_no_rate(tmp_path, rng):
    path = tmp_path / "reversed.evt"
    _events(path, rng, gti=((T0 + SPAN, T0),), exposure=None)
    summary = xray.summarize_file(str(path))
    assert summary.gti_exposure_s is None and summary.rate is None  # was -10000 s and -0.1 counts/s
    assert "GTI extension STDGTI (HDU 2): STOP before START in 1 row, not a time interval: no GTI exposure" in summary.warnings
    assert summary.n_events == 1000


def test_with_a_bad_gti_row_the_rate_still_comes_from_exposure(tmp_path, rng):
    path = tmp_path / "reversed_exp.evt"
    _events(path, rng, gti=((T0, T0 + 5000), (T0 + SPAN, T0 + 6000)))
    summary = xray.summarize_file(str(path))
    assert summary.gti_exposure_s is None and summary.rate == pytest.approx(1000 / SPAN)


@pytest.mark.parametrize(("gti", "exposure"), [
    (((T0, T0 + SPAN), (T0, T0 + SPAN)), None),  # a repeated row: was 20 ks of good time in 10 ks
    (((T0, T0 + 6000), (T0 + 4000, T0 + SPAN)), SPAN),  # overlapping rows: was 12 ks
    (((T0 + 6000, T0 + SPAN), (T0, T0 + 3000), (T0 + 2000, T0 + 7000)), None),  # unsorted and overlapping
])
def test_overlapping_gti_rows_count_once(tmp_path, rng, gti, exposure):
    path = tmp_path / "overlap.evt"
    _events(path, rng, gti=gti, exposure=exposure)
    summary = xray.summarize_file(str(path))
    assert summary.gti_exposure_s == pytest.approx(SPAN)
    assert summary.rate == pytest.approx(1000 / SPAN)
    assert "GTI extension STDGTI (HDU 2): overlapping intervals: their union is the GTI exposure" in summary.warnings


def test_disjoint_unsorted_gti_rows_add_up_without_a_warning_of_overlaps(tmp_path, rng):
    path = tmp_path / "unsorted.evt"
    _events(path, rng, gti=((T0 + 6000, T0 + SPAN), (T0, T0 + 3000)), exposure=None)
    summary = xray.summarize_file(str(path))
    assert summary.gti_exposure_s == pytest.approx(7000) and summary.warnings == [f"no EXPOSURE or LIVETIME: {ON_TIME}"]


# -- #3: TIMEUNIT and TUNIT --------------------------------------------------------------------


@pytest.mark.parametrize(("per_second", "time_unit", "gti_unit", "timeunit"), [
    (1 / 86400, "d", "d", "d"),  # everything in days: was a rate of 8640, 0.116 s of good time, MJD 16 years early
    (1 / 86400, None, None, "d"),  # days by TIMEUNIT alone
    (1000.0, "ms", None, "s"),  # TIME in ms by its TUNIT: was a span of 9,970,468 s
])
def test_times_in_days_or_milliseconds_give_seconds_and_the_right_mjd(tmp_path, rng, per_second, time_unit, gti_unit,
                                                                      timeunit):
    path = tmp_path / "units.evt"
    in_days = timeunit == "d"
    times = _events(path, rng, exposure=None, per_second=per_second, time_unit=time_unit, gti_unit=gti_unit,
                    gti_per_second=per_second if in_days else 1.0, TIMEUNIT=timeunit,
                    TSTART=T0 * per_second if in_days else T0, TSTOP=(T0 + SPAN) * per_second if in_days else T0 + SPAN)
    summary = xray.summarize_file(str(path))
    assert summary.gti_exposure_s == pytest.approx(SPAN, rel=1e-9)
    assert summary.rate == pytest.approx(1000 / SPAN, rel=1e-9)
    assert summary.time_span_s == pytest.approx(float(np.ptp(times)), rel=1e-6)
    start = Time(MJDREF, T0 / 86400, format="mjd", scale="tt").utc.mjd
    assert summary.mjd_start == pytest.approx(start, abs=1e-8)  # 56601.036, not 50814.066
    assert summary.warnings == [f"no EXPOSURE or LIVETIME: {ON_TIME}"]


@pytest.mark.parametrize(("cards", "message"), [
    ({"TIMEUNIT": "m"}, "TIMEUNIT 'm' is not a unit of time: times left empty"),
    ({"time_unit": "adu"}, "TUNIT of TIME 'adu' is not a unit of time: times left empty"),
])
def test_a_time_unit_that_is_no_time_leaves_the_times_empty(tmp_path, rng, cards, message):
    path = tmp_path / "badunit.evt"
    _events(path, rng, **cards)
    summary = xray.summarize_file(str(path))
    assert message in summary.warnings
    assert summary.time_span_s is None
    if "TIMEUNIT" in cards:
        assert (summary.gti_exposure_s, summary.mjd_start, summary.mjd_stop) == (None, None, None)
    assert summary.rate == pytest.approx(1000 / SPAN)  # by EXPOSURE, which is in seconds


# -- #4: NaN in a table, on both backends ---------------------------------------------------------


def test_nan_in_a_table_is_never_stored(url, tmp_path, rng):
    directory = tmp_path / "nan"
    directory.mkdir()
    _spectrum(directory / "counts_nan.pi", np.where(np.arange(64) == 5, np.nan, 1.0).astype(np.float32))
    _spectrum(directory / "rate_nan.pi", np.where(np.arange(64) == 7, np.nan, 0.01).astype(np.float32), column="RATE")
    times = _events(directory / "time_nan.evt", rng)
    with fits.open(directory / "time_nan.evt", mode="update") as hdul:
        hdul[1].data["TIME"][10] = np.nan
    ingested = _ingested(url, directory)
    assert "counts_nan.pi: COUNTS is not a finite number (NaN or infinite) in 1 channel: no counts or rate" in ingested.stderr
    assert "rate_nan.pi: RATE is not a finite number (NaN or infinite) in 1 channel: no counts or rate" in ingested.stderr
    assert "time_nan.evt: TIME is not a finite number (NaN or infinite) in 1 row: left out of the time span" in ingested.stderr
    # PostgreSQL stored NaN, which is greater than every number: these matched
    assert _rows(url, "counts > 1000000 or rate > 1000 or time_span_ks > 100000", "counts") == {}
    rows = _rows(url, "xray_kind is not null", "counts,rate,time_span")
    assert {name: (row["counts"], row["rate"]) for name, row in rows.items() if name.endswith(".pi")} == {
        "counts_nan.pi": ("", ""), "rate_nan.pi": ("", "")}
    finite = np.delete(times, 10)
    assert float(rows["time_nan.evt"]["time_span"]) == pytest.approx(float(np.ptp(finite)), rel=1e-9)
    assert "warning: COUNTS is not a finite number" in run(url, "show", str(directory / "counts_nan.pi")).stdout


# -- #8, #10: net rate and links, on both backends ------------------------------------------------


def test_net_rate_scales_by_areascal(url, tmp_path):
    directory = tmp_path / "area"
    directory.mkdir()
    _spectrum(directory / "src.pi", np.full(1024, 2, np.int32), BACKSCAL=0.1, BACKFILE="bkg.pi", AREASCAL=0.8)
    _spectrum(directory / "bkg.pi", np.full(1024, 1, np.int32), HDUCLAS2="BKG", AREASCAL=0.5)
    _spectrum(directory / "src_col.pi", np.full(1024, 2, np.int32), BACKSCAL=0.1, BACKFILE="bkg.pi", AREASCAL=None)
    _spectrum(directory / "src_none.pi", np.full(1024, 2, np.int32), BACKSCAL=0.1, BACKFILE="bkg_none.pi", AREASCAL=None)
    _spectrum(directory / "bkg_none.pi", np.full(1024, 1, np.int32), HDUCLAS2="BKG", AREASCAL=None)
    with fits.open(directory / "src_col.pi", mode="update") as hdul:  # AREASCAL per channel, as BACKSCAL may be
        columns = hdul[1].columns + fits.Column("AREASCAL", "E", array=np.full(1024, 0.5, np.float32))
        hdul[1] = fits.BinTableHDU.from_columns(columns, header=hdul[1].header, name="SPECTRUM")
    ingested = _ingested(url, directory)
    assert "src_col.pi: AREASCAL is a column: no net rate" in ingested.stderr
    rows = _rows(url, "xray_role == 'source'", "rate,net_rate")
    # OGIP: C_s/(t_s a_s) - C_b/(t_b a_b) * b_s/b_b; without AREASCAL it was 0.19456
    assert float(rows["src.pi"]["net_rate"]) == pytest.approx(2048 / (SPAN * 0.8) - 1024 / (SPAN * 0.5) * 0.1, rel=1e-12)
    assert float(rows["src.pi"]["rate"]) == pytest.approx(2048 / SPAN)
    assert rows["src_col.pi"]["net_rate"] == ""
    assert float(rows["src_none.pi"]["net_rate"]) == pytest.approx(0.2048 - 0.01024, rel=1e-12)  # absent: 1, as OGIP says


def test_a_backfile_naming_the_file_itself_links_no_background(url, tmp_path):
    directory = tmp_path / "self"
    directory.mkdir()
    _spectrum(directory / "self.pi", np.full(1024, 3, np.int32), BACKFILE="self.pi")
    ingested = _ingested(url, directory)
    assert "self.pi: BACKFILE names the file itself: no background linked" in ingested.stderr
    rows = _rows(url, "relpath == 'self.pi'", "xray_role,rate,net_rate,background_file")
    assert rows == {"self.pi": {"xray_role": "source", "rate": "0.3072", "net_rate": "", "background_file": ""}}
    assert "BACKFILE: self.pi (names the file itself: not linked)" in run(url, "show", str(directory / "self.pi")).stdout


def test_a_background_gone_missing_takes_the_net_rate_with_it(url, tmp_path):
    directory = tmp_path / "gone"
    directory.mkdir()
    _spectrum(directory / "src.pi", np.full(1024, 2, np.int32), BACKSCAL=0.1, BACKFILE="bkg.pi")
    _spectrum(directory / "bkg.pi", np.full(1024, 1, np.int32), HDUCLAS2="BKG")
    _ingested(url, directory)
    linked = {"net_rate": "0.19456", "background_file": str(directory / "bkg.pi")}
    assert _rows(url, "relpath == 'src.pi'", "net_rate,background_file") == {"src.pi": linked}
    (directory / "bkg.pi").rename(tmp_path / "bkg.pi")
    rescan = run(url, "ingest", str(directory))
    assert "src.pi: BACKFILE 'bkg.pi': no such file: its net rate is left empty" in rescan.stderr
    assert _rows(url, "relpath == 'src.pi'", "net_rate,background_file") == {"src.pi": {"net_rate": "", "background_file": ""}}
    assert "BACKFILE: bkg.pi (not linked)" in run(url, "show", str(directory / "src.pi")).stdout
    (tmp_path / "bkg.pi").rename(directory / "bkg.pi")  # back: linked again
    run(url, "ingest", str(directory))
    assert _rows(url, "relpath == 'src.pi'", "net_rate,background_file") == {"src.pi": linked}
    with open(directory / "bkg.pi", "r+b") as handle:  # cut: unreadable, as good as gone
        handle.truncate(100)
    cut = run(url, "ingest", str(directory), code=3)
    assert "src.pi: BACKFILE 'bkg.pi': unreadable (obsarch errors says why): its net rate is left empty" in cut.stderr
    assert _rows(url, "relpath == 'src.pi'", "net_rate,background_file") == {"src.pi": {"net_rate": "", "background_file": ""}}


def test_spectra_moved_away_with_their_background_are_not_warned_about(url, tmp_path):
    """A whole observation moved away: its spectra are gone too, so nothing
    is said of their links; a spectrum left behind says the one link it lost."""
    for name in ("obs1", "obs2"):
        (tmp_path / "root" / name).mkdir(parents=True)
    _spectrum(tmp_path / "root" / "obs1" / "src.pi", np.full(1024, 2, np.int32), BACKFILE="bkg.pi", RESPFILE="src.rmf")
    _spectrum(tmp_path / "root" / "obs1" / "bkg.pi", np.full(1024, 1, np.int32), HDUCLAS2="BKG")
    _spectrum(tmp_path / "root" / "obs2" / "src2.pi", np.full(1024, 2, np.int32), BACKFILE="../obs1/bkg.pi", RESPFILE="src2.rmf")
    _ingested(url, tmp_path / "root")
    (tmp_path / "root" / "obs1").rename(tmp_path / "elsewhere")
    rescan = run(url, "ingest", str(tmp_path / "root"))
    assert [line for line in rescan.stderr.splitlines() if "warning" in line] == [
        f"  warning: {tmp_path / 'root' / 'obs2' / 'src2.pi'}: BACKFILE '../obs1/bkg.pi': no such file: its net rate is left empty"]


def test_a_link_naming_a_file_of_another_kind_is_refused(url, tmp_path, rng):
    directory = tmp_path / "kinds"
    directory.mkdir()
    _events(directory / "obs.evt", rng)
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(directory / "frame.fits")
    _spectrum(directory / "src.pi", np.full(1024, 2, np.int32), BACKFILE="obs.evt", RESPFILE="src.pi", ANCRFILE="frame.fits")
    ingested = _ingested(url, directory)
    for message in ("BACKFILE 'obs.evt' is an event list, not a spectrum: no background linked",
                    "RESPFILE 'src.pi' is a spectrum, not a response (RMF): no response linked",
                    "ANCRFILE 'frame.fits' is no X-ray file obsarch has summarized, not an ARF: no ARF linked"):
        assert f"src.pi: {message}" in ingested.stderr
    rows = _rows(url, "relpath == 'src.pi'", "net_rate,background_file,response,arf")
    assert rows == {"src.pi": {"net_rate": "", "background_file": "", "response": "", "arf": ""}}
    assert _rows(url, "relpath == 'obs.evt'", "xray_kind,xray_role") == {"obs.evt": {"xray_kind": "events", "xray_role": ""}}


# -- #11: bad time cards ---------------------------------------------------------------------------


@pytest.mark.parametrize(("cards", "message"), [
    ({"TIMESYS": "GPS"}, "TIMESYS 'GPS' is not a time scale astropy converts to UTC: times left empty"),
    ({"TIMESYS": "LOCAL"}, "TIMESYS 'LOCAL' is not a time scale astropy converts to UTC: times left empty"),
    ({"MJDREF": "fifty"}, "MJDREF 'fifty' is not a number: times left empty"),
    ({"MJDREF": 1e300}, "MJDREF 1e+300 is not a date: times left empty"),
    ({"MJDREF": None, "MJDREFI": 50814, "MJDREFF": "x"}, "MJDREFF 'x' is not a number: times left empty"),
    ({"TIMEZERO": "n/a"}, "TIMEZERO 'n/a' is not a number: times left empty"),
    ({"TSTART": "unknown"}, "TSTART 'unknown' is not a number: times left empty"),
])
def test_a_bad_time_card_leaves_the_mjds_empty_and_keeps_the_counts(tmp_path, rng, cards, message):
    path = tmp_path / "badtime.evt"
    _events(path, rng, **cards)
    summary = xray.summarize_file(str(path))
    assert summary.warnings == [message]  # once, though the card is in three headers
    assert (summary.mjd_start, summary.mjd_stop, summary.mjd_mid) == (None, None, None)
    assert summary.error is None and summary.n_events == 1000 and summary.rate == pytest.approx(1000 / SPAN)


def test_every_bad_time_card_is_told(tmp_path, rng):
    path = tmp_path / "badtimes.evt"
    _events(path, rng, TIMESYS="GPS", TIMEZERO="n/a")
    assert sorted(xray.summarize_file(str(path)).warnings) == [
        "TIMESYS 'GPS' is not a time scale astropy converts to UTC: times left empty",
        "TIMEZERO 'n/a' is not a number: times left empty"]


def test_show_gives_the_reason_the_times_are_empty(url, tmp_path, rng):
    directory = tmp_path / "gps"
    directory.mkdir()
    _events(directory / "gps.evt", rng, TIMESYS="GPS")
    ingested = _ingested(url, directory)
    assert "x-ray: 1 summarized, 0 up to date, 0 failed" in ingested.stdout
    assert "Error" not in ingested.stderr and ".py:" not in ingested.stderr
    shown = run(url, "show", str(directory / "gps.evt")).stdout
    assert "n_events=1000" in shown and "rate=0.1" in shown and "mjd_start" not in shown
    assert "  warning: TIMESYS 'GPS' is not a time scale astropy converts to UTC: times left empty" in shown


# -- #13: negative counts --------------------------------------------------------------------------


def test_negative_counts_give_no_counts_and_no_rate(tmp_path):
    path = tmp_path / "negative.pi"
    _spectrum(path, np.where(np.arange(64) < 3, -1, 5).astype(np.int32))
    summary = xray.summarize_file(str(path))
    assert (summary.counts, summary.rate) == (None, None)  # were stored as summed: with every channel -1, a rate of -0.1
    assert "COUNTS is negative in 3 channels (a spectrum's counts are 0 or more): no counts or rate" in summary.warnings


# -- #15: EXPOSURE ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("exposure", "message"), [
    (-5.0, "EXPOSURE -5 is negative: not used, no rate"),
    (0.0, "EXPOSURE is 0: not used, no rate"),
    ("10000", "EXPOSURE '10000' is text, not a number: not used, no rate"),
    (None, "EXPOSURE absent: no rate"),
])
def test_a_spectrum_says_why_its_exposure_was_not_used(tmp_path, exposure, message):
    path = tmp_path / "exposure.pi"
    _spectrum(path, np.full(64, 2, np.int32), EXPOSURE=exposure)
    summary = xray.summarize_file(str(path))
    assert summary.warnings == [message]  # -5 was "missing or 0"
    assert (summary.exposure_s, summary.rate, summary.counts) == (None, None, 128.0)


@pytest.mark.parametrize(("exposure", "gti", "message"), [
    (-1e4, ((T0, T0 + SPAN),), f"EXPOSURE -10000 is negative: not used, {ON_TIME}"),
    (0.0, ((T0, T0 + SPAN),), f"EXPOSURE is 0: not used, {ON_TIME}"),
    ("10000", ((T0, T0 + SPAN),), f"EXPOSURE '10000' is text, not a number: not used, {ON_TIME}"),
    (0.0, (), "EXPOSURE is 0: not used, no usable GTI: no rate"),
])
def test_an_event_list_says_why_its_exposure_was_not_used(tmp_path, rng, exposure, gti, message):
    path = tmp_path / "exposure.evt"
    _events(path, rng, exposure=exposure, gti=gti)
    summary = xray.summarize_file(str(path))
    assert summary.warnings == [message]
    assert summary.exposure_s is None
    assert summary.rate == (pytest.approx(1000 / SPAN) if gti else None)


def test_exposure_only_in_the_primary_header_agrees_with_exptime(url, tmp_path):
    directory = tmp_path / "primary"
    directory.mkdir()
    _spectrum(directory / "primary.pi", np.full(64, 1, np.int32), EXPOSURE=None, primary={"EXPOSURE": 1000.0})
    ingested = _ingested(url, directory)
    assert "primary.pi: EXPOSURE only in the primary header (not in the SPECTRUM table's): used" in ingested.stderr
    rows = _rows(url, "relpath == 'primary.pi'", "exptime,exposure,rate")
    assert rows == {"primary.pi": {"exptime": "1000.0", "exposure": "1000.0", "rate": "0.064"}}  # was "missing or 0"


@pytest.mark.parametrize(("comment", "seconds", "message"), [
    ("[ks] exposure", 10_000.0, "EXPOSURE 10 is in kiloseconds: converted to 10000 s"),
    ("[s] exposure", 10.0, None),
    ("[ct] exposure", 10.0, "EXPOSURE's comment names the unit [ct], not understood: taken as seconds"),
])
def test_exposure_is_read_in_its_comments_unit_as_exptime_is(url, tmp_path, comment, seconds, message):
    """exptime converted '[ks]' to seconds while the summary took the number as
    seconds: exptime 10000, exposure 10, and a rate 1000 times too high (a user trial)."""
    directory = tmp_path / "ks"
    directory.mkdir()
    _spectrum(directory / "ks.pi", np.full(10, 1, np.int32), EXPOSURE=(10.0, comment))
    summary = xray.summarize_file(str(directory / "ks.pi"))
    assert (summary.exposure_s, summary.rate) == (seconds, 10 / seconds)
    assert summary.warnings == ([message] if message else [])
    _ingested(url, directory)
    row = _rows(url, "relpath == 'ks.pi'", "exptime,exposure")["ks.pi"]
    assert float(row["exptime"]) == float(row["exposure"]) == seconds


def test_an_exposure_beyond_a_double_once_in_seconds_is_not_used(tmp_path):
    """1e306 ks is infinite seconds: ingest left exptime empty while the summary used inf (a review)."""
    path = tmp_path / "huge.pi"
    _spectrum(path, np.full(10, 1, np.int32), EXPOSURE=(1e306, "[ks] exposure"))
    summary = xray.summarize_file(str(path))
    assert (summary.exposure_s, summary.rate) == (None, None)
    assert summary.warnings == ["EXPOSURE 1e+306 in its unit is beyond the numbers a catalog holds in seconds: not used, no rate"]


def test_a_summary_of_an_older_algorithm_is_made_again_without_force(url, tmp_path):
    from sqlalchemy import update

    from archive.db import make_engine, transaction
    from archive.models import Run

    directory = tmp_path / "old"
    directory.mkdir()
    _spectrum(directory / "src.pi", np.full(1024, 2, np.int32))
    _ingested(url, directory)
    assert "x-ray: 0 summarized, 1 up to date, 0 failed" in run(url, "xray", "summarize").stdout
    engine = make_engine(url)
    with transaction(engine, write=True) as conn:  # as a catalog summarized by the code before
        conn.execute(update(Run).where(Run.step == "xray-summaries").values(code_version="0.1.0 xray-summary-2"))
    engine.dispose()
    assert "x-ray: 1 summarized, 0 up to date, 0 failed" in run(url, "xray", "summarize").stdout
    assert "x-ray: 0 summarized, 1 up to date, 0 failed" in run(url, "xray", "summarize").stdout


def test_an_event_list_without_exposure_is_rated_by_its_livetime_not_a_chips_gti(tmp_path, rng):
    """XMM's pn: LIVETIME in the EVENTS header and a GTI extension per CCD, the
    first of them CCD 1's. 9000 events over 9000 s of live time are 1.0 c/s
    (the first GTI's 6000 s gave 1.5, without a word)."""
    path = tmp_path / "pn.evt"
    _events(path, rng, n=9000, exposure=None, LIVETIME=9000.0)
    with fits.open(path, mode="update") as hdul:
        ccd4 = hdul[2].copy()
        hdul[2].data["STOP"][0] = T0 + 6000  # CCD 1's, in first
        hdul[2].name, ccd4.name = "STDGTI01", "STDGTI04"
        hdul.append(ccd4)
    summary = xray.summarize_file(str(path))
    assert summary.exposure_s == 9000.0 and summary.rate == pytest.approx(1.0)
    assert summary.warnings == ["no EXPOSURE; LIVETIME used"]
    with fits.open(path, mode="update") as hdul:  # an EXPOSURE of 0 is none either
        hdul[1].header["EXPOSURE"] = 0.0
    summary = xray.summarize_file(str(path))
    assert summary.rate == pytest.approx(1.0) and summary.warnings == ["EXPOSURE is 0: not used; LIVETIME used"]


def test_without_exposure_or_livetime_the_rate_says_whose_good_time_it_is(tmp_path, rng):
    path = tmp_path / "chips.evt"
    _events(path, rng, n=6000, exposure=None, DEADC=0.5)
    with fits.open(path, mode="update") as hdul:
        hdul.append(hdul[2].copy())
    summary = xray.summarize_file(str(path))
    assert summary.rate == pytest.approx(6000 / (SPAN * 0.5))
    assert summary.warnings == ["no EXPOSURE or LIVETIME: rate per GTI exposure x DEADC 0.5 (live time); "
                                "of the first of 2 GTI extensions (HDU 2) only (one per chip in XMM's and Chandra's lists)"]


def test_a_spectrum_is_a_background_by_the_links_and_its_own_words_as_a_fresh_catalog_says(url, tmp_path):
    """'BG_CMi_pn_src.pha' is the star BG CMi's spectrum, with a background of
    its own: a source (the name's 'BG' made it a background, its links unwarned);
    a spectrum no BACKFILE names any more is no background again, without
    `xray summarize --force`; a background is not warned of on the ingest
    that links it (HDUCLAS2 TOTAL, as SAS and CIAO write on backgrounds)."""
    directory = tmp_path / "roles"
    directory.mkdir()
    _spectrum(directory / "BG_CMi_pn_src.pha", np.full(64, 5, np.int32), BACKFILE="BG_CMi_pn_bkgspec.pha")
    _spectrum(directory / "BG_CMi_pn_bkgspec.pha", np.full(64, 1, np.int32))
    _spectrum(directory / "s1.pha", np.full(64, 4, np.int32), BACKFILE="b.pha")
    _spectrum(directory / "b.pha", np.full(64, 1, np.int32))
    ingested = _ingested(url, directory)
    assert "/b.pha:" not in ingested.stderr and "bkgspec.pha:" not in ingested.stderr
    assert "BG_CMi_pn_src.pha: RESPFILE absent" in ingested.stderr  # a source's links are its own to warn of
    roles = {name: row["xray_role"] for name, row in _rows(url, "xray_kind == 'spectrum'", "xray_role").items()}
    assert roles == {"BG_CMi_pn_src.pha": "source", "BG_CMi_pn_bkgspec.pha": "background", "s1.pha": "source",
                     "b.pha": "background"}
    with fits.open(directory / "s1.pha", mode="update") as hdul:
        hdul[1].header["BACKFILE"] = "none"
    run(url, "ingest", str(directory))
    assert _rows(url, "relpath == 'b.pha'", "xray_role") == {"b.pha": {"xray_role": "source"}}
    run(url, "xray", "summarize", "--force")  # what a fresh reading says: the same
    assert _rows(url, "relpath == 'b.pha'", "xray_role") == {"b.pha": {"xray_role": "source"}}
    (directory / "BG_CMi_pn_src.pha").rename(tmp_path / "away.pha")  # the only spectrum naming its background, gone
    run(url, "ingest", str(directory))
    assert _rows(url, "relpath == 'BG_CMi_pn_bkgspec.pha'", "xray_role") == {"BG_CMi_pn_bkgspec.pha": {"xray_role": "background"}}
    (directory / "b.pha").rename(tmp_path / "b.pha")
    _spectrum(directory / "s2.pha", np.full(64, 4, np.int32), BACKFILE="plain.pha")
    _spectrum(directory / "plain.pha", np.full(64, 1, np.int32))
    run(url, "ingest", str(directory))
    assert _rows(url, "relpath == 'plain.pha'", "xray_role") == {"plain.pha": {"xray_role": "background"}}
    (directory / "s2.pha").rename(tmp_path / "s2.pha")
    run(url, "ingest", str(directory))  # plain.pha's only source gone: a source again, without --force
    assert _rows(url, "relpath == 'plain.pha'", "xray_role") == {"plain.pha": {"xray_role": "source"}}


def test_a_backfile_naming_another_hdu_of_its_file_links_nothing(url, tmp_path):
    """BACKFILE 'pair.pha[2]': HDU 2 of pair.pha, whose summary is of HDU 1, a
    spectrum of 5000 counts: taken off, the net rate was -4.0 c/s for 0.99.
    A part that is the summarized HDU (by number or EXTNAME) links."""
    directory = tmp_path / "parts"
    directory.mkdir()
    _spectrum(directory / "src.pha", np.full(10, 100, np.int32), BACKFILE="pair.pha[2]", EXPOSURE=1000.0)
    _spectrum(directory / "pair.pha", np.full(10, 500, np.int32), EXPOSURE=1000.0)
    with fits.open(directory / "pair.pha", mode="update") as hdul:
        background = hdul[1].copy()
        background.name = "BKG"
        background.data["COUNTS"] = 10
        background.header["BACKSCAL"] = 10.0
        hdul.append(background)
    _spectrum(directory / "src1.pha", np.full(10, 100, np.int32), BACKFILE="pair.pha[1]", EXPOSURE=1000.0)
    _spectrum(directory / "src_named.pha", np.full(10, 100, np.int32), BACKFILE="pair.pha[SPECTRUM]", EXPOSURE=1000.0)
    _spectrum(directory / "src_version.pha", np.full(10, 100, np.int32), BACKFILE="pair.pha[BKG,2]", EXPOSURE=1000.0)
    ingested = _ingested(url, directory)
    assert ("src.pha: BACKFILE 'pair.pha[2]' names HDU 2 of the file; obsarch summarizes its HDU 1 (SPECTRUM) only: "
            "not linked") in ingested.stderr
    rows = _rows(url, "xray_kind == 'spectrum'", "net_rate,background_file")
    assert rows["src.pha"] == {"net_rate": "", "background_file": ""}
    assert float(rows["src1.pha"]["net_rate"]) == pytest.approx(1.0 - 5.0)  # HDU 1 it names, HDU 1 it is
    assert float(rows["src_named.pha"]["net_rate"]) == pytest.approx(1.0 - 5.0)
    assert rows["src_version.pha"] == {"net_rate": "", "background_file": ""}  # EXTVER 2 of BKG: there is none
    assert "src_version.pha: BACKFILE 'pair.pha[BKG,2]' names [BKG,2] of the file" in ingested.stderr


def test_a_net_spectrum_is_not_taken_its_background_off_twice(url, tmp_path):
    directory = tmp_path / "net"
    directory.mkdir()
    _spectrum(directory / "net_src.pha", np.full(10, 100, np.int32), HDUCLAS2="NET", BACKFILE="bkg.pha", EXPOSURE=1000.0)
    _spectrum(directory / "bkg.pha", np.full(10, 40, np.int32), HDUCLAS2="BKG", EXPOSURE=1000.0)
    ingested = _ingested(url, directory)
    assert "net_src.pha: HDUCLAS2 is NET, its background taken off already" in ingested.stderr
    rows = _rows(url, "relpath == 'net_src.pha'", "rate,net_rate")
    assert float(rows["net_src.pha"]["net_rate"]) == pytest.approx(1.0) == float(rows["net_src.pha"]["rate"])  # not 0.6
