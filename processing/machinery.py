"""The step machinery: the one routine every processing step runs on.

A step is a small definition, the way a BANZAI stage writes only
``do_stage`` and ``Stage.run`` owns the rest. :func:`run_step` owns:

1. resolving the selection into items (the step's :meth:`Step.items`, given
   a parsed tree or ids, never selection text assembled by code);
2. a fingerprint per item (its inputs' content, the parameters, the code
   version) and skipping what is unchanged since a done run;
3. the run record ('running' in a transaction of its own, so a killed step
   stays visibly unfinished), then each item's work in workers (``pool``,
   ``serial`` or ``dask``, :mod:`processing.executor`); an exception in a
   worker is caught there and turned into one plain line, so one bad item
   costs only itself and nothing unpicklable crosses the process boundary;
4. every catalog write of the step (runs of items, inputs, products, metrics,
   offsets...) in ONE transaction in the main process, each item inside a
   savepoint so that one item's failing write costs only that item;
5. a :class:`StepResult`: done / skipped / failed / short per item, and the
   exit code (0 all done, 3 partial, 1 nothing done).

Writing a step::

    class Calibrate(Step):
        name, algorithm = "calibrate", "calibration-2"
        item_runs = True                       # a child run per item: lineage per product

        def items(self, engine) -> list[Item]: ...   # main process; may read the catalog
        work = staticmethod(calibrate_one)           # module-level: task -> result, in a worker
        def write(self, out: Writer, item, result): # main process, inside the transaction
            out.product(result, "calibrated", values)

    result = run_step(engine, Calibrate(...), executor="pool", workers=None)
    raise typer.Exit(result.exit_code)

Two shapes of step:

* per-item outputs (calibrate, external tools, quality, offsets): each item is
  fingerprinted and skipped on its own; with ``item_runs`` each done or
  failed item gets a child run (``runs.parent_id``) holding its inputs and
  products;
* one output made of all items (``whole = True``: a master, a stack): one
  fingerprint over every item; workers prepare each input (a corrupt frame
  fails alone), then :meth:`Step.finish` makes the product from the items
  that worked, and the result is *short* when fewer inputs went in than
  were selected.

Optional hooks: ``up_to_date(engine, items, prints)`` when a step's output
is rows rather than files (quality: metrics made with these parameters from
this file version); ``record_failure(out, item, reason)`` to store a failed
item's row (a metric or offset with its error); ``close()`` to remove scratch
files; ``claims()``, the paths of products the step will write, known
before ``items`` (a master's): the run holds them from ``items`` until its
products are stored, so that a second run of the same step waits and then
finds them up to date (:func:`processing.runs.claimed`). ``write`` may raise :class:`ItemFailed` to fail an item yet keep what
it stored (an external tool's log). ``Writer.product(path, kind, values)``
catalogues a written file directly (:func:`archive.products.register_product`):
``values`` are the normalized columns it inherits, usually
:func:`processing.steps.inherited` of its inputs.

A step may raise :class:`~archive.exceptions.ObsarchError` from ``items``
(nothing to do, a usage problem): that is an error (exit 1) and no run is
recorded.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, insert, update

from archive import __version__
from archive.db import rows_in, transaction, utcnow
from archive.exceptions import ObsarchError
from archive.models import Product, Run, RunInput
from processing.executor import Progress, parallel_map
from processing.runs import claimed, done_before, fingerprint, identity, params_hash, run_stamp, writing_for

EXIT_DONE, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3


class ItemFailed(Exception):
    """Raised by a step's ``write`` for an item that failed but whose record
    (an external tool's log, say) is kept: the item counts as failed with
    this reason, and what ``write`` stored stays."""


@dataclass(frozen=True)
class Input:
    """A file an item reads: its id, its role (frame, bias, flat...) and its
    content when read (see :func:`processing.runs.file_content`)."""

    file_id: int | None
    role: str
    content: str


@dataclass
class Item:
    """One unit of a step's work.

    key : what a person reads in the report (a path, a frame number, an obsid)
    task : what the worker gets (picklable; only ``work`` looks at it)
    inputs : the files it reads, recorded with the run and fingerprinted
    params : item parameters that enter the fingerprint (output path, masters chosen)
    error : set when the item cannot be done at all (no master, say): it is
        recorded as failed with this reason and never sent to a worker
    data : anything the step keeps for its own ``write`` (not fingerprinted)
    """

    key: str
    task: Any = None
    inputs: list[Input] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    error: str | None = None
    data: Any = None


class Step:
    """A processing step: override :meth:`items`, ``work`` and :meth:`write`
    (or :meth:`finish` for a ``whole`` step); see the module docstring."""

    name: str = "step"
    algorithm: str = "1"
    item_runs: bool = False
    whole: bool = False
    # execution-only parameters (memory, chunk sizes) -> the value they are
    # fingerprinted as: recorded as given, never part of a product's identity
    execution: dict[str, Any] = {}

    def params(self) -> dict:
        """The step's parameters as JSON-able values (recorded; fingerprinted
        but for the ``execution`` ones, see :func:`processing.runs.identity`)."""
        return {}

    def items(self, engine: Engine) -> list[Item]:
        raise NotImplementedError

    said: list[str] = []  # set by ``items``: what it left out of the selection and why

    def notes(self) -> list[str]:
        """What a person should know of the step's choice of inputs, said
        beside its result (frames graded bad, or with no image, left out);
        asked after ``items``."""
        return self.said

    work: Callable[[Any], Any] | None = None  # a module-level function: task -> result

    def up_to_date(self, engine: Engine, items: list[Item], prints: dict[str, str]) -> set[str]:
        """Keys of items whose output is current. By default: a done run with
        the item's fingerprint whose products all still exist."""
        return {key for key, print_ in prints.items() if done_before(engine, print_)}

    def write(self, out: Writer, item: Item, result: Any) -> None:
        """Store one item's result (main process, inside the step's transaction)."""

    def finish(self, out: Writer, done: list[tuple[Item, Any]], failed: list[Item]) -> str | None:
        """A ``whole`` step makes its product from the items that worked;
        returns why the result is short, if it is."""
        return None

    def short_of(self, engine: Engine, run_id: int | None, items: list[Item]) -> str | None:
        """Why a ``whole`` step's product, found up to date (made by the done
        run ``run_id``), is short; None when it is not. By default what that
        run said (a stack of 4 of 10 selected frames is still one); a step
        whose shortness depends on the command too (a master's ``--nearest``)
        says it anew."""
        from sqlalchemy import select

        with transaction(engine) as conn:
            summary = conn.execute(select(Run.summary_json).where(Run.id == run_id)).scalar_one_or_none()
        return "; ".join(why for _, why in json.loads(summary or "{}").get("short", [])) or None

    def claims(self) -> list:
        """Paths of the products this step will write, known before
        :meth:`items`, that another run may be writing at the same time."""
        return []

    def close(self) -> None:
        """Remove what the step made for itself (scratch files)."""


@dataclass
class StepResult:
    """What a step did: keys done, skipped and failed (with the reason),
    short ones (done with fewer inputs than asked, with the reason), and
    notes on the inputs it chose (see :meth:`Step.notes`)."""

    step: str
    run_id: int | None = None
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    short: list[tuple[str, str]] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 everything asked was done; 3 partial; 1 nothing was done and something failed."""
        if self.failed and not (self.done or self.skipped):
            return EXIT_ERROR
        if self.failed or self.short:
            return EXIT_PARTIAL
        return EXIT_DONE

    def counts(self) -> str:
        text = f"{len(self.done)} done, {len(self.skipped)} up to date (skipped), {len(self.failed)} failed"
        text += f", {len(self.short)} short of inputs" if self.short else ""
        count = len(self.products)
        return text + (f"; {count} product{'' if count == 1 else 's'} written" if count else "")

    def last_line(self) -> str:
        """The summary a user reads last: counts, and the failures in brief."""
        line = f"{self.step}: {self.counts()}"
        problems = [f"{key}: {why}" for key, why in self.short + self.failed]
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            line += f" -- {shown}"
        return line


class Writer:
    """What a step's ``write``/``finish`` writes through: the transaction's
    connection and the run the rows belong to."""

    def __init__(self, conn: Connection, run_id: int, step: Step, result: StepResult):
        self.conn, self.run_id, self._step, self._result = conn, run_id, step, result

    def note(self, text: str) -> None:
        """Something a person should know of what was written (said on stderr
        with the step's other notes, when it ends)."""
        self._result.notes.append(text)

    def inputs(self, inputs: list[Input], group_id: int | None = None) -> None:
        """Record what the run read: each file once per role (two spectra of
        an item linking the same background are one background read)."""
        if inputs:
            self.conn.execute(insert(RunInput), [
                {"run_id": self.run_id, "file_id": i.file_id, "role": i.role, "content": i.content, "group_id": group_id}
                for i in dict.fromkeys(inputs)
            ])

    def products(self, paths: list[str], kind: str, values: dict | None = None) -> None:
        """Catalog the files a tool wrote as products of this run, all or
        none: one that cannot be catalogued (a ``.fits`` that is no FITS
        file) fails the item with the reason, and the item's run keeps its
        log (a rollback of the whole item lost the log that would explain it)."""
        kept = len(self._result.products)
        together = self.conn.begin_nested()
        for path in paths:
            try:
                self.product(path, kind, values)
            except (ObsarchError, OSError) as exc:
                together.rollback()
                del self._result.products[kept:]
                why = f"{path}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
                raise ItemFailed(f"it wrote {' '.join(why.split())}") from None
        together.commit()

    def product(self, path, kind: str, values: dict | None = None) -> int | None:
        """Catalog a written file as a product of this run (a FITS file with
        the exposure ``values`` its inputs give it; another file by its path
        only) and return its file id."""
        from pathlib import Path

        from archive.ingest import is_fits_name
        from archive.products import register_product
        from archive.promoted import fill_file

        path = Path(path).resolve()
        file_id = register_product(self.conn, path, values or {}) if is_fits_name(path.name) else None
        if file_id is not None:
            for note in fill_file(self.conn, file_id):  # promoted keywords: its columns, as an ingest fills them
                self.note(note)
        written = path.stat()
        self.conn.execute(insert(Product).values(run_id=self.run_id, file_id=file_id, kind=kind, path=str(path),
                                                 created_at=utcnow(), size=written.st_size, mtime_ns=written.st_mtime_ns))
        self._result.products.append(str(path))
        return file_id


# -- the routine ----------------------------------------------------------------------------


def _refuse_changed(engine: Engine, items: list[Item]) -> None:
    """An item whose input is not what the catalog says fails with the reason,
    before any worker reads it (see :func:`unusable_files`)."""
    bad = unusable_files(engine, [i.file_id for item in items if item.error is None for i in item.inputs])
    for item in items:
        if item.error is None:
            item.error = next((bad[i.file_id] for i in item.inputs if i.file_id in bad), None)


def unusable_files(engine: Engine, file_ids: list[int | None]) -> dict[int, str]:
    """Why each of ``file_ids`` that a step cannot read as the catalog
    describes it cannot: a file the last ingest found unreadable (cut,
    damaged), or one gone or rewritten on disk since (its size or mtime
    differ). The catalog still holds the earlier headers and content of such
    a file, so a step would read other bytes than it records (a truncated
    bias failed with numpy's 'cannot reshape array'; an event list cut to
    500 rows was summarized as 500 events under the headers of 2000)."""
    from sqlalchemy import select

    from archive.models import File, Root

    ids = sorted({i for i in file_ids if i is not None})
    bad: dict[int, str] = {}
    with transaction(engine) as conn:
        for file_id, path, status, why, size, mtime_ns in rows_in(
                conn, select(File.id, Root.path + "/" + File.relpath, File.status, File.error, File.size, File.mtime_ns)
                .join(Root, Root.id == File.root_id), File.id, ids):
            if status == "unreadable":
                bad[file_id] = f"{path}: unreadable since it was last ingested: {why} (obsarch errors)"
                continue
            try:
                now = os.stat(path)
            except OSError:
                bad[file_id] = f"{path}: gone from disk since it was last ingested (obsarch ingest records what moved)"
                continue
            if mtime_ns is None:  # migration 0022: stored by an earlier obsarch with the wrong header
                bad[file_id] = f"{path}: its headers were stored wrongly by an earlier obsarch (obsarch ingest reads it again)"
                continue
            if (now.st_size, now.st_mtime_ns) != (size, mtime_ns):
                bad[file_id] = f"{path}: changed on disk since it was last ingested (obsarch ingest reads it again)"
    return bad


def run_step(
    engine: Engine, step: Step, *, force: bool = False, executor: str = "pool", workers: int | None = None,
    scheduler: str | None = None, progress: Progress | None = None, on_wait: Callable[[Path], None] | None = None,
) -> StepResult:
    """Run ``step`` over its items; see the module docstring. ``on_wait(path)``
    is told when another run holds a path the step claims, before this one
    waits for it."""
    with transaction(engine, write=True) as conn:  # also when every item turns out up to date
        _close_dead_runs(conn)
    try:
        with claimed(step.claims(), on_wait):
            return _run_claimed(engine, step, force, executor, workers, scheduler, progress)
    finally:
        step.close()


def _run_claimed(engine, step, force, executor, workers, scheduler, progress) -> StepResult:
    result = StepResult(step.name)
    items = step.items(engine)
    twice = [key for key, n in Counter(item.key for item in items).items() if n > 1]
    if twice:  # each item is fingerprinted, skipped and reported by its key
        raise ObsarchError(f"{step.name}: two items share the key {twice[0]!r}; nothing run")
    _refuse_changed(engine, items)
    result.notes = list(step.notes())
    run_params = step.params()
    same = identity(run_params, step.execution)
    prints = {item.key: fingerprint(step.name, {**same, **item.params}, step.algorithm,
                                    [i.content for i in item.inputs])
              for item in items if item.error is None}
    if step.whole:
        whole_print = fingerprint(step.name, {**same, "items": sorted(prints.values())}, step.algorithm, [])
        prints = {"*": whole_print}
    current = set() if force else step.up_to_date(engine, items, prints)
    if step.whole and "*" in current:
        result.skipped = [str(getattr(step, "target", step.name))]  # the product, when the step names one
        # up to date, and still short: of what its run could use, or of what this command asks
        if (short := step.short_of(engine, done_before(engine, prints["*"]), items)) is not None:
            result.short = [(result.skipped[0], short)]
        return result
    todo = [item for item in items if item.error is None and item.key not in current]
    result.skipped = [item.key for item in items if item.key in current]
    if not todo and not any(item.error for item in items):
        return result
    result.run_id = _start(engine, step, run_params, prints.get("*"))
    try:
        with transaction(engine) as conn:
            stamped = run_stamp(conn, result.run_id)
        outcomes = _compute(step, todo, executor, workers, scheduler, progress, stamped)
        failed_early = [item for item in items if item.error is not None]
        with writing_for(stamped):  # a whole step's product is written as its rows are stored
            _store(engine, step, result, items, todo, outcomes, failed_early, prints)
    except BaseException as exc:
        _finish(engine, result.run_id, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                f"{type(exc).__name__}: {exc}", result)
        raise
    return result


def _start(engine: Engine, step: Step, params: dict, whole_print: str | None) -> int:
    with transaction(engine, write=True) as conn:
        return conn.execute(insert(Run).values(**_run_row(step, params, "running"), fingerprint=whole_print)
                            .returning(Run.id)).scalar_one()


def _close_dead_runs(conn: Connection) -> None:
    """Runs left 'running' by a process of this host that no longer exists
    were killed (kill -9, a power cut): they are marked interrupted, never done."""
    from sqlalchemy import select

    for run_id, pid in conn.execute(select(Run.id, Run.pid).where(Run.state == "running", Run.host == socket.gethostname())):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            conn.execute(update(Run).where(Run.id == run_id).values(state="interrupted", error="the process was killed"))
        except PermissionError:
            pass  # alive, another user's


def _run_row(step: Step, params: dict, state: str) -> dict:
    return {"step": step.name, "params_json": json.dumps(params, sort_keys=True, default=str),
            "params_hash": params_hash(step.name, identity(params, step.execution), step.algorithm), "code_version": f"{__version__} {step.algorithm}"[:64],
            "host": socket.gethostname(), "user": getpass.getuser(), "pid": os.getpid(), "started_at": utcnow(),
            "state": state}


class _Isolated:
    """Runs a step's work on one task and returns ("ok", result) or
    ("failed", one line): an exception stays in the worker, as text. The
    products it writes carry the run's ``stamp`` (processing.runs.stamp)."""

    def __init__(self, function: Callable, stamp: tuple[int, str] | None = None):
        self.function, self.stamp = function, stamp

    def __call__(self, task):
        try:
            with writing_for(self.stamp):
                return "ok", self.function(task)
        except MemoryError:
            return "failed", "not enough memory"
        except Exception as exc:  # the boundary of the item: whatever it raised, it costs only this item
            return "failed", _one_line(exc)


def _one_line(exc: BaseException) -> str:
    from archive.exceptions import ObsarchError

    text = " ".join(str(exc).split())
    if isinstance(exc, ObsarchError) and text:
        return text
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    place = f" (in {os.path.basename(where[0].filename)}:{where[0].lineno})" if where else ""
    return f"{type(exc).__name__}: {text or 'no message'}{place}"


def _compute(step, todo, executor, workers, scheduler, progress, stamp=None) -> dict[int, tuple[str, Any]]:
    if step.work is None or not todo:
        return {index: ("ok", None) for index in range(len(todo))}
    work = _Isolated(step.work, stamp)
    return dict(parallel_map(work, [item.task for item in todo], workers=workers, executor=executor,
                             scheduler=scheduler, progress=progress))


def _store(engine, step, result, items, todo, outcomes, failed_early, prints) -> None:
    with transaction(engine, write=True) as conn:
        parent = Writer(conn, result.run_id, step, result)
        worked = []
        for item in failed_early:
            _item_failed(conn, step, result, item, item.error, prints)
        for index, item in enumerate(todo):
            status, value = outcomes[index]
            if status != "ok":
                _item_failed(conn, step, result, item, value, prints)
            elif step.whole:
                worked.append((item, value))
            else:
                _item_done(conn, step, result, item, value, prints)
        if step.whole:
            _finish_whole(parent, step, result, worked, [i for i in items if i.key in dict(result.failed)])
        # a parent that made nothing must not pass for a done run with its fingerprint
        _close(conn, result.run_id, "done" if result.done else "failed", None, result)


def _item_done(conn, step, result, item, value, prints) -> None:
    savepoint = conn.begin_nested()
    try:
        run_id = _child(conn, step, result, item, "done", None, prints) if step.item_runs else result.run_id
        out = Writer(conn, run_id, step, result)
        if step.item_runs:
            out.inputs(item.inputs)
        step.write(out, item, value)
        savepoint.commit()
        result.done.append(item.key)
    except ItemFailed as exc:
        savepoint.commit()
        reason = _without_key(item, str(exc))
        result.failed.append((item.key, reason))
        if step.item_runs:
            conn.execute(update(Run).where(Run.id == run_id).values(state="failed", error=reason, fingerprint=None))
    except Exception as exc:  # a write that fails costs only its item
        savepoint.rollback()
        _item_failed(conn, step, result, item, _one_line(exc), prints)


def _without_key(item, reason: str) -> str:
    """A reason that starts by naming the item's file (a reader's error:
    "PATH: no HDU with image data") without it: the item's key names it
    where the failure is shown, once."""
    return reason.removeprefix(f"{item.key}: ") or reason


def _item_failed(conn, step, result, item, reason: str, prints) -> None:
    reason = _without_key(item, reason)
    result.failed.append((item.key, reason))
    if step.item_runs:
        run_id = _child(conn, step, result, item, "failed", reason, prints)
        Writer(conn, run_id, step, result).inputs(item.inputs)
    elif hasattr(step, "record_failure"):
        step.record_failure(Writer(conn, result.run_id, step, result), item, reason)


def _child(conn, step, result, item, state, error, prints) -> int:
    row = _run_row(step, {**step.params(), **item.params}, state)
    return conn.execute(
        insert(Run).values(**row, parent_id=result.run_id, item=item.key, fingerprint=prints.get(item.key) if state == "done" else None,
                           finished_at=utcnow(), error=error).returning(Run.id)
    ).scalar_one()


def _finish_whole(out: Writer, step, result, worked, failed) -> None:
    if not worked:
        return
    savepoint = out.conn.begin_nested()
    try:
        out.inputs([i for item, _ in worked for i in item.inputs])
        short = step.finish(out, worked, failed)
        savepoint.commit()
    except Exception as exc:  # the product could not be made: the step failed, its inputs' results stand
        savepoint.rollback()
        result.failed.append((step.name, _one_line(exc)))
        return
    result.done.append(result.products[-1] if result.products else step.name)
    if failed or short:
        result.short.append((result.done[-1], short or f"made from {len(worked)} of {len(worked) + len(failed)} selected inputs"))


def _close(conn, run_id: int, state: str, error: str | None, result: StepResult) -> None:
    summary = {"done": len(result.done), "skipped": len(result.skipped), "failed": result.failed[:100],
               "short": result.short, "products": result.products[:100]}
    conn.execute(update(Run).where(Run.id == run_id).values(finished_at=utcnow(), state=state, error=error,
                                                         summary_json=json.dumps(summary, default=str)))


def _finish(engine, run_id, state, error, result) -> None:
    with transaction(engine, write=True) as conn:
        _close(conn, run_id, state, error, result)
