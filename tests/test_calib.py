"""Calibration steps agree with themselves: an execution knob (memory, chunk
size) never makes a product again, `calib explain` treats the frames
`calibrate` treats, and `stale` lists only what running its step again
would change (or says what to do)."""

from __future__ import annotations

import json
from pathlib import Path

import test_steps
from sqlalchemy import select
from typer.testing import CliRunner

from archive.models import Product, Run
from cli.main import app
from processing import calibration, offsets, quality, runs, stacking
from processing.runs import identity, params_hash

runner = CliRunner()


raw = test_steps.raw  # the night of tests/test_steps.py, ingested (a fixture)
_masters = test_steps._masters


# -- execution knobs are no part of a product's identity ---------------------------------------


def test_identity_pins_execution_knobs_to_their_default_and_keeps_the_rest():
    execution = {"memory": "2GB"}
    assert identity({"method": "median", "memory": "500MB"}, execution) == {"method": "median", "memory": "2GB"}
    assert identity({"method": "median"}, execution) == {"method": "median"}  # a knob the step lacks is not added


def test_a_master_made_again_with_another_memory_budget_is_up_to_date(raw):
    catalog, tmp, _ = raw
    first = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    again = calibration.make_master(catalog.engine, "bias", params=calibration.MasterParams(memory="500MB"), out_dir=tmp / "m")
    assert again.skipped == first.products and not again.done and not again.products
    assert len(catalog.products("master_bias")) == 1
    flat = calibration.make_master(catalog.engine, "flat", band="V", out_dir=tmp / "m")
    assert calibration.make_master(catalog.engine, "flat", band="V", params=calibration.MasterParams(memory="100MB"),
                                   out_dir=tmp / "m").skipped == flat.products


def test_a_master_made_first_with_a_small_budget_takes_the_name_the_default_gives(raw):
    """Names (and fingerprints) made before memory left the identity, with the
    default, are the ones made now whatever the budget: nothing is made again."""
    catalog, tmp, _ = raw
    small = calibration.make_master(catalog.engine, "bias", params=calibration.MasterParams(memory="300MB"), out_dir=tmp / "m")
    (path,) = small.products
    inputs = calibration._master_inputs(catalog.engine, "bias", None, None, None, None)[0]
    old_digest = params_hash("bias", {"method": "median", "sigma": 3.0, "memory": "2GB",
                                      "inputs": sorted(f.file_id for f in inputs), "masters": {}}, calibration.ALGORITHM)[:8]
    assert path.endswith(f"_median_{old_digest}.fits")
    with catalog.engine.connect() as conn:
        recorded = json.loads(conn.execute(select(Run.params_json).where(Run.step == "master-bias")).scalar_one())
    assert recorded["memory"] == "300MB"  # the run says what it ran with


def test_quality_measured_again_with_another_chunk_size_is_up_to_date(raw):
    catalog, _, numbers = raw
    selection = f"{numbers[0]}-{numbers[1]}"
    first = quality.compute(catalog.engine, selection, workers=1, executor="serial")
    again = quality.compute(catalog.engine, selection, params=quality.QualityParams(chunk_planes=4), workers=1,
                            executor="serial")
    assert len(first.done) == 2 and sorted(again.skipped) == sorted(first.done) and not again.done


def test_the_cli_says_up_to_date_for_a_master_made_again_with_another_memory(raw, url):
    _, tmp, _ = raw
    out = str(tmp / "masters")
    assert runner.invoke(app, ["--db", url, "calib", "bias", "--out", out]).exit_code == 0
    result = runner.invoke(app, ["--db", url, "calib", "bias", "--memory", "500MB", "--out", out])
    assert result.exit_code == 0 and "0 done, 1 up to date (skipped)" in result.output


# -- explain treats what calibrate treats -------------------------------------------------------


def test_explain_leaves_out_the_products_calibrate_leaves_out(raw):
    catalog, tmp, numbers = raw
    _masters(catalog.engine, tmp)
    selection = "band == 'V' and frame_type == 'science'"
    done = calibration.calibrate(catalog.engine, selection, out_dir=tmp / "cal", workers=1, executor="serial")
    assert len(done.done) == 4
    explained = {c.frame.exposure_id for c in calibration.explain(catalog.engine, selection)}
    treated = {f.exposure_id for f in calibration.raw_frames(catalog.engine, selection, None)}
    assert explained == treated and len(treated) == 4
    assert not any("_cal" in c.frame.path for c in calibration.explain(catalog.engine, selection))


def test_the_cli_explains_no_calibrated_product(raw, url):
    catalog, tmp, _ = raw
    _masters(catalog.engine, tmp)
    selection = "band == 'V' and frame_type == 'science'"
    calibration.calibrate(catalog.engine, selection, out_dir=tmp / "cal", workers=1, executor="serial")
    result = runner.invoke(app, ["--db", url, "calib", "explain", selection, "--type", "bias"])
    assert result.exit_code == 0 and "_cal.fits" not in result.output and result.output.count(" bias: ") == 4
    only = runner.invoke(app, ["--db", url, "calib", "explain", "product == 'calibrated'"])
    assert only.exit_code == 1 and "no raw frames match" in only.stderr


# -- stale agrees with the step -----------------------------------------------------------------


def test_a_frame_graded_bad_before_it_was_calibrated_leaves_its_product_current(raw):
    catalog, tmp, numbers = raw
    _masters(catalog.engine, tmp)
    quality.flag(catalog.engine, str(numbers[1]), "bad", reason="tracking")
    calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1, executor="serial")
    assert runs.stale_products(catalog.engine) == []


def test_a_calibrated_frame_is_not_stale_when_its_frame_is_graded_bad_after(raw):
    """Calibrating again would make the same file: nothing for stale to list."""
    catalog, tmp, numbers = raw
    _masters(catalog.engine, tmp)
    calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1, executor="serial")
    quality.flag(catalog.engine, str(numbers[1]), "bad", reason="clouds")
    again = calibration.calibrate(catalog.engine, "frame_type == 'science'", out_dir=tmp / "cal", workers=1, executor="serial")
    assert not again.done and len(again.skipped) == 4
    assert runs.stale_products(catalog.engine) == []


def test_a_stack_whose_frame_is_graded_bad_after_is_stale_and_stacking_again_rebuilds_it(raw):
    catalog, tmp, numbers = raw
    engine = catalog.engine
    ids = offsets.select_ids(engine, "frame_type == 'science'")
    offsets.compute_offsets(engine, ids, ids[0], workers=1, executor="serial")
    stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "s", workers=1, executor="serial")
    assert runs.stale_products(engine) == []
    quality.flag(engine, str(numbers[2]), "bad", reason="clouds")
    (row,) = runs.stale_products(engine)
    assert row["kind"] == "stack" and f"(frame {numbers[2]}) was graded bad after it was made" in row["reason"]
    again = stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "s", workers=1, executor="serial")
    assert len(again.done) == 1 and runs.stale_products(engine) == []


def test_a_stack_that_kept_bad_frames_is_not_stale_when_one_is_graded_bad(raw):
    catalog, tmp, numbers = raw
    engine = catalog.engine
    ids = offsets.select_ids(engine, "frame_type == 'science'")
    offsets.compute_offsets(engine, ids, ids[0], workers=1, executor="serial")
    stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "s", include_bad=True, workers=1, executor="serial")
    quality.flag(engine, str(numbers[2]), "bad", reason="clouds")
    assert runs.stale_products(engine) == []


def test_a_master_whose_frame_is_graded_bad_after_is_stale_as_making_it_again_leaves_the_frame_out(raw):
    catalog, tmp, _ = raw
    _masters(catalog.engine, tmp)
    quality.flag(catalog.engine, "3853", "bad", reason="other")
    rows = {row["kind"]: row for row in runs.stale_products(catalog.engine)}
    assert rows["master_bias"]["reason"].endswith("(frame 3853) was graded bad after it was made; "
                                                  "`obsarch calib bias` again leaves it out")
    assert "is stale" in rows["master_flat"]["reason"]  # made with that bias


def test_the_rules_refuse_a_stale_master_and_take_the_one_made_again(raw):
    """A master made from a frame since graded bad is not used: making it
    again writes another master (its inputs differ), which the rules take."""
    catalog, tmp, _ = raw
    engine = catalog.engine
    first = calibration.make_master(engine, "bias", out_dir=tmp / "m").products[0]
    quality.flag(engine, "3853", "bad", reason="trail")
    (choice,) = calibration.explain(engine, "frame_number == 3860", kinds=("bias",))
    assert choice.chosen is None and [v.master.path for v in choice.verdicts] == [first]
    assert choice.verdicts[0].refused.startswith("stale: input frame ") and choice.verdicts[0].refused.endswith(
        "(frame 3853) was graded bad after it was made; `obsarch calib bias` again leaves it out")
    failed = calibration.calibrate(engine, "frame_number == 3860", use=("bias",), out_dir=tmp / "c", workers=1)
    assert failed.exit_code == 1 and "stale: input frame" in failed.failed[0][1]
    again = calibration.make_master(engine, "bias", out_dir=tmp / "m").products[0]
    (choice,) = calibration.explain(engine, "frame_number == 3860", kinds=("bias",))
    assert again != first and choice.chosen.master.path == again
    assert calibration.calibrate(engine, "frame_number == 3860", use=("bias",), out_dir=tmp / "c", workers=1).exit_code == 0


def test_a_stale_master_names_the_one_made_again_from_mostly_its_frames(raw):
    """The old master stays listed (its file is still there, and stale), with
    the master that replaced it; a master of other frames replaces nothing."""
    catalog, tmp, _ = raw
    engine = catalog.engine
    first = calibration.make_master(engine, "bias", "3852-3854", out_dir=tmp / "m").products[0]
    quality.flag(engine, "3853", "bad", reason="trail")
    calibration.make_master(engine, "bias", "3855-3856", out_dir=tmp / "m")
    (row,) = runs.stale_products(engine)
    assert row["path"] == first and "made again" not in row["reason"]
    again = calibration.make_master(engine, "bias", "3852-3854", out_dir=tmp / "m").products[0]
    (row,) = runs.stale_products(engine)
    assert row["path"] == first and row["reason"].endswith(
        "(frame 3853) was graded bad after it was made; `obsarch calib bias` again leaves it out; "
        f"made again since as {Path(again).name}")


def test_a_master_deleted_from_disk_is_made_again_and_named_by_stale_no_more(raw):
    catalog, tmp, _ = raw
    engine = catalog.engine
    first = calibration.make_master(engine, "bias", "3852-3854", out_dir=tmp / "m").products[0]
    quality.flag(engine, "3853", "bad", reason="trail")
    again = calibration.make_master(engine, "bias", "3852-3854", out_dir=tmp / "m").products[0]
    Path(again).unlink()  # the catalog still says present: the disk is what counts
    (row,) = runs.stale_products(engine)
    assert row["path"] == first and "made again" not in row["reason"]
    remade = calibration.make_master(engine, "bias", "3852-3854", out_dir=tmp / "m")
    assert remade.done and remade.products == [again] and Path(again).exists()


def test_a_master_made_with_include_bad_is_not_stale_when_its_frame_is_graded_bad_after(raw):
    catalog, tmp, _ = raw
    kept = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m", include_bad=True)
    default = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    assert kept.products != default.products  # another product, not the same one remade
    quality.flag(catalog.engine, "3853", "bad", reason="other")
    assert [row["path"] for row in runs.stale_products(catalog.engine)] == default.products


# -- masters leave out frames graded bad, as stack does -------------------------------------------


def _inputs_and_ncombine(engine, result) -> tuple[list[str], int]:
    """The raw frames a master's run read (its run_inputs, what lineage walks) and its NCOMBINE."""
    from astropy.io import fits

    detail = runs.run_detail(engine, result.run_id)
    with fits.open(result.products[0]) as hdul:
        ncombine = hdul[0].header["NCOMBINE"]
    return sorted(i["path"].rsplit("/", 1)[-1] for i in detail["inputs"] if i["role"] == "frame"), ncombine


def test_a_bias_graded_bad_is_left_out_of_the_master_and_said(raw):
    catalog, tmp, _ = raw
    quality.flag(catalog.engine, "3853", "bad", reason="trail")
    result = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    assert result.exit_code == 0 and result.notes == [
        "left out 1 bias frame graded bad (--include-bad keeps them): 3853"]
    names, ncombine = _inputs_and_ncombine(catalog.engine, result)
    assert names == [f"ngc3293-{n}.fits" for n in (3852, 3854, 3855, 3856)] and ncombine == 4
    assert runs.run_detail(catalog.engine, result.run_id)["params"].get("include_bad") is None  # recorded only when set: older masters keep their fingerprint


def test_include_bad_keeps_the_frames_graded_bad_in_the_master(raw):
    catalog, tmp, _ = raw
    quality.flag(catalog.engine, "3853", "bad", reason="trail")
    result = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m", include_bad=True)
    assert result.exit_code == 0 and result.notes == ["kept 1 bias frame graded bad (--include-bad): 3853"]
    names, ncombine = _inputs_and_ncombine(catalog.engine, result)
    assert len(names) == 5 and "ngc3293-3853.fits" in names and ncombine == 5
    assert runs.run_detail(catalog.engine, result.run_id)["params"]["include_bad"] is True


def test_nearest_takes_the_nearest_frames_not_graded_bad_and_is_short_when_too_few_are(raw):
    catalog, tmp, _ = raw
    quality.flag(catalog.engine, "3853", "bad", reason="trail")
    two = calibration.make_master(catalog.engine, "bias", nearest_count=2, to="2017-08-16T01:00", out_dir=tmp / "m")
    assert _inputs_and_ncombine(catalog.engine, two) == (["ngc3293-3852.fits", "ngc3293-3854.fits"], 2)
    five = calibration.make_master(catalog.engine, "bias", nearest_count=5, to="2017-08-16", out_dir=tmp / "m")
    assert five.exit_code == 3 and "--nearest 5 asked, only 4 bias frames match once 1 graded bad are left out" in five.last_line()
    again = calibration.make_master(catalog.engine, "bias", nearest_count=5, to="2017-08-16", out_dir=tmp / "m")
    assert (again.done, again.skipped) == ([], five.done)  # up to date, and still short: said again
    assert again.exit_code == 3 and "--nearest 5 asked, only 4 bias frames match once 1 graded bad are left out" in again.last_line()
    # The same master answers --nearest 4 (whole) and --nearest 50 (short): shortness is this command's
    four = calibration.make_master(catalog.engine, "bias", nearest_count=4, to="2017-08-16", out_dir=tmp / "m")
    assert four.skipped == five.done and four.exit_code == 0 and not four.short
    fifty = calibration.make_master(catalog.engine, "bias", nearest_count=50, to="2017-08-16", out_dir=tmp / "m")
    assert fifty.skipped == five.done and fifty.exit_code == 3 and "--nearest 50 asked, only 4 bias frames" in fifty.last_line()


def test_a_master_or_stack_short_of_a_frame_that_failed_is_still_short_when_up_to_date(raw):
    """What the run could not use is said again: a truncated bias, a frame
    without an offset (the replacement of replayed words by the command's
    own reasons had lost both)."""
    catalog, tmp, numbers = raw
    engine = catalog.engine
    bias = tmp / "raw" / "ngc3293-3852.fits"
    with open(bias, "r+b") as handle:
        handle.truncate(bias.stat().st_size - 5760)
    first = calibration.make_master(engine, "bias", out_dir=tmp / "m")
    assert first.exit_code == 3 and "made from 4 of 5 selected bias frames" in first.last_line()
    again = calibration.make_master(engine, "bias", out_dir=tmp / "m")
    assert again.skipped and again.exit_code == 3 and "made from 4 of 5 selected bias frames" in again.last_line()
    ids = offsets.select_ids(engine, "frame_type == 'science'")
    offsets.compute_offsets(engine, ids[:3], ids[0], workers=1, executor="serial")
    stacked = stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "s", workers=1, executor="serial")
    assert stacked.exit_code == 3 and "stacked 3 of 4 selected frames" in stacked.last_line()
    restacked = stacking.stack(engine, "frame_type == 'science'", out_dir=tmp / "s", workers=1, executor="serial")
    assert restacked.skipped and restacked.exit_code == 3 and "stacked 3 of 4 selected frames" in restacked.last_line()


def test_a_master_short_of_a_failed_frame_never_replaces_the_whole_one(raw):
    """The name of a master stands for its frames: made again after one of
    its frames turned bad, the master of the others is another file, and the
    whole master, its product row and its lineage stay."""
    catalog, tmp, _ = raw
    engine = catalog.engine
    whole = calibration.make_master(engine, "bias", out_dir=tmp / "m")
    assert whole.exit_code == 0 and len(whole.products) == 1
    (whole_path,) = whole.products
    whole_bytes = Path(whole_path).read_bytes()
    bias = tmp / "raw" / "ngc3293-3852.fits"
    with open(bias, "r+b") as handle:
        handle.truncate(bias.stat().st_size - 5760)
    short = calibration.make_master(engine, "bias", out_dir=tmp / "m", force=True)
    assert short.exit_code == 3 and "made from 4 of 5 selected bias frames" in short.last_line()
    (short_path,) = short.products
    assert short_path != whole_path and Path(whole_path).read_bytes() == whole_bytes
    assert _inputs_and_ncombine(engine, short)[1] == 4
    with engine.connect() as conn:
        stored = set(conn.execute(select(Product.path, Product.run_id)).all())
    assert (str(whole_path), whole.run_id) in stored and (str(short_path), short.run_id) in stored
    assert _inputs_and_ncombine(engine, whole)[1] == 5  # the whole master's lineage: still its 5 frames


def test_a_frame_the_last_ingest_found_unreadable_fails_with_that_reason(raw):
    """The catalog keeps a cut file's earlier headers; a step must not read
    its bytes as if they were that file (numpy's 'cannot reshape array')."""
    catalog, tmp, _ = raw
    bias = tmp / "raw" / "ngc3293-3852.fits"
    with open(bias, "r+b") as handle:
        handle.truncate(bias.stat().st_size - 5000)
    catalog.ingest([tmp / "raw"])
    result = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    assert result.exit_code == 3 and "made from 4 of 5 selected bias frames" in result.last_line()
    ((key, why),) = result.failed
    assert key == str(bias) and why.startswith("unreadable since it was last ingested: truncated: ")
    assert why.endswith("(obsarch errors)") and "reshape" not in why


def test_a_master_left_with_fewer_frames_than_its_rule_needs_is_short(raw):
    catalog, tmp, _ = raw
    quality.flag(catalog.engine, "3852-3855", "bad", reason="trail")
    result = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    assert result.exit_code == 3 and result.products
    assert "1 bias frame combined, fewer than min_inputs 2 of [calibration.bias]: calibrate will not use it" in result.last_line()
    again = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "m")
    assert again.skipped and again.exit_code == 3 and "fewer than min_inputs 2" in again.last_line()


def test_the_cli_says_how_many_frames_graded_bad_it_left_out_and_include_bad_keeps_them(raw, url):
    from astropy.io import fits

    catalog, tmp, _ = raw
    quality.flag(catalog.engine, "3853,3855", "bad", reason="trail")
    left = runner.invoke(app, ["--db", url, "calib", "bias", "--out", str(tmp / "m")])
    assert left.exit_code == 0
    assert "master-bias: left out 2 bias frames graded bad (--include-bad keeps them): 3853, 3855\n" in left.stderr
    kept = runner.invoke(app, ["--db", url, "calib", "bias", "--include-bad", "--out", str(tmp / "m")])
    assert kept.exit_code == 0 and "kept 2 bias frames graded bad (--include-bad): 3853, 3855" in kept.stderr
    (path,) = [line.split("wrote ", 1)[1] for line in kept.stdout.splitlines() if "wrote " in line]
    assert fits.getheader(path)["NCOMBINE"] == 5


def test_the_cli_refuses_a_master_of_frames_all_graded_bad_in_one_line(raw, url):
    catalog, tmp, _ = raw
    quality.flag(catalog.engine, "3852-3856", "bad", reason="trail")
    result = runner.invoke(app, ["--db", url, "calib", "bias", "readout_mode == 'SCI1.0'", "--out", str(tmp / "m")])
    assert result.exit_code == 1 and result.stderr.strip() == (
        "error: no raw bias frames to combine in \"readout_mode == 'SCI1.0'\": the 5 that match are graded bad "
        "and left out (--include-bad keeps them)")
    assert not (tmp / "m").exists()


def test_a_stack_too_big_for_its_memory_is_refused_before_a_frame_is_resampled(raw, monkeypatch):
    """`stack --memory` was checked only when the frames were combined, after
    every one had been resampled (minutes on a night of large frames)."""
    catalog, tmp, _ = raw
    engine = catalog.engine
    ids = offsets.select_ids(engine, "frame_type == 'science'")
    offsets.compute_offsets(engine, ids, ids[0], workers=1, executor="serial")
    resampled = []
    monkeypatch.setattr(stacking, "resample", lambda *args, **kwargs: resampled.append(args))
    url = engine.url.render_as_string(hide_password=False)
    result = runner.invoke(app, ["--db", url, "stack", "frame_type == 'science'", "--memory", "20KB", "--out", str(tmp / "s"),
                                 "--executor", "serial"])
    assert result.exit_code == 2, result.stderr
    assert f"error: --memory 20KB is too small: {len(ids)} frames of " in result.stderr and "to be stacked" in result.stderr
    assert resampled == [] and not (tmp / "s").exists()
