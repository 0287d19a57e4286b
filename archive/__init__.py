"""obsarch's catalog: what is stored and how to find it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("obsarch")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
