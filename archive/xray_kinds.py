"""What kind of X-ray file a file is, from its headers alone.

One rule for the two places that need it: the X-ray summary step
(:mod:`processing.xray`, which opens the file) and ingest, which gives an
X-ray file its ``frame_type`` from the cards it read (:mod:`archive.keywords`).
Kinds (the first that any HDU shows, in :data:`XRAY_KINDS` order): spectrum,
events, lightcurve, response, arf, image, region, gti.
"""

from __future__ import annotations

import re

# The kinds of X-ray file a summary names, in the order a file showing several is
# named by (classify), and the roles of a spectrum: the only values xray_kind and
# xray_role hold, so that others are refused.
XRAY_KINDS = ("spectrum", "events", "lightcurve", "response", "arf", "image", "region", "gti")
XRAY_ROLES = ("source", "background")
KIND_ORDER = XRAY_KINDS
# Cards that make a file worth opening as an X-ray file (the summary step finds
# them with one indexed query): an HDUCLAS1 of these, unless an HDUCLASS says
# ESO (MUSE products classify their HDUs too: HDUCLAS1 'IMAGE'), or an EXTNAME.
XRAY_CLASSES = ("EVENTS", "SPECTRUM", "LIGHTCURVE", "RESPONSE", "SPECRESP", "REGION", "GTI", "IMAGE")
XRAY_EXTNAMES = ("EVENTS", "SPECTRUM", "RATE", "MATRIX", "SPECRESP MATRIX", "SPECRESP", "STDGTI", "GTI")

_CLASS1 = {
    "SPECTRUM": "spectrum", "EVENTS": "events", "LIGHTCURVE": "lightcurve", "RESPONSE": "response",
    "SPECRESP": "arf", "IMAGE": "image", "REGION": "region", "GTI": "gti",
}  # fmt: skip
_EXTNAME = {
    "SPECTRUM": "spectrum", "EVENTS": "events", "RATE": "lightcurve", "LIGHTCURVE": "lightcurve",
    "MATRIX": "response", "SPECRESP MATRIX": "response", "SPECRESP": "arf", "GTI": "gti", "STDGTI": "gti",
}  # fmt: skip
_CONTENT = (("PHA", "spectrum"), ("SPECTRUM", "spectrum"), ("EVT", "events"), ("EVENTS", "events"),
            ("LIGHT CURVE", "lightcurve"), ("LIGHTCURVE", "lightcurve"), ("RESPONSE", "response"),
            ("MATRIX", "response"), ("ARF", "arf"), ("SPECRESP", "arf"), ("IMAGE", "image"))
_SOURCE_NAME = re.compile(r"(^|[^a-z0-9])(src|source)([^a-z]|$)", re.IGNORECASE)
_BACKGROUND_NAME = re.compile(r"(^|[^a-z0-9])(bg|bkg|bgd|back|background)([^a-z]|$)|bgspec|specbg|bkgspec|_bg\.", re.IGNORECASE)


def hdu_kind(header, is_table: bool, has_data: bool) -> str | None:
    """The kind one HDU shows by HDUCLAS1, then EXTNAME, then CONTENT."""
    class1 = str(header.get("HDUCLAS1", "")).strip().upper()
    extname = str(header.get("EXTNAME", "")).strip().upper()
    content = str(header.get("CONTENT", "")).strip().upper()
    kind = _CLASS1.get(class1) or _EXTNAME.get(extname)
    if kind is None and content:
        kind = next((k for word, k in _CONTENT if content.startswith(word)), None)
    class2 = str(header.get("HDUCLAS2", "")).strip().upper()
    if kind == "response" and class2 == "EBOUNDS":
        return None  # the channel bounds of a response, not its matrix
    if kind == "response" and (class2 == "SPECRESP" or (not class2 and extname == "SPECRESP")):
        return "arf"  # OGIP: an ARF is HDUCLAS1 RESPONSE, HDUCLAS2 SPECRESP (an RMF's is RSP_MATRIX); older ones name only the extension
    if kind in ("events", "spectrum", "lightcurve") and not is_table:
        return "image" if has_data else None  # an image binned from events, or a WMAP
    if kind == "image" and not has_data:
        return None
    return kind


def classify(hdus: list[tuple[int, object, bool, bool]], name: str = "") -> tuple[str, str | None, int] | None:
    """(kind, role, HDU index) of a file from its HDUs as (index, header,
    is_table, has_data); None when nothing says X-ray."""
    found: dict[str, int] = {}
    for index, header, is_table, has_data in hdus:
        kind = hdu_kind(header, is_table, has_data)
        if kind is not None:
            found.setdefault(kind, index)
    kind = next((k for k in KIND_ORDER if k in found), None)
    if kind is None:
        return None
    role = None
    if kind == "spectrum":
        header = next(h for i, h, _, _ in hdus if i == found[kind])
        class2 = str(header.get("HDUCLAS2", "")).strip().upper()
        role = spectrum_role(class2, name)
    return kind, role, found[kind]


def spectrum_role(class2: str, name: str) -> str:
    """A spectrum's own role: HDUCLAS2 BKG is a background, NET (background
    taken off) a source; TOTAL says nothing (SAS and CIAO write it on
    background spectra too), so then the file's name: a background's word
    (bkg, bg, back...) unless a source's is there too ('BG_CMi_pn_src.pha'
    is the star BG CMi's). A spectrum that links a background is a source
    whatever its name (:func:`processing.xray_catalog.link_all`)."""
    if class2 in ("BKG", "BACKGROUND"):
        return "background"
    if class2 == "NET":
        return "source"
    return "background" if _BACKGROUND_NAME.search(name) and not _SOURCE_NAME.search(name) else "source"


def _header_of(unit) -> dict[str, str]:
    """The cards :func:`hdu_kind` reads, from a parsed header unit."""
    values = unit.values()
    return {k: values[k][2] for k in ("HDUCLAS1", "HDUCLAS2", "EXTNAME", "CONTENT") if k in values and values[k][2] is not None}


def _is_table(unit) -> bool:
    return unit.hdu_type in ("bintable", "table")


def _has_data(unit) -> bool:
    card = unit.values().get("NAXIS")  # a compressed HDU's cards are its image's (archive.headers.image_cards)
    return bool(card and card[3] and card[3] > 0)


def is_candidate(units) -> bool:
    """Whether the X-ray summary step opens this file: an HDU whose HDUCLAS1 is
    one of :data:`XRAY_CLASSES` (and no HDUCLASS 'ESO'), or whose EXTNAME is
    one of :data:`XRAY_EXTNAMES` (what ``processing.xray_catalog.candidate_files``
    asks the catalog)."""
    def text(unit, keyword: str) -> str:
        card = unit.values().get(keyword)
        return card[2].strip() if card and isinstance(card[2], str) else ""

    eso = any(text(u, "HDUCLASS") == "ESO" for u in units)
    return (not eso and any(text(u, "HDUCLAS1") in XRAY_CLASSES for u in units)) or any(
        (u.extname or "") in XRAY_EXTNAMES for u in units)


def kind_of_units(units) -> tuple[str, int] | None:
    """(kind, HDU index) of a file from its parsed header units
    (:class:`archive.headers.HeaderUnit`), by the rule the summary step
    applies to the opened file; None for a file that step would not
    summarize (no X-ray card, or one it would not call X-ray)."""
    if not is_candidate(units):
        return None
    found = classify([(u.index, _header_of(u), _is_table(u), _has_data(u)) for u in units])
    return (found[0], found[2]) if found else None
