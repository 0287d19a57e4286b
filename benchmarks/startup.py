"""Start-up of the command line, next to a bare Python started in the same run.

    python benchmarks/startup.py [--rounds 15] [--importtime]

Prints the median wall and CPU time of ``python3 -c pass``, of ``obsarch --version``
and of a 10-row ``obsarch query`` on a small catalog (the demo night, 26
exposures, SQLite), each as a multiple of the bare Python, and the floor
of any catalog command: a Python importing SQLAlchemy and Typer alone.
Targets (issue 15): --version within 6x, the query within 15x. With --importtime, the
modules each command imports that cost most (``python -X importtime``).

Every command runs as after a ``pip install``, which compiles each module to
bytecode: an untimed first run writes the bytecode to a temporary
``PYTHONPYCACHEPREFIX`` when the environment says not to write it next to
the sources (``PYTHONDONTWRITEBYTECODE``, as here). ``--no-bytecode-cache``
measures a source tree whose modules are compiled at every start instead.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The console script's own entry point, run by the same interpreter: what
# `obsarch` costs whether it is installed or run from a source tree.
OBSARCH = [sys.executable, "-c", "import sys; sys.argv[0] = 'obsarch'; from cli.main import run; run()"]


# What a command that opens a catalog cannot do without (SQLAlchemy with the
# SQLite dialect, and Typer): the query's floor, measured in the same run.
FLOOR = [sys.executable, "-c", "import sqlalchemy, sqlalchemy.dialects.sqlite, typer"]

ENV: dict[str, str] = {}  # the commands' environment (see main)


def median_seconds(command: list[str], rounds: int, cwd: Path | None = None) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of ``command``.
    On a shared machine the CPU time is the steadier of the two: waiting for
    a core does not count."""
    walls, cpus = [], []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, env=ENV)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def heaviest_imports(command: list[str], cwd: Path | None, count: int = 8) -> list[tuple[float, str]]:
    """The top-level imports of ``command`` that took longest (cumulative ms)."""
    result = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True, cwd=cwd, env=ENV)
    rows = []
    for line in result.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("   "):
            rows.append((int(parts[1]) / 1000, parts[2].strip()))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="compile every module at every start")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="obsarch-startup-"))
    ENV.update(os.environ)
    if args.no_bytecode_cache:
        ENV["PYTHONDONTWRITEBYTECODE"] = "1"
    elif ENV.pop("PYTHONDONTWRITEBYTECODE", None):
        ENV["PYTHONPYCACHEPREFIX"] = str(directory / "pycache")
    try:
        demo = directory / "demo"  # the demo wants a directory of its own (the pycache may be in this one)
        subprocess.run([*OBSARCH, "demo", str(demo)], check=True, stdout=subprocess.DEVNULL, env=ENV)
        query = [*OBSARCH, "query", "band == 'V'", "--limit", "10"]
        listings = [[*OBSARCH, "runs"], [*OBSARCH, "summary"], [*OBSARCH, "group", "list"]]  # rows printed without pandas
        pandas = [sys.executable, "-c", "import pandas"]  # what each of them paid for it before
        for command in ([sys.executable, "-c", "pass"], [*OBSARCH, "--version"], query, FLOOR, *listings, pandas):  # bytecode, untimed
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=demo, env=ENV)
        load = os.getloadavg()
        bare = median_seconds([sys.executable, "-c", "pass"], args.rounds)
        version = median_seconds([*OBSARCH, "--version"], args.rounds)
        rows = median_seconds(query, args.rounds, cwd=demo)
        floor = median_seconds(FLOOR, args.rounds)
        listed = [median_seconds(command, args.rounds, cwd=demo) for command in listings]
        pandas_alone = median_seconds(pandas, args.rounds)
        load = max(load, os.getloadavg())
        bytecode = "compiled at every start" if args.no_bytecode_cache else "bytecode cached, as installed"
        print(f"{args.rounds} rounds, {bytecode}; load average {load[0]:.2f} (1 min, the higher of start and end)")
        print(f"{'':29}{'wall':>9}{'':17}{'CPU':>9}")
        print(f"{'python3 -c pass':29}{bare[0] * 1000:7.1f} ms{'':17}{bare[1] * 1000:7.1f} ms")
        for label, figures, target in (("obsarch --version", version, 6), ("obsarch query ... --limit 10", rows, 15)):
            wall, cpu = figures
            print(f"{label:29}{wall * 1000:7.1f} ms {wall / bare[0]:5.1f}x python{'':4}{cpu * 1000:7.1f} ms "
                  f"{cpu / bare[1]:5.1f}x python  (target {target}x)")
        wall, cpu = floor
        print(f"{'import sqlalchemy, typer':29}{wall * 1000:7.1f} ms {wall / bare[0]:5.1f}x python{'':4}{cpu * 1000:7.1f} ms "
              f"{cpu / bare[1]:5.1f}x python  (the floor of any catalog command: "
              f"obsarch's own share of the query {max(rows[1] - cpu, 0) * 1000:.0f} ms CPU)")
        for command, (wall, cpu) in zip(listings, listed):
            label = "obsarch " + " ".join(command[len(OBSARCH):])
            print(f"{label:29}{wall * 1000:7.1f} ms {wall / bare[0]:5.1f}x python{'':4}{cpu * 1000:7.1f} ms "
                  f"{cpu / bare[1]:5.1f}x python  (no target)")
        wall, cpu = pandas_alone
        print(f"{'import pandas':29}{wall * 1000:7.1f} ms {wall / bare[0]:5.1f}x python{'':4}{cpu * 1000:7.1f} ms "
              f"{cpu / bare[1]:5.1f}x python  (what a listing paid for its rows before it printed them without pandas)")
        if args.importtime:
            for label, command in (("--version", [*OBSARCH, "--version"]), ("query", query)):
                heavy = ", ".join(f"{name} {ms:.0f} ms" for ms, name in heaviest_imports(command, directory))
                print(f"imports of {label}: {heavy}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    main()
