"""Helpers of the quality tests: schemas, batch tables (through the real builder) and suites built in a line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from airflow_provider_cdc.config.models import SuiteConfig
from airflow_provider_cdc.events import TableChangesBuilder
from airflow_provider_cdc.quality import QualitySuites, TableValidation
from airflow_provider_cdc.tables import Column, TableSchema

TS_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z

_SOURCE_TYPES = {"integer": "bigint", "float": "double precision", "boolean": "boolean", "date": "date",
                 "timestamptz": "timestamp with time zone", "timestamp": "timestamp", "time": "time", "json": "jsonb",
                 "uuid": "uuid", "binary": "bytea"}


def col(name: str, logical: str = "text", *, pk: bool = False, precision: int | None = None,
        scale: int | None = None) -> Column:
    source = f"numeric({precision},{scale})" if logical == "decimal" and precision else (
        "numeric" if logical == "decimal" else _SOURCE_TYPES.get(logical, "text"))
    return Column(name, source, logical, nullable=not pk, primary_key=pk, precision=precision, scale=scale)


def schema_of(*columns: Column, name: str = "users", schema: str = "public") -> TableSchema:
    return TableSchema(schema, name, tuple(columns), "postgresql")


USERS = schema_of(
    col("id", "integer", pk=True),
    col("email"),
    col("name"),
    col("price", "decimal", precision=12, scale=2),
    col("status"),
    col("age"),
)

Event = tuple[Any, ...]


def table_of(schema: TableSchema, events: Sequence[Event]) -> pa.Table:
    """Events ``(op, row)`` or ``(op, row, unchanged)`` (rows: dicts of portable text, missing = NULL); seq counts
    from 1."""
    builder = TableChangesBuilder(schema)
    for seq, (op, row, *rest) in enumerate(events, start=1):
        builder.append(op, seq, TS_MS + seq * 1000, f"tx{seq}", f"0/{seq:X}",
                       [row.get(c) for c in schema.column_names], unchanged=rest[0] if rest else None)
    return builder.finish()


def suite(*rules: Mapping[str, Any], suite_id: str = "users_checks", tables: list[str] | None = None) -> SuiteConfig:
    """A suite as quality.yaml gives it (built without validation, so that rules the config model would refuse
    reach the checks too)."""
    return SuiteConfig.model_construct(id=suite_id, tables=tables, rules=[dict(r) for r in rules])


def run(rules: Sequence[Mapping[str, Any]] | SuiteConfig, events: Sequence[Event],
        schema: TableSchema = USERS) -> TableValidation:
    config = rules if isinstance(rules, SuiteConfig) else suite(*rules)
    return QualitySuites.from_config([config]).validate(table_of(schema, events), schema)


def failing(result: TableValidation) -> list[tuple[int, str, str]]:
    """``(row, rule id, reason)`` of every violation, by row then rule."""
    return sorted((v.row, v.rule_id, v.reason) for v in result.violations)
