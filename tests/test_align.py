"""align catalogs: right or refused, a short list against a long one, any
rotation, flux or magnitude columns (no catalog: no backend)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from typer.testing import CliRunner

from cli.main import app
from processing import offsets

DEC0 = 2.0


def _lists(tmp_path, rng, *, n_b, n_a, rotation_deg, shift, brightness="flux", field=0.2, noise=0.2, related=True):
    """List B of n_b sources; list A: n_a of them, rotated back and shifted
    (so that A -> B is +rotation_deg and +shift about B's centre), with noise."""
    ra, dec = 150 + rng.uniform(-field, field, n_b), DEC0 + rng.uniform(-field, field, n_b)
    Table({"RA": ra, "DEC": dec, "mag": rng.uniform(12, 22, n_b)}).write(tmp_path / "b.csv", overwrite=True)
    centre = offsets._tangent(ra, dec, (150.0, DEC0)).mean(axis=0)
    pick = rng.choice(n_b, n_a, replace=False)
    xy = offsets._tangent(ra[pick], dec[pick], (150.0, DEC0)) - centre
    t = np.radians(-rotation_deg)
    back = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    xa = (xy - shift) @ back.T + rng.normal(0, noise, (n_a, 2)) + centre
    if not related:
        xa = rng.uniform(xy.min(), xy.max(), (n_a, 2)) + centre
    columns = {"ra": 150 + xa[:, 0] / 3600 / np.cos(np.radians(DEC0)), "dec": DEC0 + xa[:, 1] / 3600}
    if brightness:
        columns[brightness] = rng.uniform(1, 100, n_a)
    Table(columns).write(tmp_path / "a.csv", overwrite=True)
    return str(tmp_path / "a.csv"), str(tmp_path / "b.csv")


@pytest.mark.parametrize("rotation, brightness", [(1.5, "flux"), (-137.0, "mag"), (90.0, None)])
def test_any_rotation_with_flux_or_magnitude_columns(tmp_path, rotation, brightness):
    rng = np.random.default_rng(7)
    a, b = _lists(tmp_path, rng, n_b=600, n_a=400, rotation_deg=rotation, shift=(5.0, -3.0), brightness=brightness)
    result = offsets.align_catalogs(a, b)
    t = result.transform
    assert t.rotation == pytest.approx(rotation, abs=0.02) and t.nmatched >= 380
    assert result.log10_p < -10 and result.chance < 5


def test_150_sources_against_3000_stars(tmp_path):
    rng = np.random.default_rng(11)
    a, b = _lists(tmp_path, rng, n_b=3000, n_a=150, rotation_deg=37.0, shift=(12.0, -7.0))
    result = offsets.align_catalogs(a, b)
    t = result.transform
    assert t.rotation == pytest.approx(37.0, abs=0.05) and t.nmatched >= 140
    assert result.log10_p < -50


def test_the_command_says_how_many_matched_of_how_many(tmp_path):
    rng = np.random.default_rng(14)
    a, b = _lists(tmp_path, rng, n_b=300, n_a=60, rotation_deg=0.0, shift=(1.0, -2.0))
    result = CliRunner().invoke(app, ["align", "catalogs", a, b])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    matched = offsets.align_catalogs(a, b).transform.nmatched
    assert first.startswith(f"{matched} of the 60 sources of A matched among the 300 of B (")


def test_unrelated_lists_are_refused_with_exit_3(tmp_path, monkeypatch):
    rng = np.random.default_rng(13)
    a, b = _lists(tmp_path, rng, n_b=3000, n_a=150, rotation_deg=0.0, shift=(0.0, 0.0), related=False)
    with pytest.raises(offsets.NotSignificant, match="no better than chance"):
        offsets.align_catalogs(a, b)
    result = CliRunner().invoke(app, ["align", "catalogs", a, b])
    assert result.exit_code == 3 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("align catalogs: refused:") and "expected" in lines[0]
