"""Processing with provenance: combine and calibration against ccdproc, masters,
calibrate, stack, external tools, lineage, staleness, interruption, executors."""

from __future__ import annotations

import json
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from factories import obsarch, star_field, write_image
from sqlalchemy import create_engine, select

from archive.exceptions import ObsarchError, UsageError
from archive.models import Product, Run
from processing import calibration, external, offsets, runs, stacking
from processing.combine import CombineError, calibrate_array, combine_files, parse_memory
from processing.executor import parallel_map

# -- arrays against ccdproc ---------------------------------------------------------------


@pytest.fixture
def small_frames(tmp_path, rng):
    paths = []
    for i in range(7):
        data = rng.normal(1000, 10, (40, 50)).astype(np.float32)
        data[rng.integers(0, 40, 3), rng.integers(0, 50, 3)] += 5000  # cosmic rays
        fits.PrimaryHDU(data).writeto(tmp_path / f"f{i}.fits")
        paths.append(tmp_path / f"f{i}.fits")
    return paths


@pytest.mark.parametrize(
    "method, ccdproc_options",
    [
        ("median", {"method": "median"}),
        ("mean", {"method": "average"}),
        # at 2 sigma: of 7 frames, a clip at 3 leaves out nothing (see test_a_clip_that_can_leave_out_nothing_is_refused)
        ("sigclip", {"method": "average", "sigma_clip": True, "sigma_clip_low_thresh": 2, "sigma_clip_high_thresh": 2,
                     "sigma_clip_func": np.ma.mean, "sigma_clip_dev_func": np.ma.std}),
        ("sigclip-median", {"method": "median", "sigma_clip": True, "sigma_clip_low_thresh": 2, "sigma_clip_high_thresh": 2,
                            "sigma_clip_func": np.ma.median, "sigma_clip_dev_func": np.ma.std}),
    ],
)
@pytest.mark.parametrize("memory", [10**9, 80_000])  # one band, and a band of a few rows at a time
def test_combine_equals_ccdproc(small_frames, method, ccdproc_options, memory):
    import ccdproc
    from astropy.nddata import CCDData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ccdproc.combine([CCDData.read(p, unit="adu") for p in small_frames], **ccdproc_options)
    ours = combine_files(small_frames, method=method, sigma=2.0, memory_bytes=memory, dtype=np.float64)
    np.testing.assert_allclose(ours, theirs.data, rtol=1e-12, atol=0)
    if method == "sigclip":  # the cosmic rays are left out (but where two fell on one pixel)
        plain = combine_files(small_frames, method="mean", dtype=np.float64)
        assert (ours > 1300).sum() < (plain > 1300).sum() / 2


class _Shift:
    def __init__(self, dx, dy):
        self.matrix = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]])


def test_a_gap_in_a_frame_does_not_ring_through_its_resampled_neighbours():
    from astropy.modeling.models import Gaussian2D

    from processing.combine import resample

    y, x = np.mgrid[0:40, 0:40]
    flat = np.full((40, 40), 1000.0)
    flat[:, 30] = np.nan  # a dead column
    image, covered = resample(flat, _Shift(0.5, 0.0), flat.shape)
    assert np.nanmax(np.abs(image - 1000)) < 1e-9  # filled with 0, its neighbours were off by up to 60%
    assert not covered[:, 29:32].any() and covered[:, 5:27].all()
    star = Gaussian2D(5000, 20, 20, 1.5, 1.5)(x, y) + 100
    masked = star.copy()
    masked[20, 20] = np.nan  # its core masked
    whole, _ = resample(star, _Shift(0.5, 0.25), star.shape)
    kept, covered = resample(masked, _Shift(0.5, 0.25), star.shape)
    assert np.nanmax(np.abs(kept - whole) / whole) < 0.03 and covered.sum() > 0.9 * star.size


@pytest.mark.parametrize("method, n, refused, kept", [
    ("sigclip", 10, 3.0, 2.99), ("sigclip", 5, 2.0, 1.99),  # sqrt(n - 1)
    ("sigclip-median", 7, 3.0, 2.95), ("sigclip-median", 8, 3.1, 3.0), ("sigclip-median", 5, 2.6, 2.55),
])
def test_a_clip_that_can_leave_out_nothing_is_refused(tmp_path, rng, method, n, refused, kept):
    paths = []
    for i in range(n):
        data = rng.normal(100, 5, (6, 6)).astype(np.float32)
        data[3, 3] = 100 if i else 10_000  # a cosmic ray in the first frame
        fits.PrimaryHDU(data).writeto(tmp_path / f"f{i}.fits")
        paths.append(tmp_path / f"f{i}.fits")
    with pytest.raises(CombineError, match=f"a clip at {refused:g} sigma leaves out nothing of {n} frames"):
        combine_files(paths, method=method, sigma=refused)
    assert combine_files(paths, method=method, sigma=kept)[3, 3] < 150  # just below the reach, the cosmic ray goes


def test_a_command_refuses_a_clip_that_can_leave_out_nothing_before_it_reads_a_pixel(night, url):
    catalog, tmp = night
    refused = obsarch(url, "calib", "bias", "--method", "sigclip", "--out", str(tmp / "m"), code=2)
    assert refused.stderr.splitlines() == [
        "error: a clip at 3 sigma leaves out nothing of 5 frames: one pass puts no value farther than 2.00 of their "
        "standard deviations from their mean; clip below 2.00 sigma (--sigma), combine more frames, or use the median"]
    ids = offsets.select_ids(catalog.engine, "frame_type == 'science'")
    offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    refused = obsarch(url, "stack", "frame_type == 'science'", "--sigma-clip", "3", code=2)
    assert "leaves out nothing of 4 frames" in refused.stderr and "(--sigma-clip)" in refused.stderr


def test_scaled_combine_equals_ccdproc(small_frames):
    import ccdproc
    from astropy.nddata import CCDData

    scales = [1 / (i + 1.0) for i in range(len(small_frames))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ccdproc.combine([CCDData.read(p, unit="adu") for p in small_frames], method="median", scale=scales)
    np.testing.assert_allclose(combine_files(small_frames, scales=scales, dtype=np.float64), theirs.data, rtol=1e-12)


def test_calibration_equals_ccdproc(rng):
    import ccdproc
    from astropy import units as u
    from astropy.nddata import CCDData

    bias, dark = rng.normal(500, 2, (30, 40)), rng.normal(5, 1, (30, 40))
    flat, science = rng.normal(20000, 100, (30, 40)), rng.normal(3000, 30, (30, 40))
    ours = calibrate_array(science, bias=bias, dark=dark, dark_exptime=300.0, exptime=60.0, flat=flat)
    expected = CCDData(science, unit="adu", meta={"exptime": 60.0})
    expected = ccdproc.subtract_bias(expected, CCDData(bias, unit="adu"))
    expected = ccdproc.subtract_dark(expected, CCDData(dark, unit="adu", meta={"exptime": 300.0}),
                                     exposure_time="exptime", exposure_unit=u.s, scale=True)
    expected = ccdproc.flat_correct(expected, CCDData(flat, unit="adu"))
    np.testing.assert_allclose(ours, expected.data, rtol=1e-12)


@pytest.mark.parametrize("method", ["median", "sigclip-median"])
def test_combine_stays_within_its_memory(tmp_path, rng, method):
    paths = []
    for i in range(12):
        fits.PrimaryHDU(rng.normal(0, 1, (512, 512)).astype(np.float32)).writeto(tmp_path / f"m{i}.fits")
        paths.append(tmp_path / f"m{i}.fits")
    limit = 8 * 2**20  # the frames alone would take 12 MB as float32, 25 MB as float64
    tracemalloc.start()
    combine_files(paths, method=method, memory_bytes=limit)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < limit, f"peak {peak / 2**20:.1f} MiB over a {limit / 2**20:.0f} MiB limit"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: combine_files(p, memory_bytes=1000), "is too small: 7 frames of 50x40 need at least"),
        (lambda p: combine_files(p, method="mode"), "unknown method 'mode'"),
        (lambda p: combine_files([]), "nothing to combine"),
    ],
)
def test_combine_refusals(small_frames, call, message):
    with pytest.raises(CombineError, match=message):
        call(small_frames)


@pytest.mark.parametrize("text", ["lots", "-5GB", "0", "1e999GB", "", "2 parsecs"])
def test_a_memory_size_that_cannot_be_read_is_a_usage_error(text):
    with pytest.raises(UsageError, match=f"--memory {text!r}: give a size such as 2GB or 500MB"):
        parse_memory(text)


def test_combine_refuses_mixed_shapes(small_frames, tmp_path):
    fits.PrimaryHDU(np.zeros((10, 10), dtype=np.float32)).writeto(tmp_path / "odd.fits")
    with pytest.raises(CombineError, match=r"shape \(10, 10\) differs"):
        combine_files([*small_frames, tmp_path / "odd.fits"])


@pytest.mark.parametrize("text, size", [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("1GiB", 2**30), ("123", 123)])
def test_parse_memory(text, size):
    assert parse_memory(text) == size


# -- a synthetic night, end to end ---------------------------------------------------------------

SHAPE = (128, 128)


def _night(directory, rng, *, modes=("SCI1.0",)):
    """Bias and V flats in each read-out mode, and 4 V science frames with
    known shifts; all share one star field."""
    stars = np.column_stack([rng.uniform(10, 118, 25), rng.uniform(10, 118, 25)])
    fluxes = rng.uniform(3e3, 3e4, 25)
    number = 1
    for mode in modes:
        for i in range(5):
            write_image(directory / f"b-{number}.fits", rng.normal(500, 3, SHAPE).astype(np.float32),
                        {"IMAGETYP": "Bias Frame", "FILTER": None, "EXPTIME": 0.0, "READOUTM": mode,
                         "DATE-OBS": f"2017-08-16T0{i}:00:00"})
            number += 1
    for i in range(3):
        write_image(directory / f"fl-{number}.fits", (500 + rng.normal(20000, 100, SHAPE)).astype(np.float32),
                    {"IMAGETYP": "Flat Field", "FILTER": "V", "EXPTIME": 2.0, "DATE-OBS": f"2017-08-16T05:0{i}:00"})
        number += 1
    shifts = [(0.0, 0.0), (3.4, -2.1), (-5.2, 4.7), (1.1, 6.3)]
    for i, (dx, dy) in enumerate(shifts):
        image = star_field(rng, SHAPE, positions=stars - [dx, dy], fluxes=fluxes, background=1500.0) + 500
        write_image(directory / f"s-{number}.fits", image, {"IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": 60.0,
                                                           "DATE-OBS": f"2017-08-16T03:0{i}:00"})
        number += 1


@pytest.fixture
def night(catalog, tmp_path, rng):
    _night(tmp_path / "raw", rng)
    catalog.ingest([tmp_path / "raw"])
    return catalog, tmp_path


def _kinds(catalog) -> list[str]:
    with catalog.engine.connect() as conn:
        return conn.execute(select(Product.kind).order_by(Product.id)).scalars().all()


@pytest.mark.slow
def test_raw_to_masters_to_calibrated_to_stack(night):
    catalog, tmp = night
    engine = catalog.engine
    assert calibration.make_master(engine, "bias", out_dir=tmp / "masters").products
    assert calibration.make_master(engine, "flat", band="V", out_dir=tmp / "masters").products
    made = calibration.calibrate(engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1)
    assert len(made.products) == 4 and not made.failed
    ids = offsets.select_ids(engine, "frame_type == 'science' and product is null")
    offsets.compute_offsets(engine, ids, ids[0], workers=1)
    result = stacking.stack(engine, "band == 'V' and frame_type == 'science'", out_dir=tmp / "stacks", workers=1)
    (stack_path,) = result.products
    assert _kinds(catalog) == ["master_bias", "master_flat"] + ["calibrated"] * 4 + ["stack"]

    with fits.open(stack_path) as hdul:
        assert hdul[0].header["NCOMBINE"] == 4 and "COVERAGE" in hdul
        coverage = hdul["COVERAGE"].data
        assert coverage.max() == 4 and coverage.min() >= 1  # the shifted frames leave the edges less covered
        calibrated = hdul[0].data
    assert np.nanmedian(calibrated) == pytest.approx(1500 / 1.0, rel=0.05)  # bias off, flat ~1

    tree = runs.lineage(engine, catalog.resolve(stack_path))
    assert tree["run"]["step"] == "stack"
    calibrated_node = next(n for n in tree["inputs"] if n["role"] == "calibrated")
    roles = {n["role"] for n in calibrated_node["inputs"]}
    assert roles == {"frame", "bias", "flat"}
    bias_node = next(n for n in calibrated_node["inputs"] if n["role"] == "bias")
    assert bias_node["run"]["step"] == "master-bias" and len(bias_node["inputs"]) == 5
    assert all(child["run"] is None for child in bias_node["inputs"])  # raw files end the walk

    # nothing changed: every step is skipped
    assert calibration.make_master(engine, "bias", out_dir=tmp / "masters").skipped
    assert len(calibration.calibrate(engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1).skipped) == 4
    assert stacking.stack(engine, "band == 'V' and frame_type == 'science'", out_dir=tmp / "stacks", workers=1).skipped
    assert runs.stale_products(engine) == []

    # a raw bias changes: what depends on it is stale, and re-running rebuilds only that
    time.sleep(0.01)
    bias_file = sorted((tmp / "raw").glob("b-*.fits"))[0]
    write_image(bias_file, np.full(SHAPE, 520.0, dtype=np.float32), {"IMAGETYP": "Bias Frame", "FILTER": None, "EXPTIME": 0.0,
                                                                    "DATE-OBS": "2017-08-16T00:00:00"})
    catalog.ingest([tmp / "raw"])
    stale = {row["kind"]: row["reason"] for row in runs.stale_products(engine)}
    assert set(stale) == {"master_bias", "master_flat", "calibrated", "stack"}
    assert "changed" in stale["master_bias"] and "is stale" in stale["stack"]
    assert calibration.make_master(engine, "bias", out_dir=tmp / "masters").products
    assert calibration.make_master(engine, "flat", band="V", out_dir=tmp / "masters").products
    assert len(calibration.calibrate(engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1).products) == 4
    assert stacking.stack(engine, "band == 'V' and frame_type == 'science'", out_dir=tmp / "stacks", workers=1).products
    assert runs.stale_products(engine) == []


def _stacked(night) -> str:
    """Masters, calibrated frames and offsets of the night, and the path of
    a stack of them."""
    catalog, tmp = night
    engine = catalog.engine
    calibration.make_master(engine, "bias", out_dir=tmp / "masters")
    calibration.make_master(engine, "flat", band="V", out_dir=tmp / "masters")
    calibration.calibrate(engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1)
    ids = offsets.select_ids(engine, "frame_type == 'science' and product is null")
    offsets.compute_offsets(engine, ids, ids[0], workers=1)
    (stack_path,) = stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "stacks", workers=1).products
    return stack_path


def _writer(engine, path) -> int:
    """The run that wrote ``path`` last (a step's run for its item)."""
    return runs.what_is_at(engine, path).run_id


def _calibrated_lines(url: str, stack_path: str) -> dict[str, str]:
    """Path -> line of the calibrated inputs in ``obsarch lineage`` of a stack."""
    lines = [line.split(maxsplit=2)[1:] for line in obsarch(url, "lineage", stack_path).stdout.splitlines()
             if line.lstrip().startswith("[calibrated]")]
    return dict(lines)


def test_lineage_names_the_run_that_made_what_a_stack_read_not_a_later_one(night, url):
    """A `calibrate --force` after a stack wrote its calibrated frames again,
    and lineage of the stack named that later run as their maker, though
    the stack read what the earlier one made (found in a user trial)."""
    catalog, tmp = night
    stack_path = _stacked(night)
    paths = sorted(str(path) for path in (tmp / "cal").glob("*_cal.fits"))
    made = {path: _writer(catalog.engine, path) for path in paths}
    time.sleep(0.01)  # the files written again get another modification time
    again = calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1, force=True)
    assert sorted(again.products) == paths and not set(made.values()) & {_writer(catalog.engine, p) for p in paths}

    tree = runs.lineage(catalog.engine, catalog.resolve(stack_path))
    calibrated = {node["path"]: node for node in tree["inputs"] if node["role"] == "calibrated"}
    assert {path: node["run"]["id"] for path, node in calibrated.items()} == made
    assert all({child["role"] for child in node["inputs"]} == {"frame", "bias", "flat"} for node in calibrated.values())
    lines = _calibrated_lines(url, stack_path)
    assert {path: line.split()[:4] for path, line in lines.items()} == {p: ["<-", "run", str(n), "calibrate"]
                                                                        for p, n in made.items()}


def test_lineage_says_when_no_run_made_what_a_stack_read(night, url):
    """An input that no run made as its reader read it (edited by hand) is
    said to be so, with whether it changed since, and no run is named its maker."""
    catalog, tmp = night
    stack_path = _stacked(night)
    edited = str(sorted((tmp / "cal").glob("*_cal.fits"))[0])
    calibrated = _writer(catalog.engine, edited)

    def edit(value: str) -> None:
        time.sleep(0.01)
        fits.setval(edited, "OBSERVER", value=value)
        catalog.ingest([tmp / "cal"])

    edit("by hand")  # after the stack read it: the stack read what the calibrate run made
    assert _calibrated_lines(url, stack_path)[edited].startswith(f"<- run {calibrated} calibrate (")

    assert stacking.stack(catalog.engine, "frame_type == 'science'", out_dir=tmp / "stacks", workers=1).products
    stacked = _writer(catalog.engine, stack_path)
    assert _calibrated_lines(url, stack_path)[edited] == f"(no run made it as run {stacked} used it)"

    edit("by hand again")
    assert _calibrated_lines(url, stack_path)[edited] == f"(changed since run {stacked} used it: no run made it as it is now)"

    time.sleep(0.01)
    calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1, force=True)
    rewrote = _writer(catalog.engine, edited)
    node = next(node for node in runs.lineage(catalog.engine, catalog.resolve(stack_path))["inputs"] if node["path"] == edited)
    assert (node["run"], node["inputs"]) == (None, [])
    assert node["unmade"] == {"read_by": stacked, "changed_since": True, "now_made_by": rewrote}
    assert _calibrated_lines(url, stack_path)[edited] == f"(changed since run {stacked} used it: now made by run {rewrote})"
    from starlette.testclient import TestClient

    from web.app import create_app

    with TestClient(create_app(catalog=catalog, thumbnails=tmp / "thumbs")) as http:  # the frame page's lineage too
        page = http.get(f"/exposures/{catalog.resolve(stack_path)}").text
    assert f"{edited}</a> (changed since run {stacked} used it: now made by run {rewrote})" in page


def test_a_frame_graded_bad_is_left_out_of_stacks_and_leaves_its_calibrated_frame_current(night):
    from processing import quality

    catalog, tmp = night
    engine = catalog.engine
    calibration.make_master(engine, "bias", out_dir=tmp / "m")
    calibration.make_master(engine, "flat", band="V", out_dir=tmp / "m")
    calibration.calibrate(engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1)
    quality.flag(engine, "frame_type == 'science' and product is null and frame_number == 12", "bad", reason="clouds")
    # calibrating again would make the same file: its calibrated frame is not stale (a stack leaves it out)
    assert runs.stale_products(engine) == []
    ids = offsets.select_ids(engine, "frame_type == 'science' and product is null")
    offsets.compute_offsets(engine, ids, ids[0], workers=1)
    result = stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "stacks", workers=1)
    with fits.open(result.products[0]) as hdul:
        assert hdul[0].header["NCOMBINE"] == 3
    assert result.exit_code == 0  # a frame graded bad is not selected: the stack is whole
    assert result.notes == ["left out 1 frame graded bad (--include-bad keeps them): 12"]
    everything = stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "all", include_bad=True, workers=1)
    with fits.open(everything.products[0]) as hdul:
        assert hdul[0].header["NCOMBINE"] == 4
    assert everything.notes == ["kept 1 frame graded bad (--include-bad): 12"]
    quality.flag(engine, "frame_type == 'science' and product is null", "bad", reason="clouds")
    with pytest.raises(ObsarchError, match=r"^no frames to stack in the selection: the 4 that match are graded bad "
                                           r"and left out \(--include-bad keeps them\)$"):
        stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "none", workers=1)


def test_master_choice_rules(catalog, tmp_path, rng):
    _night(tmp_path / "raw", rng, modes=("SCI1.0", "FAST"))
    catalog.ingest([tmp_path / "raw"])
    engine = catalog.engine
    with pytest.raises(ObsarchError, match=r"several readout modes \(FAST, SCI1.0\); select one"):
        calibration.make_master(engine, "bias", out_dir=tmp_path / "m")
    with pytest.raises(ObsarchError, match="--nearest needs --to"):
        calibration.make_master(engine, "bias", "readout_mode == 'FAST'", nearest_count=2, out_dir=tmp_path / "m")
    summary = calibration.make_master(engine, "bias", "readout_mode == 'FAST'", nearest_count=2, to="2017-08-16T03:10",
                                      out_dir=tmp_path / "m")
    with fits.open(summary.products[0]) as hdul:
        assert hdul[0].header["NCOMBINE"] == 2 and hdul[0].header["READOUTM"] == "FAST"
        inputs = [line for line in hdul[0].header["HISTORY"] if "obsarch input" in line]
    assert [line.split()[-1] for line in inputs] == ["b-9.fits", "b-10.fits"]  # the two nearest 03:10
    with pytest.raises(ObsarchError, match="no raw dark frames match"):
        calibration.make_master(engine, "dark", out_dir=tmp_path / "m")


def test_frames_without_a_value_are_named_with_is_null(catalog, tmp_path, rng):
    """The advice was "readout_mode == 'None'", which matches no frame."""
    _night(tmp_path / "raw", rng, modes=(None, "FAST"))
    catalog.ingest([tmp_path / "raw"])
    with pytest.raises(ObsarchError) as refused:
        calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "m")
    assert str(refused.value).endswith("are in several readout modes (FAST, none); select one, e.g. \"readout_mode == 'FAST'\" "
                                       "(\"readout_mode is null\" for the frames without one)")
    assert calibration.make_master(catalog.engine, "bias", "readout_mode is null", out_dir=tmp_path / "m").products


def test_calibrate_reports_frames_without_masters(night):
    catalog, tmp = night
    summary = calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1)
    assert len(summary.failed) == 4 and "no master bias in the catalog" in summary.failed[0][1]
    assert summary.exit_code == 1 and not summary.done  # calibrated 0, failed 4: an error, never exit 0
    assert "run `obsarch calib bias` first" in summary.failed[0][1]


def test_a_frame_unreadable_since_its_ingest_fails_alone(night, url):
    """calibrate stopped at 'unexpected KeyError' and calibrated nothing when the
    selection held a frame the last ingest found unreadable; calib explain left
    the frame out without a word."""
    catalog, tmp = night
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "masters")
    calibration.make_master(catalog.engine, "flat", band="V", out_dir=tmp / "masters")
    cut = tmp / "raw" / "s-12.fits"
    cut.write_bytes(cut.read_bytes()[:5000])  # its header whole, its data cut
    catalog.ingest([tmp / "raw"])
    result = obsarch(url, "calibrate", "frame_type == 'science'", "--out", str(tmp / "cal"), "--workers", "1", code=3)
    assert result.stdout.count("calibrate: wrote ") == 3
    assert "3 done" in result.stderr and f"{cut}: unreadable since it was last ingested: " in result.stderr
    rows = json.loads(obsarch(url, "calib", "explain", "frame_type == 'science'", "--format", "json").stdout)
    mine = [row for row in rows if row["frame"] == str(cut)]
    assert [row["type"] for row in mine] == ["bias", "dark", "flat"]
    assert all(row["chosen"] is None and row["reason"].startswith(f"{cut}: unreadable since it was last ingested: ")
               for row in mine)


def test_an_interrupted_step_leaves_no_product_and_no_successful_run(night, monkeypatch):
    catalog, tmp = night
    engine = catalog.engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(calibration, "combine_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        calibration.make_master(engine, "bias", out_dir=tmp / "m")
    assert not list((tmp / "m").glob("*")) if (tmp / "m").exists() else True
    with engine.connect() as conn:
        states = conn.execute(select(Run.state).where(Run.step == "master-bias")).scalars().all()
        products = conn.execute(select(Product.id)).scalars().all()
    assert states == ["interrupted"] and products == []

    def half_written(path):
        with open(path, "wb") as stream:
            stream.write(b"SIMPLE  =                    T")
        raise OSError("disk full")

    monkeypatch.undo()
    with pytest.raises(OSError, match="disk full"):
        runs.write_product(tmp / "out" / "p.fits", half_written)
    assert list((tmp / "out").iterdir()) == []  # neither the product nor its partial file


# -- external tools ---------------------------------------------------------------------------


def test_run_an_external_tool_per_obsid(catalog, tmp_path, rng):
    for obsid, count in (("0013140101", 2), ("0761220101", 1), ("0000000009", 1)):
        for i in range(count):
            write_image(tmp_path / "xmm" / obsid / f"ev{i}.fits", rng.normal(0, 1, (8, 8)).astype(np.float32),
                        {"OBS_ID": obsid, "TELESCOP": "XMM"})
    catalog.ingest([tmp_path / "xmm"])
    script = "echo obsid {obsid}; ls {dir} > files.txt; cp {path} product.fits; test {obsid} != 0000000009"
    summary = external.run_each(catalog.engine, "obsid", None, ["sh", "-c", script], workdir=str(tmp_path / "work" / "{obsid}"),
                                workers=2)
    assert sorted(summary.done) == ["0013140101", "0761220101"]
    assert summary.failed[0][0] == "0000000009" and "exit status 1" in summary.failed[0][1]
    assert len(summary.products) == 4
    assert (tmp_path / "work" / "0013140101" / "files.txt").read_text().split() == ["ev0.fits", "ev1.fits"]
    with catalog.engine.connect() as conn:
        logged = conn.execute(select(Run.item, Run.state, Run.stdout).where(Run.step == "run:sh", Run.parent_id.is_not(None)).order_by(Run.item)).all()
    assert [(r.item, r.state) for r in logged] == [("0000000009", "failed"), ("0013140101", "done"), ("0761220101", "done")]
    assert logged[1].stdout.strip() == "obsid 0013140101"
    again = external.run_each(catalog.engine, "obsid", None, ["sh", "-c", script], workdir=str(tmp_path / "work" / "{obsid}"), workers=2)
    assert sorted(again.skipped) == ["0013140101", "0761220101"] and len(again.failed) == 1
    product = catalog.query("path like '%0761220101/product.fits'", columns="id,product")
    assert product["product"].tolist() == ["output"]
    tree = runs.lineage(catalog.engine, int(product["id"][0]))
    assert tree["run"]["step"] == "run:sh" and tree["inputs"][0]["path"].endswith("0761220101/ev0.fits")


@pytest.mark.parametrize("template, expected", [
    # a shell's -c script gets each value quoted for the shell
    (["sh", "-c", "ls {path} {dir}"], ["sh", "-c", "ls '/d/a$(touch x) b.fits' /d"]),
    (["/bin/bash", "-ec", "cp {path} out/"], ["/bin/bash", "-ec", "cp '/d/a$(touch x) b.fits' out/"]),
    (["env", "LC_ALL=C", "sh", "-c", "echo {path}"], ["env", "LC_ALL=C", "sh", "-c", "echo '/d/a$(touch x) b.fits'"]),
    (["sh", "-c", "echo {paths}"], ["sh", "-c", "echo '/d/a$(touch x) b.fits' /d/c.fits"]),  # each already one word
    # any other argument reaches the program as it is: no shell reads it
    (["ls", "{path}", "--out={dir}/x"], ["ls", "/d/a$(touch x) b.fits", "--out=/d/x"]),
    (["ls", "{paths}"], ["ls", "/d/a$(touch x) b.fits", "/d/c.fits"]),
    (["sh", "script.sh", "{path}"], ["sh", "script.sh", "/d/a$(touch x) b.fits"]),  # a script file: arguments as they are
    # a shell behind a command that runs another reads its script as well
    (["nice", "sh", "-c", "wc -c {path}"], ["nice", "sh", "-c", "wc -c '/d/a$(touch x) b.fits'"]),
    (["timeout", "60", "bash", "-ec", "cp {path} out/"], ["timeout", "60", "bash", "-ec", "cp '/d/a$(touch x) b.fits' out/"]),
    (["docker", "run", "--rm", "-v", "{dir}:{dir}", "sas", "sh", "-c", "ls {dir}"],
     ["docker", "run", "--rm", "-v", "/d:/d", "sas", "sh", "-c", "ls /d"]),
])
def test_values_are_quoted_only_where_a_shell_reads_them(template, expected):
    import shlex

    values = {"path": "/d/a$(touch x) b.fits", "dir": "/d", "paths": " ".join(map(shlex.quote, ["/d/a$(touch x) b.fits", "/d/c.fits"]))}
    assert external.expand(template, values) == expected


def test_a_file_name_is_never_run_as_a_command(catalog, tmp_path, rng):
    hostile = tmp_path / "data" / "a$(touch INJECTED) 'b'.fits"
    write_image(hostile, rng.normal(0, 1, (8, 8)).astype(np.float32), {"OBJECT": "x"})
    catalog.ingest([tmp_path / "data"])
    summary = external.run_each(catalog.engine, "exposure", None, ["sh", "-c", "ls -l {path} > listing.txt"],
                                workdir=str(tmp_path / "work" / "{item}"), workers=1)
    assert len(summary.done) == 1 and not summary.failed
    assert not list(tmp_path.rglob("INJECTED"))
    (listing,) = (tmp_path / "work").rglob("listing.txt")
    assert listing.read_text().rstrip().endswith(str(hostile))


def _frame(path, rng, number, **cards):
    write_image(path, rng.normal(100, 5, (8, 8)).astype(np.float32),
                {"IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": 60.0, "FRAMENUM": number, **cards})


@pytest.mark.parametrize("template, programs, unknown", [
    (["epchain", "exposure=2"], ["epchain"], ""),
    (["sh", "-c", "echo {obsid}; ls {dir} > files.txt && cp {path} out.fits"], ["sh", "ls", "cp"], ""),  # echo: a builtin
    (["timeout", "60", "bash", "-ec", "X=1 epproc a=b\nif test -f x; then fitsverify x | grep ok; fi"],
     ["timeout", "bash", "epproc", "fitsverify", "grep"], ""),
    (["env", "LC_ALL=C", "nice", "-n", "5", "esorex", "muse_bias", "{path}"], ["env", "nice", "esorex"], ""),
    (["docker", "run", "--rm", "sas:21", "sh", "-c", "epchain"], ["docker"], ""),  # the container's programs are not this host's
    (["{dir}/fit.sh", "{path}"], [], ""),  # a placeholder names no fixed program
    # found by the review of the first version, which missed the tool in each of these
    (["sh", "-c", "# reduce one obsid\nmytool {path}\n"], ["sh", "mytool"], ""),
    (["sh", "-c", "echo a#b; mytool"], ["sh", "mytool"], ""),
    (["bash", "-c", "n=${#x}; mytool"], ["bash", "mytool"], ""),
    (["sh", "-c", "timeout 3600 mytool"], ["sh", "timeout", "mytool"], ""),
    (["timeout", "-s", "KILL", "5m", "esorex"], ["timeout", "esorex"], ""),
    (["env", "-u", "DISPLAY", "esorex"], ["env", "esorex"], ""),
    (["ionice", "-c", "idle", "esorex"], ["ionice", "esorex"], ""),
    (["sh", "-c", "mytool\\\n --x"], ["sh", "mytool"], ""),
    (["sh", "-c", "true;(mytool)|tee log"], ["sh", "mytool", "tee"], ""),
    (["sh", "-c", "ls | xargs -n1 epchain"], ["sh", "ls", "xargs", "epchain"], ""),
    (["sh", "-c", "for file in *.fits; do mytool $file; done"], ["sh", "mytool"], ""),  # not /usr/bin/file
    (["sh", "-c", "xspec <<EOF\ndata x.pha\nfit\nEOF\nmytool"], ["sh", "xspec", "mytool"], ""),  # not data, fit
    (["python3", "-u", "/opt/pipe/reduce.py", "{path}"], ["python3", "/opt/pipe/reduce.py"], ""),
    # found by the second review
    (["python3", "-X", "dev", "/opt/pipe/reduce.py"], ["python3", "/opt/pipe/reduce.py"], ""),
    (["perl", "-I", "lib", "/opt/pipe/run.pl"], ["perl", "/opt/pipe/run.pl"], ""),
    (["sh", "-c", "time -p mytool"], ["sh", "time", "mytool"], ""),
    (["env", "-i", "PATH=/x", "ls"], ["env", "ls"], "env sets PATH"),
    (["sh", "-c", "python3 /opt/a.py {path}; python3 -c 'print(1)' && docker run img x; mytool"],
     ["sh", "python3", "python3", "docker", "mytool", "/opt/a.py"], ""),  # each command of a line, past an interpreter's
    # what cannot be told is said
    (["sh", "-c", ". headas-init.sh && xrtpipeline"], ["sh", "xrtpipeline"], "sources a setup file"),
    (["bash", "-lc", "xrtpipeline"], ["bash", "xrtpipeline"], "login shell"),
    (["sh", "-c", "$TOOL {path}"], ["sh"], "a variable's value"),
    (["sh", "-c", "echo 'unclosed"], ["sh"], "cannot split into words"),
])
def test_the_programs_a_tool_command_runs(template, programs, unknown):
    found = external._programs(template)
    assert found.words + found.scripts == programs
    assert (unknown in " ".join(found.unknown)) if unknown else found.unknown == []


def _tool(bin_dir, text: str):
    tool = bin_dir / "fit-tool"
    tool.write_text(f"#!/bin/sh\n{text}\n")
    tool.chmod(0o755)
    return tool


def test_a_replaced_tool_runs_its_items_again_and_leaves_its_products_stale(catalog, tmp_path, rng, monkeypatch):
    """A tool's version entered no fingerprint: after an upgrade (a new SAS,
    HEASoft or EsoRex) every item stayed up to date, made by the old one."""
    import os

    _frame(tmp_path / "raw" / "f001.fits", rng, 1)
    catalog.ingest([tmp_path / "raw"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    options = {"workdir": str(tmp_path / "w" / "{item}"), "workers": 1}
    for command in (["fit-tool"], ["sh", "-c", "fit-tool && echo fitted"]):  # named, or in a shell's script
        tool = _tool(bin_dir, "echo v1 > out.txt")
        first = external.run_each(catalog.engine, "exposure", None, command, **options)
        assert first.done == ["1"] and external.run_each(catalog.engine, "exposure", None, command, **options).skipped == ["1"]
        assert runs.stale_products(catalog.engine) == []
        with catalog.engine.connect() as conn:
            recorded = json.loads(conn.execute(select(Run.params_json).where(Run.id == first.run_id)).scalar_one())
        assert str(tool) in recorded["tools"]  # provenance: which program file made the products
        _tool(bin_dir, "echo version 2 > out.txt")  # the upgrade
        stale = runs.stale_products(catalog.engine)
        assert [row["reason"] for row in stale] == [f"the tool {tool} was replaced since (its content changed)"]
        again = external.run_each(catalog.engine, "exposure", None, command, **options)
        assert again.done == ["1"] and (tmp_path / "w" / "1" / "out.txt").read_text() == "version 2\n"
        assert runs.stale_products(catalog.engine) == []
    tool.unlink()
    assert [row["reason"] for row in runs.stale_products(catalog.engine)] == [f"the tool {tool} is gone"]


def test_a_new_version_first_on_path_is_a_change_too(catalog, tmp_path, rng, monkeypatch):
    """A side-by-side upgrade (a link moved to the new version, or a new
    directory first on PATH) changes no recorded file: `obsarch run` made
    the items again, `obsarch stale` said nothing."""
    import os

    _frame(tmp_path / "raw" / "f001.fits", rng, 1)
    catalog.ingest([tmp_path / "raw"])
    old, new, links = tmp_path / "esorex-3.13", tmp_path / "esorex-3.14", tmp_path / "bin"
    for directory, version in ((old, "3.13"), (new, "3.14"), (links, None)):
        directory.mkdir()
        if version:
            _tool(directory, f"echo {version} > out.txt")
    (links / "fit-tool").symlink_to(old / "fit-tool")
    monkeypatch.setenv("PATH", f"{links}{os.pathsep}{os.environ['PATH']}")
    options = {"workdir": str(tmp_path / "w" / "{item}"), "workers": 1}
    assert external.run_each(catalog.engine, "exposure", None, ["fit-tool"], **options).done == ["1"]
    (links / "fit-tool").unlink()
    (links / "fit-tool").symlink_to(new / "fit-tool")
    assert [row["reason"] for row in runs.stale_products(catalog.engine)] == [
        f"its command now runs {new / 'fit-tool'}, not what it ran then"]
    assert external.run_each(catalog.engine, "exposure", None, ["fit-tool"], **options).done == ["1"]
    assert runs.stale_products(catalog.engine) == []
    # stale looks the command up on the PATH its run had, not on this shell's (a conda env not activated here)
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    assert runs.stale_products(catalog.engine) == []


def test_a_builtin_or_a_tool_named_by_tool_is_what_is_tracked(catalog, tmp_path, rng, monkeypatch):
    """A shell's echo is no program file (a coreutils update ran every item
    again); a pipeline's plugins (EsoRex recipes, $SAS_DIR) are files no
    command names: --tool names them. What obsarch cannot tell is said."""
    import os

    _frame(tmp_path / "raw" / "f001.fits", rng, 1)
    catalog.ingest([tmp_path / "raw"])
    bin_dir, plugins = tmp_path / "bin", tmp_path / "plugins"
    bin_dir.mkdir()
    plugins.mkdir()
    _tool(bin_dir, "echo v1 > out.txt")
    (bin_dir / "echo").write_bytes(Path("/bin/echo").read_bytes() if Path("/bin/echo").exists() else b"#!/bin/sh\n")
    (bin_dir / "echo").chmod(0o755)
    (plugins / "muse_bias.so").write_bytes(b"v1")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    command = ["sh", "-c", "echo start; fit-tool"]
    options = {"workdir": str(tmp_path / "w" / "{item}"), "workers": 1, "tools": [str(plugins)]}
    assert external.run_each(catalog.engine, "exposure", None, command, **options).done == ["1"]
    os.utime(bin_dir / "echo", ns=(1, 1))  # dash's echo never runs this file
    assert external.run_each(catalog.engine, "exposure", None, command, **options).skipped == ["1"]
    (plugins / "__pycache__").mkdir()  # what a tool writes into its own directory as it runs is no change of it
    (plugins / "__pycache__" / "muse.cpython-311.pyc").write_bytes(b"cache")
    assert external.run_each(catalog.engine, "exposure", None, command, **options).skipped == ["1"]
    (plugins / "muse_bias.so").write_bytes(b"v2 of the kit")  # the pipeline kit upgraded; the command's programs are as they were
    assert [row["reason"] for row in runs.stale_products(catalog.engine)] == [
        f"the tool {plugins} changed since (a file in it added, removed or resized)"]
    assert external.run_each(catalog.engine, "exposure", None, command, **options).done == ["1"]
    with pytest.raises(UsageError, match="--tool /no/such: no such file or directory"):
        external.run_each(catalog.engine, "exposure", None, command, workdir=options["workdir"], tools=["/no/such"])
    sourced = external.run_each(catalog.engine, "exposure", None, ["sh", "-c", ". ./setup.sh; fit-tool"], **options)
    assert any("an upgrade of some of this command's programs goes unseen" in note and "--tool" in note for note in sourced.notes)


def test_an_item_done_before_tools_were_recorded_stays_done_until_a_run_records_them(catalog, tmp_path, rng, monkeypatch):
    """Upgrading obsarch must not run every item of a long reduction again:
    a run recorded without its tools' files is taken as done by them, until
    a run of the item records them (then that one decides)."""
    import os

    _frame(tmp_path / "raw" / "f001.fits", rng, 1)
    catalog.ingest([tmp_path / "raw"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "echo v1 > $1")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    command = ["fit-tool", str(tmp_path / "results-{id}.txt")]  # written outside the working directory: no product
    options = {"workdir": str(tmp_path / "w" / "{item}"), "workers": 1}
    first = external.run_each(catalog.engine, "exposure", None, command, **options)
    assert first.done == ["1"]
    step = external.ExternalStep("exposure", None, command, options["workdir"], None)
    (item,) = step.items(catalog.engine)
    earlier = {key: value for key, value in step.params().items() if key not in ("tools", "template", "search_path")}
    legacy = runs.fingerprint(step.name, {**earlier, **item.params}, step.algorithm, [i.content for i in item.inputs])
    with catalog.engine.begin() as conn:  # as an older obsarch recorded it
        conn.execute(Run.__table__.update().where(Run.parent_id == first.run_id)
                     .values(fingerprint=legacy, params_json=json.dumps({"each": "exposure", **item.params})))
    assert external.run_each(catalog.engine, "exposure", None, command, **options).skipped == ["1"]
    _tool(bin_dir, "echo v2 > $1")
    assert external.run_each(catalog.engine, "exposure", None, command, force=True, **options).done == ["1"]
    _tool(bin_dir, "echo v3 > $1")  # the legacy run no longer decides: the forced one recorded its tool
    assert external.run_each(catalog.engine, "exposure", None, command, **options).done == ["1"]
    assert Path(item.params["command"][1]).read_text() == "v3\n"


def test_a_tool_that_links_its_input_in_leaves_the_raw_frame_as_it_is(catalog, tmp_path, rng):
    _frame(tmp_path / "raw" / "f001.fits", rng, 1)
    catalog.ingest([tmp_path / "raw"])
    summary = external.run_each(catalog.engine, "exposure", None, ["ln", "-s", "{path}", "input.fits"],
                                workdir=str(tmp_path / "w" / "{item}"), workers=1)
    assert summary.done == ["1"] and summary.products == []
    row = catalog.query("", columns="frame_number,frame_type,band,exptime,product")
    assert row.iloc[0].tolist()[:4] == [1, "science", "V", 60.0] and row["product"].isna().all()


def test_a_tools_product_inherits_what_its_frames_share(catalog, tmp_path, rng):
    _frame(tmp_path / "raw" / "f001.fits", rng, 1, INSTRUME="TestCam")
    catalog.ingest([tmp_path / "raw"])
    summary = external.run_each(catalog.engine, "exposure", None, ["cp", "{path}", "out.fits"],
                                workdir=str(tmp_path / "w" / "{item}"), workers=1)
    assert len(summary.products) == 1
    row = catalog.query("product == 'output'", columns="instrument,band,exptime,night,frame_number")
    assert row.iloc[0].tolist()[:3] == ["TestCam", "V", 60.0] and row["frame_number"].isna().all()  # it had none of them


def test_a_tool_that_writes_over_a_raw_frame_fails_and_leaves_its_row(catalog, tmp_path, rng):
    _frame(tmp_path / "raw" / "f001.fits", rng, 1)
    catalog.ingest([tmp_path / "raw"])
    summary = external.run_each(catalog.engine, "exposure", None, ["sh", "-c", "touch {path}"], workdir=str(tmp_path / "raw"),
                                workers=1)
    assert summary.failed == [("1", f"it wrote {tmp_path / 'raw' / 'f001.fits'}: a raw file of the catalog, written over in place; "
                                     "not made a product (obsarch ingest reads it again)")]
    assert catalog.query("band == 'V' and frame_type == 'science'", columns="frame_number")["frame_number"].tolist() == [1]


def test_two_nights_frame_1_are_two_items_and_a_changed_one_runs_again(catalog, tmp_path, rng):
    for night in ("n1", "n2"):
        _frame(tmp_path / night / "f001.fits", rng, 1)
    catalog.ingest([tmp_path])
    command = ["sh", "-c", "cksum {path} > out.txt"]
    first = external.run_each(catalog.engine, "exposure", None, command, workdir=str(tmp_path / "runs" / "{id}"), workers=1)
    assert sorted(first.done) == [f"1 ({tmp_path / night / 'f001.fits'})" for night in ("n1", "n2")]
    with catalog.engine.connect() as conn:
        prints = conn.execute(select(Run.fingerprint).where(Run.parent_id.is_not(None))).scalars().all()
    assert len(set(prints)) == 2  # one fingerprint each: they had shared one
    _frame(tmp_path / "n1" / "f001.fits", rng, 1)  # new pixels, a new mtime
    catalog.ingest([tmp_path / "n1"])
    again = external.run_each(catalog.engine, "exposure", None, command, workdir=str(tmp_path / "runs" / "{id}"), workers=1)
    assert again.done == [f"1 ({tmp_path / 'n1' / 'f001.fits'})"] and again.skipped == [f"1 ({tmp_path / 'n2' / 'f001.fits'})"]
    # the default directory is the frame number: the second frame 1 is refused, with the way out
    default = external.run_each(catalog.engine, "exposure", None, ["true"], workdir=str(tmp_path / "d" / "{item}"), workers=1)
    assert len(default.done) == 1 and "--workdir 'runs/{id}'" in default.failed[0][1]


def test_a_frame_without_a_number_is_never_taken_for_that_frame_number(catalog, tmp_path, rng):
    _frame(tmp_path / "raw" / "a.fits", rng, None)
    catalog.ingest([tmp_path / "raw"])
    (exposure_id,) = catalog.query("", columns="id")["id"].tolist()
    _frame(tmp_path / "raw" / "b.fits", rng, exposure_id)  # another frame whose number is the first one's id
    catalog.ingest([tmp_path / "raw"])
    summary = external.run_each(catalog.engine, "exposure", None, ["true"], workdir=str(tmp_path / "w" / "{id}"), workers=1)
    # the first one's {item} is its id, the second's its frame number: the same, so each key names its file
    assert sorted(summary.done) == [f"{exposure_id} ({tmp_path / 'raw' / 'b.fits'})", f"id {exposure_id} ({tmp_path / 'raw' / 'a.fits'})"]


def test_metrics_left_by_an_earlier_run_are_not_this_runs(catalog, tmp_path, rng):
    from archive.models import NamedMetric

    _frame(tmp_path / "raw" / "f001.fits", rng, 1)
    catalog.ingest([tmp_path / "raw"])
    workdir = str(tmp_path / "m" / "{item}")
    first = external.run_each(catalog.engine, "exposure", None, ["sh", "-c", "echo snr=42 > m.txt"], workdir=workdir,
                              workers=1, metrics_from="m.txt")
    assert first.done == ["1"]
    second = external.run_each(catalog.engine, "exposure", None, ["sh", "-c", "echo cannot measure"], workdir=workdir,
                               workers=1, metrics_from="m.txt")
    assert second.failed == [("1", "the tool did not write m.txt (--metrics-from): the one there is an earlier run's")]
    with catalog.engine.connect() as conn:
        assert conn.execute(select(NamedMetric.run_id)).scalars().all() == [first.run_id + 1]  # the first item's run only


def test_a_tool_that_writes_an_unreadable_fits_file_fails_with_its_log_kept(catalog, tmp_path, rng):
    _frame(tmp_path / "raw" / "f001.fits", rng, 1)
    catalog.ingest([tmp_path / "raw"])
    summary = external.run_each(catalog.engine, "exposure", None,
                                ["sh", "-c", "echo processing done; cp {path} good.fits; : > empty.fits"],
                                workdir=str(tmp_path / "w" / "{item}"), workers=1)
    assert summary.failed == [("1", f"it wrote {tmp_path / 'w' / '1' / 'empty.fits'}: empty file")] and summary.products == []
    with catalog.engine.connect() as conn:
        run = conn.execute(select(Run.state, Run.stdout).where(Run.parent_id.is_not(None))).one()
        assert tuple(run) == ("failed", "processing done\n")
        assert conn.execute(select(Product.id)).all() == []  # good.fits neither: all or none


def test_a_timeout_ends_every_process_of_the_tool(catalog, tmp_path, rng):
    _frame(tmp_path / "raw" / "f001.fits", rng, 1)
    catalog.ingest([tmp_path / "raw"])
    summary = external.run_each(catalog.engine, "exposure", None, ["sh", "-c", "sleep 30 & echo $! > sleep.pid; wait"],
                                workdir=str(tmp_path / "w" / "{item}"), workers=1, timeout=1)
    assert summary.failed == [("1", "exit status -1: timed out after 1 s")]
    pid = (tmp_path / "w" / "1" / "sleep.pid").read_text().strip()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: str) -> bool:
    from pathlib import Path

    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    "command, message",
    [(["echo", "{nothing}"], "{nothing} in '{nothing}' is not known for this item"), ([], "give the command after --"),
     # the program got "--files='/tmp/my data/a.fits' /tmp/b.fits", quotes and all
     (["tool", "--files={paths}"], "{paths} in '--files={paths}': a list of names is an argument of its own")],
)
def test_bad_external_commands(night, command, message):
    catalog, _ = night
    with pytest.raises(ObsarchError, match=message):
        external.run_each(catalog.engine, "exposure", "1", command)


def test_a_missing_tool_is_a_failed_item(night, tmp_path):
    catalog, _ = night
    summary = external.run_each(catalog.engine, "exposure", "1-2", ["no-such-tool-xyz"], workdir=str(tmp_path / "w" / "{item}"), workers=1)
    assert len(summary.failed) == 2 and "command not found: no-such-tool-xyz" in summary.failed[0][1]


@pytest.mark.parametrize(
    "method, sigma_clip, combine",
    [
        (None, None, "median"), ("mean", None, "mean"), (None, 3.0, "sigclip"), ("mean", 3.0, "sigclip"),
        ("sigclip", 2.5, "sigclip"), ("median", 3.0, "sigclip-median"), ("sigclip-median", None, "sigclip-median"),
    ],
)
def test_the_stack_method_is_what_was_asked(method, sigma_clip, combine):
    assert stacking.stack_method(method, sigma_clip) == combine


@pytest.mark.parametrize("method, sigma_clip, message", [("mode", 3.0, "unknown method 'mode'"), ("median", 0.0, "positive")])
def test_a_stack_method_that_cannot_be_made_is_refused(method, sigma_clip, message):
    with pytest.raises(CombineError, match=message):
        stacking.stack_method(method, sigma_clip)


def _stack_header_and_run(url, tmp, *options):
    out = tmp / "stacks" / "-".join(options).replace(" ", "")
    obsarch(url, "stack", "band == 'V' and frame_type == 'science'", *options, "--out", str(out), "--workers", "1")
    header = fits.getheader(out / "V_stack.fits")
    engine = create_engine(url)
    with engine.connect() as conn:
        params = conn.execute(select(Run.params_json).where(Run.step == "stack").order_by(Run.id.desc())).scalars().first()
    engine.dispose()
    return header, json.loads(params)


def test_a_stack_says_where_its_clip_could_not_act(night, url):
    """At a stack's edges fewer frames overlap than a clip needs to leave a
    value out: there the 'clipped' stack is the plain mean or median, a
    cosmic ray included, while CLIPSIG said it was clipped."""
    catalog, tmp = night
    ids = offsets.select_ids(catalog.engine, "frame_type == 'science'")
    offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    out = tmp / "clipped"
    done = obsarch(url, "stack", "band == 'V' and frame_type == 'science'", "--sigma-clip", "2", "--method", "median",
                   "--out", str(out), "--workers", "1")
    with fits.open(out / "V_stack.fits") as hdul:
        assert hdul[0].header["CLIPMINN"] == 3  # a clipped median at 2 sigma acts from 3 frames
        coverage = hdul["COVERAGE"].data
    fewer, covered = int(((coverage > 0) & (coverage < 3)).sum()), int((coverage > 0).sum())
    assert 0 < fewer < covered
    assert (f"stack: the clip at 2 sigma can leave a value out only where 3 or more frames overlap: {fewer:,} of the "
            f"stack's {covered:,} covered pixels ({100 * fewer / covered:.1f}%) have fewer, and are their plain median") \
        in " ".join(done.stderr.split())


def test_stack_median_with_a_sigma_clip_is_a_clipped_median(night, url):
    catalog, tmp = night
    ids = offsets.select_ids(catalog.engine, "frame_type == 'science'")
    offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    header, params = _stack_header_and_run(url, tmp, "--method", "median", "--sigma-clip", "2")
    assert (header["COMBMETH"], header["CLIPSIG"], params["method"], params["sigma"]) == ("sigclip-median", 2.0, "sigclip-median", 2.0)
    header, params = _stack_header_and_run(url, tmp, "--sigma-clip", "1.5")  # as before: a clipped mean
    assert (header["COMBMETH"], header["CLIPSIG"], params["method"]) == ("sigclip", 1.5, "sigclip")
    header, params = _stack_header_and_run(url, tmp)
    assert header["COMBMETH"] == "median" and "CLIPSIG" not in header and params["method"] == "median"
    assert "CLIPMINN" not in header
    refused = obsarch(url, "stack", "frame_type == 'science'", "--method", "mode", "--sigma-clip", "3", code=2)
    assert "unknown method 'mode'" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


# -- executors ------------------------------------------------------------------------------------


def _square(x):
    return x * x


@pytest.mark.parametrize("executor, workers", [("serial", None), ("pool", 2), ("dask", 2)])
def test_executors_give_the_same_results(executor, workers):
    results = dict(parallel_map(_square, list(range(12)), executor=executor, workers=workers))
    assert results == {i: i * i for i in range(12)}


@pytest.mark.slow
def test_calibrate_on_a_dask_local_cluster(night):
    catalog, tmp = night
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    calibration.make_master(catalog.engine, "flat", band="V", out_dir=tmp / "m")
    summary = calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp / "cal", executor="dask", workers=2)
    assert len(summary.products) == 4


def test_unknown_executor():
    with pytest.raises(ObsarchError, match="unknown executor 'slurm'"):
        list(parallel_map(_square, [1, 2], executor="slurm"))


# -- the command line ------------------------------------------------------------------------------


def test_processing_tour(url, tmp_path, rng, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _night(tmp_path / "raw", rng)

    def run(*args, code=0):
        return obsarch(url, *args, code=code)

    run("init")
    run("ingest", "raw")
    assert "wrote" in run("calib", "bias", "readout_mode == 'SCI1.0'", "--nearest", "3", "--to", "2017-08-16").stdout
    assert "up to date" in run("calib", "bias", "readout_mode == 'SCI1.0'", "--nearest", "3", "--to", "2017-08-16").stdout
    run("calib", "flat", "--band", "V")
    assert "calibrate: 4 done, 0 up to date (skipped), 0 failed" in run("calibrate", "frame_type == 'science'", "--workers", "1").stdout
    run("offsets", "compute", "frame_type == 'science' and product is null", "--reference", "12", "--workers", "1")
    # frames without an offset (the flats) make a stack short of what was selected: exit 3, the last line says why
    short = run("stack", "band == 'V'", "--out", "short/", "--workers", "1", code=3)
    assert "stacked 4 of 7 selected frames" in short.stderr.strip().splitlines()[-1]
    assert "V_stack.fits" in run("stack", "band == 'V' and frame_type == 'science'", "--sigma-clip", "1.5", "--out", "stacks/",
                                 "--workers", "1").stdout
    assert "stack" in run("products", "--format", "csv").stdout
    tree = run("lineage", "stacks/V_stack.fits").stdout
    assert "master-bias" in tree and "(raw)" in tree
    assert "0 stale products" in run("stale").stderr
    out = run("run", "--each", "exposure", "11-12 and product is null", "--workdir", "work/{item}", "--workers", "1", "--",
              "sh", "-c", "echo {frame} > n.txt").stdout
    assert "2 done" in out and "2 products written" in out
    assert "--method 'mode': use median, mean, sigclip, sigclip-median" in run("calib", "bias", "--method", "mode", code=2).stderr
