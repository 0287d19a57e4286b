"""External tools (SAS, HEASoft, EsoRex, anything) run per exposure, obsid
or group, with their output logged and the files they write kept as
products linked to their inputs."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from archive.exceptions import ObsarchError
from processing.executor import Progress, parallel_map
from processing.runs import add_product, done_before, fingerprint, record_inputs, recorded_run, set_fingerprint
from processing.steps import Frame, frames, safe_name

ALGORITHM = "external-1"
EACH = ("exposure", "obsid", "group")
_TAIL = 2000


@dataclass
class Item:
    key: str
    frames: list[Frame]
    values: dict = field(default_factory=dict)


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    products: int = 0


def items_of(engine, each: str, selection: str | None) -> list[Item]:
    """The items a command runs on: one per exposure, obsid or group."""
    if each not in EACH:
        raise ObsarchError(f"--each {each!r}: use exposure, obsid or group")
    chosen = frames(engine, selection, "product is null")  # a tool's own outputs are not its inputs
    if not chosen:
        raise ObsarchError(f"no raw exposure matches {selection!r}")
    if each == "exposure":
        return [Item(str(f.frame_number if f.frame_number is not None else f.exposure_id), [f],
                     {"path": f.path, "id": f.exposure_id, "frame": f.frame_number, "dir": str(Path(f.path).parent)})
                for f in chosen]
    if each == "obsid":
        from sqlalchemy import select

        from archive.db import transaction
        from archive.models import Exposure

        with transaction(engine) as conn:
            obsids = dict(conn.execute(select(Exposure.id, Exposure.obsid).where(Exposure.id.in_([f.exposure_id for f in chosen]))).all())
        grouped: dict[str, list[Frame]] = {}
        for frame in chosen:
            if obsids.get(frame.exposure_id):
                grouped.setdefault(obsids[frame.exposure_id], []).append(frame)
        if not grouped:
            raise ObsarchError("none of the selected exposures has an obsid")
        return [Item(obsid, members, {"obsid": obsid, "dir": os.path.commonpath([str(Path(m.path).parent) for m in members]),
                                      "path": members[0].path, "paths": " ".join(shlex.quote(m.path) for m in members)})
                for obsid, members in sorted(grouped.items())]
    from processing.grouping import list_groups

    names = [g["name"] for g in list_groups(engine)]
    result = []
    ids = {f.exposure_id for f in chosen}
    for name in names:
        members = [f for f in frames(engine, f"group == '{name.replace(chr(39), chr(39) * 2)}'") if f.exposure_id in ids]
        if members:
            result.append(Item(name, members, {"group": name, "dir": os.path.commonpath([str(Path(m.path).parent) for m in members]),
                                               "path": members[0].path, "paths": " ".join(shlex.quote(m.path) for m in members)}))
    if not result:
        raise ObsarchError("none of the selected exposures is in a group")
    return result


def expand(template: list[str], values: dict) -> list[str]:
    """``{obsid}``, ``{path}``, ``{paths}``, ``{dir}``, ``{id}``, ``{frame}``, ``{group}``, ``{workdir}``,
    ``{region}``, ``{regions}`` in each argument."""
    result = []
    for argument in template:
        try:
            expanded = argument.format(**values)
        except KeyError as exc:
            raise ObsarchError(f"{{{exc.args[0]}}} in {argument!r} is not known for this item (known: {', '.join(sorted(values))})") from exc
        except (ValueError, IndexError) as exc:
            raise ObsarchError(f"cannot fill in {argument!r}: {exc}") from exc
        if argument.strip() in ("{paths}", "{regions}"):
            result.extend(shlex.split(expanded))
        else:
            result.append(expanded)
    return result


def _snapshot(directory: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def run_command(task: tuple) -> dict:
    """Run one item's command in its working directory. Runs in a worker."""
    key, arguments, workdir, timeout = task
    directory = Path(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    before = _snapshot(directory)
    try:
        finished = subprocess.run(arguments, cwd=directory, capture_output=True, text=True, timeout=timeout, check=False)
        code, stdout, stderr = finished.returncode, finished.stdout, finished.stderr
    except FileNotFoundError:
        code, stdout, stderr = 127, "", f"command not found: {arguments[0]}"
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = -1, exc.stdout or "", f"timed out after {timeout} s"
    after = _snapshot(directory)
    written = sorted(path for path, mtime in after.items() if before.get(path) != mtime)
    return {"key": key, "code": code, "stdout": stdout if isinstance(stdout, str) else stdout.decode(errors="replace"),
            "stderr": stderr if isinstance(stderr, str) else stderr.decode(errors="replace"), "written": written}


def run_each(
    engine, each: str, selection: str | None, command: list[str], *, workdir: str = "runs/{item}", workers: int | None = None,
    executor: str = "pool", scheduler: str | None = None, timeout: float | None = None, force: bool = False,
    progress: Progress | None = None, metrics_from: str | None = None,
) -> RunSummary:
    """Run ``command`` once per item, in parallel. Items already done with the
    same command and inputs are skipped; a failing item is recorded and the
    others go on. ``metrics_from``: a file (in the item's working directory)
    the tool writes, whose numbers become named metrics of the item's
    exposures, with this run as their lineage."""
    if not command:
        raise ObsarchError("give the command after --, e.g. obsarch run --each obsid ... -- epchain exposure=2")
    summary = RunSummary()
    step = f"run:{Path(command[0]).name}"
    tasks, plans = [], {}
    for item in items_of(engine, each, selection):
        directory = Path(workdir.format(item=safe_name(item.key), **{k: safe_name(v) for k, v in item.values.items()})).resolve()
        values = {**item.values, **item_regions(engine, item), "workdir": str(directory), "item": item.key}
        arguments = expand(command, values)
        params = {"each": each, "item": item.key, "command": arguments, "workdir": str(directory)}
        if metrics_from:
            params["metrics_from"] = metrics_from
        print_ = fingerprint(step, params, ALGORITHM, [f.content for f in item.frames])
        if not force and done_before(engine, print_):
            summary.skipped.append(item.key)
            continue
        plans[item.key] = (item, params, print_)
        tasks.append((item.key, arguments, str(directory), timeout))
    for _, result in parallel_map(run_command, tasks, workers=workers, executor=executor, scheduler=scheduler, progress=progress):
        item, params, print_ = plans[result["key"]]
        summary.products += _record(engine, step, item, params, print_, result, summary)
    return summary


def _record(engine, step: str, item: Item, params: dict, print_: str, result: dict, summary: RunSummary) -> int:
    from sqlalchemy import update

    from archive.db import transaction
    from archive.models import Run

    count = 0
    try:
        with recorded_run(engine, step, params, ALGORITHM) as run:
            set_fingerprint(engine, run.id, print_, item=item.key)
            record_inputs(engine, run.id, [(f.file_id, "frame", f.content) for f in item.frames])
            with transaction(engine, write=True) as conn:
                conn.execute(update(Run).where(Run.id == run.id).values(stdout=result["stdout"][-200_000:], stderr=result["stderr"][-200_000:]))
            if result["code"] != 0:
                raise ObsarchError(f"exit status {result['code']}: {result['stderr'].strip()[-_TAIL:] or '(no error output)'}")
            if params.get("metrics_from"):
                with transaction(engine, write=True) as conn:
                    store_tool_metrics(conn, run.id, [f.exposure_id for f in item.frames],
                                       Path(params["workdir"]) / params["metrics_from"])
            for path in result["written"]:
                add_product(engine, run.id, path, "output")
                count += 1
            run.summary = {"exit": result["code"], "written": result["written"]}
    except ObsarchError as exc:
        summary.failed.append((item.key, str(exc)))
        return count
    summary.done.append(item.key)
    return count


def store_tool_metrics(conn, run_id: int, exposure_ids: list[int], path: Path) -> None:
    """The numbers the tool wrote to ``path``, as named metrics of the
    item's exposures from this run (a missing or bad file raises, failing
    the item with the reason). ``conn``: the transaction the run's rows go in."""
    from processing.named_metrics import read_metrics_file, store

    store(conn, exposure_ids, read_metrics_file(path), source="tool", run_id=run_id)


def item_regions(engine, item: Item) -> dict:
    """``{region}``: the latest region file attached to the item's exposures
    (``{regions}``: all of them), when there is one."""
    from sqlalchemy import select

    from archive.db import transaction
    from archive.models import RegionFile

    with transaction(engine) as conn:
        paths = list(conn.execute(select(RegionFile.path).where(RegionFile.exposure_id.in_([f.exposure_id for f in item.frames]))
                                  .order_by(RegionFile.id)).scalars())
    if not paths:
        return {}
    return {"region": paths[-1], "regions": " ".join(shlex.quote(p) for p in dict.fromkeys(paths))}
