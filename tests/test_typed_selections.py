"""Between layers, selections are trees: no code builds selection text from a
value (an f-string, ``str.format``, ``%`` or a join of conditions). A header
value or an option holding a quote, a backslash or ``' or band == 'B`` is
only ever a value."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from archive.query import FIELDS, Compare, all_of, compare, parse

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("archive", "processing", "cli", "web")
# text before a value that reads as the start of a condition, and text after one that goes on with another
_BEFORE = re.compile(r"\b([a-z_]+)\s*(==|!=|<=|>=|<|>|like|glob|in\s*\()\s*'?$|hdr\[\s*'?$|\b(and|or)\s*\($")
_AFTER = re.compile(r"^('|\))\s*(and|or)\s+[a-z_(]")


def _names() -> set[str]:
    return set(FIELDS) | {"hdr"}


def _formatted_selections(tree: ast.AST) -> list[int]:
    """Lines where text that reads like a selection is built from values."""
    names = _names()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            found += [node.lineno] if _joined_is_selection(node, names) else []
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            target = node.func.value
            if isinstance(target, ast.Constant) and isinstance(target.value, str) and _reads_like_selection(target.value, names):
                found.append(node.lineno)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str) and _reads_like_selection(node.left.value, names):
                found.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join":
            joiner = node.func.value
            if isinstance(joiner, ast.Constant) and isinstance(joiner.value, str) and joiner.value.strip() == "and":
                found.append(node.lineno)
    return found


def _joined_is_selection(node: ast.JoinedStr, names: set[str]) -> bool:
    parts = node.values
    for i, part in enumerate(parts):
        if not isinstance(part, ast.FormattedValue):
            continue
        before = parts[i - 1].value if i and isinstance(parts[i - 1], ast.Constant) else ""
        after = parts[i + 1].value if i + 1 < len(parts) and isinstance(parts[i + 1], ast.Constant) else ""
        match = _BEFORE.search(before)
        if match and (match.group(1) is None or match.group(1) in names):
            return True
        if _AFTER.search(after):
            return True
    return False


def _reads_like_selection(text: str, names: set[str]) -> bool:
    return bool(re.search(r"\b([a-z_]+)\s*(==|!=|<=|>=|<|>)\s*'?(\{|%)", text)) and any(n in text for n in names)


def _sources():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(REPO)))
def test_no_selection_is_built_from_a_value(path):
    lines = _formatted_selections(ast.parse(path.read_text(), str(path)))
    assert lines == [], f"{path.relative_to(REPO)}: selection text built from values at lines {lines}; pass a tree (archive.query.compare, all_of...)"


@pytest.mark.parametrize("sample", [
    "x = f\"band == '{band}'\"",
    "x = \"readout_mode == '{}'\".format(mode)",
    "x = \"band == '%s'\" % band",
    "x = \" and \".join(parts)",
    "x = f\"({selection}) and product is null\"",
])
def test_the_check_finds_formatted_selections(sample):
    assert _formatted_selections(ast.parse(sample))  # the check above can fail


def test_a_value_with_quotes_stays_a_value():
    hostile = "V' or band == 'B"
    tree = all_of(compare("band", "==", hostile), parse("frame_type == 'science'"))
    assert tree.items[0] == Compare(tree.items[0].field, "==", hostile)
    assert compare("object", "==", "it's \\ odd").value == "it's \\ odd"
