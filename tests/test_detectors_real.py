"""The real LCO frames (fpack-compressed SCI + BPM, a CAT table) calibrated per
detector, with a master bias made from copies of one of them (both backends)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from archive.exceptions import ObsarchError
from processing import calibration, quality
from processing.machinery import EXIT_DONE

LCO = sorted(("ogg0m404-kb82-20170815-1159-e91.fits.fz", "ogg0m404-kb82-20170815-1160-e91.fits.fz",
              "ogg0m404-kb82-20170815-1161-e91.fits.fz", "ogg0m404-kb82-20170816-0339-e91.fits.fz"))
BIAS_LEVEL = 100.0


@pytest.fixture
def lco(catalog, real_data, tmp_path, rng):
    """The four real frames, and three biases: copies of the first frame's
    headers, SCI set to a known level, BPM and CAT kept."""
    raw = tmp_path / "raw"
    raw.mkdir()
    source = real_data / "ccd_imaging" / LCO[0]
    for i in range(3):
        with fits.open(source) as hdul:
            sci = hdul["SCI"]
            header = sci.header.copy()
            header["OBSTYPE"], header["EXPTIME"] = "BIAS", 0.0
            data = (BIAS_LEVEL + rng.normal(0, 0.01, sci.data.shape)).astype(np.float32)
            hdus = [fits.PrimaryHDU(), fits.CompImageHDU(data, header, name="SCI", quantize_level=-0.001),
                    hdul["CAT"].copy(), fits.CompImageHDU(hdul["BPM"].data, hdul["BPM"].header, name="BPM")]
            fits.HDUList(hdus).writeto(raw / f"bias-{i}.fits.fz")
    for name in LCO:
        (raw / name).symlink_to(real_data / "ccd_imaging" / name)
    catalog.ingest([raw])
    return catalog, tmp_path


def test_lco_frames_calibrated_per_detector_with_their_mask(lco, real_data):
    catalog, tmp = lco
    result = calibration.make_master(catalog.engine, "bias", out_dir=tmp / "masters")
    assert result.exit_code == EXIT_DONE, result.last_line()
    (master,) = (tmp / "masters").glob("*.fits")
    with fits.open(master) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI"]  # the mask is no detector to combine
        assert float(np.median(hdul["SCI"].data)) == pytest.approx(BIAS_LEVEL, abs=0.01)
    row = catalog.query("product == 'master_bias'", columns="binning,gain,detector_shape,detector")
    assert list(row.iloc[0]) == ["2x2", 1.0, "1020x1523", "ccdkb82-1"]

    result = calibration.calibrate(catalog.engine, "instrument == 'kb82'", use=("bias",), out_dir=tmp / "cal", workers=1)
    assert result.exit_code == EXIT_DONE, result.last_line()
    assert len(result.done) == 4
    for name in LCO:
        product = tmp / "cal" / f"{name.removesuffix('.fits.fz')}_cal.fits"
        with fits.open(product) as ours, fits.open(real_data / "ccd_imaging" / name) as theirs:
            assert [h.name for h in ours] == ["PRIMARY", "SCI", "BPM"]  # the source catalogue is not carried
            assert ours["SCI"].header["OBJECT"] == theirs["SCI"].header["OBJECT"]
            difference = ours["SCI"].data - (theirs["SCI"].data.astype(np.float64) - BIAS_LEVEL)
            assert np.nanmax(np.abs(difference)) < 0.05
            assert np.array_equal(ours["BPM"].data, theirs["BPM"].data)

    measured = quality.compute(catalog.engine, "product == 'calibrated'", workers=1)
    assert measured.exit_code == EXIT_DONE, measured.last_line()
    from sqlalchemy import text

    with catalog.engine.connect() as conn:
        detectors = conn.execute(text("select distinct detector from detector_metrics")).scalars().all()
    assert detectors == ["SCI"]


def test_a_muse_cube_is_one_detector_measured_on_its_white_light(catalog, real_data):
    from sqlalchemy import text

    catalog.ingest([real_data / "eso_muse"])
    result = quality.compute(catalog.engine, "instrument == 'MUSE'", workers=1)
    # the header-only files have no detector: left out and said, no failure; the mosaic's DATA cube
    # is one (STAT and FIELDMAP describe it)
    assert sorted(key.rsplit("/", 1)[1] for key in result.done) == ["subcub_mosaic.fits"]
    assert result.failed == [] and result.exit_code == 0
    assert result.notes == ["left out 3 exposures with no image: MUSE.2017-06-16T01:34:56.867.fits, "
                            "PAE_July2013.primary-header-only.fits, minicube.primary-header-only.fits"]
    with catalog.engine.connect() as conn:
        rows = conn.execute(text("select detector, hdu_index, error from detector_metrics")).all()
    assert [tuple(r) for r in rows] == [("DATA", 1, None)]
    assert list(catalog.query("n_detectors == 1", columns="detector_shape")["detector_shape"]) == ["500x30x30"]


def test_a_spectrums_weight_map_is_no_detector(catalog, real_data, tmp_path):
    """Swift's spectrum carries its extraction region's weight map as a primary
    image: quality compute measured it as a science frame (3 stars in a map)."""
    import shutil

    shutil.copy(real_data / "xray" / "target_sr.pha", tmp_path)
    catalog.ingest([tmp_path])
    assert catalog.query("n_detectors == 0", columns="relpath")["relpath"].tolist() == ["target_sr.pha"]
    with pytest.raises(ObsarchError, match=r"nothing to measure: the 1 exposure selected has no image \(target_sr.pha\)"):
        quality.compute(catalog.engine, "relpath == 'target_sr.pha'", workers=1)


def test_a_stack_leaves_out_the_pixels_each_frames_mask_flags(lco, real_data):
    from processing import offsets, stacking

    catalog, tmp = lco
    ids = offsets.select_ids(catalog.engine, "night == '2017-08-15' and frame_type == 'science'")
    assert len(ids) == 3
    offsets.compute_offsets(catalog.engine, ids, ids[0], workers=1)
    result = stacking.stack(catalog.engine, "night == '2017-08-15' and frame_type == 'science'", out_dir=tmp / "st", method="mean",
                            workers=1)
    assert result.exit_code == EXIT_DONE, result.last_line()
    (stack,) = (tmp / "st").glob("*.fits")
    with fits.open(stack) as ours, fits.open(real_data / "ccd_imaging" / LCO[0]) as reference:
        flagged = reference["BPM"].data != 0
        image, coverage = ours[1].data, ours["COVERAGE"].data
        assert flagged.sum() > 100
        # the reference's flagged pixels are no value of it: hot pixels of up to 18,000 ADU went in with full coverage
        assert coverage[flagged].max() < 3 and not (image[flagged] > np.nanpercentile(image, 99.9)).any()
        assert (coverage == 3).mean() > 0.95  # and the rest of the field is whole
        # on the reference's pixel grid, with its sky coordinates (the stack had no WCS)
        from astropy.wcs import WCS

        ours_wcs, theirs_wcs = WCS(ours[1].header), WCS(reference["SCI"].header).celestial
        corners = np.array([[0, 0], [1522, 1019], [700, 500]], dtype=float)
        assert np.allclose(ours_wcs.all_pix2world(corners, 0), theirs_wcs.all_pix2world(corners, 0), atol=1e-9)
        # and its own time, the middle of the frames as its catalog row says, not the reference's with the WCS
        import pandas as pd

        middle = pd.Timestamp(catalog.query("product == 'stack'", columns="date_obs")["date_obs"].iloc[0])
        assert ours[0].header["DATE-OBS"][:19] == middle.isoformat()[:19] != reference["SCI"].header["DATE-OBS"][:19]
        assert "DATE-OBS" not in ours[1].header and "MJD-OBS" not in ours[1].header
