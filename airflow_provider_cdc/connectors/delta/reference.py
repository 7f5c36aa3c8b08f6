"""A join rule's reference reader for Delta tables: rows of one table by key, through a pyarrow dataset filter.

The connection is the lake's root; table ``schema.name`` is the folder ``<root>/schema/name`` (the layout the Delta
sink writes), an unqualified name ``<root>/name``. Keys are filtered per column with ``isin`` in the key column's
own Arrow type (a column whose keys do not cast is not filtered in Arrow; the engine matches keys exactly anyway).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from airflow_provider_cdc.connectors.delta.storage import join
from airflow_provider_cdc.transform.join import contract_value


def table_uri(root: str, table: str) -> str:
    return join(root, *[part for part in table.split(".") if part])


def lookup(url: str, table: str, key_columns: list[str], keys: list[tuple[Any, ...]], *,
           missing_ok: bool = False) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows of ``table`` whose ``key_columns`` equal one of ``keys``: ``{key: {column: value}}``."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    if not keys:
        return out
    try:
        dataset = DeltaTable(table_uri(url, table)).to_pyarrow_dataset()
    except TableNotFoundError:
        if missing_ok:  # a sink table not created yet holds nothing
            return out
        raise
    condition: ds.Expression | None = None
    for i, column in enumerate(key_columns):
        field = dataset.schema.field(column)  # KeyError: no such column
        try:
            values = pa.array([key[i] for key in keys]).cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            continue
        clause = pc.field(column).isin(values)
        condition = clause if condition is None else condition & clause
    for row in dataset.to_table(filter=condition).to_pylist():
        typed = {name: contract_value(value) for name, value in row.items()}
        out.setdefault(tuple(typed[c] for c in key_columns), typed)
    return out
