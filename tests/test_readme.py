"""The README's tour runs as written: every `obsarch` line of its code blocks,
in order, after `cd` into the demo's night, exits 0. So does the example in
every command's help, run in the order `obsarch --help` lists the commands
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


def _run_lines(lines: list[str], night: Path, env: dict) -> list[str]:
    failures = []
    for line in lines:
        result = subprocess.run(["bash", "-c", line], cwd=night, env=env, capture_output=True, text=True,
                                timeout=LINE_TIMEOUT_S)
        if result.returncode != 0:
            output = (result.stdout[-1500:] + result.stderr[-1500:]).strip()
            failures.append(f"$ {line}\n  exit {result.returncode}\n  " + output.replace("\n", "\n  "))
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
    failures = _run_lines(tour_lines(README.read_text()), night, env)
    assert not failures, f"{len(failures)} README lines fail on the demo:\n\n" + "\n\n".join(failures)


@pytest.mark.slow
def test_every_commands_example_runs_on_the_demo(url, tmp_path, obsarch_on_path):
    night = tmp_path / "night"
    env = _demo(url, night, obsarch_on_path)
    examples = help_examples()
    assert all(example for _, example in examples), [name for name, example in examples if not example]
    lines = [example for name, example in examples
             if name not in EXAMPLES_LEFT_OUT and name.split()[0] not in LEFT_OUT]
    failures = _run_lines(lines, night, env)
    assert not failures, f"{len(failures)} examples fail on the demo:\n\n" + "\n\n".join(failures)
