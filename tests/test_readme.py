"""The README's tour runs as written: every `obsarch` line of its code blocks,
in order, after `cd` into the demo's night, exits 0.

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


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(url, tmp_path, obsarch_on_path):
    night = tmp_path / "night"
    env = dict(obsarch_on_path, OBSARCH_DB=url)  # the backend under test, as a user would set it
    made = subprocess.run(["obsarch", "--db", url, "demo", str(night)], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    failures = []
    for line in tour_lines(README.read_text()):
        result = subprocess.run(["bash", "-c", line], cwd=night, env=env, capture_output=True, text=True,
                                timeout=LINE_TIMEOUT_S)
        if result.returncode != 0:
            output = (result.stdout[-1500:] + result.stderr[-1500:]).strip()
            failures.append(f"$ {line}\n  exit {result.returncode}\n  " + output.replace("\n", "\n  "))
    assert not failures, f"{len(failures)} README lines fail on the demo:\n\n" + "\n\n".join(failures)
