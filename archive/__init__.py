"""obsarch's catalog: what is stored and how to find it."""

# The one place the version is written: pyproject.toml reads it from here,
# and reading it from the installed metadata cost 15 ms at every command.
__version__ = "0.1.0"
