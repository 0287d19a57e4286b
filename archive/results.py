"""Query results: a DataFrame that can also become an astropy Table."""

from __future__ import annotations

import pandas as pd


class QueryResult(pd.DataFrame):
    """A DataFrame of exposures that can also become an astropy Table."""

    @property
    def _constructor(self):
        return QueryResult

    def to_table(self):
        """The same rows as an :class:`astropy.table.Table`."""
        from astropy.table import Table

        return Table.from_pandas(pd.DataFrame(self))


def to_csv(frame: pd.DataFrame) -> str:
    """Rows as CSV, as ``obsarch query --format csv`` and ``GET /exposures.csv`` give them."""
    return frame.to_csv(index=False)


def to_json(frame: pd.DataFrame) -> str:
    """Rows as a JSON list of objects (times in ISO 8601), as ``obsarch query
    --format json`` and ``GET /exposures.json`` give them."""
    return frame.to_json(orient="records", date_format="iso", indent=1)
