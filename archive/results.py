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
