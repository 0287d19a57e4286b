"""Header cards as PostgreSQL ``COPY`` text, made in the workers that read them.

Sending parsed cards from a worker to the writer as Python tuples costs a
pickle and an unpickle of every card, and ``Copy.write_row`` in the writer
costs another microsecond per card; the writer is a single process, so on
PostgreSQL that was most of an ingest's time. A worker therefore formats its
cards as COPY text (one line per card, without the file id, which only the
writer knows) and the writer prefixes each file's lines with its id in one
bytes operation per file (see :func:`with_file_id`).
"""

from __future__ import annotations

from dataclasses import dataclass

try:
    from archive._cards import copy_lines as _compiled_copy_lines
except ImportError:  # built without a C compiler
    _compiled_copy_lines = None

_NULL = "\x00"  # stands for SQL NULL while a line is built (a value never holds it: checked)
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass(slots=True)
class CardText:
    """A chunk's cards as COPY text: ``(place of the file in the chunk,
    lines)``, each line ``hdu_index, position, keyword, value_text,
    value_num, vtype, comment`` ending in a newline."""

    blocks: list[tuple[int, bytes]]


def _escape(value: str | None) -> str:
    return "\\N" if value is None else value.translate(_ESCAPES).replace("\x00", "\\000")


def _careful_lines(hdu_index: int, cards: list[tuple]) -> str:
    """Every text field escaped: for the rare header holding a backslash,
    a tab, a line end or a NUL."""
    return "".join(
        "\t".join((str(hdu_index), str(pos), _escape(kw), _escape(text), "\\N" if num is None else repr(num), vtype, _escape(comment)))
        + "\n"
        for pos, kw, text, num, vtype, comment in cards
    )


def hdu_lines(hdu_index: int, cards: list[tuple]) -> str:
    """The COPY lines of one HDU's cards (see :class:`CardText`)."""
    if _compiled_copy_lines is not None:
        text = _compiled_copy_lines(hdu_index, cards)
        if text is not None:
            return text
        return _careful_lines(hdu_index, cards)
    null = _NULL
    text = "".join(
        f"{hdu_index}\t{pos}\t{kw}\t{null if value is None else value}\t{null if num is None else repr(num)}\t{vtype}\t{null if comment is None else comment}\n"
        for pos, kw, value, num, vtype, comment in cards
    )
    # The fast form holds only the separators it wrote: nothing to escape.
    plain = text.count("\t") == 6 * len(cards) and text.count("\n") == len(cards)
    if plain and "\\" not in text and "\r" not in text and text.count(null) == _nulls(cards):
        return text.replace(null, "\\N")
    return _careful_lines(hdu_index, cards)


def _nulls(cards: list[tuple]) -> int:
    return sum((c[2] is None) + (c[3] is None) + (c[5] is None) for c in cards)


def card_text(hdus: list[tuple[int, int, list[tuple]]]) -> CardText:
    """The cards of a chunk's HDUs, given as (the file's place in the chunk,
    HDU index, cards), as COPY text per file."""
    by_file: dict[int, list[str]] = {}
    for local, hdu_index, cards in hdus:
        by_file.setdefault(local, []).append(hdu_lines(hdu_index, cards))
    return CardText([(local, "".join(parts).encode("utf-8")) for local, parts in by_file.items()])


def with_file_id(file_id: int, block: bytes) -> bytes:
    """A file's lines with its id in front of each (one C-level replace)."""
    if not block:
        return block
    prefix = b"%d\t" % file_id
    return prefix + block[:-1].replace(b"\n", b"\n" + prefix) + b"\n"
