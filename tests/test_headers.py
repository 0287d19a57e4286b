"""The header reader: card parsing, file structure, bad files, real files vs astropy."""

from __future__ import annotations

import gzip
import math
import random
import warnings

import numpy as np
import pytest
from astropy.io import fits
from factories import missing, write_frame

from archive import headers
from archive.exceptions import FitsReadError
from archive.headers import normalize_keyword, parse_cards, parse_header, read_headers


def card(text: str) -> str:
    return f"{text:<80}"[:80]


def _compiled():
    """The compiled parser; in CI it must have been built."""
    try:
        from archive._cards import parse_cards as compiled
    except ImportError as exc:
        missing(f"the compiled card parser was not built ({exc}); the Python one is used")
    return compiled


@pytest.fixture(params=["python", "compiled"])
def parse(request):
    """Each card parser, as ``text -> cards``."""
    if request.param == "python":
        return parse_cards
    compiled = _compiled()
    return lambda text: compiled(text.encode("ascii"))


@pytest.mark.parametrize(
    "image, expected",
    [
        ("EXPTIME =                 60.0 / [s] exposure", ("EXPTIME", "60.0", 60.0, "f", "[s] exposure")),
        ("NAXIS   =                    2", ("NAXIS", "2", 2.0, "i", None)),
        ("SIMPLE  =                    T", ("SIMPLE", "T", 1.0, "b", None)),
        ("FLAG    =                    F / no", ("FLAG", "F", 0.0, "b", "no")),
        ("OBJECT  = 'NGC 3293'           / target", ("OBJECT", "NGC 3293", None, "s", "target")),
        ("OBSERVER= 'O''Brien / x'", ("OBSERVER", "O'Brien / x", None, "s", None)),
        ("RA      = ' 22:04:08'", ("RA", " 22:04:08", None, "s", None)),
        ("BIG     =   1.0D+03", ("BIG", "1.0D+03", 1000.0, "f", None)),
        ("EXPTIME =   9.00000000000E+001", ("EXPTIME", "9.00000000000E+001", 90.0, "f", None)),
        ("EXPTIME = 060.00", ("EXPTIME", "060.00", 60.0, "f", None)),
        ("BLANKV  =", ("BLANKV", None, None, "u", None)),
        ("CPLX    = (1.0, 2.0)", ("CPLX", "(1.0, 2.0)", None, "c", None)),
        ("AIRMASS = INDEF", ("AIRMASS", "INDEF", None, "x", None)),
        ("HIERARCH ESO INS DROT POSANG = 135.6 / [deg] angle", ("ESO INS DROT POSANG", "135.6", 135.6, "f", "[deg] angle")),
        ("HIERARCH ESO DET READ CURNAME = 'SCI1.0'", ("ESO DET READ CURNAME", "SCI1.0", None, "s", None)),
        ("COMMENT   FITS (Flexible Image Transport System) format", ("COMMENT", "  FITS (Flexible Image Transport System) format", None, "C", None)),
        ("HISTORY bias subtracted", ("HISTORY", "bias subtracted", None, "C", None)),
        ("          / PTF DMASK BIT DEFINITIONS", ("", "  / PTF DMASK BIT DEFINITIONS", None, "C", None)),
        ("COMMENT = 'with an equals sign'", ("COMMENT", "= 'with an equals sign'", None, "C", None)),
    ],
)
def test_card_values(parse, image, expected):
    (parsed,) = parse(card(image))
    assert parsed[1:] == expected


def test_blank_cards_are_dropped_but_positions_kept(parse):
    cards = parse(card("A       = 1") + card("") + card("B       = 2"))
    assert [(c[0], c[1]) for c in cards] == [(0, "A"), (2, "B")]


def test_continue_long_strings_are_joined(parse):
    text = (
        card("LONGSTRN= 'OGIP 1.0'")
        + card("FILENAME= 'a very long &' / first")
        + card("CONTINUE  'file name &'")
        + card("CONTINUE  'ends here' / last")
        + card("NEXT    = 1")
    )
    cards = parse(text)
    assert [c[1] for c in cards] == ["LONGSTRN", "FILENAME", "NEXT"]
    assert cards[1][2] == "a very long file name ends here"
    assert cards[1][5] == "first last"


def test_keywords_are_normalized():
    assert normalize_keyword("hierarch  eso ins drot posang") == "ESO INS DROT POSANG"
    assert normalize_keyword("HIERARCH ESO OBS ID") == "ESO OBS ID"


def test_non_ascii_bytes_are_replaced_and_reported():
    raw = (card("SIMPLE  =                    T") + card("OBSERVER= 'Jos\xe9'") + card("EXPTIME = 5")).encode("latin-1")
    cards, invalid = parse_header(raw)
    assert [c[1] for c in cards] == ["SIMPLE", "OBSERVER", "EXPTIME"]
    assert cards[1][2] == "Jos?"
    assert cards[2][3] == 5.0
    assert len(invalid) == 1 and "non-ASCII" in invalid[0]


def test_unterminated_string_is_kept_as_invalid_text():
    raw = (card("SIMPLE  =                    T") + card("OBJECT  = 'no end") + card("EXPTIME = 5")).encode()
    cards, invalid = parse_header(raw)
    assert cards[2][3] == 5.0
    assert len(invalid) == 1 and "OBJECT" in invalid[0]


# -- the compiled parser gives what the Python one gives ------------------------

_VALUES = [
    "1", "-42", "+7", "0012", "123456789012345678901234567890", "9007199254740993", "1.5", "-.5", "5.", ".",
    "1.0E-5", "1.0D+03", "2.5d-2", "1e999", "-1E999", "+nan", "-inf", "1_000", "1.5_0", "0x1A", "1.5e", "1.5 2",
    "--1", "+", "-", "T", "F", "t", "TRUE", "(1.0, 2.0)", "(1, 2", "INDEF", "NaN", "'x'", "''", "'O''Brien'",
    "'a''''b'", "'  lead and trail  '", "'with / slash'", "'amp &'", "'unterminated", "'end'' ", "",
]
_COMMENTS = ["", " / a comment", " /", "/ x / y", " / 'quoted' / slashes", "   /    padded   "]
_KEYS = ["EXPTIME", "A", "DATE-OBS", "NAXIS1", "exptime", "Key_1", "CONTINUE", "COMMENT", "HISTORY", "", "END0"]


def _random_card(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.1:  # any printable text at all
        return "".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(0, 80)))
    if kind < 0.2:
        words = " ".join(rng.choice(["ESO", "INS", "drot", "POSANG", "DET", "x"]) for _ in range(rng.randint(0, 4)))
        sep = rng.choice(["=", " = ", "  =  ", ""])
        return f"HIERARCH {words}{sep}{rng.choice(_VALUES)}{rng.choice(_COMMENTS)}"
    if kind < 0.3:
        head = rng.choice(["CONTINUE", "CONTINUE  ", "COMMENT ", "HISTORY "])
        return f"{head}{rng.choice(_VALUES)}{rng.choice(_COMMENTS)}"
    key = rng.choice(_KEYS)
    sep = rng.choice(["= ", "= ", "= ", "=", " ", "=  "])
    pad = " " * rng.randint(0, 12)
    return f"{key:<8}{sep}{pad}{rng.choice(_VALUES)}{rng.choice(_COMMENTS)}"


def _python_or_unusual(text: str):
    try:
        return parse_cards(text)
    except headers._Unusual:
        return None


def test_compiled_parser_matches_python_on_random_headers():
    compiled = _compiled()
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(card(_random_card(rng)) for _ in range(rng.randint(1, 12)))
        if rng.random() < 0.05:
            text = text[: rng.randint(0, len(text))]  # a header cut inside a card
        # The compiled parser defers (None) exactly where the Python one
        # hands the header to astropy.
        assert compiled(text.encode("ascii")) == _python_or_unusual(text), text


def test_a_negative_zero_is_zero_in_both_parsers():
    """-0.0 was stored as 0.0 by SQLite and kept as -0.0 by PostgreSQL (`--format json` differed), and the
    compiled parser made the integer -0 a -0.0 where the Python one made 0.0; the text keeps the sign."""
    import math

    text = "".join(card(c) for c in ("A       = -0.0", "B       = -0", "C       = -0.0D0", "D       = -1.5"))
    for cards in (_compiled()(text.encode("ascii")), parse_cards(text)):
        assert [(c[2], c[3], c[4]) for c in cards] == [("-0.0", 0.0, "f"), ("-0", 0.0, "i"), ("-0.0D0", 0.0, "f"), ("-1.5", -1.5, "f")]
        assert [math.copysign(1, c[3]) for c in cards] == [1, 1, 1, -1]


def test_compiled_parser_defers_non_printable_headers():
    compiled = _compiled()
    assert compiled(card("OBJECT  = 'tab\there'").encode()) is None
    assert compiled(card("OBJECT  = 'ok'").encode() + b"\xe9") is None
    cards, invalid = parse_header(card("OBJECT  = 'tab\there'").encode())
    assert cards[0][2] == "tab\there" and not invalid


def test_compiled_parser_matches_python_on_every_real_header(real_data, monkeypatch):
    compiled = _compiled()
    raws = []
    original = headers.parse_header
    monkeypatch.setattr(headers, "parse_header", lambda raw: raws.append(raw) or original(raw))
    for path in _fits_files(real_data):
        try:
            read_headers(path)
        except FitsReadError:
            pass
    printable = [raw for raw in raws if all(32 <= b <= 126 for b in raw)]
    assert len(printable) > 80
    for raw in printable:
        assert compiled(raw) == _python_or_unusual(raw.decode("ascii"))


def test_multi_extension_file(tmp_path, rng):
    path = write_frame(tmp_path / "mef.fits", rng, extensions=2)
    units, digest = read_headers(path)
    assert [(u.index, u.extname, u.hdu_type, u.shape) for u in units] == [
        (0, "PRIMARY", "image", "32x32"), (1, "EXT1", "image", "8x8"), (2, "EXT2", "image", "8x8"),
    ]
    assert len(digest) == 32


def test_tile_compressed_image_is_described(tmp_path, rng):
    path = write_frame(tmp_path / "frame.fits.fz", rng, compress=True)
    units, _ = read_headers(path)
    assert units[1].hdu_type == "compressed"
    assert units[1].extname == "SCI"
    assert units[1].shape == "32x32"
    assert units[1].bitpix == -32


def test_gzip_file_reads_every_hdu(tmp_path, rng):
    path = write_frame(tmp_path / "frame.fits.gz", rng, extensions=1, gzipped=True)
    units, _ = read_headers(path)
    assert [u.extname for u in units] == ["PRIMARY", "EXT1"]


def test_table_extension_shape_is_its_row_count(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.arange(7.0))], name="EVENTS")
    path = tmp_path / "events.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    units, _ = read_headers(path)
    assert (units[1].hdu_type, units[1].extname, units[1].shape) == ("bintable", "EVENTS", "7")


def test_large_data_is_not_read(tmp_path, monkeypatch):
    """A 64 MB data section costs no more than its header: it is skipped."""
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 3, "NAXIS1": 256, "NAXIS2": 256, "NAXIS3": 256})
    path = tmp_path / "cube.fits"
    with open(path, "wb") as stream:
        stream.write(header.tostring().encode())
        stream.seek(256**3 * 4 - 1, 1)
        stream.write(b"\0")
    read = []
    real_open = open

    class Counting:
        def __init__(self, *a, **k):
            self.stream = real_open(*a, **k)

        def read(self, n=-1):
            data = self.stream.read(n)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.stream, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

    monkeypatch.setattr(headers, "open", Counting, raising=False)
    units, _ = read_headers(path)
    assert units[0].shape == "256x256x256"
    assert sum(read) < 100_000


# -- bad files: each gets one clear reason ------------------------------------


def _truncated(tmp_path, rng):
    path = write_frame(tmp_path / "t.fits", rng, shape=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    return path


def _no_end(tmp_path, rng):
    path = tmp_path / "noend.fits"
    path.write_bytes(card("SIMPLE  =                    T").encode() * 36)
    return path


def _truncated_gzip(tmp_path, rng):
    path = write_frame(tmp_path / "t.fits.gz", rng, gzipped=True, shape=(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_gzip_inside(tmp_path, rng):
    path = tmp_path / "fake.fits.gz"
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 100)
    return path


def _empty(tmp_path, rng):
    path = tmp_path / "empty.fits"
    path.write_bytes(b"")
    return path


def _text(tmp_path, rng):
    path = tmp_path / "notes.fits"
    path.write_text("observing log: clouds after 2am\n")
    return path


def _no_naxis(tmp_path, rng):
    path = tmp_path / "nonaxis.fits"
    path.write_bytes((card("SIMPLE  =                    T") + card("BITPIX  =                   16") + card("END")).ljust(2880).encode())
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (_empty, "empty file"),
        (_text, "not a FITS file (starts with 'observing log: c'"),
        (_truncated, "truncated: HDU 0's data end at byte"),
        (_no_end, "truncated: the primary header has no END card"),
        (_truncated_gzip, "truncated or corrupt gzip stream"),
        (_not_gzip_inside, "cannot read"),
        (_no_naxis, "HDU 0 has no valid NAXIS card"),
    ],
)
def test_bad_files_raise_one_clear_reason(tmp_path, rng, make, message):
    path = make(tmp_path, rng)
    with pytest.raises(FitsReadError) as info:
        read_headers(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_file_reason(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(headers, "open", refuse, raising=False)
    with pytest.raises(FitsReadError, match="cannot open: Permission denied"):
        read_headers(tmp_path / "x.fits")


# -- real files: the fast parser agrees with astropy -----------------------------


def _fits_files(root):
    from archive.ingest import is_fits_name

    return sorted(p for p in root.rglob("*") if p.is_file() and is_fits_name(p.name))


def test_parser_agrees_with_astropy_on_every_real_file(real_data):
    checked = 0
    for path in _fits_files(real_data):
        units, _ = read_headers(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path) as hdul:  # a tile-compressed HDU: its image's header, as stored (image_cards)
                assert len(hdul) == len(units), path
                for unit, hdu in zip(units, hdul):
                    ours = [c for c in unit.cards if not (c[1] == "" and not (c[2] or "").strip())]
                    theirs = [c for c in hdu.header.cards if not (c.keyword == "" and not str(c.value).strip())]
                    assert [c[1] for c in ours] == [normalize_keyword(c.keyword) for c in theirs], path
                    for mine, card_ in zip(ours, theirs):
                        checked += 1
                        _assert_same_value(path, mine, card_)
    assert checked > 10_000


def _assert_same_value(path, mine, theirs):
    _, keyword, text, number, vtype, _ = mine
    if vtype == "x":  # not valid FITS: astropy "fixes" it, we keep the text
        return
    value = theirs.value
    if vtype == "C":
        assert text.strip() == str(value).strip(), (path, keyword)
    elif isinstance(value, bool):
        assert number == float(value), (path, keyword)
    elif isinstance(value, int):
        assert int(text) == value, (path, keyword)  # exact, even past 2**53
    elif isinstance(value, float):
        assert number == value or (math.isnan(value) and number is None), (path, keyword)
    elif isinstance(value, str):
        assert text == value.rstrip(), (path, keyword)


def test_every_real_file_is_read_or_refused_with_a_reason(real_data):
    for path in _fits_files(real_data):
        try:
            units, _ = read_headers(path)
        except FitsReadError as exc:
            pytest.fail(f"{path} refused: {exc}")
        assert units


def test_gzip_stream_is_read_forward_only(real_data):
    units, _ = read_headers(real_data / "xray" / "xte_test.evt.gz")
    assert [u.extname for u in units] == ["PRIMARY", "XTE_SE", "GTI", "GTI"]
    with gzip.open(real_data / "xray" / "xte_test.evt.gz") as stream:
        assert stream.read(9) == b"SIMPLE  ="


def test_compiled_end_search_matches_python():
    from archive.headers import _find_end

    _compiled()
    from archive._cards import find_end

    rng = random.Random(3)
    kinds = ["END".ljust(80), " END".ljust(80), "ENDING  = 1".ljust(80), "KEY     = 1".ljust(80)]
    for _ in range(5000):
        cards = [
            "END" + "".join(rng.choice(" \t\n\r\x0b\x0cX") for _ in range(77)) if rng.random() < 0.2 else rng.choice(kinds)
            for _ in range(rng.randint(0, 6))
        ]
        data = "".join(cards).encode() + b"E" * rng.randint(0, 100)
        start, stop = 80 * rng.randint(0, len(cards)), rng.randint(0, len(data) + 10)
        assert find_end(data, start, stop) == _find_end(data, start, stop), (data, start, stop)


# -- a card no rule reads does not change how the others are stored ----------------


def _header_file(path, *images: str):
    """A header-only FITS file of exactly these card images, bytes written here."""
    text = "".join(card(i) for i in ("SIMPLE  =                    T", "BITPIX  =                    8",
                                     "NAXIS   =                    0", *images, "END"))
    path.write_bytes((text + " " * (-len(text) % 2880)).encode("ascii"))
    return path


def test_an_unterminated_string_leaves_the_other_invalid_cards_as_they_were(tmp_path):
    """A user's two files: AIRMASS = INDEF was stored as 'INDEF' in one and
    as '= INDEF' in the one that also held NOTE = 'unterminated (the whole
    header went to astropy, which kept the card image after column 8)."""
    p1 = _header_file(tmp_path / "p1.fits", "AIRMASS = INDEF")
    p2 = _header_file(tmp_path / "p2.fits", "AIRMASS = INDEF", "NOTE    = 'unterminated")
    (one,), _ = read_headers(p1)
    (two,), _ = read_headers(p2)
    assert one.values()["AIRMASS"] == two.values()["AIRMASS"] == (3, "AIRMASS", "INDEF", None, "x", None)
    assert two.values()["NOTE"] == (4, "NOTE", "'unterminated", None, "x", None)
    assert two.invalid == ["AIRMASS = 'INDEF'", "NOTE = \"'unterminated\""]


def test_every_card_beside_an_unreadable_one_is_stored_as_without_it(parse):
    """Card by card, with each parser reading the header without the
    unterminated string: whatever text and vtype (``x`` or any other) it
    gives a card, the header with it gives the same."""
    values = [v for v in _VALUES if v != "'unterminated"]
    images = [card(f"K{i:<7}= {value}{_COMMENTS[i % len(_COMMENTS)]}") for i, value in enumerate(values)]
    images += [card("HIERARCH ESO A B = INDEF / c"), card("HIERARCH ESO C = 'x'")]
    plain = "".join(images)
    expected = parse(plain)
    assert sum(c[4] == "x" for c in expected) >= 10
    for unreadable in ("NOTE    = 'unterminated", "HIERARCH ESO NOTE = 'no end / x", "HIERARCH NO EQUALS SIGN"):
        cards, invalid = parse_header((plain + card(unreadable)).encode("ascii"))
        assert cards[:-1] == expected, unreadable
        told = headers._invalid_values(expected)
        assert invalid[: len(told)] == told, unreadable
    assert parse_header(card("HIERARCH ESO NOTE = 'no end / x").encode())[0] == [
        (0, "ESO NOTE", "'no end / x", None, "x", None)]
    assert parse_header(card("HIERARCH NO EQUALS SIGN").encode())[0] == [
        (0, "HIERARCH", " NO EQUALS SIGN", None, "C", None)]


def test_a_continue_card_that_is_no_string_is_kept_as_commentary():
    cards, invalid = parse_header((card("LONG    = 'a &'") + card("CONTINUE  'no end")).encode())
    assert cards == [(0, "LONG", "a &", None, "s", None), (1, "CONTINUE", "  'no end", None, "C", None)]
    assert not invalid


def _as_astropy_gives(header: fits.Header) -> list[tuple[str, object]]:
    return [(card.keyword, str(card.value).rstrip() if card.keyword in ("COMMENT", "HISTORY") else card.value)
            for card in header.cards if card.keyword]


def _as_stored(unit) -> list[tuple[str, object]]:
    kinds = {"i": int, "f": float, "b": lambda t: t == "T", "s": str, "C": lambda t: t.rstrip()}
    return [(c[1], kinds[c[4]](c[2]) if c[4] in kinds else c[2]) for c in unit.cards if c[1]]


@pytest.mark.parametrize("dtype, options", [
    (np.float32, {"compression_type": "RICE_1", "quantize_level": 16}),
    (np.int16, {"compression_type": "GZIP_2"}),
    (np.int32, {"compression_type": "RICE_1"}),
    (np.uint16, {"compression_type": "HCOMPRESS_1"}),
])
def test_a_tile_compressed_hdu_keeps_the_header_of_its_image(tmp_path, rng, dtype, options):
    """An fpack HDU was stored with its binary table's cards: hdr[1]['NAXIS1']
    was 24 (bytes a row) and BITPIX 8, where astropy and fitsio give the
    image's 1523 pixels and -32 (a user trial, on LCO frames)."""
    data = (rng.random((20, 30)) * 1000).astype(dtype)
    header = fits.Header([("OBJECT", "m31", "target"), ("EXPTIME", 30.0), ("FILTER", "V"), ("BSCALE", 1.0), ("BZERO", 0.0)])
    hdu = fits.CompImageHDU(data, header=header, name="SCI", **options)
    hdu.header["CHECKSUM"] = "0000"
    hdu.header.add_history("flat-fielded")  # the cards astropy moves go before it
    path = tmp_path / "frame.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    units, _ = read_headers(path)
    with fits.open(path) as hdul:
        expected = _as_astropy_gives(hdul[1].header)
    assert units[1].hdu_type == "compressed" and units[1].shape == "20x30"
    assert _as_stored(units[1]) == expected
    assert dict(expected)["NAXIS1"] == 30 and "ZNAXIS1" not in dict(_as_stored(units[1]))


def test_lco_fpack_frames_keep_the_header_astropy_gives(real_data):
    """Every card of the four LCO frames' compressed HDU, in order, as astropy presents it."""
    frames = sorted((real_data / "ccd_imaging").glob("*.fits.fz"))
    assert len(frames) == 4
    for path in frames:
        units, _ = read_headers(path)
        with fits.open(path) as hdul:
            assert _as_stored(units[1]) == _as_astropy_gives(hdul[1].header), path.name
            assert dict(_as_stored(units[1]))["NAXIS1"] == 1523 and dict(_as_stored(units[1]))["BITPIX"] == -32


def test_a_hostile_znaxis_of_a_compressed_hdu_is_read_at_once(tmp_path):
    """ZNAXIS = 100000000 (or 1E12) looped that many times converting the header (a review)."""
    table = fits.BinTableHDU.from_columns([fits.Column("COMPRESSED_DATA", "1PB()", array=[np.zeros(4, np.uint8)])])
    for key, value in (("ZIMAGE", True), ("ZBITPIX", 16), ("ZNAXIS", 100_000_000), ("ZNAXIS1", 10)):
        table.header[key] = value
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "hostile.fits", output_verify="ignore")
    units, _ = read_headers(tmp_path / "hostile.fits")
    assert units[1].hdu_type == "compressed"
    assert len(units[1].cards) < 1000
