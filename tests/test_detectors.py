"""Every detector of a file: masters, calibrate, quality and stack per detector,
on a synthetic multi-extension set with known levels (both backends)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processing import calibration
from processing.calib_rules import DEFAULT_RULES, rules_from_config
from processing.machinery import EXIT_DONE, EXIT_PARTIAL

CHANNELS = ("CHAN01", "CHAN02", "CHAN03", "CHAN04")
SHAPE = (16, 16)
BIAS = {"SCI1.0": 100.0, "FAST": 150.0}  # per channel n: level * n
SIGNAL = 500.0  # science signal of channel n: SIGNAL * n
FLAT = 1000.0


def write_mef(path: Path, rng, level: dict[str, float], header: dict, shape=SHAPE, noise: float = 0.5) -> Path:
    """A MUSE-like raw file: a header-only primary and one image extension per
    channel, each at its own level."""
    primary = fits.PrimaryHDU()
    for key, value in header.items():
        primary.header[key] = value
    hdus = [primary]
    for index, name in enumerate(CHANNELS, start=1):
        data = (level[name] + rng.normal(0, noise, shape)).astype(np.float32)
        ext = fits.ImageHDU(data, name=name)
        ext.header["HIERARCH ESO DET CHIP INDEX"] = index
        hdus.append(ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def _header(dpr: str, mode: str, minute: int, **extra) -> dict:
    return {"INSTRUME": "MUSE", "HIERARCH ESO DPR TYPE": dpr, "HIERARCH ESO DET READ CURNAME": mode,
            "DATE-OBS": f"2014-07-27T23:{minute:02d}:00", "EXPTIME": 0.0 if dpr == "BIAS" else 10.0,
            "FILTER": "V", "HIERARCH ESO DET BINX": 1, "HIERARCH ESO DET BINY": 1, "CCD-TEMP": -110.0, **extra}


def _one_channel(path: Path, header: dict, data: np.ndarray) -> Path:
    """A MUSE-like file with CHAN01 only (the others missing)."""
    primary = fits.PrimaryHDU()
    for key, value in header.items():
        primary.header[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([primary, fits.ImageHDU(data, name="CHAN01")]).writeto(path)
    return path


def _bias(mode: str) -> dict[str, float]:
    return {name: BIAS[mode] * n for n, name in enumerate(CHANNELS, start=1)}


@pytest.fixture
def muse(catalog, tmp_path, rng):
    """3 biases in each of two read-out modes, 3 flats, 2 science frames per
    mode, and a 2x2-binned science frame of half the size."""
    raw = tmp_path / "raw"
    minute = 0
    for mode in BIAS:
        for i in range(3):
            write_mef(raw / f"bias_{mode}_{i}.fits", rng, _bias(mode), _header("BIAS", mode, minute := minute + 1))
    for i in range(3):
        level = {name: b + FLAT * (1 + 0.1 * i) for name, b in _bias("SCI1.0").items()}
        write_mef(raw / f"flat_{i}.fits", rng, level, _header("FLAT,LAMP", "SCI1.0", minute := minute + 1))
    for mode in BIAS:
        for i in range(2):
            level = {name: b + SIGNAL * n for n, (name, b) in enumerate(_bias(mode).items(), start=1)}
            write_mef(raw / f"sci_{mode}_{i}.fits", rng, level, _header("OBJECT", mode, minute := minute + 1))
    binned = {name: b + SIGNAL for name, b in _bias("SCI1.0").items()}
    write_mef(raw / "sci_binned.fits", rng, binned, _header("OBJECT", "SCI1.0", minute + 1, **{
        "HIERARCH ESO DET BINX": 2, "HIERARCH ESO DET BINY": 2}), shape=(8, 8))
    catalog.ingest([raw])
    return catalog, tmp_path


def _levels(path: str | Path) -> dict[str, float]:
    with fits.open(path) as hdul:
        return {hdu.name: float(np.median(hdu.data)) for hdu in hdul[1:] if hdu.data is not None}


def _masters(catalog, tmp: Path) -> None:
    for mode in BIAS:
        result = calibration.make_master(catalog.engine, "bias", f"readout_mode == '{mode}'", out_dir=tmp / "masters")
        assert result.exit_code == EXIT_DONE, result.last_line()
    result = calibration.make_master(catalog.engine, "flat", band="V", out_dir=tmp / "masters")
    assert result.exit_code == EXIT_DONE, result.last_line()


def test_masters_keep_every_detector_with_its_level(muse):
    catalog, tmp = muse
    _masters(catalog, tmp)
    products = sorted((tmp / "masters").glob("master_bias_*"))
    assert len(products) == 2
    for path in products:
        mode = "FAST" if "FAST" in path.name else "SCI1.0"
        assert _levels(path) == pytest.approx(_bias(mode), abs=0.5)
        with fits.open(path) as hdul:
            assert [h.name for h in hdul[1:]] == list(CHANNELS)
            assert hdul["CHAN03"].header["HIERARCH ESO DET CHIP INDEX"] == 3  # the detector's header is kept
            assert hdul[0].header["READOUTM"] == mode
    (flat,) = (tmp / "masters").glob("master_flat_*")
    # each flat bias-subtracted and scaled to a median of 1, per detector
    assert _levels(flat) == pytest.approx({name: 1.0 for name in CHANNELS}, abs=0.01)
    row = catalog.query("product == 'master_bias' and readout_mode == 'FAST'",
                        columns="n_detectors,detector_shape,binning,ccd_temp")
    assert list(row.iloc[0]) == [4, "16x16", "1x1", -110.0]


def test_calibrate_per_detector_and_refuse_another_shape(muse):
    catalog, tmp = muse
    _masters(catalog, tmp)
    result = calibration.calibrate(catalog.engine, "readout_mode == 'SCI1.0'", out_dir=tmp / "cal", workers=1)
    assert result.exit_code == EXIT_PARTIAL
    assert len(result.done) == 2
    for name in ("sci_SCI1.0_0", "sci_SCI1.0_1"):
        expected = {ch: SIGNAL * n for n, ch in enumerate(CHANNELS, start=1)}
        assert _levels(tmp / "cal" / f"{name}_cal.fits") == pytest.approx(expected, rel=0.01)
    (failed,) = result.failed
    assert failed[0].endswith("sci_binned.fits")
    assert "binning: frame 2x2, master 1x1" in failed[1] and "no master bias fits" in failed[1]


def test_two_readout_modes_each_get_their_own_bias(muse):
    catalog, tmp = muse
    _masters(catalog, tmp)
    result = calibration.calibrate(catalog.engine, "readout_mode == 'FAST'", use=("bias",), out_dir=tmp / "cal", workers=1)
    assert result.exit_code == EXIT_DONE and len(result.done) == 2
    for path in (tmp / "cal").glob("sci_FAST_*_cal.fits"):
        assert _levels(path) == pytest.approx({ch: SIGNAL * n for n, ch in enumerate(CHANNELS, start=1)}, rel=0.01)
        with fits.open(path) as hdul:
            assert hdul["CHAN02"].header["BIASFILE"].startswith("master_bias_FAST")


def test_shape_is_checked_even_when_no_rule_names_it(muse):
    catalog, tmp = muse
    _masters(catalog, tmp)
    rules = rules_from_config({"calibration": {"bias": {"match": ["readout_mode"]}}})
    result = calibration.calibrate(catalog.engine, "frame_number is null and xbin == 2", use=("bias",),
                                   out_dir=tmp / "cal", workers=1, rules=rules)
    assert result.exit_code == 1
    assert "shape: frame CHAN01 8x8, master CHAN01 16x16" in result.failed[0][1]


def test_hdu_option_restricts_the_detectors(muse):
    catalog, tmp = muse
    result = calibration.make_master(catalog.engine, "bias", "readout_mode == 'SCI1.0'", out_dir=tmp / "m",
                                     hdus=("CHAN02", "CHAN04"))
    assert result.exit_code == EXIT_DONE
    (path,) = (tmp / "m").glob("*.fits")
    assert _levels(path) == pytest.approx({"CHAN02": 200.0, "CHAN04": 400.0}, abs=0.5)
    result = calibration.calibrate(catalog.engine, "readout_mode == 'SCI1.0' and xbin == 1", use=("bias",),
                                   out_dir=tmp / "cal", workers=1, hdus=("CHAN02",))
    assert result.exit_code == EXIT_DONE, result.last_line()
    for path in (tmp / "cal").glob("*_cal.fits"):
        assert _levels(path) == pytest.approx({"CHAN02": SIGNAL * 2 + FLAT * 0}, rel=0.01)


def test_a_master_of_one_detector_of_several_calibrates_that_detector_only(muse):
    """A master made with --hdu CHAN04 holds one detector: it is no master of
    CHAN02 (it was paired with it, one detector each, and CHAN04's bias came
    off CHAN02's pixels, exit 0); a file of one detector pairs as before."""
    catalog, tmp = muse
    made = calibration.make_master(catalog.engine, "bias", "readout_mode == 'SCI1.0'", out_dir=tmp / "m", hdus=("CHAN04",))
    assert made.exit_code == EXIT_DONE, made.last_line()
    selection = "readout_mode == 'SCI1.0' and xbin == 1 and frame_type == 'science'"
    (choice, *_) = calibration.explain(catalog.engine, selection, kinds=("bias",), hdus=("CHAN02",))
    assert choice.chosen is None and "detector: the master has no CHAN02" in choice.verdicts[0].refused
    result = calibration.calibrate(catalog.engine, selection, use=("bias",), out_dir=tmp / "cal", workers=1, hdus=("CHAN02",))
    assert result.exit_code == 1 and not list((tmp / "cal").glob("*_cal.fits"))
    result = calibration.calibrate(catalog.engine, selection, use=("bias",), out_dir=tmp / "cal", workers=1, hdus=("CHAN04",))
    assert result.exit_code == EXIT_DONE, result.last_line()
    for path in (tmp / "cal").glob("*_cal.fits"):
        assert _levels(path) == pytest.approx({"CHAN04": SIGNAL * 4}, rel=0.01)


def test_a_product_is_current_when_the_same_detectors_are_asked_for_however_named(muse):
    """--hdu is judged by the detectors it resolves to: naming every detector
    finds the frames calibrated without --hdu current; naming fewer does not."""
    catalog, tmp = muse
    _masters(catalog, tmp)
    selection = "readout_mode == 'SCI1.0' and xbin == 1"

    def run(hdus):
        return calibration.calibrate(catalog.engine, selection, use=("bias",), out_dir=tmp / "cal", workers=1, hdus=hdus)

    first = run(None)
    assert first.exit_code == EXIT_DONE and first.done and not first.skipped
    every = run(tuple(CHANNELS))
    assert (every.done, sorted(every.skipped)) == ([], sorted(first.done))
    fewer = run(("CHAN02",))
    assert sorted(fewer.done) == sorted(first.done) and not fewer.skipped  # another product: one detector


def test_an_input_without_the_detectors_costs_only_itself(muse, rng):
    catalog, tmp = muse
    odd = _one_channel(tmp / "raw2" / "bias_odd.fits", _header("BIAS", "SCI1.0", 59), np.zeros(SHAPE, np.float32))
    catalog.ingest([odd.parent])
    result = calibration.make_master(catalog.engine, "bias", "readout_mode == 'SCI1.0'", out_dir=tmp / "m")
    assert result.exit_code == EXIT_PARTIAL
    assert result.failed == [(str(odd), "no detector CHAN02, which bias_SCI1.0_0.fits has")]


def test_memory_bounds_the_step_whatever_the_number_of_detectors(muse):
    catalog, tmp = muse
    # The step needs room for one detector at a time: its output (16x16
    # float32, 1,024 B) and one band of rows of the 3 frames. Four detectors'
    # outputs alone (4,096 B) would not fit in what it asks for.
    result = calibration.make_master(catalog.engine, "bias", "readout_mode == 'SCI1.0'", out_dir=tmp / "small",
                                     params=calibration.MasterParams(memory="100B"))
    assert result.exit_code == 1
    message = result.failed[0][1]
    assert "--memory 100 B is too small: 3 frames of 16x16 need at least " in message
    need = message.rsplit("need at least ", 1)[1].split()[0]
    assert 1.0 < float(need) < 4.096  # kB: one detector's worth, not four
    result = calibration.make_master(catalog.engine, "bias", "readout_mode == 'SCI1.0'", out_dir=tmp / "m",
                                     params=calibration.MasterParams(memory=f"{float(need) + 0.1:.1f}kB"))  # shown rounded
    assert result.exit_code == EXIT_DONE, result.last_line()
    (path,) = (tmp / "m").glob("*.fits")
    assert _levels(path) == pytest.approx(_bias("SCI1.0"), abs=0.5)


def test_default_rules_are_declared():
    assert DEFAULT_RULES["flat"].match[-1] == "band"
    assert dict(DEFAULT_RULES["bias"].tolerance) == {"ccd_temp": 2.0}


# -- the rules: configuration and explanation ------------------------------------------------


@pytest.mark.parametrize(
    "table, message",
    [
        ({"arc": {}}, "cfg.toml: [calibration.arc]: unknown calibration type 'arc'; expected one of bias, dark, flat"),
        ({"bias": {"maxage": 3}}, ("cfg.toml: [calibration.bias] maxage: unknown key; expected one of match, tolerance, "
                                  "prefer, max_age_days, min_inputs")),
        ({"bias": {"match": ["binnig"]}}, "cfg.toml: [calibration.bias] match: unknown name 'binnig'; expected names from"),
        ({"bias": {"match": "binning"}}, "cfg.toml: [calibration.bias] match: expected a list of names from"),
        ({"dark": {"tolerance": {"ccd_temp": "2C"}}}, "cfg.toml: [calibration.dark] tolerance.ccd_temp: expected a number >= 0, got '2C'"),
        ({"dark": {"tolerance": {"airmass": 1}}}, "cfg.toml: [calibration.dark] tolerance.airmass: unknown column; expected one of"),
        ({"flat": {"max_age_days": "week"}}, "cfg.toml: [calibration.flat] max_age_days: expected a number of days >= 0, got 'week'"),
        ({"flat": {"min_inputs": 2.5}}, "cfg.toml: [calibration.flat] min_inputs: expected a whole number >= 1, got 2.5"),
        ({"flat": {"prefer": ["closest"]}}, ("cfg.toml: [calibration.flat] prefer: unknown name 'closest'; expected names from "
                                            "same_night, nearest_time, most_inputs")),
        ({"flat": 3}, "cfg.toml: [calibration.flat]: expected a table with match, tolerance"),
    ],
)
def test_a_bad_rule_is_one_line_naming_file_key_and_expected(table, message):
    from archive.exceptions import ConfigError

    with pytest.raises(ConfigError) as caught:
        rules_from_config({"calibration": table}, "cfg.toml")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_table_replaces_only_the_keys_it_gives():
    rules = rules_from_config({"calibration": {"dark": {"tolerance": {"ccd_temp": 0.5}, "max_age_days": 3}}})
    assert dict(rules["dark"].tolerance) == {"ccd_temp": 0.5} and rules["dark"].max_age_days == 3.0
    assert rules["dark"].match == DEFAULT_RULES["dark"].match and rules["bias"] == DEFAULT_RULES["bias"]


def _explain(catalog, selection, kinds=("bias",), rules=DEFAULT_RULES):
    from processing.calib_rules import choose_all
    from processing.steps import resolve

    return choose_all(catalog.engine, [f.exposure_id for f in resolve(catalog.engine, selection)], kinds, rules)


def test_explain_names_the_winner_and_each_refusal(muse):
    catalog, tmp = muse
    _masters(catalog, tmp)
    choice = _explain(catalog, "readout_mode == 'FAST' and frame_type == 'science'")[0]
    assert Path(choice.chosen.master.path).name.startswith("master_bias_FAST")
    assert "readout_mode FAST" in choice.reason and "shape 16x16 (4 detectors)" in choice.reason
    assert "ccd_temp |-110 - -110| = 0 C <= 2 C" in choice.reason and "inputs 3 >= 2" in choice.reason
    assert "preferred: same night" in choice.reason
    refused = [v for v in choice.verdicts if v.refused]
    assert [v.refused for v in refused] == ["readout_mode: frame FAST, master SCI1.0"]


def test_rules_refuse_by_tolerance_age_and_count(muse):
    catalog, tmp = muse
    _masters(catalog, tmp)
    selection = "readout_mode == 'FAST' and frame_type == 'science'"
    colder = rules_from_config({"calibration": {"bias": {"tolerance": {"ccd_temp": 2.0, "gain": 0.1}}}})
    assert _explain(catalog, selection, rules=colder)[0].chosen is not None  # unknown on both: no refusal
    strict = rules_from_config({"calibration": {"bias": {"min_inputs": 4}}})
    choice = _explain(catalog, selection, rules=strict)[0]
    assert choice.chosen is None and "inputs: 3 < min_inputs 4" in choice.reason
    young = rules_from_config({"calibration": {"bias": {"max_age_days": 0.001}}})
    choice = _explain(catalog, selection, rules=young)[0]
    assert choice.chosen is None and "age: 0.00" in choice.reason and "> max_age_days 0.001" in choice.reason


def test_calib_explain_command(muse):
    from typer.testing import CliRunner

    from cli.main import app

    catalog, tmp = muse
    _masters(catalog, tmp)
    url = catalog.engine.url.render_as_string(hide_password=False)
    runner = CliRunner()
    result = runner.invoke(app, ["--db", url, "calib", "explain", "frame_type == 'science' and xbin == 2", "--type", "bias,flat"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "sci_binned.fits bias: no master fits"
    assert any("refused by binning: frame 2x2, master 1x1" in line for line in lines)
    result = runner.invoke(app, ["--db", url, "calib", "explain", "readout_mode == 'SCI1.0' and frame_type == 'science' and xbin == 1",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert len(answer) == 6 and {a["type"] for a in answer} == {"bias", "dark", "flat"}
    flats = [a for a in answer if a["type"] == "flat"]
    assert all(Path(a["chosen"]).name.startswith("master_flat_") for a in flats)
    darks = [a for a in answer if a["type"] == "dark"]
    # a dark is optional: said so, not asked for as if calibrate needed one
    assert all(a["chosen"] is None and a["reason"] == "no master dark in the catalog: none is subtracted "
               "(`obsarch calib dark` makes one)" for a in darks)
    result = runner.invoke(app, ["--db", url, "calib", "explain", "xbin == 2", "--type", "bias", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["verdict"] for r in rows} == {"refused"} and len(rows) == 2  # the SCI1.0 and the FAST master
    assert sorted(r["reason"] for r in rows) == ["binning: frame 2x2, master 1x1", "readout_mode: frame SCI1.0, master FAST"]
    config = tmp / "bad.toml"
    config.write_text("[calibration.bias]\nmatch = ['binnig']\n")
    result = runner.invoke(app, ["--db", url, "--config", str(config), "calib", "explain"])
    assert result.exit_code == 1
    assert f"{config}: [calibration.bias] match: unknown name 'binnig'" in result.stderr


# -- quality per detector ------------------------------------------------------------------


def test_quality_per_detector_with_the_median_as_the_exposures(muse):
    from sqlalchemy import select

    from archive.models import DetectorMetric
    from processing import quality

    catalog, _tmp = muse
    result = quality.compute(catalog.engine, "readout_mode == 'SCI1.0' and frame_type == 'science' and xbin == 1", workers=1)
    assert result.exit_code == EXIT_DONE and len(result.done) == 2
    with catalog.engine.connect() as conn:
        rows = conn.execute(select(DetectorMetric.exposure_id, DetectorMetric.detector, DetectorMetric.hdu_index,
                                   DetectorMetric.median).order_by(DetectorMetric.exposure_id, DetectorMetric.detector)).all()
    assert len(rows) == 8
    for _, name, index, median in rows:  # raw science: bias 100 n + signal 500 n
        n = CHANNELS.index(name) + 1
        assert index == n and median == pytest.approx(600.0 * n, abs=1)
    # the exposure's summary, what selections see: the median over its four detectors
    assert len(catalog.query("frame_type == 'science' and median > 1499 and median < 1501 and xbin == 1")) == 2
    from typer.testing import CliRunner

    from cli.main import app

    url = catalog.engine.url.render_as_string(hide_password=False)
    shown = CliRunner().invoke(app, ["--db", url, "quality", "detectors", "readout_mode == 'SCI1.0'", "--format", "json"])
    assert shown.exit_code == 0, shown.output
    listed = json.loads(shown.stdout)
    assert [row["detector"] for row in listed] == list(CHANNELS) * 2
    assert [round(row["median"]) for row in listed[:4]] == [600, 1200, 1800, 2400]
    result = quality.compute(catalog.engine, "xbin == 2", workers=1, hdus=("CHAN03",), force=True)
    assert result.exit_code == EXIT_DONE
    frame = catalog.query("xbin == 2", columns="median")
    assert frame["median"].iloc[0] == pytest.approx(300.0 + SIGNAL, abs=1)  # CHAN03 of the binned frame only


def test_a_detector_that_cannot_be_measured_costs_only_itself(muse):
    from processing import quality

    catalog, tmp = muse
    path = tmp / "raw" / "sci_FAST_0.fits"
    with fits.open(path, mode="update") as hdul:
        hdul["CHAN02"].data[:] = np.nan
    catalog.ingest([path])
    result = quality.compute(catalog.engine, "readout_mode == 'FAST' and frame_type == 'science'", workers=1)
    assert result.exit_code == EXIT_DONE
    frame = catalog.query("readout_mode == 'FAST' and frame_type == 'science'", columns="relpath,median", sort="relpath")
    # FAST: bias 150 n + signal 500 n; without CHAN02 the median of 650, 1950, 2600
    assert list(frame["median"]) == [pytest.approx(1950, abs=1), pytest.approx(650 * 2.5, abs=1)]
    with catalog.engine.connect() as conn:
        from sqlalchemy import text

        errors = conn.execute(text("select detector, error from detector_metrics where error is not null")).all()
    assert len(errors) == 1 and errors[0][0] == "CHAN02" and errors[0][1].startswith("detector CHAN02: ")
    assert result.notes == ["sci_FAST_0.fits: 1 of 4 detectors not measured, its metrics are the others': "
                            "detector CHAN02: no finite pixels (all NaN)"]  # said, not only stored


# -- stack per detector --------------------------------------------------------------------


_FIT = ("dx", "dy", "rotation", "scale", "rotation_err", "scale_err")


def _offsets(catalog, shifts: dict[str, tuple[float, ...]]) -> None:
    """Offsets of the calibrated SCI1.0 frames' raw exposures onto the first, as a registration would store them:
    (dx, dy, rotation) and, as a star fit gives them, scale, rotation_err and scale_err."""
    from datetime import datetime

    from sqlalchemy import insert

    from archive.models import Offset

    ids = dict(zip(catalog.query("frame_type == 'science' and readout_mode == 'SCI1.0' and xbin == 1 and product is null",
                                 columns="relpath,id", sort="relpath")["relpath"],
                   catalog.query("frame_type == 'science' and readout_mode == 'SCI1.0' and xbin == 1 and product is null",
                                 columns="relpath,id", sort="relpath")["id"]))
    reference = ids["sci_SCI1.0_0.fits"]
    with catalog.engine.begin() as conn:
        for name, fit in shifts.items():
            conn.execute(insert(Offset).values(exposure_id=ids[name], reference_id=reference, method="stars", stage=1,
                                               status="ok", **{"scale": 1.0, **dict(zip(_FIT, fit))},
                                               created_at=datetime(2026, 12, 1)))


def test_stack_combines_like_detectors(muse):
    from processing import stacking

    catalog, tmp = muse
    _masters(catalog, tmp)
    assert calibration.calibrate(catalog.engine, "readout_mode == 'SCI1.0' and xbin == 1", out_dir=tmp / "cal",
                                 workers=1).exit_code == EXIT_DONE
    from sqlalchemy import text

    from processing import quality

    assert quality.compute(catalog.engine, "product == 'calibrated'", workers=1).exit_code == EXIT_DONE
    with catalog.engine.connect() as conn:
        measured = conn.execute(text("select detector, median from detector_metrics")).all()
    assert len(measured) == 8 and all(m == pytest.approx(SIGNAL * (CHANNELS.index(d) + 1), rel=0.01) for d, m in measured)
    assert len(catalog.query("product == 'calibrated' and median > 1249 and median < 1251")) == 2  # median of 500..2000
    _offsets(catalog, {"sci_SCI1.0_0.fits": (0, 0, 0), "sci_SCI1.0_1.fits": (2.0, -1.0, 0)})
    result = stacking.stack(catalog.engine, "readout_mode == 'SCI1.0' and frame_type == 'science' and xbin == 1",
                            out_dir=tmp / "stacks", workers=1)
    assert result.exit_code == EXIT_DONE, result.last_line()
    (path,) = (tmp / "stacks").glob("*.fits")
    with fits.open(path) as hdul:
        assert [h.name for h in hdul[1:]] == [n for ch in CHANNELS for n in (ch, f"COVERAGE_{ch}")]
        for n, name in enumerate(CHANNELS, start=1):
            assert float(np.nanmedian(hdul[name].data)) == pytest.approx(SIGNAL * n, rel=0.01)
            coverage = hdul[f"COVERAGE_{name}"].data
            assert coverage.max() == 2 and coverage.min() == 1  # the shifted frame leaves a border
    row = catalog.query("product == 'stack'", columns="n_detectors,detector_shape")
    assert list(row.iloc[0]) == [4, "16x16"]
    # clipped, the 4 detectors' borders (1 frame) are counted together where the clip could not act
    clipped = stacking.stack(catalog.engine, "readout_mode == 'SCI1.0' and frame_type == 'science' and xbin == 1",
                             method="sigclip", sigma=0.9, out_dir=tmp / "clipped", workers=1)
    with fits.open(next((tmp / "clipped").glob("*.fits"))) as hdul:
        assert hdul[0].header["CLIPMINN"] == 2
        fewer = sum(int((hdul[f"COVERAGE_{name}"].data == 1).sum()) for name in CHANNELS)
        covered = sum(int((hdul[f"COVERAGE_{name}"].data > 0).sum()) for name in CHANNELS)
    assert [note for note in clipped.notes if "can leave a value out" in note] == [
        f"the clip at 0.9 sigma can leave a value out only where 2 or more frames overlap: {fewer:,} of the stack's "
        f"{covered:,} covered pixels ({100 * fewer / covered:.1f}%) have fewer, and are their plain mean (its COVERAGE map "
        "shows where; header CLIPMINN)"]


def test_offsets_say_that_exposures_of_several_detectors_are_registered_on_their_first(muse):
    from processing import offsets

    catalog, _ = muse
    ids = offsets.select_ids(catalog.engine, "readout_mode == 'SCI1.0' and frame_type == 'science' and xbin == 1")
    result = offsets.compute_offsets(catalog.engine, ids, ids[0], method="wcs", workers=1, executor="serial")  # flat frames: no stars
    (note,) = result.step.notes
    assert note == "registered on its first image HDU, the other detectors not measured: 2 exposures of several detectors " \
                   "(sci_SCI1.0_0.fits, sci_SCI1.0_1.fits)"


def test_stack_of_several_detectors_refuses_a_rotation(muse):
    from processing import stacking

    catalog, tmp = muse
    _offsets(catalog, {"sci_SCI1.0_0.fits": (0, 0, 0), "sci_SCI1.0_1.fits": (0.5, 0, 0.3)})
    result = stacking.stack(catalog.engine, "readout_mode == 'SCI1.0' and frame_type == 'science' and xbin == 1",
                            out_dir=tmp / "stacks", workers=1)
    assert result.exit_code == EXIT_PARTIAL
    (failed,) = result.failed
    assert failed[1] == "its offset rotates by 0.3000 deg and scales by 1.000000: the stack's 4 detectors then move differently " \
                        "and need a WCS to be mosaicked"


@pytest.mark.parametrize("hdu, refused", [("CHAN01", False), ("CHAN03", True)])
def test_stack_of_one_detector_of_several_takes_a_rotation_only_on_the_detector_it_was_measured_on(muse, hdu, refused):
    """--hdu CHAN03 alone once took the rotation measured on CHAN01 as its own, turning it about the wrong origin."""
    from processing import stacking

    catalog, tmp = muse
    _offsets(catalog, {"sci_SCI1.0_0.fits": (0, 0, 0), "sci_SCI1.0_1.fits": (0.5, 0, 0.3)})
    result = stacking.stack(catalog.engine, "readout_mode == 'SCI1.0' and frame_type == 'science' and xbin == 1",
                            out_dir=tmp / "stacks", workers=1, hdus=(hdu,))
    if not refused:
        assert result.exit_code == EXIT_DONE, result.last_line()
        return
    assert result.exit_code == EXIT_PARTIAL
    (failed,) = result.failed
    assert failed[1] == "its offset rotates by 0.3000 deg and scales by 1.000000: detector CHAN03 then moves differently " \
                        "from CHAN01, the detector it was measured on, and needs a WCS to be stacked"


def test_stack_of_several_detectors_takes_a_rotation_within_its_errors_for_a_shift(muse):
    from processing import stacking

    catalog, tmp = muse
    # a user trial's star fit of a pure dither: rotation and scale within 2 sigma of none, which moves
    # the far corner of the 4 detectors (16x16) by 0.01 px
    _offsets(catalog, {"sci_SCI1.0_0.fits": (0, 0, 0), "sci_SCI1.0_1.fits": (2.0, -1.0, 0.0079, 0.999892, 0.0043, 1.0e-4)})
    result = stacking.stack(catalog.engine, "readout_mode == 'SCI1.0' and frame_type == 'science' and xbin == 1",
                            out_dir=tmp / "stacks", workers=1)
    assert result.exit_code == EXIT_DONE, result.last_line()
    (path,) = (tmp / "stacks").glob("*.fits")
    with fits.open(path) as hdul:
        assert hdul[0].header["NCOMBINE"] == 2
        assert all(hdul[f"COVERAGE_{name}"].data.max() == 2 for name in CHANNELS)


@pytest.mark.parametrize("fit, said", [
    ((0.5, 0, 0.5, 1.0, 0.004, 1.0e-4), "rotates by 0.5000 deg and scales by 1.000000"),  # rotated, and known to be
    ((0.5, 0, 0.0, 1.001, 0.004, 1.0e-5), "rotates by 0.0000 deg and scales by 1.001000"),  # scaled, and known to be
    # within 3 sigma of none, but a rotation that size moves the far detector's corner by 0.35 px
    ((0.5, 0, 0.3, 1.0, 0.2, 1.0e-4), "rotates by 0.3000 deg and scales by 1.000000"),
], ids=["rotated", "scaled", "poorly-fitted"])
def test_stack_of_several_detectors_refuses_a_rotation_its_fit_measures(muse, fit, said):
    from processing import stacking

    catalog, tmp = muse
    _offsets(catalog, {"sci_SCI1.0_0.fits": (0, 0, 0), "sci_SCI1.0_1.fits": fit})
    result = stacking.stack(catalog.engine, "readout_mode == 'SCI1.0' and frame_type == 'science' and xbin == 1",
                            out_dir=tmp / "stacks", workers=1)
    assert result.exit_code == EXIT_PARTIAL
    (failed,) = result.failed
    assert failed[1] == f"its offset {said}: the stack's 4 detectors then move differently and need a WCS to be mosaicked"


def test_calibrate_command_gives_the_rule_that_refused_each_master(muse):
    from typer.testing import CliRunner

    from cli.main import app

    catalog, tmp = muse
    _masters(catalog, tmp)
    url = catalog.engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(app, ["--db", url, "calibrate", "readout_mode == 'SCI1.0'", "--out", str(tmp / "cal"),
                                      "--executor", "serial", "--hdu", "CHAN01,CHAN04"])
    assert result.exit_code == 3, result.output
    assert "sci_binned.fits: no master bias fits: " in result.stderr
    assert "refused by" not in result.stderr and "binning: frame 2x2, master 1x1" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("calibrate: 2 done, 0 up to date (skipped), 1 failed")
    for path in (tmp / "cal").glob("*_cal.fits"):
        assert _levels(path) == pytest.approx({"CHAN01": SIGNAL, "CHAN04": SIGNAL * 4}, rel=0.01)


def test_darks_per_detector_bias_subtracted_and_scaled(muse, rng):
    catalog, tmp = muse
    for i in range(3):  # 0.2 n ADU/s of dark current in channel n, 30 s darks
        level = {name: b + 0.2 * n * 30 for n, (name, b) in enumerate(_bias("SCI1.0").items(), start=1)}
        write_mef(tmp / "darks" / f"dark_{i}.fits", rng, level, _header("DARK", "SCI1.0", 40 + i, EXPTIME=30.0))
    catalog.ingest([tmp / "darks"])
    assert calibration.make_master(catalog.engine, "bias", "readout_mode == 'SCI1.0'", out_dir=tmp / "m").exit_code == 0
    assert calibration.make_master(catalog.engine, "dark", out_dir=tmp / "m").exit_code == 0
    (dark,) = (tmp / "m").glob("master_dark_*")
    assert _levels(dark) == pytest.approx({name: 6.0 * n for n, name in enumerate(CHANNELS, start=1)}, abs=0.5)
    result = calibration.calibrate(catalog.engine, "readout_mode == 'SCI1.0' and xbin == 1", use=("bias", "dark"),
                                   out_dir=tmp / "cal", workers=1)
    assert result.exit_code == EXIT_DONE, result.last_line()
    for path in (tmp / "cal").glob("*_cal.fits"):  # 10 s frames: 2 n ADU of dark come off
        assert _levels(path) == pytest.approx({ch: (SIGNAL - 2.0) * n for n, ch in enumerate(CHANNELS, start=1)}, abs=0.5)


def test_usage_errors_of_the_calibration_commands(muse):
    from typer.testing import CliRunner

    from cli.main import app

    catalog, tmp = muse
    _masters(catalog, tmp)
    url = catalog.engine.url.render_as_string(hide_password=False)
    runner = CliRunner()
    result = runner.invoke(app, ["--db", url, "calib", "explain", "--type", "arc"])
    assert result.exit_code == 2 and "arc: use one or more of bias, dark, flat" in result.stderr
    result = runner.invoke(app, ["--db", url, "calib", "explain", "--hdu", ","])
    assert result.exit_code == 2 and "give detector names separated by commas" in result.stderr
    result = runner.invoke(app, ["--db", url, "calib", "explain", "object == 'nothing'"])
    assert result.exit_code == 1 and "no raw frames match \"object == 'nothing'\"" in result.stderr
    result = runner.invoke(app, ["--db", url, "calibrate", "readout_mode == 'FAST' and frame_type == 'science'",
                                 "--no-flat", "--hdu", "CHAN09", "--out", str(tmp / "cal"), "--executor", "serial"])
    assert result.exit_code == 1
    assert "sci_FAST_0.fits: --hdu CHAN09: no such detector (this file has CHAN01, CHAN02, CHAN03, CHAN04)" in result.stderr


def test_a_flat_is_not_made_without_the_bias_the_rules_refuse(muse):
    catalog, tmp = muse
    assert calibration.make_master(catalog.engine, "bias", "readout_mode == 'FAST'", out_dir=tmp / "m").exit_code == 0
    from archive.exceptions import ObsarchError

    with pytest.raises(ObsarchError, match=r"flat_0.fits, the first input: no master bias fits: master_bias_FAST\S+: "
                                           r"readout_mode: frame SCI1.0, master FAST"):
        calibration.make_master(catalog.engine, "flat", band="V", out_dir=tmp / "m")


def test_calibrate_works_a_band_of_rows_at_a_time_within_memory(muse):
    catalog, tmp = muse
    _masters(catalog, tmp)
    selection = "readout_mode == 'SCI1.0' and xbin == 1"
    # a 16x16 detector's output (1,024 B) and 2 rows of frame, bias and flat (1,536 B): bands of 2 rows
    result = calibration.calibrate(catalog.engine, selection, out_dir=tmp / "cal", executor="serial", memory="2.6kB")
    assert result.exit_code == EXIT_DONE, result.last_line()
    calibration.calibrate(catalog.engine, selection, out_dir=tmp / "whole", executor="serial", force=True)
    for path in (tmp / "cal").glob("*_cal.fits"):
        assert _levels(path) == pytest.approx({ch: SIGNAL * n for n, ch in enumerate(CHANNELS, start=1)}, rel=0.01)
        with fits.open(path) as banded, fits.open(tmp / "whole" / path.name) as at_once:
            for name in CHANNELS:
                np.testing.assert_allclose(banded[name].data, at_once[name].data, rtol=1e-6)
    result = calibration.calibrate(catalog.engine, selection, out_dir=tmp / "c2", executor="serial", memory="1kB",
                                   force=True)
    assert result.exit_code == 1
    assert result.failed[0][1] == "--memory is too small: detector CHAN01 of 16x16 needs at least 1.8 kB per worker"


def test_stack_of_one_named_detector_fails_a_frame_without_it(muse):
    """stack --hdu CHAN02 put the CHAN01 of a frame that has no CHAN02 into the
    stack's CHAN02 (one detector paired with one whatever its name)."""
    from datetime import datetime

    from sqlalchemy import insert

    from archive.models import Offset
    from processing import stacking

    catalog, tmp = muse
    odd = _one_channel(tmp / "raw2" / "sci_one.fits", _header("OBJECT", "SCI1.0", 58), np.full(SHAPE, 7.0, np.float32))
    catalog.ingest([odd.parent])
    ids = dict(zip(*catalog.query("relpath in ('sci_SCI1.0_0.fits', 'sci_one.fits')", columns="relpath,id").T.values))
    with catalog.engine.begin() as conn:
        for name in ids:
            conn.execute(insert(Offset).values(exposure_id=ids[name], reference_id=ids["sci_SCI1.0_0.fits"], method="stars", stage=1,
                                               status="ok", dx=0, dy=0, rotation=0, scale=1.0, created_at=datetime(2026, 12, 1)))
    result = stacking.stack(catalog.engine, "relpath in ('sci_SCI1.0_0.fits', 'sci_one.fits')", out_dir=tmp / "stacks",
                            hdus=("CHAN02",), workers=1)
    assert result.exit_code == EXIT_PARTIAL
    assert result.failed == [(str(odd), "no detector CHAN02")]
    (path,) = (tmp / "stacks").glob("*.fits")
    assert fits.getheader(path)["NCOMBINE"] == 1
