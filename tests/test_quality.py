"""Quality: metrics accuracy, bad frames, incremental compute, rules, flags, views, report."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from factories import missing, star_field, write_frame, write_image
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from archive.exceptions import ObsarchError
from archive.models import Flag, Run
from cli.main import app
from processing import quality
from processing.quality import QualityError, QualityParams, load_image, measure

# -- pixels ---------------------------------------------------------------------------


@pytest.mark.parametrize("fwhm", [2.5, 3.0, 4.5, 6.0])
def test_fwhm_of_known_stars_within_5_percent(rng, fwhm):
    result = measure(star_field(rng, (400, 400), nstars=30, fwhm=fwhm))
    assert result["fwhm"] == pytest.approx(fwhm, rel=0.05)
    assert result["fwhm_minor"] == pytest.approx(fwhm, rel=0.05)
    assert result["elongation"] < 1.1


@pytest.mark.parametrize("background", [150.0, 1000.0, 20000.0])
def test_known_background_within_1_percent(rng, background):
    result = measure(star_field(rng, background=background, noise=np.sqrt(background)))
    assert result["background"] == pytest.approx(background, rel=0.01)
    assert result["background_rms"] == pytest.approx(np.sqrt(background), rel=0.1)


def test_trailed_stars_are_elongated_but_keep_their_minor_axis(rng):
    result = measure(star_field(rng, (400, 400), nstars=30, elongation=3.0))
    assert result["elongation"] > 2.5
    assert result["fwhm_minor"] == pytest.approx(3.0, rel=0.15)


def _jumped(rng, shape=(400, 400), offset=(61.0, -23.0), ratio=0.5, nstars=30):
    """A field whose telescope jumped by ``offset`` during the exposure: every
    star twice, the copy ``ratio`` as bright."""
    ny, nx = shape
    positions = np.column_stack([rng.uniform(15, nx - 16, nstars), rng.uniform(15, ny - 16, nstars)])
    fluxes = rng.uniform(3e3, 3e4, nstars)
    copies = positions + offset
    inside = (copies[:, 0] > 15) & (copies[:, 0] < nx - 16) & (copies[:, 1] > 15) & (copies[:, 1] < ny - 16)
    return star_field(rng, shape, positions=np.vstack([positions, copies[inside]]),
                      fluxes=np.concatenate([fluxes, ratio * fluxes[inside]]))


def test_a_jumped_exposure_shows_its_stars_twice(rng):
    """Each copy is round (elongation passes it) but every star has one at the
    same offset and flux ratio: ``repeats`` counts those pairs."""
    jumped = measure(_jumped(rng))
    assert jumped["elongation"] < 1.2
    assert jumped["repeats"] >= 10
    assert measure(_jumped(rng, offset=(-8.0, 140.0), ratio=1.0))["repeats"] >= 10


@pytest.mark.parametrize("seed", range(3))
def test_a_jump_along_a_column_is_not_split_in_two(seed):
    """An offset has no sign: pairs at (0, +dy) and (0, -dy) are one offset."""
    assert measure(_jumped(np.random.default_rng(seed), offset=(0.0, 140.0)))["repeats"] >= 8


def _cluster(rng, shape=(600, 600), members=30, field=10, radius=60.0, separation=8.0):
    """An open cluster: ``members`` stars within ``radius`` px of the centre (no
    two closer than ``separation``), and ``field`` stars over the frame."""
    centre, positions = np.array(shape[::-1]) / 2, []
    while len(positions) < members:
        angle, r = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform())
        point = centre + r * np.array([np.cos(angle), np.sin(angle)])
        if all(np.hypot(*(point - p)) >= separation for p in positions):
            positions.append(point)
    positions = np.vstack([positions, np.column_stack([rng.uniform(20, shape[1] - 21, field), rng.uniform(20, shape[0] - 21, field)])])
    return star_field(rng, shape, positions=positions)


@pytest.mark.parametrize("seed", [119, 131, 133, 137, 5])
def test_a_cluster_shares_offsets_by_chance_and_has_no_repeats(seed):
    """Crowded stars share offsets far more often than stars spread over the
    frame: chance is judged by the frame's own offsets around the one found
    (these seeds gave 6-7 repeats, graded bad, when it was judged by a uniform
    spread alone)."""
    assert measure(_cluster(np.random.default_rng(seed)))["repeats"] == 0


@pytest.mark.parametrize("slope", [0.0, 1.0, 0.05])
def test_a_row_of_stars_is_no_jump_at_any_angle(rng, slope):
    """Twenty stars equally spaced along a line (a row, a diagonal, a row 3
    degrees off) share their spacing by construction; chance is judged
    along the stars' own axes, so no angle makes them a jump (the diagonal
    gave 19 when the box was the pixel axes')."""
    positions = np.column_stack([40 + 22.0 * np.arange(20), 40 + slope * 22.0 * np.arange(20)])
    assert measure(star_field(rng, (512, 512), positions=positions, fluxes=np.full(20, 2e4), fwhm=4.2))["repeats"] == 0


def test_an_exposure_shows_the_largest_repeats_of_its_detectors():
    """A jump moves every detector: one detector that shows it tells (a
    median of 0, 0, 0, 9 hid it)."""
    detectors = [(f"CHIP{n}", n, {"repeats": value, "nstars": 10}, None) for n, value in enumerate([0, 0, 0, 9], 1)]
    assert quality.summary_of(detectors)[1]["repeats"] == 9
    assert quality.summary_of(detectors[:1] + [("CHIP9", 9, {"repeats": None, "nstars": 3}, None)])[1]["repeats"] == 0


@pytest.mark.parametrize("seed", range(12))
def test_unrelated_stars_share_no_offset_beyond_chance(seed):
    """Clean fields, sparse and crowded: their stars have no repeats."""
    rng = np.random.default_rng(seed)
    nstars = (20, 60, 300)[seed % 3]
    assert measure(star_field(rng, (300, 300), nstars=nstars))["repeats"] == 0


def test_statistics_and_saturation(rng):
    data = star_field(rng)
    data[:4, :4] = 65535
    result = measure(data, {"SATURATE": 60000.0})
    assert result["saturation_level"] == 60000.0
    assert result["saturated_fraction"] == pytest.approx(16 / data.size)
    assert result["max"] == 65535 and result["min"] < result["median"] < result["max"]
    assert result["mean"] == pytest.approx(float(data.mean(dtype=np.float64)))


@pytest.mark.parametrize(
    "header, level",
    [({"BITPIX": 16, "BZERO": 32768}, 65535.0), ({"BITPIX": 16}, 32767.0), ({"BITPIX": -32}, None), ({"SATURATE": 4095}, 4095.0)],
)
def test_saturation_level(header, level):
    assert quality.saturation_level(header) == level


def test_pixel_scale_gives_fwhm_in_arcsec(rng):
    result = measure(star_field(rng, fwhm=3.0), {"PIXSCALE": 0.5})
    assert result["fwhm_arcsec"] == pytest.approx(1.5, rel=0.05)


def test_microobservatory_gives_its_scale_in_im_scale():
    from processing.quality import pixel_scale

    assert pixel_scale({"IM_SCALE": 5.21}) == 5.21  # IM_SCALE = 5.210 / arc-secs/pixel


@pytest.mark.parametrize(
    "data, message",
    [
        (np.full((64, 64), np.nan, dtype=np.float32), "no finite pixels (all NaN)"),
        (np.full((64, 64), 7.0, dtype=np.float32), "constant image (every pixel is 7)"),
        (np.zeros((1, 1), dtype=np.float32), "image of shape (1, 1) is too small to measure"),
        (np.where(np.arange(64 * 64).reshape(64, 64) < 2, 5.0, np.nan).astype(np.float32),
         "only 2 finite pixels of 4096: too few to measure"),
        (np.where(np.arange(1000 * 1000).reshape(1000, 1000) < 9000, 5.0, np.nan).astype(np.float32),
         "only 9000 finite pixels of 1000000: too few to measure"),
    ],
)
def test_frames_that_cannot_be_measured(data, message):
    with pytest.raises(QualityError, match=message.replace("(", r"\(").replace(")", r"\)")):
        measure(data)


def test_file_gone_and_file_without_image(tmp_path):
    with pytest.raises(QualityError, match="file not found"):
        load_image(tmp_path / "gone.fits")
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.arange(3.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "table.fits")
    with pytest.raises(QualityError, match="no HDU with image data"):
        load_image(tmp_path / "table.fits")


def test_compressed_frame_is_measured(tmp_path, rng):
    data = star_field(rng)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, name="SCI", quantize_level=64)]).writeto(tmp_path / "f.fits.fz")
    image, _, hdu_index = load_image(tmp_path / "f.fits.fz")
    assert hdu_index == 1 and measure(image)["fwhm"] == pytest.approx(3.0, rel=0.05)


def test_cube_white_light_is_summed_in_chunks_with_bounded_memory(tmp_path, rng):
    planes, shape = 240, (256, 256)
    plane = star_field(rng, shape) / planes
    path = tmp_path / "cube.fits"
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 3, "NAXIS1": shape[1], "NAXIS2": shape[0], "NAXIS3": planes})
    with open(path, "wb") as stream:
        stream.write(header.tostring().encode())
        for _ in range(planes):
            stream.write(plane.astype(">f4").tobytes())
        stream.write(b"\0" * (-stream.tell() % 2880))
    cube_bytes = planes * shape[0] * shape[1] * 4
    tracemalloc.start()
    white, _, _ = load_image(path, chunk_planes=16)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < cube_bytes / 4, f"peak {peak / 1e6:.1f} MB for a {cube_bytes / 1e6:.0f} MB cube"
    np.testing.assert_allclose(white, plane * planes, rtol=1e-4)
    assert measure(white)["fwhm"] == pytest.approx(3.0, rel=0.05)


# -- computing over the catalog -------------------------------------------------------


def science(directory, rng, number, **field):
    return write_image(directory / f"f-{number}.fits", star_field(rng, **field), {"IMAGETYP": "Light Frame", "FILTER": "V"})


def test_compute_stores_metrics_and_is_incremental(catalog, tmp_path, rng):
    for number in range(1, 5):
        science(tmp_path, rng, number)
    catalog.ingest([tmp_path])
    first = quality.compute(catalog.engine, workers=1)
    assert (len(first.done), len(first.skipped), len(first.failed)) == (4, 0, 0)
    assert catalog.query("fwhm between 2.85 and 3.15 and background > 990", columns="frame_number")["frame_number"].tolist() == [1, 2, 3, 4]

    again = quality.compute(catalog.engine, workers=1)
    assert (len(again.done), len(again.skipped)) == (0, 4)

    time.sleep(0.01)
    science(tmp_path, rng, 2, fwhm=6.0)  # the file changes: only it is measured again
    catalog.ingest([tmp_path])
    # until then its earlier numbers are no answer: not selected, not shown, not graded
    assert catalog.query("fwhm < 3.15", columns="frame_number")["frame_number"].tolist() == [1, 3, 4]
    assert catalog.query("frame_number == 2", columns="frame_number,fwhm,nstars")[["fwhm", "nstars"]].isna().all(axis=None)
    assert quality.apply_rules(catalog.engine).evaluated == 3
    changed = quality.compute(catalog.engine, workers=1)
    assert (len(changed.done), len(changed.skipped)) == (1, 3)
    assert catalog.query("fwhm > 5", columns="frame_number")["frame_number"].tolist() == [2]

    forced = quality.compute(catalog.engine, "1-2", force=True, workers=1)
    assert (len(forced.done), len(forced.skipped)) == (2, 0)
    other = quality.compute(catalog.engine, params=QualityParams(detect_sigma=8.0), workers=1)
    assert len(other.done) == 4  # other parameters: measured again
    with catalog.engine.connect() as conn:
        runs = conn.execute(select(Run.step, Run.state, Run.summary_json).order_by(Run.id)).all()
    steps = [r.step for r in runs]
    assert steps == ["quality", "quality-rules", "quality", "quality", "quality"] and {r.state for r in runs} == {"done"}  # nothing to do: no run


def test_frames_that_cannot_be_measured_are_recorded_and_the_run_goes_on(catalog, tmp_path, rng):
    science(tmp_path, rng, 1)
    write_image(tmp_path / "f-2.fits", np.full((32, 32), np.nan, dtype=np.float32))
    write_image(tmp_path / "f-3.fits", np.full((32, 32), 5.0, dtype=np.float32))
    write_image(tmp_path / "f-4.fits", np.zeros((1, 1), dtype=np.float32))
    write_frame(tmp_path / "f-5.fits", rng)
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.arange(3.0))])
    fits.HDUList([fits.PrimaryHDU(header=fits.Header({"FRAMENUM": 6})), table]).writeto(tmp_path / "f-6.fits")
    catalog.ingest([tmp_path])
    (tmp_path / "f-5.fits").unlink()  # gone since ingest
    summary = quality.compute(catalog.engine, workers=2)
    assert (len(summary.done), len(summary.failed)) == (1, 4) and summary.exit_code == 3
    assert summary.notes == ["left out 1 exposure with no image: f-6.fits"]  # a table only: no failure
    with catalog.engine.connect() as conn:
        errors = dict(conn.execute(text("SELECT frame_number, metrics_error FROM exposure_quality WHERE metrics_error IS NOT NULL")).all())
    assert "no finite pixels (all NaN)" in errors[2]
    assert "constant image (every pixel is 5)" in errors[3]
    assert "too small to measure" in errors[4]
    assert "gone from disk since it was last ingested" in errors[5]  # said before any worker opens it
    assert 6 not in errors


def _night_with_defects(directory, rng):
    """36 science frames, V and R, one night; 3 with clouds (background x10),
    3 with trailed stars, 3 defocused (FWHM x2.5), 2 with every star twice
    (a jump half-way); the rest clean."""
    defects = {}
    positions = np.column_stack([rng.uniform(20, 236, 40), rng.uniform(20, 236, 40)])
    for number in range(1, 37):
        band = "V" if number <= 18 else "R"
        kind = {4: "clouds", 22: "clouds", 30: "clouds", 7: "tracking", 25: "tracking", 33: "tracking",
                10: "focus", 15: "focus", 28: "focus", 12: "jump", 35: "jump"}.get(number)
        field = {"positions": positions + rng.normal(0, 1.5, positions.shape), "fwhm": 3.0 * rng.uniform(0.95, 1.05),
                 "noise": np.sqrt(1000.0)}
        if kind == "clouds":
            field.update(background=10000.0, noise=np.sqrt(10000.0), flux=(1e3, 1e4))
        elif kind == "tracking":
            field.update(elongation=3.0)
        elif kind == "focus":
            field.update(fwhm=7.5)
        elif kind == "jump":  # the telescope jumped 40 px half-way: every star twice
            inside = field["positions"][:, 0] < 216
            field["positions"] = np.vstack([field["positions"], field["positions"][inside] + (40.0, 0.0)])
            fluxes = rng.uniform(3e3, 3e4, 40)
            field["fluxes"] = np.concatenate([fluxes, fluxes[inside]])
        header = {"IMAGETYP": "Light Frame", "FILTER": band, "DATE-OBS": f"2017-08-16T0{number // 10}:{number:02d}:00"}
        write_image(directory / f"n-{number}.fits", star_field(rng, **field), header)
        if kind:
            defects[number] = "tracking" if kind == "jump" else kind
    return defects


@pytest.mark.slow
def test_default_rules_flag_each_defect_with_its_reason_and_no_clean_frame(catalog, tmp_path, rng):
    defects = _night_with_defects(tmp_path, rng)
    catalog.ingest([tmp_path])
    quality.compute(catalog.engine, workers=2)
    summary = quality.apply_rules(catalog.engine)
    assert summary.evaluated == 36
    grades = catalog.query(columns="frame_number,grade,reason,flag_source")
    for number, grade, reason, source in grades.itertuples(index=False):
        assert source == "rule"
        if number in defects:
            assert (grade, reason) == ("bad", defects[number]), number
        else:
            assert grade == "ok" and pd.isna(reason), number
    assert catalog.query("repeats > 0", columns="frame_number")["frame_number"].tolist() == [12, 35]  # the jumps
    again = quality.apply_rules(catalog.engine)  # nothing changed: no new flag
    assert again.unchanged == 36
    with catalog.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Flag)).scalar_one() == 36
        value, threshold = conn.execute(select(Flag.value, Flag.threshold).where(Flag.rule == "clouds")).first()
    assert value > threshold


def test_measuring_a_selection_that_matches_nothing_is_an_error(catalog, tmp_path, rng):
    """quality compute "band == 'Q'" said '0 done, 0 up to date, 0 failed' and
    exited 0, where calibrate, offsets and stack say no frame matches (exit 1)."""
    write_frame(tmp_path / "f.fits", rng, {"FILTER": "V"})
    catalog.ingest([tmp_path])
    url = catalog.engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(app, ["--db", url, "quality", "compute", "band == 'Q'"])
    assert (result.exit_code, result.stderr) == (1, "error: no exposure matches \"band == 'Q'\"\n")


def test_raw_frames_are_judged_with_raw_frames_and_products_with_their_kind(catalog, tmp_path, rng):
    """Measured calibrated frames (bias taken off: sky 100) went into the median
    of their raw frames (sky 1000): with two calibrations of three frames, the
    median was a calibrated frame's and every raw frame became "clouds" (a user
    trial on the demo)."""
    from processing import calibration

    for number in range(1, 4):
        write_image(tmp_path / "raw" / f"bias-{number}.fits", rng.normal(900.0, 5.0, (256, 256)).astype(np.float32),
                    {"IMAGETYP": "Bias Frame", "EXPTIME": 0.0, "DATE-OBS": f"2017-08-16T02:0{number}:00"})
        write_image(tmp_path / "raw" / f"sci-{number}.fits", star_field(rng, background=1000.0, noise=30.0),
                    {"IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": 30.0, "DATE-OBS": f"2017-08-16T03:0{number}:00"})
    catalog.ingest([tmp_path / "raw"])
    calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters")
    for out in ("cal", "cal2"):
        calibration.calibrate(catalog.engine, "frame_type == 'science'", use=("bias",), out_dir=tmp_path / out, executor="serial")
    quality.compute(catalog.engine, workers=1)
    summary = quality.apply_rules(catalog.engine)
    rows = catalog.query("frame_type == 'science'", columns="product,background,grade,reason", sort="id").fillna("").values.tolist()
    assert summary.evaluated == 9 and summary.flagged == {}
    assert [(kind, round(sky, -2), grade) for kind, sky, grade, _ in rows] == (
        [("", 1000, "ok")] * 3 + [("calibrated", 100, "ok")] * 6)


def test_sky_and_star_counts_are_compared_between_frames_of_one_exposure_time(catalog, tmp_path, rng):
    """Five 30 s frames and four 300 s frames of one night and band: the long
    frames' sky is 4x the short ones', which is no cloud (the night's median
    made all four cloudy); among the long ones, a frame with 5x their sky
    is. Shutter times that differ by milliseconds (LCO: 11.935-11.941 s)
    are one exposure time."""
    for number, (exptime, sky) in enumerate([(30.0, 1000.0), (30.004, 1000.0), (29.996, 1000.0), (30.0, 1000.0), (30.0, 1000.0),
                                             (300.0, 4000.0), (300.0, 4000.0), (300.0, 4000.0), (300.0, 20000.0)], 1):
        data = star_field(rng, background=sky, noise=np.sqrt(sky), flux=(3e3 * exptime / 30, 3e4 * exptime / 30))
        write_image(tmp_path / f"e-{number}.fits", data, {"IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": exptime,
                                                          "DATE-OBS": f"2017-08-16T03:{number:02d}:00"})
    catalog.ingest([tmp_path])
    quality.compute(catalog.engine, workers=1)
    quality.apply_rules(catalog.engine)
    grades = catalog.query(columns="frame_number,grade,reason", sort="frame_number").fillna("").values.tolist()
    assert grades == [[n, "ok", ""] for n in range(1, 9)] + [[9, "bad", "clouds"]]
    with catalog.engine.connect() as conn:
        note = conn.execute(select(Flag.note).where(Flag.exposure_id == catalog.resolve("9"))).scalar_one()
    assert note == "background 2e+04 > 1.2e+04"  # 3 x the 300 s frames' median, not the night's


def test_a_frame_of_unknown_exposure_time_flagged_on_its_sky_says_so(catalog, tmp_path, rng):
    """Frames without an exposure time are compared with each other: a
    verdict on their sky says so, since they may not be alike."""
    for number, sky in enumerate([1000.0, 1000.0, 1000.0, 10000.0], 1):
        write_image(tmp_path / f"u-{number}.fits", star_field(rng, background=sky, noise=np.sqrt(sky)),
                    {"EXPTIME": None, "DATE-OBS": f"2017-08-16T03:{number:02d}:00"})
    catalog.ingest([tmp_path])
    quality.compute(catalog.engine, workers=1)
    quality.apply_rules(catalog.engine)
    with catalog.engine.connect() as conn:
        note = conn.execute(select(Flag.note).where(Flag.exposure_id == catalog.resolve("4"))).scalar_one()
    assert note.endswith("(its exposure time is unknown: compared with the frames of its night and band whose exposure time is unknown too)")


def test_unknown_and_odd_exposure_times_are_compared_only_with_their_like():
    """Unknown and NaN exposure times with each other, zero with zero, and
    positive ones within 10%."""
    times = [None, float("nan"), None, 0.0, 0.0, 0.0, 30.0, 31.0, 32.9, 36.0]
    rows = [{"id": n, "exptime": t, "background": 100.0 * (n + 1)} for n, t in enumerate(times)]
    judged = {row["id"]: medians["background"] for row, medians in quality._group_medians(rows)}
    assert judged[0] == judged[1] == judged[2] == 200.0  # None, NaN, None
    assert judged[3] == judged[4] == 500.0  # the three zeros
    assert judged[6] == 800.0  # 30, 31, 32.9 (36 is 20% off)
    assert judged[8] == 850.0  # 32.9 has all four within 10%
    assert judged[9] is None  # 36: only 32.9 and itself, fewer than MIN_GROUP


def test_a_frame_alone_at_its_exposure_time_is_not_judged_on_its_sky():
    row = {"background": 9000.0, "nstars": 40, "fwhm_minor": 3.0, "elongation": 1.1, "saturated_fraction": 0.0,
           "repeats": 0, "exptime": 300.0}
    short = [{**row, "background": 1000.0, "exptime": 30.0, "id": n} for n in range(3)]
    [(_, medians)] = [pair for pair in quality._group_medians([*short, row]) if pair[0] is row]
    assessment = quality.assess(row, quality.DEFAULT_RULES, medians)
    assert assessment.broken is None and "focus" in assessment.checked
    assert ("clouds", "small group", "fewer than 3 frames of its night, band and exposure time with background") in assessment.skipped


def test_a_rule_never_overwrites_a_persons_flag(catalog, tmp_path, rng):
    for number in range(1, 5):
        science(tmp_path, rng, number, elongation=3.0 if number == 1 else 1.0)
    catalog.ingest([tmp_path])
    quality.compute(catalog.engine, workers=1)
    quality.flag(catalog.engine, "1", "great", note="I looked: fine", who="ann")
    summary = quality.apply_rules(catalog.engine)
    assert summary.kept_person == 1
    frame = catalog.query("1", columns="grade,flag_source")
    assert frame.values.tolist() == [["great", "person"]]


def test_person_flags_history_and_queries(catalog, tmp_path, rng):
    for number in range(3920, 3930):
        science(tmp_path, rng, number)
    catalog.ingest([tmp_path])
    assert catalog.query("grade == 'ungraded'").shape[0] == 10  # never flagged
    assert catalog.query("grade != 'bad'").shape[0] == 10  # ... so "not bad" keeps them
    assert quality.flag(catalog.engine, "3920,3921,3924,3928", "bad", reason="tracking", note="big tracking errors", who="ann") == 4
    assert quality.flag(catalog.engine, "3926-3927", "bad", reason="clouds") == 2
    assert quality.flag(catalog.engine, "3920", "ok", who="bob") == 1
    bad = catalog.query("grade == 'bad'", columns="frame_number")["frame_number"].tolist()
    assert bad == [3921, 3924, 3926, 3927, 3928]
    assert catalog.query("reason == 'clouds'", columns="frame_number")["frame_number"].tolist() == [3926, 3927]
    history = quality.flag_history(catalog.engine, catalog.resolve("3920"))
    assert [(h["grade"], h["who"], h["current"]) for h in history] == [("bad", "ann", False), ("ok", "bob", True)]
    assert history[0]["note"] == "big tracking errors"


@pytest.mark.parametrize(
    "selection, grade, reason, message",
    [
        ("1", "awful", None, "unknown grade 'awful'; use one of great, ok, marginal, bad"),
        ("1", "bad", "ufo", "unknown reason 'ufo'"),
        ("9999", "bad", None, "no exposure matches '9999'; nothing flagged"),
    ],
)
def test_bad_flags_are_refused(catalog, tmp_path, rng, selection, grade, reason, message):
    science(tmp_path, rng, 1)
    catalog.ingest([tmp_path])
    with pytest.raises(ObsarchError, match=message):
        quality.flag(catalog.engine, selection, grade, reason=reason)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"quality": {"rules": {"clouds": {"metric": "colour"}}}}, "unknown metric 'colour'"),
        ({"quality": {"rules": {"new": {"metric": "fwhm", "grade": "bad", "reason": "focus"}}}}, "give exactly one of 'above' or 'below'"),
        ({"quality": {"rules": {"clouds": {"grade": "terrible"}}}}, "unknown grade 'terrible'"),
        ({"quality": {"rules": {"clouds": {"factor": 3}}}}, "unknown key 'quality.rules.clouds.factor' in [quality.rules.clouds]"),
        ({"quality": {"sigma": 3}}, "unknown key 'quality.sigma' in [quality]"),
        ({"quality": {"rules": {"clouds": {"above": "high"}}}}, "quality.rules.clouds.above: expected a number, got 'high'"),
        ({"quality": {"rules": {"wind": {"above": 1.4}}}}, "a new rule needs metric, grade, reason"),
    ],
)
def test_bad_rule_config_is_refused(config, message):
    with pytest.raises(ObsarchError) as info:
        quality.rules_from_config(config)
        QualityParams.from_config(config)
    assert message in str(info.value)


def test_rules_from_config_replace_and_disable():
    rules = {r.name: r for r in quality.rules_from_config({"quality": {"rules": {
        "clouds": {"above": 5.0}, "saturation": {"enabled": False},
        "wind": {"metric": "elongation", "above": 1.3, "grade": "marginal", "reason": "tracking"}}}})}
    assert rules["clouds"].above == 5.0 and rules["clouds"].relative
    assert "saturation" not in rules and rules["wind"].grade == "marginal"


def test_views_from_sql(catalog, tmp_path, rng):
    for number in range(1, 4):
        science(tmp_path, rng, number)
    catalog.ingest([tmp_path])
    quality.compute(catalog.engine, workers=1)
    quality.flag(catalog.engine, "1", "bad", reason="clouds")
    quality.apply_rules(catalog.engine)
    with catalog.engine.connect() as conn:
        summary = conn.execute(text("SELECT grade, exposures FROM quality_summary ORDER BY grade")).all()
        current = conn.execute(text("SELECT grade, source FROM current_flags ORDER BY exposure_id")).all()
    assert [tuple(r) for r in summary] == [("bad", 1), ("ok", 2)]
    assert [tuple(r) for r in current] == [("bad", "person"), ("ok", "rule"), ("ok", "rule")]


def test_the_views_call_a_frame_nobody_graded_ungraded(catalog, tmp_path, rng):
    """As the query language does (never NULL): SQL's `grade != 'bad'` keeps it."""
    for number in range(1, 4):
        science(tmp_path, rng, number)
    catalog.ingest([tmp_path])
    quality.flag(catalog.engine, "1", "bad", reason="clouds")
    with catalog.engine.connect() as conn:
        summary = conn.execute(text("SELECT grade, exposures FROM quality_summary ORDER BY grade")).all()
        kept = conn.execute(text("SELECT frame_number, grade FROM exposure_quality WHERE grade != 'bad' ORDER BY frame_number")).all()
    assert [tuple(r) for r in summary] == [("bad", 1), ("ungraded", 2)]
    assert [tuple(r) for r in kept] == [(2, "ungraded"), (3, "ungraded")]
    assert len(catalog.exposure_ids("grade == 'ungraded'")) == 2


# -- the command line -----------------------------------------------------------------

runner = CliRunner()


def test_quality_tour(url, tmp_path, rng):
    for number in range(3920, 3926):
        science(tmp_path / "data", rng, number, elongation=3.0 if number == 3922 else 1.0)

    def run(*args):
        result = runner.invoke(app, ["--db", url, *args])
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout

    run("init")
    run("ingest", str(tmp_path / "data"))
    assert "6 done" in run("quality", "compute", "frame_type == 'science'", "--workers", "1")
    assert "6 up to date" in run("quality", "compute", "--workers", "1")
    assert "1 tracking" in run("quality", "rules")
    assert "flagged 2 exposures bad (clouds)" in run("flag", "3924-3925", "--grade", "bad", "--reason", "clouds", "--by", "ann")
    history = run("flags", "history", "3925", "--format", "csv")
    assert "ann" in history and "rules" in history
    out = run("query", "grade in ('great', 'ok') and fwhm < 3.5", "--columns", "frame_number", "--format", "csv")
    assert out.split() == ["frame_number", "3920", "3921", "3923"]
    assert "bad" in run("report", "quality")
    csv = run("sql", "select grade, exposures from quality_summary order by grade", "--format", "csv")
    assert csv.split() == ["grade,exposures", "bad,3", "ok,3"]
    result = runner.invoke(app, ["--db", url, "flag", "3920", "--grade", "superb"])  # a usage error: nothing is flagged
    assert result.exit_code == 2 and "unknown grade 'superb'" in result.stderr


# -- the HTML report in a real browser -------------------------------------------------


def _chromium():
    import shutil

    paths = [shutil.which(name) for name in ("chromium", "chromium-browser")]
    driver = shutil.which("chromedriver")
    found = next((p for p in paths if p), None)
    if not (found and driver):
        missing("headless Chromium test needs Debian's chromium and chromium-driver (installed by .ci/run)")
    return found, driver


@pytest.mark.slow
def test_html_report_loads_in_chromium_and_shows_every_frame(catalog, tmp_path, rng):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from web.report import write_html

    binary, driver_path = _chromium()
    for number in range(1, 7):
        science(tmp_path / "data", rng, number)
    write_image(tmp_path / "data" / "f-7.fits", np.full((32, 32), np.nan, dtype=np.float32), {"FILTER": "R"})
    catalog.ingest([tmp_path / "data"])
    quality.compute(catalog.engine, workers=1)
    quality.apply_rules(catalog.engine)
    report = write_html(catalog.engine, tmp_path / "report", workers=1)
    assert report.frames == 7 and report.thumbnails_failed == 1

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1200,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(report.index.as_uri())
        frames = browser.find_elements("css selector", ".card")
        assert len(frames) == 7
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
        )
        assert broken == []
        assert len(browser.find_elements("css selector", ".card img")) == 6
        assert "no finite pixels" in browser.find_element("id", f"exposure-{catalog.resolve('7')}").text
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
    assert (tmp_path / "report.png").stat().st_size > 10_000


# -- real frames -------------------------------------------------------------------------


def test_real_trailed_frame_is_more_elongated(real_data):
    good = measure(*load_image(real_data / "ccd_imaging" / "UB17-001-c.fit")[:2])
    trailed = measure(*load_image(real_data / "ccd_imaging" / "UB17-033-c.fit")[:2])
    assert trailed["elongation"] > good["elongation"]


def test_real_frame_with_too_few_stars_has_no_repeats_measured(real_data):
    assert measure(*load_image(real_data / "ccd_imaging" / "a8280271.fits")[:2])["repeats"] is None  # 5 sources


@pytest.mark.parametrize("name", ["UB17-001-c.fit", "fov.fit", "HATP-32171220013343.FITS", "HATP-32171220013612.FITS",
                                  "HATP-32171220050012.FITS", "HATP-32171220083612.FITS", "ogg0m404-kb82-20170815-1159-e91.fits.fz",
                                  "ogg0m404-kb82-20170815-1160-e91.fits.fz", "ogg0m404-kb82-20170816-0339-e91.fits.fz"])
def test_real_frames_without_a_jump_have_no_repeats(real_data, name):
    assert measure(*load_image(real_data / "ccd_imaging" / name)[:2])["repeats"] == 0


def test_real_frame_that_hit_a_tree_is_graded_bad(catalog, real_data, tmp_path):
    """UB17-033 is the night's bad frame (the observer's log: "hit tree"):
    each star is there twice, ~310 px apart, joined by a dotted trail. Its
    elongation (1.34) passes; its repeats do not."""
    for name in ("UB17-001-c.fit", "UB17-033-c.fit", "fov.fit"):
        (tmp_path / name).symlink_to(real_data / "ccd_imaging" / name)
    catalog.ingest([tmp_path])
    quality.compute(catalog.engine, workers=1)
    quality.apply_rules(catalog.engine)
    rows = catalog.query(columns="relpath,grade,reason,repeats,elongation", sort="relpath").fillna("").values.tolist()
    assert [row[:4] for row in rows] == [["UB17-001-c.fit", "ok", "", 0], ["UB17-033-c.fit", "bad", "tracking", 6],
                                         ["fov.fit", "ok", "", 0]]
    assert rows[1][4] < 1.8  # the tracking rule alone passed it
    with catalog.engine.connect() as conn:
        assert conn.execute(select(Flag.rule).where(Flag.exposure_id == catalog.resolve("33"))).scalar_one() == "double"


@pytest.mark.parametrize("name", ["1159", "1160", "1161"])
def test_real_lco_fwhm_agrees_with_the_pipeline(real_data, name):
    path = next((real_data / "ccd_imaging").glob(f"ogg0m404-kb82-20170815-{name}-e91.fits.fz"))
    data, header, _ = load_image(path)
    result = measure(data, header)
    assert result["pixel_scale"] == 1.16
    assert result["fwhm_arcsec"] == pytest.approx(header["L1FWHM"], rel=0.15)


@pytest.mark.parametrize("name", ["HATP-32171220013343.FITS", "HATP-32171220013612.FITS"])
def test_real_12_bit_frames_saturate_at_4095(real_data, name):
    """MicroObservatory writes 12-bit data as 16-bit integers with no
    SATURATE: the level was taken as 32767, so stars clipped at 4095 were
    measured as unsaturated. On 13612 (12 clipped stars) the FWHM was 2.52 px
    where its unclipped stars, fitted alone with photutils, give 1.78."""
    data, header, _ = load_image(real_data / "ccd_imaging" / name)
    result = measure(data, header)
    assert result["saturation_level"] == 4095.0
    assert result["saturated_fraction"] == pytest.approx(np.count_nonzero(data >= 4095) / data.size)
    unclipped = {"HATP-32171220013343.FITS": 2.39, "HATP-32171220013612.FITS": 1.78}[name]
    assert result["fwhm"] < unclipped * 1.1
    with fits.open(real_data / "ccd_imaging" / name) as hdul:
        assert quality.raw_saturation_level(hdul, 0, rows=64) == 4095.0  # what a calibrated frame's SATURATE starts from


@pytest.mark.parametrize("top, shift, expected", [
    (4095, 0, 4095.0),  # a 12-bit camera in 16-bit integers
    (4095, 4, 65520.0),  # one that shifts its 12 bits left
    (None, 0, 65535.0),  # nothing clipped: the data type's top
    (4095, 0, 4095.0),  # an overexposed flat, its sky running up to the clip (found by a review: it was 32767)
])
def test_integer_data_piled_up_below_its_type_top_is_saturated_there(rng, top, shift, expected):
    sky = rng.normal(300, 8, (200, 200)) if expected != 4095.0 or shift else rng.normal(4000, 60, (200, 200))
    sky[50:54, 60:64] += 9000  # a bright star's core
    values = np.round(sky).clip(0, top if top is not None else 65535) * 2 ** shift
    header = {"__BITPIX__": 16, "BZERO": 32768}
    assert quality.saturation_level(header, data=values.astype(np.float32)) == expected


def test_a_noise_tail_is_no_clip(rng):
    """The top of a low-noise bias holds a few equal pixels by chance: its
    tail thins out toward them, where a clip piles up."""
    for sigma in (0.7, 1.0, 3.0):
        bias = np.round(rng.normal(100, sigma, (600, 600))).astype(np.float32)
        assert quality.saturation_level({"__BITPIX__": 16, "BZERO": 32768}, data=bias) == 65535.0
    assert quality.saturation_level({"BITPIX": 16}, data=bias) == 32767.0  # signed, no BZERO
    assert quality.saturation_level({"__BITPIX__": -32}, data=bias) is None  # floats: no type top, no clip guessed


def test_real_lco_frame_of_next_night(real_data):
    data, header, _ = load_image(next((real_data / "ccd_imaging").glob("*0816-0339*")))
    assert measure(data, header)["fwhm_arcsec"] == pytest.approx(header["L1FWHM"], rel=0.15)


def test_real_cube_white_light(real_data):
    data, _, hdu_index = load_image(real_data / "eso_muse" / "subcub_mosaic.fits")
    assert hdu_index == 1 and data.shape == (30, 30)
    assert np.isfinite(measure(data)["background"])


def test_a_frame_with_a_card_astropy_cannot_parse_is_measured(url, tmp_path, rng):
    """'EXPTIME = NaN' is no FITS value: ingest keeps it as text, and quality
    measures the frame without it (it failed with astropy's VerifyError)."""
    from factories import obsarch

    path = write_image(tmp_path / "nan-card.fits", star_field(rng))
    raw = bytearray(path.read_bytes())
    at = raw.index(b"EXPTIME =")
    raw[at:at + 80] = b"EXPTIME =                  NaN".ljust(80)
    path.write_bytes(bytes(raw))
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path))
    result = obsarch(url, "quality", "compute")
    out = result.stdout + result.stderr
    assert "1 done" in out and "VerifyError" not in out


def test_a_failure_names_its_file_once(url, tmp_path):
    """The reader's error already starts with the path: the line gives it once."""
    from factories import obsarch

    write_image(tmp_path / "nan.fits", np.full((32, 32), np.nan, dtype=np.float32))
    fits.PrimaryHDU().writeto(tmp_path / "header-only.fits")  # no pixels: nothing to measure, no failure
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path))
    result = obsarch(url, "quality", "compute", code=1)
    path = str(tmp_path / "nan.fits")
    line = next(line for line in result.stderr.splitlines() if "no finite pixels" in line)
    assert line.strip() == f"{path}: detector PRIMARY: no finite pixels (all NaN)" and result.stderr.count(path) == 2  # the line and the summary
    assert "quality: left out 1 exposure with no image: header-only.fits" in result.stderr.splitlines()


def test_a_selection_of_files_without_pixels_has_nothing_to_measure(url, tmp_path):
    from factories import obsarch

    fits.PrimaryHDU().writeto(tmp_path / "header-only.fits")
    obsarch(url, "init")
    obsarch(url, "ingest", str(tmp_path))
    result = obsarch(url, "quality", "compute", code=1)
    assert result.stderr.strip() == "error: nothing to measure: the 1 exposure selected has no image (header-only.fits)"


def test_frames_of_another_binning_are_judged_among_their_own(catalog, tmp_path, rng):
    """Four 2x2 frames and one 1x1 frame of one seeing, night and band: the
    1x1 frame's FWHM is twice as many pixels, and it was graded bad 'focus'
    next to the 2x2 frames' median. Judged among frames of its binning only
    (too few to compare), it is not called out of focus."""
    positions = np.column_stack([rng.uniform(20, 236, 40), rng.uniform(20, 236, 40)])
    for number in range(1, 6):
        binned = number <= 4
        header = {"IMAGETYP": "Light Frame", "FILTER": "V", "DATE-OBS": f"2017-08-16T01:{number:02d}:00",
                  "XBINNING": 2 if binned else 1, "YBINNING": 2 if binned else 1}
        field = star_field(rng, positions=positions + rng.normal(0, 1.5, positions.shape), fwhm=2.0 if binned else 4.0,
                           noise=np.sqrt(1000.0))
        write_image(tmp_path / f"b-{number}.fits", field, header)
    catalog.ingest([tmp_path])
    quality.compute(catalog.engine, workers=1)
    quality.apply_rules(catalog.engine)
    grades = catalog.query(columns="frame_number,binning,grade,reason")
    unbinned = grades[grades["binning"] == "1x1"]
    assert len(unbinned) == 1 and unbinned["reason"].tolist() != ["focus"], grades
    assert "focus" not in grades["reason"].tolist(), grades
