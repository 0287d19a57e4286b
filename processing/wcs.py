"""A header's celestial WCS: the one way obsarch builds one."""

from __future__ import annotations

import warnings


def celestial_wcs(cards: dict):
    """The 2D celestial WCS of header ``cards`` (keyword -> value, as
    :func:`processing.quality.load_image` gives them), or None when the
    header has none astropy can build. Only standard 8-character keywords
    are used; values other than numbers and text are left out."""
    from astropy.io import fits
    from astropy.wcs import WCS

    header = fits.Header()
    for key, value in cards.items():
        if len(key) <= 8 and not key.startswith("__") and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            header[key] = value
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, naxis=2)
    except (ValueError, KeyError, MemoryError) as exc:  # astropy's ways of saying a WCS is inconsistent
        del exc
        return None
    return wcs if wcs.has_celestial else None
