"""Query results: a DataFrame that can also become an astropy Table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def frame_of(rows: Iterable[Sequence], columns: Sequence[str]) -> pd.DataFrame:
    """Rows from the database (tuples, or dicts by column name) as a DataFrame whose columns keep the rows'
    types: a column of integers with NULLs stays integer (pandas' nullable
    Int64) instead of becoming float, so frame 3866 never prints as 3866.0."""
    columns = list(columns)
    rows = [tuple(r.get(c) for c in columns) if isinstance(r, dict) else tuple(r) for r in rows]
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    for name in frame.columns:
        frame[name] = _typed(frame[name])
    return frame


def _typed(column: pd.Series) -> pd.Series:
    values = column.dropna()
    if values.empty:
        return column
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        # plain int64 when nothing is missing: its values iterate as Python ints
        return column.astype("int64" if len(values) == len(column) else "Int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return column.astype("float64")
    return column.infer_objects()


def to_csv(frame: pd.DataFrame) -> str:
    """Rows as CSV, as ``obsarch query --format csv`` and ``GET /exposures.csv`` give them."""
    from archive.formats import rows_to_csv

    return rows_to_csv([str(c) for c in frame.columns], frame.itertuples(index=False, name=None))


def to_json(frame: pd.DataFrame) -> str:
    """Rows as a JSON list of objects (times in ISO 8601), as ``obsarch query
    --format json`` and ``GET /exposures.json`` give them."""
    from archive.formats import rows_to_json

    return rows_to_json([str(c) for c in frame.columns], frame.itertuples(index=False, name=None))
