"""A step never reads a file other than the one the catalog describes: an
input cut, rewritten or deleted on disk since it was last ingested fails its
item with that reason, before any worker reads it (both backends)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from astropy.io import fits
from sqlalchemy import insert, select
from test_steps import night

from archive.db import transaction
from archive.ingest import utcnow
from archive.models import Run
from processing import calibration


def _cut(path, keep):
    with open(path, "r+b") as handle:
        handle.truncate(keep)


def test_an_input_cut_after_ingest_fails_alone_with_the_reason(catalog, tmp_path, rng):
    night(tmp_path / "raw", rng)
    catalog.ingest([tmp_path / "raw"])
    cut = tmp_path / "raw" / "ngc3293-3853.fits"
    _cut(cut, os.path.getsize(cut) // 2)
    gone = tmp_path / "raw" / "ngc3293-3854.fits"
    gone.unlink()
    result = calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters")
    assert result.exit_code == 3 and len(result.done) == 1
    assert dict(result.failed) == {
        str(cut): "changed on disk since it was last ingested (obsarch ingest reads it again)",
        str(gone): "gone from disk since it was last ingested (obsarch ingest records what moved)",
    }
    (master,) = (tmp_path / "masters").glob("master_bias*.fits")
    assert fits.getheader(master)["NCOMBINE"] == 3


def test_a_master_rewritten_after_it_was_made_is_blamed_not_the_science_frame(catalog, tmp_path, rng):
    science = night(tmp_path / "raw", rng)
    catalog.ingest([tmp_path / "raw"])
    calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters")
    (master,) = (tmp_path / "masters").glob("master_bias*.fits")
    _cut(master, os.path.getsize(master) - 2880)
    result = calibration.calibrate(catalog.engine, f"{science[0]}-{science[1]}", use=("bias",), out_dir=tmp_path / "cal",
                                   workers=1)
    assert result.exit_code == 1 and len(result.failed) == 2
    assert {why for _, why in result.failed} == {f"{master}: changed on disk since it was last ingested (obsarch ingest reads it again)"}
    assert not (tmp_path / "cal").exists() or not list((tmp_path / "cal").iterdir())


def test_an_unchanged_input_still_runs_and_is_up_to_date(catalog, tmp_path, rng):
    night(tmp_path / "raw", rng)
    catalog.ingest([tmp_path / "raw"])
    assert calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters").exit_code == 0
    assert calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters").skipped


def test_a_master_rewritten_on_disk_is_not_up_to_date(catalog, tmp_path, rng):
    """What a run killed between writing a master and recording it leaves (or
    an edit): the file at the master's name is not what its run made, so the
    step makes it again instead of calling it up to date."""
    night(tmp_path / "raw", rng)
    catalog.ingest([tmp_path / "raw"])
    assert calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters").exit_code == 0
    (master,) = (tmp_path / "masters").glob("master_bias*.fits")
    made = fits.getdata(master)
    fits.writeto(master, made + 100, fits.getheader(master), overwrite=True)
    again = calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters")
    assert (again.exit_code, len(again.done), again.skipped) == (0, 1, [])
    np.testing.assert_array_equal(fits.getdata(master), made)


def test_an_edited_master_ingested_again_is_still_not_up_to_date(catalog, tmp_path, rng):
    """An ingest of the edit records the file as it is now; the master stays
    not what its run made."""
    night(tmp_path / "raw", rng)
    catalog.ingest([tmp_path / "raw"])
    calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters")
    (master,) = (tmp_path / "masters").glob("master_bias*.fits")
    made = fits.getdata(master)
    fits.writeto(master, made + 100, fits.getheader(master), overwrite=True)
    catalog.ingest([tmp_path / "masters"])
    again = calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters")
    assert (len(again.done), again.skipped) == (1, [])
    np.testing.assert_array_equal(fits.getdata(master), made)


def test_a_calibration_written_over_by_another_run_is_made_again(catalog, tmp_path, rng):
    """Bias only, then bias and flat to the same path, then bias only again:
    the file holds the second run's frame, so the first run's is no longer
    up to date."""
    science = night(tmp_path / "raw", rng)
    catalog.ingest([tmp_path / "raw"])
    for kind in ("bias", "flat"):
        calibration.make_master(catalog.engine, kind, out_dir=tmp_path / "masters")
    frames = f"{science[0]}-{science[0]}"

    def calibrate(use):
        return calibration.calibrate(catalog.engine, frames, use=use, out_dir=tmp_path / "cal", workers=1)

    assert len(calibrate(("bias",)).done) == 1
    (product,) = (tmp_path / "cal").glob("*_cal.fits")
    bias_only = fits.getdata(product)
    assert len(calibrate(("bias", "flat")).done) == 1
    assert not np.array_equal(fits.getdata(product), bias_only)
    again = calibrate(("bias",))
    assert (len(again.done), again.skipped) == (1, [])
    np.testing.assert_array_equal(fits.getdata(product), bias_only)


def test_a_killed_run_is_marked_interrupted_by_the_next_step_even_when_all_is_up_to_date(catalog, tmp_path, rng):
    night(tmp_path / "raw", rng)
    catalog.ingest([tmp_path / "raw"])
    calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    with transaction(catalog.engine, write=True) as conn:
        import socket

        conn.execute(insert(Run).values(step="calibrate", params_json="{}", params_hash="x", code_version="x",
                                        host=socket.gethostname(), user="x", pid=int(dead), started_at=utcnow(), state="running"))
    assert calibration.make_master(catalog.engine, "bias", out_dir=tmp_path / "masters").skipped
    with transaction(catalog.engine) as conn:
        assert conn.execute(select(Run.state, Run.error).where(Run.step == "calibrate")).one() == ("interrupted",
                                                                                                  "the process was killed")
    assert np.isfinite(fits.getdata(next((tmp_path / "masters").glob("*.fits")))).all()
