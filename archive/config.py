"""The user's ``obsarch.toml``: where it is and what it says."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from archive.exceptions import ConfigError

CONFIG_ENV = "OBSARCH_CONFIG"
CONFIG_NAME = "obsarch.toml"


def config_path(explicit: str | Path | None = None) -> Path | None:
    """``explicit``, else ``$OBSARCH_CONFIG``, else ``./obsarch.toml`` if present."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    local = Path.cwd() / CONFIG_NAME
    return local if local.is_file() else None


def load_config(explicit: str | Path | None = None) -> dict:
    """The parsed configuration, ``{}`` when there is none."""
    path = config_path(explicit)
    if path is None:
        return {}
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: configuration file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
