"""Reading FITS headers without reading pixel data.

A FITS file is a chain of HDUs; each header is a whole number of 2880-byte
blocks of 80-character cards ending with ``END``, followed by data whose size
the header gives. We read the header blocks, parse the cards, and seek past
the data, so a multi-GB cube costs what a small frame costs. gzip-compressed
files are read through :mod:`gzip` (seeking decompresses without keeping the
data); tile-compressed (fpack) HDUs are binary tables whose ``Z*`` cards give
the image they hold.

Parsing the value of every card through astropy costs ~3 ms per header; the
parser here handles the fixed-format cases FITS files are made of, and keeps
a card it cannot read (an unterminated string) as it keeps any value that is
not valid FITS: the text of its value field, listed as invalid. Non-ASCII
bytes become ``?``. The same parser, compiled (``archive/_cards.pyx``), takes
every header of printable ASCII and leaves headers with such a card to the
Python one here, which does all the work where it was not built.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from archive.exceptions import FitsReadError

try:
    from archive._cards import find_end as _compiled_find_end
    from archive._cards import parse_cards as _compiled_parse_cards
except ImportError:  # built without a C compiler: the Python code below
    _compiled_parse_cards = _compiled_find_end = None

BLOCK = 2880
CARD = 80
_READ_BLOCKS = 8
_COMMENTARY = frozenset(("COMMENT", "HISTORY", ""))

# A card as stored: (position, keyword, value_text, value_num, vtype, comment)
Card = tuple[int, str, str | None, float | None, str, str | None]


@dataclass(slots=True)
class HeaderUnit:
    """The header of one HDU, parsed."""

    index: int
    cards: list[Card]
    hdu_type: str
    extname: str | None = None
    shape: str | None = None
    bitpix: int | None = None
    invalid: list[str] = field(default_factory=list)
    by_keyword: dict[str, Card] | None = None

    def values(self) -> dict[str, Card]:
        """Keyword -> first card with that keyword (commentary excluded)."""
        if self.by_keyword is None:
            self.by_keyword = first_cards(self.cards)
        return self.by_keyword


def first_cards(cards: list[Card]) -> dict[str, Card]:
    """Keyword -> first card with that keyword (commentary excluded)."""
    # Built from the end, so that the first of a repeated keyword stays.
    return {card[1]: card for card in reversed(cards) if card[4] != "C"}


class _Unusual(Exception):
    """A card :func:`parse_cards` reads only when lenient."""


# -- card parsing ----------------------------------------------------------


def normalize_keyword(keyword: str) -> str:
    """``hierarch eso ins  mode`` -> ``ESO INS MODE`` (the form stored)."""
    words = keyword.upper().split()
    if words and words[0] == "HIERARCH":
        words = words[1:]
    return " ".join(words)


def _parse_value(rest: str) -> tuple[str | None, float | None, str, str | None]:
    """Parse the text after ``= `` into (text, number, vtype, comment)."""
    s = rest.lstrip()
    if s.startswith("'"):
        end = s.find("'", 1)
        while end != -1 and s[end + 1 : end + 2] == "'":
            end = s.find("'", end + 2)
        if end == -1:
            raise _Unusual("unterminated string")
        text = s[1:end].replace("''", "'").rstrip()
        after = s[end + 1 :]
        slash = after.find("/")
        comment = after[slash + 1 :].strip() if slash >= 0 else None
        return text, None, "s", comment or None
    slash = s.find("/")
    token = (s[:slash] if slash >= 0 else s).strip()
    comment = (s[slash + 1 :].strip() or None) if slash >= 0 else None
    if not token:
        return None, None, "u", comment
    if token == "T":
        return "T", 1.0, "b", comment
    if token == "F":
        return "F", 0.0, "b", comment
    first = token[0]
    if first.isdigit() or first in "+-.":
        # Test the characters rather than let int() fail on every float:
        # an exception costs more than parsing the card.
        digits = token[1:] if first in "+-" else token
        if digits.isdigit() and digits.isascii():
            return token, float(int(token)), "i", comment
        try:
            number = float(token.replace("D", "E").replace("d", "e") if "D" in token or "d" in token else token)
        except ValueError:
            return token, None, "x", comment
        if math.isfinite(number) and "_" not in token:
            return token, number + 0.0, "f", comment  # -0.0 is 0.0: SQLite stores it so, PostgreSQL kept the sign
        return token, None, "x", comment
    if first == "(":
        return token, None, "c", comment
    return token, None, "x", comment


def parse_cards(text: str, lenient: bool = False) -> list[Card]:
    """Parse the cards of one header (text up to, not including, END).

    A card no rule here reads (an unterminated string, a HIERARCH card
    without ``=``) raises :class:`_Unusual`, which is where the compiled
    parser defers too; with ``lenient`` it is kept as :func:`_unreadable`
    says and the other cards are read as always, so that one such card does
    not change how the rest of the header is stored.
    """
    cards: list[Card] = []
    append = cards.append
    for start in range(0, len(text), CARD):
        image = text[start : start + CARD]
        position = start // CARD
        try:
            head = image[:8]
            if head == "HIERARCH":
                equals = image.find("=")
                if equals < 0:
                    raise _Unusual("HIERARCH card without '='")
                keyword = " ".join(image[9:equals].upper().split())
                append((position, keyword, *_parse_value(image[equals + 1 :])))
                continue
            keyword = head.rstrip().upper()
            if keyword == "CONTINUE" and cards and cards[-1][4] == "s" and (cards[-1][2] or "").endswith("&"):
                _join_continue(cards, image)
                continue
            if keyword in _COMMENTARY or image[8:10] != "= ":
                body = image[8:].rstrip()
                if keyword or body:
                    append((position, keyword, body, None, "C", None))
                continue
            append((position, keyword, *_parse_value(image[10:])))
        except _Unusual:
            if not lenient:
                raise
            append(_unreadable(position, image))
    return cards


def _unreadable(position: int, image: str) -> Card:
    """A card :func:`parse_cards` cannot read, kept as it keeps any value
    that is not valid FITS: the text of the value field (after ``= ``, or
    after a HIERARCH keyword's ``=``), stripped, as vtype ``x``. A card with
    no value indicator is commentary, as any such card is."""
    if image[:8] == "HIERARCH":
        equals = image.find("=")
        keyword = " ".join(image[9:equals].upper().split())
    else:
        equals = 8 if image[8:10] == "= " else -1
        keyword = image[:8].rstrip().upper()
    if equals < 0:
        return position, image[:8].rstrip().upper(), image[8:].rstrip(), None, "C", None
    return position, keyword, image[equals + 1 :].strip(), None, "x", None


def _join_continue(cards: list[Card], image: str) -> None:
    """Join a CONTINUE card onto the long string before it (OGIP LONGSTRN)."""
    position, keyword, text, _, vtype, comment = cards[-1]
    more, _, _, more_comment = _parse_value(image[8:])
    joined_comment = " ".join(c for c in (comment, more_comment) if c) or None
    cards[-1] = (position, keyword, text[:-1] + (more or ""), None, vtype, joined_comment)


_CONTROL = re.compile(rb"\x00")  # other control bytes are kept (astropy reads them); a NUL no text column holds


def parse_header(raw: bytes) -> tuple[list[Card], list[str]]:
    """Cards of one raw header (bytes up to END) and a list of invalid cards.

    Bytes outside ASCII (not allowed in FITS) become ``?`` and the cards
    holding them are listed as invalid, as are cards whose value is not
    valid FITS (kept as text).
    """
    control = []
    if b"\x00" in raw:  # not FITS, and PostgreSQL text cannot hold it
        control = [f"NUL bytes replaced by '?': {raw[i:i + CARD].decode('ascii', 'replace').strip()[:60]!r}"
                   for i in range(0, len(raw), CARD) if _CONTROL.search(raw[i : i + CARD])]
        raw = _CONTROL.sub(b"?", raw)
    if _compiled_parse_cards is not None:
        cards = _compiled_parse_cards(raw)
        if cards is not None:
            return cards, control + _invalid_values(cards)
    invalid = control
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = raw.decode("ascii", errors="replace").replace("\ufffd", "?")
        invalid = [
            f"non-ASCII bytes replaced by '?': {raw[i:i + CARD].decode('ascii', 'replace').strip()[:60]!r}"
            for i in range(0, len(raw), CARD)
            if not raw[i : i + CARD].isascii()
        ]
    cards = parse_cards(text, lenient=True)
    return cards, invalid + _invalid_values(cards)


def _invalid_values(cards: list[Card]) -> list[str]:
    """The cards whose value is not valid FITS (kept as text)."""
    return [f"{c[1] or '(blank)'} = {c[2]!r}" for c in cards if c[4] == "x"]


# -- file reading ----------------------------------------------------------


def _open(path: str | Path):
    raw = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), True
    return raw, False


def _read_header_bytes(stream, first: bytes, chunk: int) -> tuple[bytes, int, int]:
    """Read on until the END card; return the header bytes before END, the
    header's size in bytes (whole blocks) and how many bytes were read from
    its start (fewer than its size only when the file ends inside it).
    ``(b"", 0, n)`` when the file ends (after n bytes) before an END card."""
    data = first
    scanned = 0
    while True:
        whole = len(data) - len(data) % CARD  # only complete cards
        end = (_compiled_find_end or _find_end)(data, scanned, whole)
        if end >= 0:
            return data[:end], (end // BLOCK + 1) * BLOCK, len(data)
        scanned = whole
        more = stream.read(chunk)
        if not more:
            return b"", 0, len(data)
        data += more


def _find_end(data: bytes, start: int, stop: int) -> int:
    """Offset of the first END card among the whole cards of data[start:stop]
    (start a multiple of 80), or -1."""
    for offset in range(start, min(stop, len(data)) - CARD + 1, CARD):
        if data[offset : offset + 3] == b"END" and not data[offset + 3 : offset + CARD].strip():
            return offset
    return -1


def _int_card(values: dict[str, Card], keyword: str, index: int, default: int | None = None) -> int:
    card = values.get(keyword)
    if card is None or card[4] != "i":
        if default is not None:
            return default
        raise FitsReadError(f"HDU {index} has no valid {keyword} card")
    return int(card[3])


LEGAL_BITPIX = (8, 16, 32, 64, -32, -64)
MAX_NAXIS = 999  # the FITS standard's limit
MAX_AXIS = 2**48  # any real axis is far smaller; a larger one is a corrupt card, not data to skip


def _check_structure(index: int, bitpix: int, naxis: int) -> None:
    """Refuse, from the cards alone, a structure no FITS file has (before
    anything sized by it is computed or read)."""
    if bitpix not in LEGAL_BITPIX:
        raise FitsReadError(f"HDU {index} has BITPIX = {bitpix}; FITS allows {', '.join(map(str, LEGAL_BITPIX))}")
    if not 0 <= naxis <= MAX_NAXIS:
        raise FitsReadError(f"HDU {index} has NAXIS = {naxis}, outside 0 to {MAX_NAXIS}")


# What a tile-compressed HDU's table header says of the table, not of the image it holds
# (astropy.io.fits.hdu.compressed.header's reserved keywords, and the structure Header.strip removes)
_TABLE_ONLY = re.compile(r"(TTYPE|TFORM|TUNIT|TNULL|TSCAL|TZERO|TDISP|TBCOL|TDIM|TCTYP|TCUNI|TCRPX|TCRVL|TCDLT|TRPOS|"
                         r"ZVAL|ZTILE|ZNAME|ZNAXIS|NAXIS)[1-9][0-9]*")
_NOT_OF_THE_IMAGE = frozenset((
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "GROUPS", "BSCALE", "BZERO", "TFIELDS", "THEAP",
    "CHECKSUM", "DATASUM", "ZBLOCKED", "ZGCOUNT", "ZDITHER0", "ZBLANK", "ZDATASUM", "ZSCALE", "ZSIMPLE", "ZTENSION", "ZZERO",
    "ZQUANTIZ", "ZPCOUNT", "ZEXTEND", "ZIMAGE", "ZMASKCMP", "ZCMPTYPE", "ZHECKSUM", "ZBITPIX", "ZNAXIS",
))


def image_cards(cards: list[Card], naxis: int) -> list[Card]:
    """The header of the image a tile-compressed (fpack) HDU holds, as
    astropy's CompImageHDU.header and fitsio give it: ZBITPIX, ZNAXIS and
    ZNAXISn are BITPIX, NAXIS and NAXISn, the table's own cards are gone, and
    the rest is kept in order. Stored so, ``hdr[1]['NAXIS1']`` of an LCO
    frame is its 1523 pixels, not the table's 24 bytes. Mirrors astropy's
    ``_bintable_header_to_image_header`` (private there), on card tuples:
    parsing the header through astropy costs ~3 ms a file. ``naxis`` is
    ZNAXIS as :func:`_describe` checked it (a hostile 1E12 would loop)."""
    values = first_cards(cards)

    def moved(keyword: str, source: str) -> tuple:
        return (keyword, *values[source][2:])

    if "ZSIMPLE" in values:
        head = [moved("SIMPLE", "ZSIMPLE")]
    else:
        head = [("XTENSION", "IMAGE", None, "s", values["ZTENSION"][5] if "ZTENSION" in values else None)]
    head += [moved("BITPIX", "ZBITPIX"), moved("NAXIS", "ZNAXIS")]
    head += [moved(f"NAXIS{i}", f"ZNAXIS{i}") for i in range(1, naxis + 1) if f"ZNAXIS{i}" in values]
    if "ZSIMPLE" not in values:
        head.append(moved("PCOUNT", "ZPCOUNT") if "ZPCOUNT" in values else ("PCOUNT", "0", 0.0, "i", None))
        head.append(moved("GCOUNT", "ZGCOUNT") if "ZGCOUNT" in values else ("GCOUNT", "1", 1.0, "i", None))
    body = [card[1:] for card in cards if card[1] not in _NOT_OF_THE_IMAGE and not _TABLE_ONLY.fullmatch(card[1])
            and not (card[1] == "EXTNAME" and (card[2] or "").strip() == "COMPRESSED_IMAGE")]
    tail = [(keyword, *values[keyword][2:]) for keyword in ("BSCALE", "BZERO") if keyword in values and values[keyword][3]]
    tail += [moved(keyword, source) for keyword, source in
             (("EXTEND", "ZEXTEND"), ("BLOCKED", "ZBLOCKED"), ("CHECKSUM", "ZHECKSUM"), ("DATASUM", "ZDATASUM")) if source in values]
    bitpix = values["ZBITPIX"][3]
    if bitpix and bitpix > 0 and "BLANK" not in values and "ZBLANK" in values:
        tail.append(moved("BLANK", "ZBLANK"))
    # after the last card that is not commentary, where astropy adds a card (not after the HISTORY that ends a header)
    at = next((i + 1 for i in range(len(body) - 1, -1, -1) if body[i][0] not in _COMMENTARY), 0)
    return [(position, *card) for position, card in enumerate(head + body[:at] + tail + body[at:])]


def _describe(index: int, cards: list[Card]) -> tuple[HeaderUnit, int]:
    """Make a HeaderUnit and return it with the byte size of its data."""
    values = first_cards(cards)
    bitpix = _int_card(values, "BITPIX", index)
    naxis = _int_card(values, "NAXIS", index)
    _check_structure(index, bitpix, naxis)
    axes = [_int_card(values, f"NAXIS{i}", index) for i in range(1, naxis + 1)]
    pcount = _int_card(values, "PCOUNT", index, 0)
    gcount = _int_card(values, "GCOUNT", index, 1)
    for name, value in (*((f"NAXIS{i}", n) for i, n in enumerate(axes, 1)), ("PCOUNT", pcount), ("GCOUNT", gcount)):
        if not 0 <= value < MAX_AXIS:
            raise FitsReadError(f"HDU {index} has {name} = {value}, outside 0 to {MAX_AXIS - 1}")
    nelem = math.prod(axes) if axes else 0
    if axes and axes[0] == 0 and "GROUPS" in values:  # random groups
        nelem = math.prod(axes[1:])
    size = abs(bitpix) // 8 * gcount * (pcount + nelem) if naxis else 0

    xtension = values.get("XTENSION")
    kind = (xtension[2] or "").strip().upper() if xtension else "PRIMARY"
    extname = values.get("EXTNAME")
    unit = HeaderUnit(index=index, cards=cards, hdu_type="image", bitpix=bitpix, by_keyword=values)
    unit.extname = extname[2].strip() if extname and extname[2] else ("PRIMARY" if index == 0 else None)
    if kind in ("PRIMARY", "IMAGE", "IUEIMAGE"):
        unit.shape = "x".join(str(n) for n in reversed(axes)) or None
    elif kind == "BINTABLE" and values.get("ZIMAGE", (0, 0, 0, 0))[3] == 1.0:
        unit.hdu_type = "compressed"
        znaxis = min(max(_int_card(values, "ZNAXIS", index, 0), 0), MAX_NAXIS)
        zaxes = [_int_card(values, f"ZNAXIS{i}", index, 0) for i in range(1, znaxis + 1)]
        unit.shape = "x".join(str(n) for n in reversed(zaxes)) or None
        unit.bitpix = _int_card(values, "ZBITPIX", index, bitpix)
        if "ZBITPIX" in values and "ZNAXIS" in values:  # else no image can be made of it, and the table is what there is
            unit.cards = image_cards(cards, znaxis)
            unit.by_keyword = None
    else:
        unit.hdu_type = "bintable" if kind == "BINTABLE" else "table" if kind == "TABLE" else kind.lower()
        unit.shape = str(axes[1]) if len(axes) > 1 else None
        unit.bitpix = None
    return unit, size


def read_headers(path: str | Path) -> tuple[list[HeaderUnit], str]:
    """Every HDU's header of a FITS file, and a hash of the header bytes.

    Raises :class:`FitsReadError` with a one-line reason for anything that is
    not a readable FITS file (empty, not FITS, truncated, corrupt gzip).
    """
    digest = hashlib.blake2b(digest_size=16)
    units: list[HeaderUnit] = []
    try:
        stream, compressed = _open(path)
    except OSError as exc:
        raise FitsReadError(f"cannot open: {exc.strerror or exc}") from exc
    try:
        with stream:
            units = _read_all(stream, compressed, path, digest)
    except OSError as exc:  # includes gzip.BadGzipFile
        raise FitsReadError(f"cannot read: {exc}") from exc
    except (EOFError, zlib.error) as exc:
        raise FitsReadError(f"truncated or corrupt gzip stream: {exc}") from exc
    return units, digest.hexdigest()


def _read_all(stream, compressed: bool, path: str | Path, digest) -> list[HeaderUnit]:
    # A gzip stream can only seek forward cheaply, so it is read one block at
    # a time and never past the current header; a plain file is read in
    # larger chunks and seeks freely, and its size (one fstat) tells where it
    # ends without a read. A gzip stream's end is where reading stops.
    #
    # Where a file may end (FITS 4.0, 3.3): after the whole blocks of its last
    # HDU, or where the last HDU's data end (some writers omit the padding of
    # the last data unit; astropy reads such files). Anything else is a cut
    # copy: the file ending inside a header, inside data, or inside the
    # padding after data (the next HDU's header would have started there).
    # What follows the last HDU and is not an extension header (zeros, a
    # newline) is ignored, as before and as astropy does.
    chunk = BLOCK if compressed else BLOCK * _READ_BLOCKS
    file_size = None if compressed else os.fstat(stream.fileno()).st_size
    unpacked = " unpacked" if compressed else ""  # sizes in messages are of the FITS file, not the .gz
    units: list[HeaderUnit] = []
    offset = 0  # byte offset of the current HDU's header
    while True:
        if offset == file_size and units:
            return units  # a file that ends after whole blocks
        stream.seek(offset)
        first = stream.read(chunk)
        if not units:
            _check_start(first)
        elif not first:
            return units
        elif not (first[:8] == b"XTENSION" if len(first) >= 8 else b"XTENSION".startswith(first)):
            return units  # end of file (anything after the last HDU is not FITS)
        raw, header_size, read = _read_header_bytes(stream, first, chunk)
        if header_size > read or (not header_size and read % BLOCK):
            # The file ends inside a header block, whether or not its END card came.
            raise FitsReadError(
                f"truncated: the file ends inside {_hdu_name(len(units))}{'' if header_size else ', before its END card'}"
                f" ({offset + read:,} bytes{unpacked}; a FITS file is a multiple of 2880)"
            )
        if not header_size:
            raise FitsReadError(f"truncated: {_hdu_name(len(units))} has no END card")
        digest.update(raw)
        cards, invalid = parse_header(raw)
        unit, data_size = _describe(len(units), cards)
        unit.invalid = invalid
        units.append(unit)
        data_end = offset + header_size + data_size
        offset = offset + header_size + -(-data_size // BLOCK) * BLOCK  # the padded end
        if compressed:
            stream.seek(data_end)
            size = stream.tell()
            if size == data_end and offset > data_end:
                stream.seek(offset)
                size = stream.tell()
        else:
            size = file_size
        if size < data_end:
            raise FitsReadError(
                f"truncated: HDU {unit.index}'s data end at byte {data_end:,}, the{unpacked} file ends at byte {size:,} "
                f"({data_end - size:,} bytes missing)"
            )
        if size < offset:
            if size == data_end:
                return units  # the last data unit written without its padding
            raise FitsReadError(
                f"truncated: the file ends inside the padding after HDU {unit.index}'s data "
                f"({size:,} bytes{unpacked}; a FITS file is a multiple of 2880)"
            )


def _hdu_name(index: int) -> str:
    return "the primary header" if index == 0 else f"the header of HDU {index}"


def _check_start(first: bytes) -> None:
    if not first:
        raise FitsReadError("empty file")
    if len(first) < 9 and b"SIMPLE  =".startswith(first):
        raise FitsReadError(f"truncated: the file ends inside the primary header ({len(first)} bytes)")
    if not first.startswith(b"SIMPLE  ="):
        shown = first[:16].decode("ascii", errors="replace")
        raise FitsReadError(f"not a FITS file (starts with {shown!r}, not 'SIMPLE  =')")
