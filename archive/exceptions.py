"""The project's exceptions. The CLI prints their message as one line."""


class ObsarchError(Exception):
    """Base of every error obsarch raises on purpose."""


class CatalogNotFound(ObsarchError):
    """The database has no obsarch catalog yet."""


class SchemaOutOfDate(ObsarchError):
    """The catalog's schema is not the one this code needs."""


class DatabaseError(ObsarchError):
    """A driver error, translated into one line."""


class ReadOnlyViolation(ObsarchError):
    """A write was attempted through the read-only SQL access."""


class UsageError(ObsarchError):
    """A value the person gave that the command cannot take: an option out
    of its range, an angle that cannot be read (the CLI exits 2)."""


class SelectionError(UsageError):
    """A selection expression that cannot be parsed or compiled."""


class FitsReadError(ObsarchError):
    """A file that cannot be read as FITS; the message names the problem."""


class ConfigError(ObsarchError):
    """A configuration file with a problem."""


class NotFoundError(ObsarchError):
    """Something asked for by name or number is not in the catalog."""


class FetchError(ObsarchError):
    """An archive that cannot be reached or answers with an error."""


class QueryTimeout(ObsarchError):
    """A statement that ran past its timeout and was cancelled on the server."""
