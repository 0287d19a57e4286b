"""The user's ``obsarch.toml``: where it is, what it may say, and what it says.

Every key obsarch reads is declared in :data:`SCHEMA`, so that a typo or a
value of the wrong type is refused with one line naming the file, the key
and what is expected, instead of being ignored or failing deep inside a step.
A feature that reads a new key declares it here.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from archive.exceptions import ConfigError

CONFIG_ENV = "OBSARCH_CONFIG"
CONFIG_NAME = "obsarch.toml"


class Each:
    """A table whose keys the user names (a rule, a band), each value of ``schema``."""

    def __init__(self, schema):
        self.schema = schema


class Owned:
    """A section whose owner checks it with messages of its own (the
    calibration rules: processing/calib_rules.py), declared here so that the
    file's other keys can still be checked."""


NUMBER = (int, float)
_RULE = {"metric": str, "grade": str, "reason": str, "above": NUMBER, "below": NUMBER, "relative": bool, "enabled": bool}

SCHEMA: dict = {
    "keywords": {
        "sources": Each([str]),
        "frame_types": Each(str),
        "bands": Each(str),
        "placeholders": {"values": [str]},
        "frame_number": {"filename_pattern": str},
    },
    "quality": {
        "detect_sigma": NUMBER, "npixels": int, "box_size": int, "max_stars": int, "elongation_stars": int,
        "saturation": NUMBER, "chunk_planes": int,
        "rules": Each(_RULE),
    },
    "archives": {name: str for name in ("heasarc_vo", "eso_query", "eso_calselector", "eso_download", "mast", "sesame")},
    "calibration": Owned(),
}

_WORDS = {str: "text", int: "an integer", bool: "true or false", NUMBER: "a number"}


def config_path(explicit: str | Path | None = None) -> Path | None:
    """``explicit``, else ``$OBSARCH_CONFIG``, else ``./obsarch.toml`` if present."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    local = Path.cwd() / CONFIG_NAME
    return local if local.is_file() else None


def load_config(explicit: str | Path | None = None) -> dict:
    """The parsed and checked configuration, ``{}`` when there is none."""
    path = config_path(explicit)
    if path is None:
        return {}
    try:
        with open(path, "rb") as stream:
            config = tomllib.load(stream)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: configuration file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    problem = check(config, SCHEMA)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    return config


def check(value, schema, key: str = "") -> str | None:
    """What is wrong with ``value`` against ``schema`` (one line), or None."""
    if isinstance(schema, Owned):
        return None
    if isinstance(schema, Each):
        if not isinstance(value, dict):
            return f"{key or 'the file'}: expected a table"
        return next(filter(None, (check(v, schema.schema, f"{key}.{k}") for k, v in value.items())), None)
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{key}: expected a table [{key}]"
        for name, item in value.items():
            full = f"{key}.{name}" if key else name
            if name not in schema:
                where = f"in [{key}]" if key else "at the top level"
                return f"unknown key {full!r} {where}; known: {', '.join(schema)}"
            problem = check(item, schema[name], full)
            if problem:
                return problem
        return None
    if isinstance(schema, list):
        if not isinstance(value, list) or any(check(v, schema[0], key) for v in value):
            return f"{key}: expected a list of {_WORDS[schema[0]]}, got {value!r}"
        return None
    if isinstance(value, bool) and schema is not bool or not isinstance(value, schema):
        return f"{key}: expected {_WORDS[schema]}, got {value!r}"
    return None
