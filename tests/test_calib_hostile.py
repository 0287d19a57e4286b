"""Calibration attacked with hostile files and options (findings of the
processing chain): each bad input costs only itself and is said in one line
naming the file, and no file obsarch did not make is ever replaced.
Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import test_steps
from astropy.io import fits
from factories import meeting_first, write_image
from sqlalchemy import func, select
from typer.testing import CliRunner

from archive.exceptions import ConfigError, ObsarchError
from archive.models import Product, Run
from cli.main import app
from processing import calibration, offsets, runs, stacking
from processing.calib_rules import rules_from_config

runner = CliRunner()
raw = test_steps.raw  # a night of bias, V flats and 4 V science frames, ingested (a fixture)
SHAPE = test_steps.SHAPE


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _runs(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Run)).scalar_one()


def _cli(url: str, *args: str):
    return runner.invoke(app, ["--db", url, *args])


def _second_night_twin(catalog, tmp: Path, number: int) -> tuple[Path, Path]:
    """A frame of another night under the file name of science frame ``number``
    (cameras restart their numbering), 1000 ADU brighter to tell them apart."""
    first = tmp / "raw" / f"ngc3293-{number}.fits"
    twin = tmp / "night2" / first.name
    with fits.open(first) as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data + 1000
    header["FRAMENUM"], header["DATE-OBS"] = 9000 + number, "2017-08-17T03:00:00"
    twin.parent.mkdir()
    fits.PrimaryHDU(data, header).writeto(twin)
    catalog.ingest([twin.parent])
    return first, twin


# -- 1: raw frames sharing a file name ------------------------------------------------------


def test_raw_frames_sharing_a_file_name_are_calibrated_into_a_file_each(raw):
    catalog, tmp, numbers = raw
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "masters")
    first, twin = _second_night_twin(catalog, tmp, numbers[0])
    selection = f"relpath == '{first.name}'"
    result = calibration.calibrate(catalog.engine, selection, use=("bias",), out_dir=tmp / "cal", executor="serial")
    assert len(result.done) == 2 and len(set(result.products)) == 2, result
    plain = tmp / "cal" / f"ngc3293-{numbers[0]}_cal.fits"
    assert str(plain.resolve()) in result.products
    for frame in (first, twin):  # each product holds its own frame's pixels, and its lineage names that frame
        product = next(p for p in result.products if _lineage_frame(catalog, p) == str(frame.resolve()))
        with fits.open(product) as made, fits.open(frame) as raw_frame:
            assert made[0].header["FRAMENUM"] == raw_frame[0].header["FRAMENUM"]
    again = calibration.calibrate(catalog.engine, selection, use=("bias",), out_dir=tmp / "cal", executor="serial")
    assert len(again.skipped) == 2 and not again.done  # up to date, and true: both files are there
    assert all(Path(p).exists() for p in result.products)


def _lineage_frame(catalog, product: str) -> str:
    from archive.roots import file_id_of

    with catalog.engine.connect() as conn:
        file_id = file_id_of(conn, product)
    tree = runs.lineage(catalog.engine, file_id)
    return next(node["path"] for node in tree["inputs"] if node["role"] == "frame")


# -- 2: never replace a file obsarch did not make ------------------------------------------


def test_what_is_at_says_what_occupies_a_path(raw):
    catalog, tmp, numbers = raw
    made = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "masters")
    (master,) = made.products
    mine = tmp / "mine.fits"
    mine.write_text("a user's own file")
    raw_frame = str((tmp / "raw" / f"ngc3293-{numbers[0]}.fits").resolve())
    assert runs.what_is_at(catalog.engine, str(tmp / "none.fits")).what == "nothing"
    assert runs.what_is_at(catalog.engine, str(tmp)).what == "directory"
    assert runs.what_is_at(catalog.engine, str(mine)).what == "foreign"
    found = runs.what_is_at(catalog.engine, raw_frame)
    assert (found.what, found.frame_number) == ("raw", numbers[0])
    found = runs.what_is_at(catalog.engine, master)
    assert (found.what, found.kind, found.run_id, len(found.frames)) == ("product", "master_bias", made.run_id, 5)
    assert found.refusal("master_bias") is None and "is the master_bias made by run" in found.refusal("stack")
    assert "never replaces" in runs.what_is_at(catalog.engine, raw_frame).refusal("calibrated", force=True)


def test_calibrate_never_replaces_a_raw_frame_and_replaces_a_users_file_only_when_forced(raw, url):
    catalog, tmp, numbers = raw
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "masters")
    out = tmp / "raw2"
    out.mkdir()
    for name, number in (("obj_301.fits", 301), ("obj_301_cal.fits", 302)):  # a raw frame named like a product
        data = np.random.default_rng(number).normal(2000, 5, SHAPE).astype(np.float32)
        write_image(out / name, data, {"FRAMENUM": number, "DATE-OBS": "2017-08-16T04:00:00", "READOUTM": "SCI1.0"})
    catalog.ingest([out])
    victim = out / "obj_301_cal.fits"
    before = _md5(victim)
    result = _cli(url, "calibrate", f"frame_number in (301, {numbers[1]})", "--no-dark", "--no-flat", "--out", str(out),
                  "--executor", "serial")
    assert result.exit_code == 3, result.output  # the other frame is calibrated
    line = f"{out / 'obj_301.fits'}: {victim} is a raw file of the catalog (frame 302): obsarch never replaces it"
    assert line in result.stderr and _md5(victim) == before
    forced = _cli(url, "calibrate", "301", "--no-dark", "--no-flat", "--out", str(out), "--executor", "serial", "--force")
    assert forced.exit_code == 1 and _md5(victim) == before
    assert _cli(url, "show", "302").exit_code == 0  # still a raw exposure
    users = tmp / "cal2"
    users.mkdir()
    (users / f"ngc3293-{numbers[0]}_cal.fits").write_text("my calibrated")
    refused = _cli(url, "calibrate", str(numbers[0]), "--no-dark", "--no-flat", "--out", str(users), "--executor", "serial")
    assert refused.exit_code == 1 and "exists and is no product of obsarch" in refused.stderr
    assert (users / f"ngc3293-{numbers[0]}_cal.fits").read_text() == "my calibrated"
    assert _cli(url, "calibrate", str(numbers[0]), "--no-dark", "--no-flat", "--out", str(users), "--executor", "serial",
                "--force").exit_code == 0


def test_a_master_is_refused_before_any_work_where_a_file_it_did_not_make_lies(raw, url):
    catalog, tmp, _ = raw
    name = Path(calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m").products[0]).name
    mine = tmp / "mine"
    mine.mkdir()
    (mine / name).write_text("x")
    runs_before = _runs(catalog.engine)
    result = _cli(url, "calib", "bias", "--out", str(mine))
    assert result.exit_code == 1 and result.stderr.strip() == (
        f"error: {mine / name} exists and is no product of obsarch: --out writes elsewhere, --force replaces it")
    assert (mine / name).read_text() == "x" and _runs(catalog.engine) == runs_before  # refused before any work
    assert _cli(url, "calib", "bias", "--out", str(mine), "--force").exit_code == 0
    # a raw frame of the catalog at that name: never, even forced
    rawdir = tmp / "rawm"
    rawdir.mkdir()
    (rawdir / name).write_bytes((tmp / "raw" / f"ngc3293-{_first_bias()}.fits").read_bytes())
    catalog.ingest([rawdir])
    before = _md5(rawdir / name)
    with pytest.raises(ObsarchError, match="is a raw file of the catalog .*never replaces it"):
        calibration.make_master(catalog.engine, "bias", "relpath glob 'ngc*'", out_dir=rawdir, force=True)
    assert _md5(rawdir / name) == before


def _first_bias() -> int:
    return 3852  # the first frame (a bias) of test_steps.night


# -- 7, 8, 20: flats without light, all-NaN flats, numpy's warnings ---------------------------


def _flats(directory: Path, rng, band: str, levels: dict[str, object]) -> None:
    for i, (name, level) in enumerate(levels.items()):
        data = level(rng) if callable(level) else np.full(SHAPE, level, dtype=np.float32)
        write_image(directory / f"{name}.fits", np.asarray(data, dtype=np.float32),
                    {"IMAGETYP": "Flat Field", "FILTER": band, "EXPTIME": 2.0, "DATE-OBS": f"2017-08-16T05:1{i}:00",
                     "READOUTM": "SCI1.0"})


def _good(rng):
    return 500 + rng.normal(20000, 100, SHAPE)


def test_flats_without_light_fail_alone_and_the_master_is_made_of_the_rest(raw, rng):
    catalog, tmp, _ = raw
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    _flats(tmp / "rflats", rng, "R", {"zero": 0.0, "constant": 7000.0, "negative": lambda r: 450 + r.normal(0, 3, SHAPE),
                                     "good1": _good, "good2": _good})
    _flats(tmp / "iflats", rng, "I", {"izero1": 0.0, "izero2": 0.0})
    catalog.ingest([tmp / "rflats", tmp / "iflats"])
    result = calibration.make_master(catalog.engine, "flat", band="R", out_dir=tmp / "m")
    failed = dict(result.failed)
    assert failed[str((tmp / "rflats" / "zero.fits").resolve())] == "every pixel is 0: no light in this flat"
    assert failed[str((tmp / "rflats" / "constant.fits").resolve())] == "every pixel is 7000: no light in this flat"
    assert re.fullmatch(r"median -(49|50)\.\d+ once the master bias is subtracted: no light in this flat \(its level must be above 0\)",
                        failed[str((tmp / "rflats" / "negative.fits").resolve())])
    assert len(result.products) == 1 and result.exit_code == 3 and "made from 2 of 5" in result.short[0][1]
    with fits.open(result.products[0]) as made:
        assert made[0].header["NCOMBINE"] == 2 and np.nanmedian(made[0].data) == pytest.approx(1, abs=0.01)
    none_left = calibration.make_master(catalog.engine, "flat", band="I", out_dir=tmp / "m")
    assert none_left.exit_code == 1 and not none_left.products and len(none_left.failed) == 2


def test_an_all_nan_flat_fails_alone_without_a_python_warning(raw, rng):
    catalog, tmp, _ = raw
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    _flats(tmp / "rflats", rng, "R", {"nan": np.nan, "good1": _good, "good2": _good, "good3": _good})
    catalog.ingest([tmp / "rflats"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = calibration.make_master(catalog.engine, "flat", band="R", out_dir=tmp / "m")
    assert result.failed == [(str((tmp / "rflats" / "nan.fits").resolve()), "no finite pixel (all NaN or inf)")]
    assert len(result.products) == 1 and result.exit_code == 3
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]


def test_calibrating_frames_with_inf_pixels_prints_no_python_warning(raw):
    """A mean master bias keeps a frame's inf pixel; a science frame with inf
    there made numpy warn 'invalid value encountered in subtract'."""
    catalog, tmp, numbers = raw
    for path in sorted((tmp / "raw").glob("*.fits")):
        with fits.open(path, mode="update") as hdul:
            if hdul[0].header["IMAGETYP"] in ("Bias Frame", "Light Frame"):
                hdul[0].data[5, 5] = np.inf
    catalog.ingest([tmp / "raw"])
    calibration.make_master(catalog.engine, "bias", params=calibration.MasterParams(method="mean"), out_dir=tmp / "m")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = calibration.calibrate(catalog.engine, str(numbers[0]), use=("bias",), out_dir=tmp / "cal", executor="serial")
    assert result.exit_code == 0, result.failed
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]


# -- 9: nan in the rules ---------------------------------------------------------------------


@pytest.mark.parametrize(("table", "key"), [
    ({"tolerance": {"ccd_temp": float("nan")}}, "tolerance.ccd_temp: expected a number >= 0, got nan"),
    ({"max_age_days": float("nan")}, "max_age_days: expected a number of days >= 0, got nan"),
])
def test_nan_is_refused_as_a_tolerance_or_an_age_limit(table, key):
    with pytest.raises(ConfigError) as refused:
        rules_from_config({"calibration": {"bias": table}}, "obsarch.toml")
    assert str(refused.value) == f"obsarch.toml: [calibration.bias] {key}"


def test_calib_explain_refuses_nan_in_obsarch_toml_in_one_line(raw, url):
    _, tmp, numbers = raw
    config = tmp / "obsarch.toml"
    config.write_text("[calibration.bias]\ntolerance = { ccd_temp = nan }\n")
    result = runner.invoke(app, ["--db", url, "--config", str(config), "calib", "explain", str(numbers[0]), "--type", "bias"])
    assert result.exit_code != 0 and "[calibration.bias] tolerance.ccd_temp: expected a number >= 0, got nan" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- 11: a stack whose offsets were measured again is stale ----------------------------------


def test_stale_lists_a_stack_whose_frames_were_registered_again(raw):
    catalog, tmp, numbers = raw
    ids = offsets.select_ids(catalog.engine, "frame_type == 'science'")
    offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    stacking.stack(catalog.engine, "frame_type == 'science'", out_dir=tmp / "st", executor="serial")
    assert not [row for row in runs.stale_products(catalog.engine) if row["kind"] == "stack"]
    offsets.compute_offsets(catalog.engine, ids, ids[-1], workers=1)
    (row,) = [row for row in runs.stale_products(catalog.engine) if row["kind"] == "stack"]
    assert "was registered again since: `obsarch stack` again uses its new offset" in row["reason"]
    assert str(numbers[0]) in row["reason"]
    stacking.stack(catalog.engine, "frame_type == 'science'", out_dir=tmp / "st", executor="serial")
    assert not [row for row in runs.stale_products(catalog.engine) if row["kind"] == "stack"]


# -- 12: a bad --out ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("calib", "bias"), ("calibrate", "frame_type == 'science'", "--no-dark", "--no-flat")])
def test_a_bad_out_is_one_plain_line_before_any_work(raw, url, command):
    catalog, tmp, _ = raw
    if command[0] == "calibrate":
        calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    (tmp / "afile").write_text("")
    before = _runs(catalog.engine)
    for out, said in ((tmp / "afile", f"--out {tmp / 'afile'}: exists and is not a directory"),
                      (tmp / "afile" / "sub", f"--out {tmp / 'afile' / 'sub'}: {tmp / 'afile'} exists and is not a directory")):
        result = _cli(url, *command, "--out", str(out))
        assert result.exit_code == 1 and result.stderr.strip() == f"error: {said}", result.output
    assert _runs(catalog.engine) == before  # no work, no run recorded


# -- 15: an up-to-date short master ----------------------------------------------------------


def test_an_up_to_date_short_master_names_the_master_that_exists(raw, rng):
    catalog, tmp, _ = raw
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    _flats(tmp / "rflats", rng, "R", {"zero": 0.0, "good1": _good, "good2": _good})
    catalog.ingest([tmp / "rflats"])
    made = calibration.make_master(catalog.engine, "flat", band="R", out_dir=tmp / "m")
    again = calibration.make_master(catalog.engine, "flat", band="R", out_dir=tmp / "m")
    assert again.skipped == made.products and again.short[0][0] == made.products[0]
    assert Path(again.skipped[0]).exists()


# -- 18: --hdu names the file ------------------------------------------------------------------


def test_a_master_refusing_hdu_names_the_file(raw, url):
    _, tmp, _ = raw
    result = _cli(url, "calib", "bias", "--hdu", "CCD9", "--out", str(tmp / "m"))
    first = (tmp / "raw" / f"ngc3293-{_first_bias()}.fits").resolve()
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {first}: --hdu CCD9: no such detector (this file has PRIMARY)"


# -- two identical masters at once -------------------------------------------------------------


def test_two_identical_masters_at_once_make_one_and_the_second_finds_it_up_to_date(raw, monkeypatch):
    """Two `obsarch calib bias` started together (a team trial): the second
    failed with "exists and is no product of obsarch" at the master the
    first was writing, or both made it. A run now holds the master's path
    from before it asks what is up to date until the master is stored: the
    second waits, then finds the first's master up to date, as a repeat does."""
    import threading

    catalog, tmp, _ = raw
    both_combining = threading.Barrier(2, timeout=3)  # before the fix both runs reach it; after it, the first waits alone
    monkeypatch.setattr(calibration.MasterStep, "work",
                        staticmethod(meeting_first(both_combining, calibration.MasterStep.work)))
    results, errors = [], []

    def make():
        try:
            results.append(calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m"))
        except ObsarchError as exc:
            errors.append(str(exc))

    runs_ = [threading.Thread(target=make) for _ in range(2)]
    for run in runs_:
        run.start()
    for run in runs_:
        run.join(60)
    assert not errors
    assert sorted((len(r.done), len(r.skipped), len(r.failed)) for r in results) == [(0, 1, 0), (1, 0, 0)]
    (made,) = [r for r in results if r.done]
    (skipped,) = [r for r in results if r.skipped]
    assert skipped.skipped == made.products and skipped.exit_code == 0
    with catalog.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Product)).scalar_one() == 1
    assert not list((tmp / "m").glob(".*"))  # no claim or partial file left beside the master


def test_a_file_a_running_run_is_writing_is_said_to_be_its(raw):
    """A product a run still running has written and not yet recorded (a run
    on another machine, where the two do not wait for each other) is refused
    naming that run, never as a file obsarch did not make, and not replaced
    even with --force."""
    catalog, tmp, _ = raw
    target = tmp / "m" / "master.fits"
    target.parent.mkdir()
    with runs.recorded_run(catalog.engine, "master-bias", {}, "x") as run:
        with catalog.engine.connect() as conn, runs.writing_for(runs.run_stamp(conn, run.id)):
            header = fits.Header()
            runs.stamp(header)
        fits.PrimaryHDU(header=header).writeto(target)
        found = runs.what_is_at(catalog.engine, target)
        assert (found.what, found.run_id) == ("writing", run.id)
        why = f"{target} is being written by run {run.id}, which is still running: once it is done, run this again"
        assert found.refusal("master_bias") == found.refusal("master_bias", force=True) == why
    assert runs.what_is_at(catalog.engine, target).what == "foreign"  # done, and it recorded no product there


# -- a master flat with dead pixels (a user trial) ---------------------------------------------


DEAD = 10  # dead columns: no light, so the raw flat is the bias level (~500) and ~0, a little either side, once it is off
SKY = 1500.0


def _flat_with_dead_columns(rng):
    data = 500 + rng.normal(20000, 100, SHAPE)
    data[:, :DEAD] = 500 + rng.normal(0, 3, (SHAPE[0], DEAD))
    data[5, 50] = 0.0  # below the bias: -500 once it is off
    return data


def _mostly_nan(rng):
    data = _good(rng)
    data[:, : SHAPE[1] * 3 // 5] = np.nan  # the unlit part of a detector, masked
    return data


def _science(directory: Path, band: str, number: int, rng) -> None:
    write_image(directory / f"sky{number}.fits", (500 + SKY + rng.normal(0, 5, SHAPE)).astype(np.float32),
                {"IMAGETYP": "Light Frame", "FILTER": band, "EXPTIME": 60.0, "DATE-OBS": "2017-08-16T03:30:00",
                 "READOUTM": "SCI1.0", "FRAMENUM": number})


def _dead_flats(catalog, tmp: Path, rng) -> tuple[str, str]:
    """Master flats of band R (10 dead columns and a pixel below the bias)
    and band I (60% NaN), and a sky frame of each band (frames 501, 502)."""
    calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    _flats(tmp / "rflats", rng, "R", {f"dead{i}": _flat_with_dead_columns for i in range(3)})
    _flats(tmp / "iflats", rng, "I", {f"nan{i}": _mostly_nan for i in range(3)})
    _science(tmp / "sky", "R", 501, rng)
    _science(tmp / "sky", "I", 502, rng)
    catalog.ingest([tmp / "rflats", tmp / "iflats", tmp / "sky"])
    r = calibration.make_master(catalog.engine, "flat", band="R", out_dir=tmp / "m")
    i = calibration.make_master(catalog.engine, "flat", band="I", out_dir=tmp / "m")
    return r, i


def test_pixels_a_dead_master_flat_cannot_flat_field_are_nan_and_counted(raw, rng):
    """Dead columns of a master flat (0 or a little either side once the bias
    is off) made +inf and sign-flipped pixels (-45315 on a sky of 500), pulled
    the flat's mean and so the sky down by 8%, and calibrate said nothing."""
    catalog, tmp, _ = raw
    made, _ = _dead_flats(catalog, tmp, rng)
    (master,) = made.products
    unusable = SHAPE[0] * DEAD + 1
    said = f"{unusable} of {SHAPE[0] * SHAPE[1]} pixels"
    assert made.exit_code == 0 and any(Path(master).name in n and said in n for n in made.notes), made.notes
    with fits.open(master) as hdul:
        assert hdul[0].header["FLATBAD"] == unusable
    result = calibration.calibrate(catalog.engine, "501", out_dir=tmp / "cal", executor="serial")
    assert result.exit_code == 0 and len(result.done) == 1, result.failed
    (note,) = [n for n in result.notes if "FLATBAD" in n]
    assert note.startswith(f"the master flat {Path(master).name}: {said}")
    with fits.open(result.products[0]) as hdul:
        data, header = hdul[0].data, hdul[0].header
    assert np.isnan(data[:, :DEAD]).all() and np.isnan(data[5, 50])
    assert header["FLATBAD"] == int(np.isnan(data).sum()) == unusable
    assert not np.isinf(data).any() and np.nanmin(data) > SKY - 100 and np.nanmax(data) < SKY + 100
    assert np.nanmedian(data) == pytest.approx(SKY, rel=0.01)


def test_a_mostly_unusable_master_flat_fails_its_frame_in_one_line(raw, rng, url):
    catalog, tmp, _ = raw
    _, made = _dead_flats(catalog, tmp, rng)
    (master,) = made.products
    assert any("more than half: calibrate refuses it" in n for n in made.notes), made.notes
    result = _cli(url, "calibrate", "frame_number in (501, 502)", "--out", str(tmp / "cal"), "--executor", "serial")
    assert result.exit_code == 3, result.output  # frame 501 (band R) is calibrated
    sky = (tmp / "sky" / "sky502.fits").resolve()
    line = (f"  {sky}: the master flat {Path(master).name}: 9728 of 16384 pixels (59.4%) are not "
            "finite or at or below 0.05 x its level, more than 50%: it cannot flat-field")
    assert line in result.stderr.splitlines(), result.stderr
    assert not (tmp / "cal" / "sky502_cal.fits").exists() and (tmp / "cal" / "sky501_cal.fits").exists()


@pytest.mark.parametrize(("bad", "unusable", "refused"), [
    (lambda f: f, 0, False),
    (lambda f: _set(f, np.s_[:, :3], 0.0), 30, False),
    (lambda f: _set(f, np.s_[:, :3], 0.01), 30, False),  # a little light: dividing by it makes 100 times the sky
    (lambda f: _set(_set(f, np.s_[0, 5], -0.2), np.s_[1, 5], np.inf), 2, False),
    (lambda f: _set(f, np.s_[:, 4:], np.nan), 60, True),
    (lambda f: f * 0.0, 100, True),
], ids=["good", "dead", "dim", "negative-and-inf", "mostly-nan", "all-zero"])
def test_flat_use_counts_what_a_normalized_flat_cannot_flat_field(bad, unusable, refused):
    flat = bad(np.full((10, 10), 1.0))
    use = calibration.flat_use(lambda: (flat[:5], flat[5:]))
    assert (use.unusable, use.pixels, use.refused()) == (unusable, 100, refused)
    if not refused:
        assert use.level == 1.0  # the good pixels' level: no dead pixel pulls it down
        assert np.isnan(use.usable(flat.copy())).sum() == unusable


def _set(array: np.ndarray, where, value: float) -> np.ndarray:
    array[where] = value
    return array


def _night_with_darks(directory: Path, rng, flat_times=(5.0, 5.0, 5.0)) -> np.ndarray:
    """uint16 frames of one camera: bias 1000, darks of 60 s at 0.1 ADU/s (a
    hot pixel at [10, 10]: 50 ADU/s), V flats of ``flat_times``, science of
    30 s on a sky of 500 x a flat pattern; the pattern returned."""
    directory.mkdir()
    bias = np.full((32, 40), 1000.0)
    rate = np.full((32, 40), 0.1)
    rate[10, 10] = 50.0
    pattern = 0.6 + 0.4 * np.mgrid[:32, :40][1] / 40

    def write(name, data, kind, exptime, minute, band=None):
        header = fits.Header({"IMAGETYP": kind, "EXPTIME": exptime, "DATE-OBS": f"2024-01-01T20:{minute:02d}:00",
                              "INSTRUME": "SynCam", "READOUTM": "FAST", "XBINNING": 1, "YBINNING": 1, "GAIN": 1.0})
        if band:
            header["FILTER"] = band
        noisy = np.round(data + rng.normal(0, 1, data.shape)).clip(0, 65535).astype(np.uint16)
        fits.PrimaryHDU(noisy, header).writeto(directory / name)

    for i in range(3):
        write(f"bias{i}.fits", bias, "Bias Frame", 0.0, i)
        write(f"dark{i}.fits", bias + rate * 60, "Dark Frame", 60.0, 10 + i)
    for i, seconds in enumerate(flat_times):
        write(f"flat{i}.fits", bias + rate * seconds + 20000 * pattern, "Flat Field", seconds, 20 + i, "V")
    for i in range(2):
        write(f"sci{i}.fits", bias + rate * 30 + 500 * pattern, "Light Frame", 30.0, 40 + i, "V")
    return pattern


def test_a_dark_made_before_the_master_bias_is_never_taken_off_with_it(url, tmp_path, rng):
    """The dark made first holds the bias: taken off beside the master bias, the
    bias came off twice (a sky of 399 ADU came out -111, exit 0). It is refused,
    saying why, until the dark is made again; then the sky is right."""
    pattern = _night_with_darks(tmp_path / "night", rng)
    assert _cli(url, "init").exit_code == 0
    assert _cli(url, "ingest", str(tmp_path / "night")).exit_code == 0
    masters = str(tmp_path / "masters")
    assert _cli(url, "calib", "dark", "--out", masters).exit_code == 0  # no master bias yet: the bias stays in it
    assert _cli(url, "calib", "bias", "--out", masters).exit_code == 0
    refused = _cli(url, "calib", "flat", "--band", "V", "--out", masters)
    assert refused.exit_code == 1
    assert "holds the bias: made without a master bias, and this frame's master bias comes off too (twice)" in refused.stderr
    explained = _cli(url, "calib", "explain", "frame_type == 'science'")
    assert "holds the bias" in explained.stdout + explained.stderr
    # the darks alone, for a frame of the dark's exposure time: judged knowing that the master bias comes off
    # too, as calibrate takes it (explain showed the dark chosen there)
    header = fits.getheader(tmp_path / "night" / "sci0.fits")
    header["EXPTIME"], header["DATE-OBS"] = 60.0, "2024-01-01T20:50:00"
    fits.PrimaryHDU(fits.getdata(tmp_path / "night" / "sci0.fits"), header).writeto(tmp_path / "night" / "sci60.fits")
    assert _cli(url, "ingest", str(tmp_path / "night")).exit_code == 0
    darks = _cli(url, "calib", "explain", "relpath == 'sci60.fits'", "--type", "dark", "--format", "csv")
    assert darks.exit_code == 0, darks.stderr
    (row,) = darks.stdout.strip().split("\n")[1:]
    assert ",dark," in row and ",refused," in row and "comes off too (twice)" in row
    # a caller that takes no bias off (the Python API's use=("dark",)) may take that dark: its bias comes off once
    from archive.catalog import Catalog
    from processing import calibration

    catalog = Catalog(url)
    darkened = calibration.calibrate(catalog.engine, "relpath == 'sci60.fits'", use=("dark",), out_dir=tmp_path / "dark-only",
                                     workers=1)
    catalog.engine.dispose()
    assert len(darkened.done) == 1 and not darkened.failed
    assert _cli(url, "calib", "dark", "--out", masters).exit_code == 0  # made again, with the master bias off
    assert _cli(url, "calib", "flat", "--band", "V", "--out", masters).exit_code == 0
    done = _cli(url, "calibrate", "frame_type == 'science'", "--out", str(tmp_path / "out"))
    assert done.exit_code == 0, done.stderr
    sky = np.nanmedian(fits.getdata(tmp_path / "out" / "sci0_cal.fits"))
    assert sky == pytest.approx(500 * pattern.mean(), rel=0.01)


def test_a_calibrated_frame_keeps_its_saturation_level_for_quality(url, tmp_path, rng):
    """A 16-bit camera's stars clipped at 65535: the raw frame's level is its
    data type's top, a calibrated frame's (float) was none, so quality measured
    its FWHM on the clipped stars (7.4 px for 2.9) and graded it 'ok' where its
    raw frame was 'marginal', saturation. It now carries SATURATE, where the raw
    level lands once calibrated (the least of it), and is measured as its raw frame."""
    from factories import star_field

    night = tmp_path / "night"
    night.mkdir()
    positions = np.column_stack([rng.uniform(20, 236, 30), rng.uniform(20, 236, 30)])
    fluxes = np.concatenate([np.full(12, 4e6), rng.uniform(3e4, 2e5, 18)])  # the 12 brightest clipped

    def write(name, data, kind, minute, band=None):
        header = fits.Header({"IMAGETYP": kind, "EXPTIME": 0.0 if kind == "Bias Frame" else 10.0, "INSTRUME": "SynCam",
                              "DATE-OBS": f"2024-01-01T20:{minute:02d}:00", "READOUTM": "FAST", "XBINNING": 1, "YBINNING": 1})
        if band:
            header["FILTER"] = band
        fits.PrimaryHDU(np.round(data).clip(0, 65535).astype(np.uint16), header).writeto(night / name)

    for i in range(3):
        bias = np.full((256, 256), 1000.0) + rng.normal(0, 1, (256, 256))
        bias[5, 5] = 60000.0  # a hot pixel in every bias: the least of the landed levels was it (and every star 'saturated')
        write(f"bias{i}.fits", bias, "Bias Frame", i)
        write(f"flat{i}.fits", np.full((256, 256), 21000.0) + rng.normal(0, 10, (256, 256)), "Flat Field", 10 + i, "V")
    for i in range(2):
        write(f"sci{i}.fits", star_field(rng, positions=positions, fluxes=fluxes, fwhm=3.0, background=1500.0),
              "Light Frame", 30 + i, "V")
    for args in (["init"], ["ingest", str(night)], ["calib", "bias", "--out", str(tmp_path / "m")],
                 ["calib", "flat", "--band", "V", "--out", str(tmp_path / "m")],
                 ["calibrate", "frame_type == 'science'", "--out", str(tmp_path / "c"), "--no-dark"],
                 ["quality", "compute", "frame_type == 'science'"]):
        result = _cli(url, *args)
        assert result.exit_code == 0, (args, result.stderr)
    assert fits.getheader(tmp_path / "c" / "sci0_cal.fits")["SATURATE"] == pytest.approx(65535 - 1000, rel=0.01)
    measured = _cli(url, "query", "frame_type == 'science'", "--columns", "relpath,fwhm,saturated_fraction", "--format", "csv")
    rows = {line.split(",")[0]: [float(v) for v in line.split(",")[1:]] for line in measured.stdout.split()[1:]}
    assert rows["sci0_cal.fits"][0] == pytest.approx(rows["sci0.fits"][0], rel=0.05) == pytest.approx(3.0, rel=0.1)
    assert rows["sci0.fits"][1] > 0 and rows["sci0_cal.fits"][1] == pytest.approx(rows["sci0.fits"][1], rel=0.05)


def test_twilight_flats_of_different_exposure_times_each_have_their_own_dark_taken_off(url, tmp_path, rng):
    """Each flat lost the dark of the first flat's exposure time: a hot pixel
    kept (t - t_first) x its rate in the master flat, and the science pixel
    under it came out 4% low (383 for 399)."""
    pattern = _night_with_darks(tmp_path / "night", rng, flat_times=(1.0, 4.0, 10.0, 20.0, 40.0))
    masters = str(tmp_path / "masters")
    for args in (["init"], ["ingest", str(tmp_path / "night")], ["calib", "bias", "--out", masters],
                 ["calib", "dark", "--out", masters], ["calib", "flat", "--band", "V", "--out", masters],
                 ["calibrate", "frame_type == 'science'", "--out", str(tmp_path / "out")]):
        result = _cli(url, *args)
        assert result.exit_code == 0, (args, result.stderr)
    calibrated = fits.getdata(tmp_path / "out" / "sci0_cal.fits")
    assert calibrated[10, 10] == pytest.approx(500 * pattern.mean(), rel=0.01)  # the hot pixel's, as its neighbours'
    assert np.nanmedian(calibrated) == pytest.approx(500 * pattern.mean(), rel=0.01)
