"""kill -9 in the middle of a step: the run is never counted as done, the
catalog keeps what it had, and the next run completes the work (both backends).
Ctrl-C in the middle of one: one line, exit 130, no process left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from factories import star_field, write_image
from sqlalchemy import func, insert, select
from test_steps import night
from typer.testing import CliRunner

from archive.db import make_engine, transaction
from archive.ingest import utcnow
from archive.models import Exposure, Metric, Offset, Product, Run
from cli.main import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _start(url: str, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", "from cli.main import run; run()", "--db", url, *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_when_running(process: subprocess.Popen, url: str, step: str, after_s: float) -> None:
    engine = make_engine(url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with engine.connect() as conn:
                if conn.execute(select(Run.id).where(Run.step == step, Run.state == "running")).first():
                    break
            time.sleep(0.05)
        time.sleep(after_s)
        assert process.poll() is None, "the step ended before it could be killed: give it more work"
        os.killpg(process.pid, signal.SIGKILL)  # the step and its workers
        process.wait()
    finally:
        engine.dispose()


def _count(url: str, statement):
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(statement).scalar()
    finally:
        engine.dispose()


def _frames(directory: Path, rng, n: int, shape: tuple[int, int]) -> None:
    for i in range(n):
        write_image(directory / f"k-{i + 1}.fits", star_field(rng, shape, nstars=30), {"FRAMENUM": i + 1})


def test_kill_9_during_quality(url, tmp_path, rng):
    # enough work that the kill lands well before the one commit, even on a quiet machine (~2 s of SEP)
    _frames(tmp_path / "raw", rng, 48, (1024, 1024))
    assert runner.invoke(app, ["--db", url, "init"]).exit_code == 0
    assert runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "raw")]).exit_code == 0
    process = _start(url, "quality", "compute", "--workers", "1", cwd=tmp_path)
    _kill_when_running(process, url, "quality", 0.5)
    assert _count(url, select(func.count()).select_from(Metric)) == 0  # one transaction: nothing half-stored
    assert _count(url, select(Run.state).where(Run.step == "quality")) == "running"  # never counted as done
    again = runner.invoke(app, ["--db", url, "quality", "compute", "--workers", "1"])
    assert again.exit_code == 0 and "48 done" in again.stdout
    engine = make_engine(url)
    with engine.connect() as conn:
        states = conn.execute(select(Run.state).where(Run.step == "quality").order_by(Run.id)).scalars().all()
    engine.dispose()
    assert states == ["interrupted", "done"]


def test_kill_9_during_stack(url, tmp_path, rng):
    _frames(tmp_path / "raw", rng, 16, (1024, 1024))
    assert runner.invoke(app, ["--db", url, "init"]).exit_code == 0
    assert runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "raw")]).exit_code == 0
    engine = make_engine(url)
    with transaction(engine, write=True) as conn:  # offsets as if measured: small shifts onto frame 1
        exposures = conn.execute(select(Exposure.id).order_by(Exposure.id)).scalars().all()
        conn.execute(Offset.__table__.insert(), [
            {"exposure_id": e, "reference_id": exposures[0], "method": "stars", "stage": 1, "status": "ok", "dx": 0.3 * i,
             "dy": -0.2 * i, "rotation": 0.0, "scale": 1.0, "created_at": utcnow()} for i, e in enumerate(exposures)])
    engine.dispose()
    process = _start(url, "stack", "1-16", "--workers", "1", "--out", "stacks", cwd=tmp_path)
    _kill_when_running(process, url, "stack", 1.0)
    assert _count(url, select(func.count()).select_from(Product)) == 0
    assert not (tmp_path / "stacks" / "mixed_stack.fits").exists() and not (tmp_path / "stacks" / "V_stack.fits").exists()
    again = runner.invoke(app, ["--db", url, "stack", "1-16", "--workers", "1", "--out", str(tmp_path / "stacks")])
    assert again.exit_code == 0, again.stderr
    assert _count(url, select(func.count()).select_from(Product)) == 1
    assert not list(Path("/tmp").glob(f"obsarch-stack-{process.pid}-*"))  # the killed stack's scratch is gone
    assert not list((tmp_path / "stacks").glob(".*.partial"))


def _session(leader: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of the live processes of the session ``leader``
    started (Linux: /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]  # after the command's name
        except OSError:
            continue  # ended meanwhile
        if int(session) == leader and state != "Z":
            found.append((int(stat.parent.name), int(parent)))
    return found


def test_ctrl_c_during_a_pool_step_prints_one_line_and_leaves_no_worker(url, tmp_path, rng):
    """A terminal's Ctrl-C reaches every process of its group, the pool's
    workers too: each printed its own KeyboardInterrupt traceback under the
    command's line."""
    for i in range(3):
        write_image(tmp_path / "raw" / f"b-{i + 1}.fits", rng.normal(500, 3, (1024, 1024)).astype(np.float32),
                    {"IMAGETYP": "Bias Frame", "FILTER": None, "EXPTIME": 0.0, "DATE-OBS": f"2017-08-16T0{i}:00:00"})
    _frames(tmp_path / "raw", rng, 24, (1024, 1024))
    for args in (["init"], ["ingest", str(tmp_path / "raw")], ["calib", "bias", "--out", str(tmp_path / "masters")]):
        assert runner.invoke(app, ["--db", url, *args]).exit_code == 0
    process = subprocess.Popen([sys.executable, "-c", "from cli.main import run; run()", "--db", url, "calibrate", "--no-dark",
                                "--no-flat", "--out", "cal", "--workers", "2"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if sum(parent == process.pid for _, parent in _session(process.pid)) == 2:
                break  # the pool is working
            time.sleep(0.01)
        assert process.poll() is None, "the step ended before it could be interrupted: give it more work"
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert (process.returncode, stderr) == (130, "error: interrupted; nothing half-written was kept\n")
    deadline = time.monotonic() + 10
    while _session(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # a worker's exit is not a parent's wait
    assert _session(process.pid) == []
    assert _count(url, select(Run.state).where(Run.step == "calibrate")) == "interrupted"
    # a worker ended while writing may leave its hidden .partial file; the next writer of that product removes it
    assert runner.invoke(app, ["--db", url, "calibrate", "--no-dark", "--no-flat", "--out", str(tmp_path / "cal")]).exit_code == 0
    assert not list((tmp_path / "cal").glob(".*.partial"))


KILLED_BEFORE_STORING = (
    "import os, sys\n"
    "from processing import machinery\n"
    "machinery._store = lambda *args, **kwargs: os._exit(137)  # as kill -9 after the products are written, before they are recorded\n"
    "from cli.main import run\n"
    "sys.argv[0] = 'obsarch'\n"
    "run()\n"
)


def test_products_a_killed_run_wrote_but_never_recorded_are_made_again(url, tmp_path, rng):
    """A calibrate killed after its workers wrote the calibrated frames and
    before it recorded them: the files carry the run that wrote them, so the
    next run replaces them instead of refusing them as no product of obsarch."""
    science = night(tmp_path / "raw", rng)
    assert runner.invoke(app, ["--db", url, "init"]).exit_code == 0
    assert runner.invoke(app, ["--db", url, "ingest", str(tmp_path / "raw")]).exit_code == 0
    assert runner.invoke(app, ["--db", url, "calib", "bias", "--out", str(tmp_path / "masters")]).exit_code == 0
    args = ["calibrate", f"{science[0]}-{science[-1]}", "--no-dark", "--no-flat", "--out", str(tmp_path / "cal"), "--workers", "1"]
    killed = subprocess.run([sys.executable, "-c", KILLED_BEFORE_STORING, "--db", url, *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr
    left = sorted((tmp_path / "cal").glob("*_cal.fits"))
    assert len(left) == 4 and _count(url, select(func.count()).select_from(Product).where(Product.kind == "calibrated")) == 0
    again = runner.invoke(app, ["--db", url, *args])
    assert again.exit_code == 0 and "4 done" in again.stdout, again.stderr
    engine = make_engine(url)
    with engine.connect() as conn:
        runs = conn.execute(select(Run.id, Run.state).where(Run.step == "calibrate", Run.parent_id.is_(None)).order_by(Run.id)).all()
    engine.dispose()
    assert [state for _, state in runs] == ["interrupted", "done"]
    from astropy.io import fits

    assert {fits.getheader(path)["OBSARCH RUN"] for path in left} == {runs[1][0]}  # the files the catalog records now


def test_a_stamp_that_names_no_killed_run_of_this_catalog_is_a_strangers_file(url, tmp_path):
    from astropy.io import fits

    from processing.runs import STAMP_RUN, STAMP_START, what_is_at

    assert runner.invoke(app, ["--db", url, "init"]).exit_code == 0
    engine = make_engine(url)
    with transaction(engine, write=True) as conn:  # run 1: killed, as the next step finds it
        conn.execute(insert(Run).values(step="calibrate", params_json="{}", params_hash="x", code_version="x", host="h",
                                        user="u", pid=1, started_at=utcnow(), state="interrupted"))
        started = conn.execute(select(Run.started_at)).scalar_one().isoformat()
    for name, stamp in (("left.fits", (1, started)), ("other_catalog.fits", (1, "2020-01-01T00:00:00")),
                        ("unknown_run.fits", (7, started)), ("bad_stamp.fits", ("one", started))):
        header = fits.Header({STAMP_RUN: stamp[0], STAMP_START: stamp[1]})
        fits.PrimaryHDU(header=header).writeto(tmp_path / name)
    found = {name: what_is_at(engine, str(tmp_path / name)).what
             for name in ("left.fits", "other_catalog.fits", "unknown_run.fits", "bad_stamp.fits")}
    engine.dispose()
    assert found == {"left.fits": "leftover", "other_catalog.fits": "foreign", "unknown_run.fits": "foreign", "bad_stamp.fits": "foreign"}
