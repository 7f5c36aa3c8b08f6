"""Building change batches by hand and reading Delta tables back, for the file sink's tests."""

from __future__ import annotations

import glob
import os
import sysconfig
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable

from airflow_provider_cdc.events import ChangeBatch, TableChangesBuilder
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

SOURCE = "shop"
TS_MS = 1_714_550_400_000  # 2024-05-01 08:00:00 UTC

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

Event = tuple  # (op, seq, row: dict), (op, seq, row, unchanged) or (op, seq, row, unchanged, before: dict)


def make_batch(
    events: Sequence[Event],
    schema: TableSchema = ITEMS,
    *,
    batch_id: str | None = None,
    source_id: str = SOURCE,
    extra: dict[TableSchema, Sequence[Event]] | None = None,
    schema_changes: Sequence[SchemaChange] = (),
) -> ChangeBatch:
    """A batch of ``events`` on ``schema`` (plus ``extra`` tables); rows are dicts of portable text, missing = NULL."""
    tables, schemas, seqs = {}, {}, []
    for table_schema, table_events in {schema: events, **(extra or {})}.items():
        builder = TableChangesBuilder(table_schema)
        for op, seq, row, *rest in table_events:
            unchanged = rest[0] if rest else None
            before = rest[1] if len(rest) > 1 else None
            builder.append(op, seq, TS_MS + seq * 1000, f"tx{seq}", f"0/{seq:X}",
                           [row.get(name) for name in table_schema.column_names], unchanged=unchanged,
                           before=None if before is None else [before.get(n) for n in table_schema.column_names])
            seqs.append(seq)
        tables[table_schema.qualified_name] = builder.finish()
        schemas[table_schema.qualified_name] = table_schema
    seqs += [change.seq for change in schema_changes]
    first, last = min(seqs), max(seqs)
    return ChangeBatch(
        source_id=source_id,
        batch_id=batch_id or f"{source_id}:{first}-{last}",
        position_from={"lsn": f"0/{first - 1:X}"},
        position_to={"lsn": f"0/{last:X}"},
        seq_from=first,
        seq_to=last,
        tables=tables,
        schemas=schemas,
        schema_changes=list(schema_changes),
    )


def item(id_: int, **values: Any) -> dict[str, Any]:
    return {"id": str(id_), **values}


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
