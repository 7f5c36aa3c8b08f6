"""Helpers of the transform tests: schemas, batch tables and rule sets built in a line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from airflow_provider_cdc.events import META_COLUMNS, TableChangesBuilder
from airflow_provider_cdc.tables import Column, TableSchema
from airflow_provider_cdc.transform import FunctionRegistry, RuleSet, TableResult

TS_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z
SALTS = {"cdc_salt": "pepper", "other_salt": "paprika"}


def col(name: str, logical: str = "text", *, pk: bool = False, precision: int | None = None,
        scale: int | None = None, ordinal: int | None = None) -> Column:
    source = {"integer": "bigint", "decimal": f"numeric({precision},{scale})" if precision else "numeric",
              "float": "double precision", "boolean": "boolean", "timestamptz": "timestamp with time zone",
              "json": "jsonb", "uuid": "uuid", "date": "date"}.get(logical, "text")
    return Column(name, source, logical, nullable=not pk, primary_key=pk, ordinal=ordinal, precision=precision,
                  scale=scale)


def schema_of(*columns: Column, name: str = "users", schema: str = "public") -> TableSchema:
    return TableSchema(schema, name, tuple(columns), "postgresql")


USERS = schema_of(
    col("id", "integer", pk=True, ordinal=1),
    col("email", ordinal=2),
    col("phone", ordinal=3),
    col("price", "decimal", precision=12, scale=2, ordinal=4),
    col("tax", "decimal", precision=12, scale=2, ordinal=5),
    col("status", ordinal=6),
)

Event = tuple[Any, ...]


def table_of(schema: TableSchema, events: Sequence[Event]) -> pa.Table:
    """Events ``(op, row)``, ``(op, row, unchanged)`` or ``(op, row, unchanged, before)`` (rows: dicts of portable
    text, missing = NULL); seq counts from 1 and each event is one second after the previous."""
    builder = TableChangesBuilder(schema)
    for seq, (op, row, *rest) in enumerate(events, start=1):
        unchanged = rest[0] if rest else None
        before = rest[1] if len(rest) > 1 else None
        builder.append(op, seq, TS_MS + seq * 1000, f"tx{seq}", f"0/{seq:X}",
                       [row.get(c) for c in schema.column_names], unchanged=unchanged,
                       before=None if before is None else [before.get(c) for c in schema.column_names])
    return builder.finish()


def rules(*configs: Mapping[str, Any], vectorise: bool = True, functions: FunctionRegistry | None = None,
          secrets: Mapping[str, str] = SALTS) -> RuleSet:
    return RuleSet.from_config(list(configs), functions=functions or FunctionRegistry(),
                               secret=lambda name: secrets[name], vectorise=vectorise)


def data_rows(result: TableResult | pa.Table) -> list[dict[str, Any]]:
    """The rows of a result without bookkeeping, but with their op."""
    table = result.table if isinstance(result, TableResult) else result
    return [{k: v for k, v in row.items() if k not in META_COLUMNS or k == "_cdc_op"} for row in table.to_pylist()]


def column(result: TableResult, name: str) -> list[Any]:
    return result.table.column(name).to_pylist()
