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


# Commands that run another after their own options: those of their options
# that take a value, and how many words (a duration, a priority, a CPU mask)
# come before the command they run.
RUNNERS: dict[str, tuple[frozenset[str], int]] = {
    "env": (frozenset({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}), 0),
    "nice": (frozenset({"-n", "--adjustment"}), 0),
    "nohup": (frozenset(), 0),
    "timeout": (frozenset({"-s", "--signal", "-k", "--kill-after"}), 1),
    "time": (frozenset({"-f", "--format", "-o", "--output"}), 0),  # bash's keyword too: its -p is an option either way
    "stdbuf": (frozenset({"-i", "-o", "-e", "--input", "--output", "--error"}), 0),
    "ionice": (frozenset({"-c", "--class", "-n", "--classdata", "-p", "--pid", "-P", "--pgid", "-u", "--uid"}), 0),
    "taskset": (frozenset(), 1),
    "chrt": (frozenset(), 1),
    "xvfb-run": (frozenset({"-e", "--error-file", "-f", "--auth-file", "-n", "--server-num", "-s", "--server-args",
                            "-p", "--xauth-protocol", "-w", "--wait"}), 0),
    "xargs": (frozenset({"-a", "--arg-file", "-d", "--delimiter", "-E", "-e", "--eof", "-I", "-i", "--replace", "-L", "-l",
                         "--max-lines", "-n", "--max-args", "-P", "--max-procs", "-s", "--max-chars"}), 0),
    "exec": (frozenset(), 0),
    "command": (frozenset(), 0),
}
# commands that run the rest of the command elsewhere (a container, another host): its programs are not this machine's files
ELSEWHERE = frozenset({"docker", "podman", "singularity", "apptainer", "ssh", "srun", "kubectl"})
# interpreters whose first argument is the program (a script file)
_INTERPRETER = re.compile(r"^(python[0-9.]*|perl|Rscript|ruby|julia|tclsh|wish|node|sh|bash|dash|zsh|ksh)$")
# their options that take a value (python -X dev, perl -I lib), and those giving the code itself (no script file)
_INTERPRETER_VALUED = frozenset({"-X", "-W", "-I", "-M", "-r", "-o", "-O", "--require", "--project", "--load"})
_INTERPRETER_INLINE = frozenset({"-c", "-e", "-E", "-m", "--eval", "-ec", "-lc", "-xc", "-ce"})
# words of a shell script after which a command comes, and that are none
_SHELL_WORDS = frozenset({"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "in", "esac", "!", "{", "}",
                          "function"})
# shell words after which no command comes until the next separator (a loop's variable and list)
_NO_COMMAND_AFTER = frozenset({"for", "select", "case"})
# commands a shell runs itself: no program file of theirs is run, whatever PATH holds
_BUILTINS = frozenset({"echo", "printf", "test", "[", "[[", "cd", "pwd", "true", "false", ":", "export", "set", "unset",
                       "read", "eval", "exit", "return", "shift", "local", "declare", "typeset", "readonly", "trap", "wait",
                       "type", "hash", "ulimit", "umask", "alias", "unalias", "let", "getopts", "shopt", "pushd", "popd",
                       "dirs", "jobs", "fg", "bg", "kill", "break", "continue", "times", "mapfile", "readarray", "caller",
                       "enable", "help", "logout", "disown", "suspend", "compgen", "complete"})
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


@dataclass
class Programs:
    """The program files a command runs, as far as obsarch can tell: the
    words naming them, and why the list may be short."""

    words: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)  # the files interpreters run
    unknown: list[str] = field(default_factory=list)

    def program(self, words: list[str], place: int) -> int:
        """Take the program at ``words[place]``: past a runner's options to
        the command it runs, and a script an interpreter is given; the
        place after them."""
        while place < len(words):
            word = words[place]
            name = Path(word).name
            if name in ELSEWHERE:
                self.words.append(word)
                return place + 1  # its words run in a container or on another host: no command until a separator
            if "$" in word or "`" in word:
                self.unknown.append(f"the program {word!r} is a variable's value")
                return place + 1
            self.words.append(word)
            if name in RUNNERS:
                valued, positional = RUNNERS[name]
                place += 1
                while place < len(words):  # the runner's options, assignments (env X=1), and "--"
                    option = words[place]
                    if option == "--":
                        place += 1
                        break
                    if option.startswith("-") and len(option) > 1:
                        place += 2 if option in valued else 1
                    elif name == "env" and "=" in option:
                        if option.startswith("PATH="):
                            self.unknown.append("env sets PATH: the programs it runs are found there")
                        place += 1
                    else:
                        break
                place += positional
                continue
            if _INTERPRETER.match(name):
                place += 1
                shell = name in SHELLS
                while place < len(words) and words[place].startswith("-"):
                    option = words[place]
                    if option in _INTERPRETER_INLINE or (shell and not option.startswith("--") and "c" in option[1:]):
                        return place + 2  # code given inline (a shell's -c is read as a script elsewhere)
                    place += 2 if option in _INTERPRETER_VALUED and not shell else 1
                if place < len(words):
                    self.scripts.append(words[place])  # the script it runs
                return place + 1
            return place + 1
        return place


def _programs(template: list[str]) -> Programs:
    """The words of ``template`` that name a program it runs: the first (past
    runners: ``nice``, ``timeout 60``, ``env X=1``), the script an
    interpreter runs (``python3 /opt/pipe/reduce.py``), and the commands of
    a shell's ``-c`` script, unless a container or another host runs it
    (``docker run IMAGE sh -c``). Shell builtins, loop variables and the
    lines of a here-document name none. What cannot be told (a program in
    a variable, a script that sets PATH or sources a setup file, a login
    shell) is said in ``unknown``. A word holding a placeholder names no
    fixed program and is left out."""
    found = Programs()
    found.program(list(template), 0)
    script = _shell_script(template)
    if script is not None and not any(Path(word).name in ELSEWHERE for word in template[:script]):
        if any(word.startswith("-") and "l" in word.lstrip("-") for word in template[:script] if not word.startswith("--")):
            found.unknown.append("a login shell (-l) sets its own PATH")
        _script_programs(template[script], found)
    found.words = [word for word in found.words if "{" not in word]
    found.scripts = [word for word in found.scripts if "{" not in word]
    return found


def _script_programs(script: str, found: Programs) -> None:
    lines = script.replace("\\\n", " ").split("\n")  # a line ended by a backslash goes on on the next
    heredoc = None
    for line in lines:
        if heredoc is not None:  # a here-document's lines are data
            if line.strip() == heredoc:
                heredoc = None
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = ""  # a "#" inside a word (a#b, ${#x}) is no comment: only one starting a word is
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:
            found.unknown.append(f"a line of the script obsarch cannot split into words: {line.strip()[:60]!r}")
            continue
        _line_programs(words, found)
        if (match := _HEREDOC.search(line)) is not None:
            heredoc = match.group(2)


def _line_programs(words: list[str], found: Programs) -> None:
    place, start = 0, True
    while place < len(words):
        word = words[place]
        if word.startswith("#"):
            return  # a comment, to the end of the line
        if set(word) <= set("<>"):
            place += 2  # a redirection and its file
            continue
        if set(word) <= set("();|&"):
            start = True
            place += 1
            continue
        if not start:
            place += 1
            continue
        if word in _NO_COMMAND_AFTER:
            start = False
        elif word in ("source", ".") or word.startswith("PATH=") or (word == "export" and any(
                w.startswith("PATH=") for w in words[place + 1:])):
            found.unknown.append("the script sets PATH or sources a setup file: the programs it runs are found there")
            start = False
        elif word in _SHELL_WORDS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word):
            pass  # a command comes next
        elif word in _BUILTINS:
            start = False
        elif "/" in word and not word.startswith("/") and "{" not in word:
            found.unknown.append(f"{word} is found from each item's working directory")
            start = False
        else:
            place = found.program(words, place)
            start = False
            continue
        place += 1


def tool_files(template: list[str], extra: list[str] = (), search: str | None = None) -> tuple[dict[str, str], list[str]]:
    """The program files ``template`` runs (:func:`_programs`), found as the
    tool will find them (on PATH, or by an absolute path), and the files
    and directories in ``extra`` (``obsarch run --tool``), each with what
    changes when it is replaced (:func:`tool_state`): ``real path -> state``;
    and why that may not be all of them. An upgraded tool (a new SAS,
    HEASoft or EsoRex) then has another fingerprint: its items run again,
    and its products are stale. ``search``: the PATH to look on (this
    process's by default)."""
    programs = _programs(template)
    found, unknown = {}, list(programs.unknown)
    for word in programs.words + programs.scripts:
        if not word.startswith("/") and ("/" in word or word in programs.scripts):
            unknown.append(f"{word} is found from each item's working directory")
            continue
        path = word if word.startswith("/") else shutil.which(word, path=search)
        if path is None or not os.path.isfile(path):
            continue  # a missing tool: its items fail and say so
        real = os.path.realpath(path)
        found[real] = tool_state(real)
    for path in extra:
        real = os.path.realpath(os.path.expanduser(path))
        found[real] = tool_state(real)
    return found, list(dict.fromkeys(unknown))


_HASHED: dict[tuple, str] = {}  # (path, inode, size, mtime_ns, ctime_ns) -> content hash, within a process
# what a tool writes under its own directory as it runs: no change of the tool
_RUN_TIME = ("__pycache__", ".pyc", ".pyo", ".log", ".lock", ".pid")


def tool_state(path: str) -> str:
    """What tells a program file's versions apart: a hash of its content,
    so that the same program installed on two hosts is the same. For a
    directory (``--tool $SAS_DIR``), a hash of the names and sizes of the
    files under it, byte caches and logs left out (a Python tool writes
    ``__pycache__`` into its own directory as it first runs): an upgrade
    adds, removes or resizes files; times differ from host to host. "gone"
    when it is no longer there."""
    import hashlib

    try:
        status = os.stat(path)
    except OSError:
        return "gone"
    if os.path.isdir(path):
        listing = hashlib.sha256()
        for folder, folders, names in os.walk(path):
            folders[:] = sorted(f for f in folders if not f.endswith(_RUN_TIME))
            for name in sorted(names):
                if name.endswith(_RUN_TIME):
                    continue
                try:
                    size = os.stat(os.path.join(folder, name)).st_size
                except OSError:
                    continue
                listing.update(f"{os.path.relpath(os.path.join(folder, name), path)}\0{size}\n".encode())
        return f"tree:{listing.hexdigest()[:20]}"
    key = (path, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
    if key not in _HASHED:
        content = hashlib.sha256()
        try:
            with open(path, "rb") as stream:
                while block := stream.read(1 << 20):
                    content.update(block)
        except OSError:
            return "unreadable"
        _HASHED[key] = f"sha256:{content.hexdigest()[:20]}"
    return _HASHED[key]


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


# what a step's parameters hold since runs record their tools: a run without them is a legacy one
_TOOL_PARAMS = ("tools", "template", "search_path")


class ExternalStep(Step):
    """A command run once per item in its working directory; its log is kept
    with the item's run, the files it wrote become products."""

    algorithm, item_runs = ALGORITHM, True
    work = staticmethod(run_command)
    # the PATH the programs were found on: recorded, so that `obsarch stale` looks them up where the run did,
    # but no part of an item's identity (a shell with another PATH finding the same files is the same run)
    execution = {"search_path": ""}

    def __init__(self, each: str, selection, command: list[str], workdir: str, timeout: float | None,
                 metrics_from: str | None = None, tools: list[str] = ()):
        if not command:
            raise UsageError("give the command after --, e.g. obsarch run --each obsid ... -- epchain exposure=2")
        if timeout is not None and not 0 <= timeout <= MAX_TIMEOUT_S:  # NaN too: every item failed with Python's words
            raise UsageError(f"--timeout {timeout:g}: give seconds, from 0 (no limit) to {MAX_TIMEOUT_S:.0e}")
        self.name = f"run:{Path(command[0]).name}"
        self.each, self.selection, self.command, self.workdir = each, selection, command, workdir
        self.timeout = timeout or None
        self.metrics_from = metrics_from
        self._found: tuple[dict[str, str], list[str]] | None = None
        self.extra_tools = list(tools)
        for path in self.extra_tools:
            if not os.path.exists(os.path.expanduser(path)):
                raise UsageError(f"--tool {path}: no such file or directory")

    def _looked_up(self) -> tuple[dict[str, str], list[str]]:
        """The command's program files and what is unknown of them, looked up
        once per command: every item's run records the same."""
        if self._found is None:
            self._found = tool_files(self.command, self.extra_tools)
        return self._found

    def params(self) -> dict:
        return {"each": self.each, **({"metrics_from": self.metrics_from} if self.metrics_from else {}),
                "tools": self._looked_up()[0], "template": self.command, "search_path": os.environ.get("PATH", os.defpath)}

    def notes(self) -> list[str]:
        unknown = self._looked_up()[1]
        if not unknown:
            return super().notes()
        return [*super().notes(), f"an upgrade of some of this command's programs goes unseen ({'; '.join(unknown)}): "
                "name their files or directories with --tool"]

    def up_to_date(self, engine, items, prints: dict[str, str]) -> set[str]:
        """As every step's, and an item done by a run recorded before obsarch
        kept the tools' files (params without ``tools``) stays done, unless
        a later run of it recorded them: which tool made it is not known,
        and running every item of a long reduction again on upgrading
        obsarch would be no more right."""
        from sqlalchemy import select

        from archive.db import transaction

        current = super().up_to_date(engine, items, prints)
        earlier = {key: value for key, value in self.params().items() if key not in _TOOL_PARAMS}
        legacy = {item.key: fingerprint(self.name, {**earlier, **item.params}, self.algorithm, [i.content for i in item.inputs])
                  for item in items if item.key in prints and item.key not in current}
        if not legacy:
            return current
        with transaction(engine) as conn:  # items a run kept the tools of: their legacy runs are superseded
            recorded = set(conn.execute(select(Run.item).where(Run.step == self.name, Run.state == "done",
                                                               Run.item.in_(list(legacy)),
                                                               Run.params_json.like('%"tools"%'))).scalars())
        return current | {key for key, print_ in legacy.items() if key not in recorded and done_before(engine, print_)}

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
    progress: Progress | None = None, metrics_from: str | None = None, tools: list[str] = (),
) -> StepResult:
    """Run ``command`` once per item, in parallel. Items already done with the
    same command and inputs are skipped; a failing item is recorded with its
    log and the others go on. ``metrics_from``: a file (in the item's working
    directory) the tool writes, whose numbers become named metrics of the
    item's exposures, with the item's run as their lineage."""
    step = ExternalStep(each, selection, command, workdir, timeout, metrics_from, tools)
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
