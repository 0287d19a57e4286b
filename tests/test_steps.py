"""Each wrong result of issue 11, on both backends, and a night end to end
with its exit codes."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from factories import star_field, write_image
from sqlalchemy import select
from typer.testing import CliRunner

from archive.exceptions import ObsarchError, SelectionError
from archive.models import Flag, Offset
from cli.main import app
from processing import calibration, grouping, offsets, quality, stacking
from processing.steps import mjd_of

SHAPE = (128, 128)
runner = CliRunner()


def _field(rng, n=30):
    return np.column_stack([rng.uniform(12, 116, n), rng.uniform(12, 116, n)]), rng.uniform(4e3, 3e4, n)


def night(directory, rng, *, first=3852, mode_keyword="READOUTM", shifts=((0, 0), (3.4, -2.1), (-5.2, 4.7), (1.1, 6.3))):
    """Bias (5) and V flats (3) and V science frames with known shifts, named
    like a camera names them (ngc3293-NNNN.fits), numbered by FRAMENUM."""
    stars, fluxes = _field(rng)
    number = first
    mode = {mode_keyword: "SCI1.0"} if mode_keyword != "READOUTM" else {"READOUTM": "SCI1.0"}
    base = {"FRAMENUM": None, "READOUTM": None, **mode}
    for i in range(5):
        write_image(directory / f"ngc3293-{number}.fits", rng.normal(500, 3, SHAPE).astype(np.float32),
                    {**base, "IMAGETYP": "Bias Frame", "FILTER": None, "EXPTIME": 0.0, "DATE-OBS": f"2017-08-16T0{i}:00:00",
                     "FRAMENUM": number})
        number += 1
    for i in range(3):
        write_image(directory / f"ngc3293-{number}.fits", (500 + rng.normal(20000, 100, SHAPE)).astype(np.float32),
                    {**base, "IMAGETYP": "Flat Field", "FILTER": "V", "EXPTIME": 2.0, "DATE-OBS": f"2017-08-16T05:0{i}:00",
                     "FRAMENUM": number})
        number += 1
    science = []
    for i, (dx, dy) in enumerate(shifts):
        image = star_field(rng, SHAPE, positions=stars - [dx, dy], fluxes=fluxes, background=1500.0) + 500
        write_image(directory / f"ngc3293-{number}.fits", image,
                    {**base, "IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": 60.0, "DATE-OBS": f"2017-08-16T03:{i:02d}:00",
                     "FRAMENUM": number})
        science.append(number)
        number += 1
    return science


@pytest.fixture
def raw(catalog, tmp_path, rng):
    numbers = night(tmp_path / "raw", rng)
    catalog.ingest([tmp_path / "raw"])
    return catalog, tmp_path, numbers


def _masters(engine, tmp):
    calibration.make_master(engine, "bias", out_dir=tmp / "masters")
    calibration.make_master(engine, "flat", band="V", out_dir=tmp / "masters")


# -- products are what they are ------------------------------------------------------------


def test_products_take_no_frame_number_from_their_name_and_frame_numbers_address_raw_frames(raw):
    catalog, tmp, numbers = raw
    _masters(catalog.engine, tmp)
    calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1)
    assert (tmp / "cal" / f"ngc3293-{numbers[0]}_cal.fits").exists()
    products = catalog.query("product is not null", columns="frame_number,product,band,readout_mode,night,frame_type")
    assert products["frame_number"].isna().all() and len(products) == 6
    assert set(products["readout_mode"]) == {"SCI1.0"} and set(products["night"]) == {"2017-08-15"}
    counts = catalog.summary()["frame_type"].set_index("frame_type")["exposures"].to_dict()
    assert counts == {"bias": 5, "flat": 3, "science": 4}  # raw frames only: products are not counted as frames
    assert quality.flag(catalog.engine, str(numbers[0]), "bad", reason="clouds") == 1  # not also its calibrated product
    assert catalog.query(str(numbers[0]), columns="id").shape[0] == 1


def test_a_frame_number_of_several_instruments_is_refused_with_the_list(catalog, tmp_path, rng):
    for instrument in ("CamA", "CamB", "CamC"):
        write_image(tmp_path / instrument / "f.fits", rng.normal(0, 1, (16, 16)).astype(np.float32),
                    {"INSTRUME": instrument, "FRAMENUM": 1})
    catalog.ingest([tmp_path])
    with pytest.raises(SelectionError, match=r"several instruments \(1: CamA, CamB, CamC\)"):
        quality.flag(catalog.engine, "1", "bad")
    assert quality.flag(catalog.engine, "1 and instrument == 'CamB'", "bad") == 1
    # a path in the selection: the check left files out of its query and failed ('no FROM clauses')
    assert quality.flag(catalog.engine, "1 and relpath == 'CamC/f.fits'", "ok") == 1
    with pytest.raises(SelectionError, match=r"several instruments \(1: CamA, CamC\)"):
        quality.flag(catalog.engine, "1 and relpath != 'CamB/f.fits'", "bad")
    with catalog.engine.connect() as conn:
        assert len(conn.execute(select(Flag.id)).all()) == 2
    result = runner.invoke(app, ["--db", catalog.engine.url.render_as_string(hide_password=False), "flag", "1", "--grade", "bad"])
    assert result.exit_code == 2 and "CamA, CamB, CamC" in result.stderr


def test_a_master_inherits_the_read_out_mode_whatever_keyword_it_came_from(catalog, tmp_path, rng):
    night(tmp_path / "raw", rng, mode_keyword="HIERARCH ESO DET READ CURNAME")
    catalog.ingest([tmp_path / "raw"])
    assert set(catalog.query("frame_type == 'bias'", columns="readout_mode")["readout_mode"]) == {"SCI1.0"}
    _masters(catalog.engine, tmp_path)
    masters = catalog.query("product like 'master_%'", columns="product,readout_mode,frame_type,mjd,exptime")
    assert masters["readout_mode"].tolist() == ["SCI1.0", "SCI1.0"]
    bias = masters[masters["product"] == "master_bias"].iloc[0]
    assert bias["frame_type"] == "bias" and bias["mjd"] == pytest.approx(mjd_of(catalog.engine, "2017-08-16T02:00"))
    result = calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp_path / "cal", workers=1)
    assert len(result.done) == 4 and result.exit_code == 0  # calibrate finds the masters by that mode


def test_masters_are_named_by_their_parameters_and_never_overwrite_each_other(raw):
    catalog, tmp, _ = raw
    median = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    mean = calibration.make_master(catalog.engine, "bias", params=calibration.MasterParams(method="mean"), out_dir=tmp / "m")
    (a,), (b,) = median.products, mean.products
    assert a != b and "_2017-08-15_median_" in a and "_2017-08-15_mean_" in b
    from processing.steps import safe_name

    assert [safe_name(None), safe_name(""), safe_name("SCI1.0"), safe_name("a b/c")] == ["none", "none", "SCI1.0", "a_b_c"]  # None gave _None_
    again = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m", force=True)
    assert again.products == [a]
    listed = catalog.products("master_bias")
    assert sorted(listed["path"]) == sorted([a, b]) and set(listed["status"]) == {"present"}  # each once


@pytest.mark.parametrize("to", ["2017-08-16T04:10", "57981.17", "3856", "frame_type == 'bias' and exptime == 0 and 3855-3856"])
def test_to_takes_a_date_an_mjd_a_frame_number_or_a_selection(raw, to):
    catalog, tmp, _ = raw
    result = calibration.make_master(catalog.engine, "bias", nearest_count=2, to=to, out_dir=tmp / "m")
    with fits.open(result.products[0]) as hdul:
        used = sorted(line.split()[-1] for line in hdul[0].header["HISTORY"] if "obsarch input" in line)
    assert used == ["ngc3293-3855.fits", "ngc3293-3856.fits"]


def test_fewer_frames_than_nearest_is_a_short_master(raw):
    catalog, tmp, _ = raw
    result = calibration.make_master(catalog.engine, "bias", nearest_count=20, to="2017-08-16", out_dir=tmp / "m")
    assert result.exit_code == 3 and "--nearest 20 asked, only 5 bias frames match" in result.last_line()


def test_calibrating_without_masters_is_an_error_not_a_success(raw):
    catalog, tmp, _ = raw
    result = calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1)
    assert result.exit_code == 1 and len(result.failed) == 4 and not result.done


# -- offsets --------------------------------------------------------------------------------


def test_the_current_offset_is_the_latest_registration_everywhere(raw):
    catalog, tmp, numbers = raw
    engine = catalog.engine
    ids = offsets.select_ids(engine, "frame_type == 'science'")
    offsets.compute_offsets(engine, ids, ids[0], workers=1)
    offsets.compute_offsets(engine, ids, ids[2], workers=1)  # asked for last: onto the third frame
    table = {row["exposure_id"]: row for row in offsets.offsets_table(engine)}
    assert {row["reference_id"] for row in table.values()} == {ids[2]}
    selected = catalog.query(f"{numbers[0]}", columns="dx")["dx"].iloc[0]
    assert selected == pytest.approx(table[ids[0]]["dx"])
    result = stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "s", workers=1)
    with fits.open(result.products[0]) as hdul:
        assert hdul[0].header["REFEXP"] == ids[2]


def test_a_failed_latest_registration_leaves_no_older_offset_in_use(raw):
    catalog, tmp, numbers = raw
    engine = catalog.engine
    ids = offsets.select_ids(engine, "frame_type == 'science'")
    offsets.compute_offsets(engine, ids, ids[0], workers=1)
    from archive.db import transaction
    from archive.ingest import utcnow

    with transaction(engine, write=True) as conn:  # the latest registration of the last frame failed
        conn.execute(Offset.__table__.insert().values(exposure_id=ids[3], reference_id=ids[0], method="stars", stage=1,
                                                      status="failed", error="no transform maps 5 stars", created_at=utcnow()))
    assert catalog.query(str(numbers[3]) + " and dx is null").shape[0] == 1
    result = stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "s", workers=1)
    assert result.exit_code == 3 and "its latest registration failed" in result.last_line()


def test_registering_raw_frames_leaves_their_products_alone(raw):
    catalog, tmp, _ = raw
    _masters(catalog.engine, tmp)
    calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1)
    ids = offsets.select_ids(catalog.engine, "band == 'V' and frame_type == 'science'")
    assert len(ids) == 4
    assert len(offsets.select_ids(catalog.engine, "band == 'V' and frame_type == 'science'", products=True)) == 8


def test_a_frame_the_star_matcher_cannot_register_gets_a_phase_correlation_shift(catalog, tmp_path, rng):
    stars, fluxes = _field(rng, 25)
    for i, (dx, dy) in enumerate([(0, 0), (7.0, -4.0)]):
        write_image(tmp_path / f"p-{i + 1}.fits", star_field(rng, SHAPE, positions=stars - [dx, dy], fluxes=fluxes),
                    {"FRAMENUM": i + 1})
    catalog.ingest([tmp_path])
    ids = offsets.select_ids(catalog.engine, "1-2")
    # a matcher so strict that no triangle agrees: the star matcher fails, the shift does not
    result = offsets.compute_offsets(catalog.engine, ids, ids[0], params=offsets.MatchParams(invariant_tol=1e-12), workers=1)
    moved = result.offsets[ids[1]]
    assert (moved.dx, moved.dy) == pytest.approx((7.0, -4.0), abs=0.1)
    with catalog.engine.connect() as conn:
        assert conn.execute(select(Offset.method).where(Offset.exposure_id == ids[1])).scalar_one() == "phase"


def test_quality_and_offsets_refuse_a_frame_cut_since_its_ingest_with_the_reason(raw):
    """quality compute said numpy's 'cannot reshape array of size ...' of a frame
    cut after its ingest, and offsets compute the same of one the last ingest
    found unreadable; calibrate already said why."""
    catalog, tmp, numbers = raw
    first, cut = (tmp / "raw" / f"ngc3293-{n}.fits" for n in numbers[:2])
    cut.write_bytes(cut.read_bytes()[:5000])
    measured = quality.compute(catalog.engine, f"{numbers[0]}-{numbers[1]}", workers=1)
    assert measured.done == [str(first)]
    assert measured.failed == [(str(cut), "changed on disk since it was last ingested (obsarch ingest reads it again)")]
    catalog.ingest([tmp / "raw"])  # now unreadable, its headers kept
    ids = offsets.select_ids(catalog.engine, f"{numbers[0]}-{numbers[2]}")
    registered = offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    assert len(registered.offsets) == 2 and [key for key, _ in registered.failed] == [str(cut)]
    assert registered.failed[0][1].startswith("unreadable since it was last ingested: ")
    with pytest.raises(ObsarchError, match=r"^the reference: .*: unreadable since it was last ingested"):
        offsets.compute_offsets(catalog.engine, ids, ids[1], workers=1)


def test_a_failed_measurement_keeps_the_metrics_of_the_version_the_catalog_holds(raw):
    """A frame cut on disk after its ingest, or an --hdu its file lacks, replaced
    the metrics of the catalogued version with the failure (a user trial)."""
    catalog, tmp, numbers = raw
    selection = f"{numbers[0]}-{numbers[1]}"
    quality.compute(catalog.engine, selection, workers=1)
    before = catalog.query(selection, columns="frame_number,fwhm,nstars,background", sort="frame_number")
    assert before["fwhm"].notna().all()
    missing_hdu = quality.compute(catalog.engine, selection, workers=1, hdus=("CHAN03",))
    cut = tmp / "raw" / f"ngc3293-{numbers[0]}.fits"
    cut.write_bytes(cut.read_bytes()[:5000])
    changed = quality.compute(catalog.engine, selection, workers=1, force=True)
    assert [len(missing_hdu.failed), missing_hdu.exit_code] == [2, 1] and changed.failed[0][0] == str(cut)
    assert f"ngc3293-{numbers[0]}.fits: its metrics of this version of the file are kept" in changed.notes
    assert catalog.query(selection, columns="frame_number,fwhm,nstars,background", sort="frame_number").equals(before)


def test_the_automatic_reference_is_the_sharpest_frame_not_graded_bad(raw):
    catalog, tmp, numbers = raw
    ids = offsets.select_ids(catalog.engine, "frame_type == 'science'")
    chosen, why = offsets.choose_reference(catalog.engine, ids, workers=1)  # measures the frames first
    assert "4 measured first" in why and "smallest FWHM" in why
    quality.flag(catalog.engine, f"id == {chosen}", "bad", reason="focus")
    second, _ = offsets.choose_reference(catalog.engine, ids, workers=1)
    assert second != chosen
    _, why = offsets.choose_reference(catalog.engine, [second], workers=1)
    assert "the smallest FWHM of 1 frame not graded bad" in why  # was "of 1 frames"


# -- groups ---------------------------------------------------------------------------------


def test_grouping_again_under_a_name_replaces_every_group_of_that_name(raw):
    catalog, *_ = raw
    engine = catalog.engine
    grouping.group_by_values(engine, "frame_type", prefix="kind")
    assert {g["name"] for g in grouping.list_groups(engine)} == {"kind:frame_type=bias", "kind:frame_type=flat",
                                                                  "kind:frame_type=science"}
    grouping.group_by_values(engine, "frame_type", selection="frame_type == 'science'", prefix="kind")
    assert {g["name"] for g in grouping.list_groups(engine)} == {"kind:frame_type=science"}


def test_a_drifting_night_registers_in_two_commands(url, tmp_path, rng):
    # two pointings 60 px apart, each with jitter: no frame reaches across without its group's reference
    stars, fluxes = np.column_stack([rng.uniform(0, 220, 90), rng.uniform(0, 190, 90)]), rng.uniform(4e3, 3e4, 90)
    truth = [(0, 0), (1.5, -1.0), (-1.2, 0.8), (60.0, 40.0), (61.3, 38.9), (59.1, 41.2)]
    for i, (dx, dy) in enumerate(truth):
        xy = stars - [dx, dy]
        seen = np.all((xy > 8) & (xy < SHAPE[0] - 9), axis=1)
        write_image(tmp_path / "d" / f"d-{i + 1}.fits", star_field(rng, SHAPE, positions=xy[seen], fluxes=fluxes[seen]),
                    {"FRAMENUM": i + 1, "DATE-OBS": f"2017-08-16T03:{i:02d}:00"})

    def run(*args, code=0):
        result = runner.invoke(app, ["--db", url, *args])
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result.stdout

    run("init")
    run("ingest", str(tmp_path / "d"))
    assert "2 groups by position" in run("group", "positions", "--radius", "20px", "--name", "drift", "--workers", "1")
    out = run("offsets", "compute", "--groups", "drift-*", "--workers", "1")
    assert "reference: frame" in out and "0 failed" in out
    shown = {int(r["frame_number"]): r for r in _csv(run("offsets", "show", "--format", "csv"))}
    reference = next(n for n, r in shown.items() if float(r["dx"]) == 0 and float(r["dy"]) == 0)
    for number, row in shown.items():
        expected = np.subtract(truth[number - 1], truth[reference - 1])
        assert (float(row["dx"]), float(row["dy"])) == pytest.approx(tuple(expected), abs=0.15)


def _csv(text: str) -> list[dict]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


# -- a night end to end, with its exit codes -----------------------------------------------


def test_a_night_end_to_end(url, tmp_path, rng, monkeypatch):
    monkeypatch.chdir(tmp_path)
    night(tmp_path / "raw", rng)
    good = tmp_path / "raw" / "ngc3293-3856.fits"
    with fits.open(good) as hdul:  # a tile-compressed copy whose tiles are damaged
        fits.HDUList([fits.PrimaryHDU(header=hdul[0].header), fits.CompImageHDU(hdul[0].data)]).writeto(tmp_path / "raw" / "broken.fits.fz")
    with fits.open(tmp_path / "raw" / "broken.fits.fz") as hdul:
        start, size = hdul[1]._data_offset, hdul[1]._data_size
    data = bytearray((tmp_path / "raw" / "broken.fits.fz").read_bytes())
    data[start + size // 3 : start + size - 64] = rng.integers(0, 256, size - 64 - size // 3, dtype=np.uint8).tobytes()
    (tmp_path / "raw" / "broken.fits.fz").write_bytes(bytes(data))

    def run(*args, code=0):
        result = runner.invoke(app, ["--db", url, *args])
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        return result

    run("init")
    run("ingest", "raw")
    measured = run("quality", "compute", "--workers", "1", code=3)  # one corrupt file: partial, the rest stored
    assert "broken.fits.fz" in measured.stderr.strip().splitlines()[-1]
    assert "12 done" in measured.stderr.strip().splitlines()[-1]
    assert "12 up to date" in run("quality", "compute", "--workers", "1", code=3).stderr
    registered = run("offsets", "compute", "frame_type == 'science'", "--workers", "1")
    assert "reference: frame" in registered.stdout and "4 done" in registered.stdout
    short = run("calib", "bias", code=3)  # the damaged copy is a bias too: left out, and said
    assert "made from 5 of 6 selected bias frames" in short.stderr.strip().splitlines()[-1]
    run("calib", "flat", "--band", "V")
    assert "4 done" in run("calibrate", "frame_type == 'science'", "--workers", "1").stdout
    stacked = run("stack", "frame_type == 'science' and grade != 'bad'", "--workers", "1")
    assert "V_stack.fits" in stacked.stdout
    assert "up to date" in run("stack", "frame_type == 'science' and grade != 'bad'", "--workers", "1").stdout
    listed = run("products", "--format", "csv").stdout.strip().splitlines()
    assert len(listed) == 1 + 2 + 4 + 1
    stale = run("stale", "--format", "csv").stdout
    assert stale.strip().splitlines()[1:] == []


def test_an_option_value_is_never_read_as_selection_text(raw):
    catalog, tmp, _ = raw
    with pytest.raises(ObsarchError, match="no raw flat frames match the catalog in band V' or band == 'B"):
        calibration.make_master(catalog.engine, "flat", band="V' or band == 'B", out_dir=tmp / "m")


def test_run_each_exits_1_when_every_item_failed_and_3_when_some_did(raw, tmp_path):
    from processing import external

    catalog, _, numbers = raw
    failed = external.run_each(catalog.engine, "exposure", f"{numbers[0]}-{numbers[1]}", ["sh", "-c", "exit 2"],
                               workdir=str(tmp_path / "w" / "{item}"), workers=1)
    assert failed.exit_code == 1 and len(failed.failed) == 2 and "exit status 2" in failed.last_line()
    some = external.run_each(catalog.engine, "exposure", f"{numbers[0]}-{numbers[1]}",
                             ["sh", "-c", f"test {{frame}} != {numbers[0]}"], workdir=str(tmp_path / "v" / "{item}"), workers=1)
    assert some.exit_code == 3 and [key for key, _ in some.failed] == [str(numbers[0])]


def test_stale_names_the_input_file_and_its_frame_number(raw):
    from processing import runs

    catalog, tmp, numbers = raw
    _masters(catalog.engine, tmp)
    bias = numbers[0] - 8  # the first of the night's five bias frames
    quality.flag(catalog.engine, str(bias), "bad", reason="other")
    row = next(row for row in runs.stale_products(catalog.engine) if row["kind"] == "master_bias")
    assert f"ngc3293-{bias}.fits (frame {bias}) was graded bad after it was made" in row["reason"]


def test_frames_that_cannot_be_placed_are_said_and_the_grouping_is_partial(url, tmp_path, rng):
    """Blank frames have no position to measure: each is grouped alone, and
    the command says so and exits 3 instead of reporting groups as measured;
    scikit-image's warnings on them do not reach the terminal."""
    for i in range(3):
        write_image(tmp_path / "z" / f"z-{i + 1}.fits", np.zeros(SHAPE, np.float32),
                    {"FRAMENUM": i + 1, "DATE-OBS": f"2017-08-16T03:{i:02d}:00"})
    runner.invoke(app, ["--db", url, "init"])
    runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "z")])
    result = runner.invoke(app, ["--db", url, "group", "positions", "--radius", "20px", "--name", "blank", "--workers", "1"])
    assert result.exit_code == 3, result.output
    assert "3 groups by position" in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"group: 2 of 2 frames could not be registered onto the frame before them, so each starts a group of its own, "
        f"its position not measured ({tmp_path / 'z' / 'z-2.fits'}: ")
    assert "Warning" not in result.stderr


def test_a_stack_that_replaces_another_says_so(raw):
    """Stacking three of the four frames after stacking all four wrote the
    same V_stack.fits without a word: the first stack was gone unseen."""
    catalog, tmp, numbers = raw
    ids = offsets.select_ids(catalog.engine, "frame_type == 'science'")
    offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    first = stacking.stack(catalog.engine, "frame_type == 'science'", out_dir=tmp / "stacks", workers=1)
    assert first.notes == []
    target = (tmp / "stacks" / "V_stack.fits").resolve()
    again = stacking.stack(catalog.engine, f"{numbers[0]}-{numbers[2]}", out_dir=tmp / "stacks", workers=1)
    assert again.exit_code == 0 and fits.getheader(target)["NCOMBINE"] == 3
    assert again.notes == [f"replaced {target}, the stack of run {first.run_id} (4 frames); --name keeps both"]
    kept = stacking.stack(catalog.engine, "frame_type == 'science'", out_dir=tmp / "stacks", name="all.fits", workers=1)
    assert kept.notes == [] and fits.getheader(target)["NCOMBINE"] == 3


def test_a_stack_never_replaces_a_file_no_run_made(raw):
    catalog, tmp, _ = raw
    ids = offsets.select_ids(catalog.engine, "frame_type == 'science'")
    offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    (tmp / "stacks").mkdir()
    (tmp / "stacks" / "V_stack.fits").write_bytes(b"my own work")
    url = catalog.engine.url.render_as_string(hide_password=False)
    result = runner.invoke(app, ["--db", url, "stack", "frame_type == 'science'", "--out", str(tmp / "stacks"), "--workers", "1"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: {(tmp / 'stacks' / 'V_stack.fits').resolve()} exists and is no product of obsarch: "
                                     "--name or --out writes elsewhere, --force replaces it")
    assert (tmp / "stacks" / "V_stack.fits").read_bytes() == b"my own work"
    forced = stacking.stack(catalog.engine, "frame_type == 'science'", out_dir=tmp / "stacks", workers=1, force=True)
    assert forced.notes == [f"replaced {(tmp / 'stacks' / 'V_stack.fits').resolve()}, which no run made"]
    assert fits.getheader(tmp / "stacks" / "V_stack.fits")["NCOMBINE"] == 4


def test_a_blank_frame_fails_registration_without_a_python_warning(catalog, tmp_path, rng):
    """scikit-image's 'Could not determine RMS error between images' reached the terminal."""
    import gc
    import warnings

    science = night(tmp_path / "raw", rng)
    write_image(tmp_path / "raw" / "blank.fits", np.zeros(SHAPE, np.float32),
                {"IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": 60.0, "DATE-OBS": "2017-08-16T03:30:00", "FRAMENUM": 9999})
    catalog.ingest([tmp_path / "raw"])
    ids = offsets.select_ids(catalog.engine, "frame_type == 'science'")
    gc.collect()  # what earlier tests left to the collector is theirs, not registration's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    assert [str(w.message) for w in caught] == []
    assert result.step.exit_code == 3 and [key for key, _ in result.step.failed] == [str(tmp_path / "raw" / "blank.fits")]
    assert len(science) == 4


def test_a_stack_never_takes_the_place_of_a_master(raw):
    """stack --name master_bias_....fits replaced the master bias and called it
    'the stack of run 1'; calibration then used a stack as its bias."""
    catalog, tmp, _ = raw
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "masters")
    (master,) = (tmp / "masters").glob("master_bias*.fits")
    made = master.read_bytes()
    ids = offsets.select_ids(catalog.engine, "frame_type == 'science'")
    offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    for force in (False, True):
        with pytest.raises(ObsarchError, match=r"master_bias_.*\.fits is the master_bias made by run 1: --name or --out writes elsewhere$"):
            stacking.stack(catalog.engine, "frame_type == 'science'", out_dir=tmp / "masters", name=master.name, workers=1, force=force)
        assert master.read_bytes() == made


def test_a_stack_never_mixes_calibrated_and_raw_frames(raw):
    """Two calibrated and two raw frames were averaged into one stack: bias-subtracted
    and raw pixels, 100 ADU apart, without a word."""
    catalog, tmp, numbers = raw
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "masters")
    science = numbers
    calibration.calibrate(catalog.engine, f"{science[0]}-{science[1]}", use=("bias",), out_dir=tmp / "cal", workers=1)
    ids = offsets.select_ids(catalog.engine, "frame_type == 'science'")
    offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    result = stacking.stack(catalog.engine, "frame_type == 'science'", out_dir=tmp / "stacks", workers=1)
    assert result.exit_code == 3
    assert sorted(key for key, _ in result.failed) == [str(tmp / "raw" / f"ngc3293-{n}.fits") for n in science[2:]]
    assert {why for _, why in result.failed} == {"not calibrated, while 2 of the selected frames are: calibrate it first"}
    assert fits.getheader(tmp / "stacks" / "V_stack.fits")["NCOMBINE"] == 2


def test_current_offsets_of_more_ids_than_sqlite_takes_parameters(catalog):
    """stale and stack asked for every frame's offset in one IN list: PostgreSQL
    refuses more than 65,535 parameters, SQLite more than 32,766 (or its build's limit)."""
    assert offsets.current_offsets(catalog.engine, list(range(1, 70_001))) == {}
