"""The step machinery: skip, isolate, one transaction, exit codes (both backends)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from factories import write_frame
from sqlalchemy import select

from archive.models import Exposure, Product, Run, RunInput
from archive.query import compare
from processing.machinery import EXIT_DONE, EXIT_ERROR, EXIT_PARTIAL, Input, Item, Step, StepResult, run_step
from processing.runs import file_content
from processing.steps import resolve


class _Unpicklable(Exception):
    def __init__(self):
        super().__init__("a worker error")
        self.lock = threading.Lock()  # cannot cross a process boundary


def _copy_or_fail(task):
    source, target = task
    if "bad" in source:
        raise _Unpicklable()
    data = np.zeros((4, 4), dtype=np.float32)
    from pathlib import Path

    from astropy.io import fits

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data).writeto(target, overwrite=True)
    return target


class _Copy(Step):
    name, algorithm, item_runs = "copy", "copy-1", True

    def __init__(self, selection, out):
        self.selection, self.out = selection, out

    def items(self, engine):
        return [Item(f.path, (f.path, str(self.out / f"{f.exposure_id}.fits")), [Input(f.file_id, "frame", f.content)],
                     {"out": str(self.out / f"{f.exposure_id}.fits")}, data=f)
                for f in resolve(engine, self.selection)]

    work = staticmethod(_copy_or_fail)

    def write(self, out, item, result):
        out.product(result, "copy", {"band": item.data.band, "frame_type": "science"})


@pytest.fixture
def frames(catalog, tmp_path, rng):
    for name in ("a-11.fits", "b-12.fits", "bad-13.fits"):
        write_frame(tmp_path / "raw" / name, rng, {"FRAMENUM": None})
    catalog.ingest([tmp_path / "raw"])
    return catalog, tmp_path


@pytest.mark.parametrize("executor", ["serial", "pool"])
def test_a_failing_item_costs_only_itself_and_the_step_says_partial(frames, executor):
    catalog, tmp = frames
    result = run_step(catalog.engine, _Copy(None, tmp / "out"), executor=executor, workers=2)
    assert len(result.done) == 2 and [key for key, _ in result.failed] == [str(tmp / "raw" / "bad-13.fits")]
    assert "_Unpicklable: a worker error" in result.failed[0][1]
    assert result.exit_code == EXIT_PARTIAL and "1 failed" in result.last_line() and "bad-13.fits" in result.last_line()
    with catalog.engine.connect() as conn:
        runs = conn.execute(select(Run.id, Run.state, Run.parent_id, Run.item).order_by(Run.id)).all()
        products = conn.execute(select(Product.file_id, Product.run_id)).all()
        made = conn.execute(select(Exposure.frame_number, Exposure.band).where(Exposure.id.in_([p.file_id for p in products]))).all()
    parent = runs[0]
    assert parent.parent_id is None and parent.state == "done"
    assert sorted(r.state for r in runs[1:]) == ["done", "done", "failed"] and {r.parent_id for r in runs[1:]} == {parent.id}
    assert {p.run_id for p in products} <= {r.id for r in runs[1:]}
    assert made == [(None, "V"), (None, "V")]  # no frame number from the product's name

    again = run_step(catalog.engine, _Copy(None, tmp / "out"), executor=executor, workers=2)
    assert len(again.skipped) == 2 and len(again.failed) == 1 and again.exit_code == EXIT_PARTIAL


def test_all_failed_is_an_error_and_all_done_is_zero(frames):
    catalog, tmp = frames
    bad = run_step(catalog.engine, _Copy(compare("path", "like", "%bad%") if False else "path like '%bad%'", tmp / "o"),
                   executor="serial")
    assert bad.exit_code == EXIT_ERROR
    good = run_step(catalog.engine, _Copy("path like '%/a-%'", tmp / "o"), executor="serial")
    assert good.exit_code == EXIT_DONE and good.done


def test_a_run_left_running_by_a_killed_process_is_marked_interrupted(frames):
    catalog, tmp = frames
    from archive.db import transaction
    from archive.ingest import utcnow

    with transaction(catalog.engine, write=True) as conn:
        conn.execute(Run.__table__.insert().values(step="copy", params_json="{}", params_hash="x", code_version="x",
                                                   host=__import__("socket").gethostname(), user="u", pid=2**22 + 7,
                                                   started_at=utcnow(), state="running", fingerprint="f"))
    run_step(catalog.engine, _Copy("path like '%/a-%'", tmp / "o"), executor="serial")
    with catalog.engine.connect() as conn:
        assert conn.execute(select(Run.state).where(Run.fingerprint == "f")).scalar() == "interrupted"


def test_a_failing_write_rolls_back_only_its_item(frames):
    catalog, tmp = frames

    class _BadWrite(_Copy):
        def write(self, out, item, result):
            out.product(result, "copy", {"frame_type": "science"})
            if "a-11" in item.key:
                raise ValueError("cannot store this one")

    result = run_step(catalog.engine, _BadWrite("path like '%/a-%' or path like '%/b-%'", tmp / "o"), executor="serial")
    assert [k.rsplit("/", 1)[1] for k, _ in result.failed] == ["a-11.fits"] and len(result.done) == 1
    with catalog.engine.connect() as conn:
        assert len(conn.execute(select(Product.id)).all()) == 1
        inputs = conn.execute(select(RunInput.run_id)).all()
    assert len(inputs) == 2  # the done item's input, and the failed item's (recorded with its failed run)


def test_step_result_exit_codes():
    assert StepResult("s", done=["a"]).exit_code == 0
    assert StepResult("s", done=["a"], short=[("a", "made from 1 of 15")]).exit_code == 3
    assert StepResult("s", skipped=["a"], failed=[("b", "x")]).exit_code == 3
    assert StepResult("s", failed=[("b", "x")]).exit_code == 1
    assert json.dumps(StepResult("s").counts())
    assert file_content  # the content string is what fingerprints are made of
