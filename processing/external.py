"""External tools (SAS, HEASoft, EsoRex, anything) run per exposure, obsid
or group, with their output logged and the files they write kept as
products linked to their inputs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import update

from archive.exceptions import ObsarchError, UsageError
from archive.models import Run
from archive.query import compare, is_null
from processing.executor import Progress
from processing.machinery import Input, ItemFailed, Step, StepResult, Writer, run_step
from processing.machinery import Item as StepItem
from processing.runs import done_before, fingerprint
from processing.steps import Frame, inherited, resolve, safe_name

ALGORITHM = "external-1"
EACH = ("exposure", "obsid", "group")
_TAIL = 2000


@dataclass
class Item:
    """What one run of the command works on: the frames and the values its arguments may name."""

    key: str
    frames: list[Frame]
    values: dict = field(default_factory=dict)
    label: str | None = None  # ``{item}`` when it is not the key: an exposure's frame number, which may repeat


def items_of(engine, each: str, selection) -> list[Item]:
    """The items a command runs on: one per exposure, obsid or group.
    ``selection``: a tree, or a person's text."""
    if each not in EACH:
        raise UsageError(f"--each {each!r}: use exposure, obsid or group")
    chosen = resolve(engine, selection, is_null("product"))  # a tool's own outputs are not its inputs
    if not chosen:
        raise ObsarchError("no raw exposure matches the selection")
    if each == "exposure":  # {item} is the frame number (two cameras' frame 111 would share runs/{item}: the second is refused)
        labels = [str(f.frame_number if f.frame_number is not None else f.exposure_id) for f in chosen]
        repeated = {label for label, n in Counter(labels).items() if n > 1}
        # the key tells the items apart: each is fingerprinted, skipped and reported by it (two
        # nights' frame 1 under one key shared a fingerprint, and a changed one was "up to date")
        return [Item(_exposure_key(f, label, repeated), [f],
                     {"path": f.path, "id": f.exposure_id, "frame": f.frame_number, "obsid": f.obsid, "dir": str(Path(f.path).parent)},
                     label)
                for f, label in zip(chosen, labels)]
    if each == "obsid":  # an obsid is one observatory's: the same number from two telescopes is two items
        grouped: dict[tuple[str, str], list[Frame]] = {}
        for frame in chosen:
            if frame.obsid:
                grouped.setdefault((frame.obsid, frame.telescope or ""), []).append(frame)
        if not grouped:
            raise ObsarchError("none of the selected exposures has an obsid")
        shared = Counter(obsid for obsid, _ in grouped)
        return [_many(obsid if shared[obsid] == 1 else f"{obsid} ({telescope or 'no telescope'})", members, obsid=obsid)
                for (obsid, telescope), members in sorted(grouped.items())]
    from processing.grouping import list_groups

    ids = {f.exposure_id for f in chosen}
    result = []
    for name in [g["name"] for g in list_groups(engine)]:
        members = [f for f in resolve(engine, compare("group", "==", name)) if f.exposure_id in ids]
        if members:
            result.append(_many(name, members, group=name))
    if not result:
        raise ObsarchError("none of the selected exposures is in a group")
    return result


def _exposure_key(frame: Frame, label: str, repeated: set[str]) -> str:
    """An exposure's item key: its frame number, or its id when it has none
    (``id 17``, never taken for frame 17); with its path when another
    selected exposure has the same."""
    key = label if frame.frame_number is not None else f"id {frame.exposure_id}"
    return f"{key} ({frame.path})" if label in repeated else key


def _many(key: str, members: list[Frame], **values) -> Item:
    return Item(key, members, {**values, "dir": os.path.commonpath([str(Path(m.path).parent) for m in members]),
                               "path": members[0].path, "paths": " ".join(shlex.quote(m.path) for m in members)})


MAX_TIMEOUT_S = 1e9  # ~30 years; beyond, the clock arithmetic of subprocess overflows

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish"})
_QUOTED = ("paths", "regions")  # lists, each name already quoted for the shell


def _shell_script(template: list[str]) -> int | None:
    """The place of the script in ``template`` when it runs a shell with
    ``-c`` (``sh -c SCRIPT``, ``bash -ec SCRIPT``), itself or behind a
    command that runs another (``env X=1 sh -c``, ``nice sh -c``, ``timeout
    60 bash -c``, ``docker run IMAGE sh -c``): the first shell named."""
    start = next((place for place, word in enumerate(template) if Path(word).name in SHELLS), len(template))
    if start >= len(template):
        return None
    for place in range(start + 1, len(template) - 1):
        option = template[place]
        if not option.startswith("-") or option == "--":
            return None
        if not option.startswith("--") and "c" in option[1:]:
            return place + 1
    return None


# commands that run the command after their own options and arguments
RUNNERS = frozenset({"env", "nice", "nohup", "timeout", "time", "stdbuf", "ionice", "taskset", "chrt", "xvfb-run"})
# commands that run the rest of the command elsewhere (a container, another host): its programs are not this machine's files
ELSEWHERE = frozenset({"docker", "podman", "singularity", "apptainer", "ssh", "srun", "kubectl"})
# words of a shell script after which a command comes, and that are none
_SHELL_WORDS = frozenset({"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "in", "case", "esac",
                          "!", "{", "}", "exec", "command", "builtin"})
_SEPARATORS = frozenset({";", "&&", "||", "|", "&", "(", ")", ";;", "|&"})


def _program_words(template: list[str]) -> list[str]:
    """The words of ``template`` that name a program it runs: the first; the
    one a runner starts (``nice``, ``timeout 60``, ``env X=1``); and the
    first word of each command of a shell's ``-c`` script, unless a
    container or another host runs it (``docker run IMAGE sh -c``). A word
    holding a placeholder names no fixed program and is left out."""
    words, place = [], 0
    while place < len(template):
        word = template[place]
        words.append(word)
        if Path(word).name not in RUNNERS:
            break
        place += 1  # past the runner's options, assignments and durations, to the program it runs
        while place < len(template) and (template[place].startswith("-") or "=" in template[place]
                                         or template[place][:1].isdigit()):
            place += 1
    script = _shell_script(template)
    if script is not None and not any(Path(word).name in ELSEWHERE for word in template[:script]):
        lexer = shlex.shlex(template[script].replace("\n", ";"), posix=True, punctuation_chars=True)  # a new line ends a command, as ; does
        lexer.whitespace_split = True
        start = True
        try:
            for token in lexer:
                if token in _SEPARATORS:
                    start = True
                elif start and token not in _SHELL_WORDS and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token):
                    words.append(token)
                    start = False
        except ValueError:  # an unclosed quote: the shell refuses it too, and the item fails with its words
            pass
    return [word for word in words if "{" not in word]


def tool_files(template: list[str]) -> dict[str, str]:
    """The program files ``template`` runs, found as the tool will find them
    (on PATH, or by an absolute path), each with what changes when it is
    replaced: ``real path -> "size:mtime_ns"``. An upgraded tool (a new SAS,
    HEASoft or EsoRex) then has another fingerprint: its items run again,
    and its products are stale. A relative path (``./fit.sh``) is found
    from each item's working directory, so it is not looked up here."""
    found = {}
    for word in _program_words(template):
        if "/" in word and not word.startswith("/"):
            continue
        path = shutil.which(word)
        if path is None:
            continue  # a shell builtin (cd, echo in some shells), or a missing tool: its items fail and say so
        real = os.path.realpath(path)
        found[real] = tool_state(real)
    return found


def tool_state(path: str) -> str:
    """What tells a program file's versions apart: its size and modification
    time ("gone" when it is no longer there)."""
    try:
        status = os.stat(path)
    except OSError:
        return "gone"
    return f"{status.st_size}:{status.st_mtime_ns}"


class NoValue(ObsarchError):
    """A placeholder this item has no value for (an exposure with no frame
    number, no obsid): the item fails, the others run."""


def expand(template: list[str], values: dict) -> list[str]:
    """``{obsid}``, ``{path}``, ``{paths}``, ``{dir}``, ``{id}``, ``{frame}``, ``{group}``, ``{workdir}``,
    ``{region}``, ``{regions}`` in each argument.

    An argument is handed to the program as it is, no shell between; but a
    shell's ``-c`` script is read by the shell, so there every value is
    quoted for it: a file named ``a$(touch x).fits`` is a name, never a
    command, and a name with a space or a quote is one word.

    A value the item lacks (None) is never filled in as ``None``: it raises
    :class:`NoValue`."""
    script = _shell_script(template)
    missing = {key for key, value in values.items() if value is None}
    values = {key: value for key, value in values.items() if value is not None}
    quoted = {key: value if key in _QUOTED else shlex.quote(str(value)) for key, value in values.items()}
    result = []
    for place, argument in enumerate(template):
        joined = next((f"{{{key}}}" for key in _QUOTED if f"{{{key}}}" in argument), None)
        if joined and place != script and argument.strip() != joined:  # the program would get the shell's quotes
            raise UsageError(f"{joined} in {argument!r}: a list of names is an argument of its own ('{joined}'), "
                             "or part of a shell's -c script")
        try:
            expanded = argument.format(**(quoted if place == script else values))
        except KeyError as exc:
            if exc.args[0] in missing:
                what = {"frame": "frame number"}.get(exc.args[0], exc.args[0])
                raise NoValue(f"{{{exc.args[0]}}} in {argument!r}: this item has no {what}") from None
            raise ObsarchError(f"{{{exc.args[0]}}} in {argument!r} is not known for this item "
                               f"(known: {', '.join(sorted([*values, *missing]))})") from exc
        except (ValueError, IndexError) as exc:
            raise ObsarchError(f"cannot fill in {argument!r}: {exc}") from exc
        if argument.strip() in ("{paths}", "{regions}"):
            result.extend(shlex.split(expanded))
        else:
            result.append(expanded)
    return result


def _snapshot(directory: Path) -> dict[str, int]:
    """The files under ``directory`` and their mtimes. Links are left out,
    and not followed: a tool that links its input in (``ln -s {path} .``)
    wrote no file, and the raw frame behind the link is no product of it."""
    files = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(folder, name)
            status = os.lstat(path)
            if stat.S_ISREG(status.st_mode):
                files[path] = status.st_mtime_ns
    return files


def run_command(task: tuple) -> dict:
    """Run one item's command in its working directory. Runs in a worker."""
    key, arguments, workdir, timeout = task
    directory = Path(workdir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ObsarchError(f"cannot make the working directory {directory}: {exc.strerror or exc}") from None
    before = _snapshot(directory)
    try:
        code, stdout, stderr = _run_tool(arguments, directory, timeout)
    except FileNotFoundError:
        code, stdout, stderr = 127, "", f"command not found: {arguments[0]}"
    after = _snapshot(directory)
    written = sorted(path for path, mtime in after.items() if before.get(path) != mtime)
    return {"key": key, "code": code, "stdout": stdout, "stderr": stderr, "written": written}


def _run_tool(arguments: list[str], directory: Path, timeout: float | None) -> tuple[int, str, str]:
    """Run the tool in a process group of its own, and end the whole group
    when it times out or the worker is stopped (Ctrl-C ends the pool's
    workers with SIGTERM): killing only the tool left the rest of a pipeline
    (``sh -c 'sleep 20 | cat'``) running, and writing, after obsarch exited."""
    process = subprocess.Popen(arguments, cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               errors="replace", process_group=0)
    handled = threading.current_thread() is threading.main_thread()  # a dask worker's thread cannot take signals
    previous = signal.signal(signal.SIGTERM, _stopped) if handled else None
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return process.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        _end_group(process)
        stdout, _ = process.communicate()
        return -1, stdout, f"timed out after {timeout} s"
    except BaseException:
        _end_group(process)
        process.wait()
        raise
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous)


def _stopped(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _end_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group has ended
        pass


class ExternalStep(Step):
    """A command run once per item in its working directory; its log is kept
    with the item's run, the files it wrote become products."""

    algorithm, item_runs = ALGORITHM, True
    work = staticmethod(run_command)

    def __init__(self, each: str, selection, command: list[str], workdir: str, timeout: float | None,
                 metrics_from: str | None = None):
        if not command:
            raise UsageError("give the command after --, e.g. obsarch run --each obsid ... -- epchain exposure=2")
        if timeout is not None and not 0 <= timeout <= MAX_TIMEOUT_S:  # NaN too: every item failed with Python's words
            raise UsageError(f"--timeout {timeout:g}: give seconds, from 0 (no limit) to {MAX_TIMEOUT_S:.0e}")
        self.name = f"run:{Path(command[0]).name}"
        self.each, self.selection, self.command, self.workdir = each, selection, command, workdir
        self.timeout = timeout or None
        self.metrics_from = metrics_from
        self._tools: dict[str, str] | None = None

    def params(self) -> dict:
        if self._tools is None:  # looked up once per command: every item's run records the same
            self._tools = tool_files(self.command)
        return {"each": self.each, **({"metrics_from": self.metrics_from} if self.metrics_from else {}), "tools": self._tools}

    def up_to_date(self, engine, items, prints: dict[str, str]) -> set[str]:
        """As every step's, and an item done by a run recorded before obsarch
        kept the tools' files (params without ``tools``) stays done: which
        tool made it is not known, and running every item of a long
        reduction again on upgrading obsarch would be no more right."""
        current = super().up_to_date(engine, items, prints)
        earlier = {key: value for key, value in self.params().items() if key != "tools"}
        legacy = {item.key: fingerprint(self.name, {**earlier, **item.params}, self.algorithm, [i.content for i in item.inputs])
                  for item in items if item.key in prints and item.key not in current}
        return current | {key for key, print_ in legacy.items() if done_before(engine, print_)}

    def items(self, engine) -> list[Item]:
        result, places = [], {}
        chosen = items_of(engine, self.each, self.selection)
        linked = _linked_inputs(engine, [f.file_id for item in chosen for f in item.frames])
        for item in chosen:
            inputs = [Input(f.file_id, "frame", f.content) for f in item.frames]
            inputs += [i for f in item.frames for i in linked.get(f.file_id, ())]
            try:
                names = {k: None if v is None else safe_name(v) for k, v in item.values.items()}
                label = item.key if item.label is None else item.label
                directory = Path(expand([self.workdir], {**names, "item": safe_name(label)})[0]).resolve()
                arguments = expand(self.command, {**item.values, **item_regions(engine, item), "workdir": str(directory),
                                                  "item": label})
            except NoValue as exc:
                result.append(StepItem(item.key, error=str(exc), inputs=inputs))
                continue
            if (first := places.setdefault(directory, item)) is not item:  # one directory, two items: whose files?
                result.append(StepItem(item.key, error=f"the working directory of {item.frames[0].path}, {directory}, is {first.frames[0].path}'s too: "
                                       "give --workdir a placeholder that tells them apart (--workdir 'runs/{id}')", inputs=inputs))
                continue
            result.append(StepItem(item.key, (item.key, arguments, str(directory), self.timeout), inputs,
                                   {"item": item.key, "command": arguments, "workdir": str(directory)}, data=item.frames))
        return result

    def write(self, out: Writer, item, result: dict) -> None:
        out.conn.execute(update(Run).where(Run.id == out.run_id).values(stdout=result["stdout"][-200_000:],
                                                                      stderr=result["stderr"][-200_000:]))
        if result["code"] != 0:
            # on one line: the error output itself is kept with the item's run
            raise ItemFailed(f"exit status {result['code']}: {' '.join(result['stderr'][-_TAIL:].split()) or '(no error output)'}")
        if self.metrics_from:
            metrics = Path(item.params["workdir"]) / self.metrics_from
            if str(metrics) not in result["written"]:  # one left by an earlier run is not this run's numbers
                raise ItemFailed(f"the tool did not write {self.metrics_from} (--metrics-from)"
                                 + (": the one there is an earlier run's" if metrics.exists() else ""))
            try:
                store_tool_metrics(out.conn, out.run_id, [i.file_id for i in item.inputs if i.role == "frame"],  # its file's id
                                   metrics)
            except ObsarchError as exc:
                raise ItemFailed(str(exc)) from None
        # what the item's frames share (instrument, band, night...), as every product inherits it
        out.products(result["written"], "output", inherited(item.data, None))


def _linked_inputs(engine, file_ids: list[int]) -> dict[int, list[Input]]:
    """The background, response and ARF a spectrum links to, as inputs of
    whatever a tool makes from it: a tool reads them as XSPEC does, so a
    changed background makes its outputs stale (lineage showed it, yet the
    run stayed up to date)."""
    from sqlalchemy import select

    from archive.db import rows_in, transaction
    from archive.models import File, XraySummary
    from processing.runs import file_content

    roles = ("background", "response", "arf")
    links: dict[int, list[tuple[str, int]]] = {}
    with transaction(engine) as conn:
        for file_id, *linked in rows_in(
                conn, select(XraySummary.file_id, XraySummary.background_id, XraySummary.response_id, XraySummary.arf_id),
                XraySummary.file_id, file_ids):
            links[file_id] = [(role, other) for role, other in zip(roles, linked) if other is not None]
        others = {other for pairs in links.values() for _, other in pairs}
        contents = {row.id: file_content(row)
                    for row in rows_in(conn, select(File.id, File.header_hash, File.size, File.mtime_ns), File.id, others)}
    return {file_id: [Input(other, role, contents[other]) for role, other in pairs if other in contents]
            for file_id, pairs in links.items()}


def run_each(
    engine, each: str, selection, command: list[str], *, workdir: str = "runs/{item}", workers: int | None = None,
    executor: str = "pool", scheduler: str | None = None, timeout: float | None = None, force: bool = False,
    progress: Progress | None = None, metrics_from: str | None = None,
) -> StepResult:
    """Run ``command`` once per item, in parallel. Items already done with the
    same command and inputs are skipped; a failing item is recorded with its
    log and the others go on. ``metrics_from``: a file (in the item's working
    directory) the tool writes, whose numbers become named metrics of the
    item's exposures, with the item's run as their lineage."""
    step = ExternalStep(each, selection, command, workdir, timeout, metrics_from)
    return run_step(engine, step, force=force, executor=executor, workers=workers, scheduler=scheduler, progress=progress)


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
