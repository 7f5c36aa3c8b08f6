"""Building change batches by hand and reading Delta tables back, for the file sink's tests."""

from __future__ import annotations

import glob
import os
import sysconfig
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from cdc_testing import TS_MS, Event, batch_of, item  # noqa: F401 - item and TS_MS are used by the tests importing this
from deltalake import DeltaTable

from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.tables import Column, TableSchema

SOURCE = "shop"

ITEMS = TableSchema(
    schema="public",
    name="items",
    columns=(
        Column("id", "integer", "integer", nullable=False, primary_key=True),
        Column("name", "text", "text"),
        Column("amount", "numeric(12,2)", "decimal", precision=12, scale=2),
        Column("seen_at", "timestamp with time zone", "timestamptz"),
        Column("payload", "bytea", "binary"),
        Column("tags", "text[]", "other"),
    ),
)

def make_batch(events: Sequence[Event], schema: TableSchema = ITEMS, **kwargs: Any) -> ChangeBatch:
    return batch_of(events, schema, **kwargs)


def read_table(uri: str) -> pa.Table:
    return DeltaTable(uri).to_pyarrow_table()


def rows(uri: str, columns: Sequence[str] = ("id", "name", "amount"), key: Sequence[str] = ("id",)) -> list[tuple]:
    """The Delta table's rows as tuples of ``columns`` (typed Python values), ordered by ``key``."""
    table = read_table(uri).sort_by([(k, "ascending") for k in key])
    return [tuple(record[c] for c in columns) for record in table.to_pylist()]


def delta_extension() -> str | None:
    """The DuckDB ``delta`` extension shipped by the duckdb-ext-delta wheel (None when it is not installed)."""
    import duckdb

    site = sysconfig.get_paths()["purelib"]
    pattern = os.path.join(site, "duckdb_ext", "extensions", f"v{duckdb.__version__}", "*", "delta.duckdb_extension")
    found = glob.glob(pattern)
    return found[0] if found else None
