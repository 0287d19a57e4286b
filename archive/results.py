"""Query results: a DataFrame that can also become an astropy Table."""

from __future__ import annotations

import math
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
    values = [v for v in column if v is not None]
    if not values:
        return column
    if all(isinstance(v, bool) for v in values):  # logicals: pandas' nullable boolean keeps a NULL apart
        return column.astype("bool" if len(values) == len(column) else "boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if not all(-(2**63) <= v < 2**63 for v in values):  # a header's integer of more digits: kept exact, as objects
            return column
        # plain int64 when nothing is missing: its values iterate as Python ints
        return column.astype("int64" if len(values) == len(column) else "Int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        if any(isinstance(v, float) and math.isnan(v) for v in values):
            return _floats_with_nan(column)
        return column.astype("float64")  # a NULL is NaN, pandas' missing value (see output_rows)
    return column.infer_objects()


def _floats_with_nan(column: pd.Series) -> pd.Series:
    """A column of floats holding a NaN (a value that is not a number) as
    pandas' masked Float64: its NULLs are NA, its NaNs stay NaN, so that
    neither is taken for the other."""
    import numpy as np
    from pandas.arrays import FloatingArray

    mask = np.array([v is None for v in column])
    data = np.array([0.0 if v is None else float(v) for v in column])
    return pd.Series(FloatingArray(data, mask), index=column.index, name=column.name)


def output_rows(frame: pd.DataFrame) -> list[tuple]:
    """A DataFrame's rows to be written (:mod:`archive.formats`), each
    missing value as None. A typed column holds one as pandas' missing value:
    NaN in a float64 column (so a NaN there is a NULL), NaN or NA in a
    string one, NA in a nullable one. A column that holds NaN as a value is
    a masked Float64 one, where NaN is no missing value (:func:`frame_of`
    makes it so). An object column holds None, as the rows gave it."""
    columns = []
    for _, column in frame.items():
        values = column.tolist()
        if column.dtype != object:
            values = [None if gone else v for v, gone in zip(values, column.isna().tolist(), strict=True)]
        columns.append(values)
    return list(zip(*columns)) if columns else [() for _ in range(len(frame))]


def to_csv(frame: pd.DataFrame) -> str:
    """Rows as CSV, as ``obsarch query --format csv`` and ``GET /exposures.csv`` give them."""
    from archive.formats import rows_to_csv

    return rows_to_csv([str(c) for c in frame.columns], output_rows(frame))


def to_json(frame: pd.DataFrame) -> str:
    """Rows as a JSON list of objects (times in ISO 8601), as ``obsarch query
    --format json`` and ``GET /exposures.json`` give them."""
    from archive.formats import rows_to_json

    return rows_to_json([str(c) for c in frame.columns], output_rows(frame))
