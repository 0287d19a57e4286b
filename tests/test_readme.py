"""The README's tour runs as written: every `obsarch` line of its code blocks,
in order, after `cd` into the demo's night, exits 0, and every line that runs
a listing command (query, sql, report, summary, errors, group list...) with
its output on the screen lists at least one row, and a value in every
column it asks for: a tour line that shows nothing on the demo shows a
newcomer nothing. So does the example in every
command's help exit 0, run in the order `obsarch --help` lists the commands
(the order of a night's work).

Archive downloads (they need the network) and `serve` (it does not return)
are left out. A failure lists every line that failed, with its output.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"
LEFT_OUT = ("archive", "fetch", "sync", "serve")
LINE_TIMEOUT_S = 600


def tour_lines(text: str) -> list[str]:
    """Shell lines of the README's code blocks that run obsarch (``obsarch ...``
    or ``... && obsarch ...``), archive downloads and serve left out."""
    lines, fenced, shell = [], False, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced, shell = not fenced, line.strip() in ("```", "```sh", "```bash", "```console")
            continue
        if not (fenced and shell):
            continue
        commands = [part.strip() for part in line.split("&&")]
        runs = [c for c in commands if c.startswith("obsarch ")]
        if runs and not any(c.split()[1] in LEFT_OUT for c in runs):
            lines.append(line.strip())
    return lines


# Commands whose output is rows. Counted from the count line a command prints
# on stderr ("12 exposures"), else from the tab-separated tables it prints when
# piped: the rows of a table are the lines after its header with as many tabs
# (a one-column table counts none: such a line fails loudly, never silently).
LISTING = {"query", "sql", "summary", "errors", "runs", "products", "stale", "downloads", "report spectra",
           "report quality", "flag history", "group list", "group show", "offsets show", "quality detectors"}
COUNT_LINE = re.compile(r"^(\d+) (exposures?|spectrum|spectra|files? with problems|stale products?)$", re.MULTILINE)
# Listing lines that may list nothing on the demo, and why.
NO_ROWS_ON_THE_DEMO = {
    "obsarch downloads": "the demo downloads nothing (the tour's archive lines are not run)",
    "obsarch errors": "every file of the demo reads (an unreadable one would make the tour's re-scans exit 3)",
    "obsarch stale": "nothing the tour made changes before it asks (3870 is graded bad before it is calibrated: no change)",
}
# Lines whose output must show a text: the run ids the tour names.
SHOWS = {
    "obsarch runs show 36": "step: run:sh\nstate: done",
    "obsarch runs show 37": "parent: 36\nstep: run:sh\nitem: ",
}


def command_path(line: str) -> str:
    """The command an ``obsarch`` line runs (``group show``), from the app's tree."""
    words = shlex.split(line.split("obsarch ", 1)[1], comments=True)
    group, path = typer.main.get_command(app), []
    for word in words:
        if word.startswith("-") or not hasattr(group, "commands") or word not in group.commands:
            break
        path.append(word)
        group = group.commands[word]
    return " ".join(path)


def listed_rows(stdout: str, stderr: str) -> int:
    """How many rows a listing command printed (see LISTING)."""
    count = COUNT_LINE.search(stderr)
    if count:
        return int(count.group(1))
    rows, columns = 0, None
    for text in stdout.splitlines():
        if not text.strip() or text.startswith("# "):
            columns = None
        elif columns is None:
            columns = text.count("\t") or None  # a table's header (a line without a tab is no table's)
        elif text.count("\t") == columns:
            rows += 1
    return rows


def empty_columns(stdout: str) -> list[str]:
    """The columns of the first table printed (tab-separated) in which no row
    has a value: a tour line that asks for a column the demo leaves empty
    shows a newcomer nothing of what it is there to show."""
    lines = [text for text in stdout.splitlines() if "\t" in text]
    if len(lines) < 2:
        return []
    header, rows = lines[0].split("\t"), [text.split("\t") for text in lines[1:]]
    return [name for i, name in enumerate(header) if not any(i < len(row) and row[i].strip() for row in rows)]


def must_list_rows(line: str) -> bool:
    """A listing command whose rows reach the screen, not a file or a format for scripts."""
    shell = list(shlex.shlex(line, posix=True, punctuation_chars=True))  # ">" in a quoted selection is no redirection
    return (command_path(line) in LISTING and not {">", ">>", "|"} & set(shell) and "--format" not in shell
            and not any(line.startswith(prefix) for prefix in NO_ROWS_ON_THE_DEMO))


def test_the_rules_know_the_tour():
    lines = tour_lines(README.read_text())
    for prefix in (*NO_ROWS_ON_THE_DEMO, *SHOWS):  # no rule outlives the line it was written for
        assert any(line.startswith(prefix) for line in lines), prefix
    assert command_path("obsarch group show B0") == "group show"
    assert command_path("obsarch runs") == "runs" and command_path("obsarch runs show 36") == "runs show"
    assert command_path("obsarch --db x query 'a'") == ""  # the tour's lines put no option first
    checked = [line for line in lines if must_list_rows(line)]
    assert any(line.startswith("obsarch report spectra \"obsid") for line in checked)
    assert any("gti_exposure_ks < 2" in line for line in checked)
    assert any("exptime >= 60" in line for line in checked) and any("rate > 5" in line for line in checked)
    assert not any("> drot.csv" in line or line.startswith("obsarch downloads") for line in checked)


@pytest.mark.parametrize("stdout, stderr, rows", [
    ("band\tcount(*)\nB\t21\nV\t13\n", "", 2),
    ("band\tcount(*)\n", "", 0),
    ("a\tb\n1\t2\n", "0 exposures\n", 0),  # the count line wins
    ("", "warning: x\n4 spectra\n", 4),
    ("# raw exposures per band\nband\texposures\nB\t21\n# files per status\nstatus\tfiles\npresent\t65\n", "", 2),
    ("# t\nnight\tband\tok\n2017\tV\t3\nwrote report/index.html (65 frames, 10 without a thumbnail)\n", "", 1),
    ("run: 36\nstep: run:sh\n", "", 0),
])
def test_listed_rows_counts_rows_not_headers(stdout, stderr, rows):
    assert listed_rows(stdout, stderr) == rows


def test_empty_columns_are_the_ones_without_any_value():
    assert empty_columns("frame_number\tgain\tccd_temp\n3852\t\t-20\n3853\t\t\n") == ["gain"]
    assert empty_columns("frame_number\tgain\n") == [] and empty_columns("3 done\n") == []


def test_tour_lines_are_found():
    lines = tour_lines(README.read_text())
    assert any(line.startswith("obsarch ingest ngc3293 xmm") for line in lines)
    assert any(line.startswith("mv ngc3293 ") and "&& obsarch roots move" in line for line in lines)
    assert not any(re.search(r"obsarch (fetch|sync|archive|serve)\b", line) for line in lines)
    assert len(lines) > 40


@pytest.fixture
def obsarch_on_path(tmp_path) -> dict:
    """An environment whose `obsarch` runs the code under test."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "obsarch"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
                      "'import sys; sys.argv[0] = \"obsarch\"; from cli.main import run; run()' \"$@\"\n")
    script.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(README.parent), os.environ.get("PYTHONPATH")])))
    for name in ("OBSARCH_DB", "OBSARCH_CONFIG"):
        env.pop(name, None)
    return env


def help_examples() -> list[tuple[str, str]]:
    """(command, the example of its help) in the order of ``obsarch --help``."""
    def walk(group, prefix):
        for name in group.list_commands(None):
            command = group.commands[name]
            if getattr(command, "hidden", False):
                continue
            if hasattr(command, "commands"):
                yield from walk(command, (*prefix, name))
            else:
                example = re.search(r"Example: (obsarch .*)", command.help or "")
                yield " ".join((*prefix, name)), example.group(1).strip() if example else ""

    return list(walk(typer.main.get_command(app), ()))


EXAMPLES_LEFT_OUT = {
    "roots move": "the tree must be moved first (the README's tour does: mv, then roots move)",
}


def _run_lines(lines: list[str], night: Path, env: dict, check_output: bool = False) -> list[str]:
    """Run each line; the failures: a non-zero exit, and with ``check_output``
    a listing line that lists no row, or a line without the text SHOWS expects."""
    failures = []
    for line in lines:
        result = subprocess.run(["bash", "-c", line], cwd=night, env=env, capture_output=True, text=True,
                                timeout=LINE_TIMEOUT_S)
        problem = f"exit {result.returncode}" if result.returncode != 0 else None
        if check_output and problem is None:
            if must_list_rows(line) and listed_rows(result.stdout, result.stderr) == 0:
                problem = "lists no row on the demo"
            elif must_list_rows(line) and "--columns" in line and empty_columns(result.stdout):
                problem = f"columns without a value on the demo: {', '.join(empty_columns(result.stdout))}"
            expected = next((text for prefix, text in SHOWS.items() if line.startswith(prefix)), None)
            if expected is not None and expected not in result.stdout:
                problem = f"does not show {expected!r}"
        if problem:
            output = (result.stdout[-1500:] + result.stderr[-1500:]).strip()
            failures.append(f"$ {line}\n  {problem}\n  " + output.replace("\n", "\n  "))
    return failures


def _demo(url: str, night: Path, env: dict) -> dict:
    env = dict(env, OBSARCH_DB=url)  # the backend under test, as a user would set it
    made = subprocess.run(["obsarch", "--db", url, "demo", str(night)], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    return env


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(url, tmp_path, obsarch_on_path):
    night = tmp_path / "night"
    env = _demo(url, night, obsarch_on_path)
    failures = _run_lines(tour_lines(README.read_text()), night, env, check_output=True)
    assert not failures, f"{len(failures)} README lines fail on the demo:\n\n" + "\n\n".join(failures)


@pytest.mark.slow
def test_every_commands_example_runs_on_the_demo(url, tmp_path, obsarch_on_path):
    night = tmp_path / "night"
    env = _demo(url, night, obsarch_on_path)
    examples = help_examples()
    assert all(example for _, example in examples), [name for name, example in examples if not example]
    # the demo makes a catalog of its own: it refuses the tour's, which holds a demo already
    lines = ["env -u OBSARCH_DB " + example if name == "demo" else example for name, example in examples
             if name not in EXAMPLES_LEFT_OUT and name.split()[0] not in LEFT_OUT]
    failures = _run_lines(lines, night, env)
    assert not failures, f"{len(failures)} examples fail on the demo:\n\n" + "\n\n".join(failures)
