"""The wheel carries the migrations (`obsarch db upgrade` works from a plain
install) and the compiled card parser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_db_upgrade_from_an_installed_wheel(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = wheels.glob("obsarch-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True)
    assert (site / "migrations" / "env.py").is_file()
    assert (site / "archive" / "keywords.toml").is_file()
    for served in ("templates/night.html", "templates/report.html", "static/htmx.min.js", "static/htmx.LICENSE",
                   "static/review.js", "static/obsarch.css"):
        assert (site / "web" / served).is_file(), served  # `obsarch serve` needs nothing from outside the wheel
    assert list((site / "archive").glob("_cards.*.so")), "the wheel has no compiled card parser"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import migrations; assert migrations.__file__.startswith(sys.argv[1]), migrations.__file__;"
        "from cli.main import app; app(['--db', 'sqlite:///cat.db', 'db', 'upgrade'])"
    )
    result = subprocess.run([sys.executable, "-c", script, str(site)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from archive.db import head_revision

    assert f"schema (none) -> {head_revision()}" in result.stdout
    assert (tmp_path / "cat.db").is_file()


@pytest.mark.slow
def test_without_a_c_compiler_the_wheel_has_the_python_parser(tmp_path):
    source = tmp_path / "source"  # without any earlier build's output
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "*.so", "*.c", "__pycache__"))
    wheels = tmp_path / "wheels"
    env = {**os.environ, "CC": "false"}  # every compile fails
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        check=True, cwd=tmp_path, env=env,
    )
    (wheel,) = wheels.glob("obsarch-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True)
    assert not list((site / "archive").glob("_cards*")), "nothing of the extension should be installed"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from archive import headers; assert headers._compiled_parse_cards is None;"
        "cards, _ = headers.parse_header(b'EXPTIME = 60.0 / [s]'.ljust(80));"
        "assert cards == [(0, 'EXPTIME', '60.0', 60.0, 'f', '[s]')], cards"
    )
    # -I -S: no site-packages, so nothing but this install can provide archive
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(site)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
