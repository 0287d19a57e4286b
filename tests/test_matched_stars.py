"""The matched stars of a star-matched offset: stored with it, drawn on the frame page."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from factories import star_field, write_image
from sqlalchemy import select
from typer.testing import CliRunner

from archive.models import Offset
from cli.main import app as cli_app
from processing.offsets import MAX_MATCHED_STORED, Transform
from processing.report import picture_points

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from web.app import create_app  # noqa: E402

SHAPE = (320, 480)  # not square: a swapped axis would show
TRUTHS = {1: Transform(0, 0), 2: Transform(10.4, -6.3, 0.5), 3: Transform(-22.7, 14.1, -1.2)}


@pytest.fixture
def fields(catalog, tmp_path, rng):
    """Three frames of one field, moved by known transforms onto frame 1, registered by `obsarch offsets compute`."""
    sky = np.column_stack([rng.uniform(-40, SHAPE[1] + 40, 90), rng.uniform(-40, SHAPE[0] + 40, 90)])
    flux = rng.uniform(3e3, 4e4, len(sky))
    for number, truth in TRUTHS.items():
        xy = (np.c_[sky, np.ones(len(sky))] @ np.linalg.inv(truth.matrix).T)[:, :2]  # frame pixels of the sky
        inside = (xy[:, 0] > 8) & (xy[:, 0] < SHAPE[1] - 8) & (xy[:, 1] > 8) & (xy[:, 1] < SHAPE[0] - 8)
        write_image(tmp_path / "m" / f"m-{number}.fits", star_field(rng, SHAPE, positions=xy[inside], fluxes=flux[inside]),
                    {"FILTER": "V"})
    catalog.ingest([tmp_path / "m"])
    result = CliRunner().invoke(cli_app, ["--db", catalog.engine.url.render_as_string(hide_password=False),
                                          "offsets", "compute", "1-3", "--reference", "1", "--workers", "1"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return catalog


def stored(catalog) -> dict[int, tuple[Offset, np.ndarray]]:
    with catalog.engine.connect() as conn:
        rows = conn.execute(select(Offset).where(Offset.method == "stars", Offset.exposure_id != Offset.reference_id)).all()
    return {row.exposure_id: (row, np.array(json.loads(row.matched_json))) for row in rows}


def test_matched_pairs_map_by_the_stored_transform(fields):
    offsets = stored(fields)
    assert len(offsets) == 2  # frames 2 and 3; the reference is not matched
    for row, pairs in offsets.values():
        assert pairs.shape[1] == 4 and 20 <= len(pairs) <= MAX_MATCHED_STORED
        assert len(pairs) == row.nmatched  # the pairs the fit used, no more, no fewer
        transform = Transform(row.dx, row.dy, row.rotation, row.scale)
        assert np.hypot(*(transform.apply(pairs[:, :2]) - pairs[:, 2:]).T).max() < 0.5


def test_frame_page_draws_one_marker_per_stored_pair(fields, tmp_path):
    client = TestClient(create_app(catalog=fields, thumbnails=tmp_path / "thumbs"))
    for exposure_id, (_, pairs) in stored(fields).items():
        page = client.get(f"/exposures/{exposure_id}").text
        svg = re.search(r'<svg class="matched"[^>]*viewBox="0 0 (\d+) (\d+)"[^>]*>(.*?)</svg>', page, re.S)
        assert svg and (int(svg[1]), int(svg[2])) == (SHAPE[1], SHAPE[0])  # the preview's pixels: 480x320, unscaled
        centres = np.array(re.findall(r'<circle class="star" cx="([-\d.]+)" cy="([-\d.]+)"', svg[3]), dtype=float)
        assert len(centres) == len(pairs)
        # y down in the PNG: FITS row y is drawn at height - (y + 0.5)
        assert centres == pytest.approx(np.column_stack([pairs[:, 0] + 0.5, SHAPE[0] - pairs[:, 1] - 0.5]), abs=0.01)
    reference = fields.resolve("1")
    page = client.get(f"/exposures/{reference}").text
    assert "no matched stars stored" in page and '<svg class="matched"' not in page


def test_picture_points_follow_the_preview_downsampling():
    # a 2100x1000 image is averaged in 3x3 blocks for a 1024 px preview: 700x333 pixels
    points, size = picture_points(np.array([[0.0, 0.0], [2099.0, 998.0]]), (1000, 2100), 1024)
    assert size == (700, 333)
    assert points == pytest.approx(np.array([[0.5 / 3, 333 - 0.5 / 3], [2099.5 / 3, 333 - 998.5 / 3]]))
