"""Answers a newcomer found wrong: each test fails on the wrong answer."""

from __future__ import annotations

import csv
import io

import pytest
from factories import obsarch, star_field, write_image

from processing import grouping, offsets

# -- offsets show --group: every member, with the offset current for it ----------------------

_WCS = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0, "CRVAL2": 2.0, "CRPIX1": 100.0, "CRPIX2": 100.0,
        "CDELT1": -0.0003, "CDELT2": 0.0003, "CUNIT1": "deg", "CUNIT2": "deg"}
_SHIFTS = {1: (0.0, 0.0), 2: (10.0, -5.0), 3: (-4.0, 3.0), 4: (1.0, 1.0)}  # CRPIX moves: dx onto frame r is s_r - s


def _wcs_frames(directory, rng):
    for number, (sx, sy) in _SHIFTS.items():
        write_image(directory / f"w-{number}.fits", star_field(rng, (200, 200)),
                    {**_WCS, "CRPIX1": 100.0 + sx, "CRPIX2": 100.0 + sy})


@pytest.fixture
def regrouped(catalog, tmp_path, rng):
    """Group B0 (frames 1-3, reference 1) registered, then frames 2-4 again in
    group R onto frame 2: frames 2 and 3 now have R's offsets as current."""
    _wcs_frames(tmp_path / "w", rng)
    catalog.ingest([tmp_path / "w"])
    engine = catalog.engine
    grouping.create_group(engine, "B0", "1-3", reference="1")
    grouping.create_group(engine, "R", "2-4", reference="2")
    for name in ("B0", "R"):
        group_id, ids, reference = offsets.group_exposures(engine, name)
        offsets.compute_offsets(engine, ids, reference, method="wcs", group_id=group_id, workers=1, executor="serial")
    return catalog


def test_group_table_lists_every_member_with_its_current_offset(regrouped):
    rows = {r["frame_number"]: r for r in offsets.offsets_table(regrouped.engine, group="B0")}
    assert sorted(rows) == [1, 2, 3]  # was empty: filtered on the current offset's own group
    assert (rows[1]["measured_in"], rows[1]["own"], rows[1]["reference_frame"]) == ("B0", True, 1)
    for number in (2, 3):
        assert (rows[number]["measured_in"], rows[number]["own"], rows[number]["reference_frame"]) == ("R", False, 2)
    # the same dx the selection language gives
    frame = regrouped.query("group == 'B0'", columns="frame_number,dx,dy")
    for number, dx, dy in frame.itertuples(index=False):
        assert (rows[number]["dx"], rows[number]["dy"]) == pytest.approx((dx, dy))
    assert rows[3]["dx"] == pytest.approx(_SHIFTS[2][0] - _SHIFTS[3][0], abs=1e-6)  # onto frame 2, not 1


def test_group_table_shows_members_never_registered(catalog, tmp_path, rng):
    _wcs_frames(tmp_path / "w", rng)
    catalog.ingest([tmp_path / "w"])
    grouping.create_group(catalog.engine, "B0", "1-3", reference="1")
    offsets.compute_offsets(catalog.engine, offsets.select_ids(catalog.engine, "1-2"), catalog.resolve("1"), method="wcs",
                            workers=1, executor="serial")
    rows = {r["frame_number"]: r for r in offsets.offsets_table(catalog.engine, group="B0")}
    assert rows[3]["status"] == "none" and rows[3]["dx"] is None
    assert rows[2]["measured_in"] == "selection" and rows[2]["own"] is False
    assert [r["frame_number"] for r in offsets.offsets_table(catalog.engine)] == [1, 2]  # without --group: offsets only


def test_offsets_show_group_after_another_groups_run(regrouped, url):
    result = obsarch(url, "offsets", "show", "--group", "B0", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["frame_number"], r["measured_in"], r["reference_frame"]) for r in rows] == [
        ("1", "B0", "1"), ("2", "R", "2"), ("3", "R", "2")]
    assert "2 of 3 members of B0 have a current offset measured in another run (R onto frame 2)" in result.stderr
    assert "no group named 'nope'" in obsarch(url, "offsets", "show", "--group", "nope", code=1).stderr
