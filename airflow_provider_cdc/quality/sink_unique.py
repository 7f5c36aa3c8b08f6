"""``unique`` with ``against_sink: true``: a value must not be in the sink already under another key.

GX sees one batch, so its ``expect_column_values_to_be_unique`` cannot know the rows loaded before. This check asks
the sink, in one round trip per rule and batch, for the rows holding the batch's values (the connector's reference
reader, the join rules' reader, pointed at the sink table), and refuses a change whose value the sink holds under a
different key. Judged, like the GX checks, only on inserts, updates and snapshot reads, and only their values.

What it does not refuse: a value held by a key that this same batch changes too (the batch decides that key's new
value, and the within-batch ``unique`` check judges the batch's final rows), and a sink row soft-deleted
(``_cdc_deleted_at`` set). Compound ``columns`` are judged by GX within the batch only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from airflow_provider_cdc.transform.join import key_text
from airflow_provider_cdc.values import parse_value

if TYPE_CHECKING:
    from airflow_provider_cdc.quality.rules import QualityCheck
    from airflow_provider_cdc.quality.validate import Violation
    from airflow_provider_cdc.tables import Column, TableSchema

# (source table schema.name, columns to match, value tuples) -> {value tuple: the sink row holding it}
SinkRows = Callable[[str, list[str], list[tuple[Any, ...]]], Mapping[tuple[Any, ...], Mapping[str, Any]]]

SOFT_DELETED = "_cdc_deleted_at"


def sink_duplicates(check: QualityCheck, table: pa.Table, schema: TableSchema, rows: np.ndarray,
                    sink_rows: SinkRows) -> list[Violation]:
    """The violations of ``check`` (a single-column ``unique`` with ``against_sink``) among ``rows`` of ``table``."""
    from airflow_provider_cdc.quality.validate import Violation

    (column,) = check.columns
    logical = schema.column(column).logical_type
    key = [schema.column(name) for name in schema.primary_key]
    if not key:
        return []
    taken = pa.array(rows)
    values = table.column(column).take(taken).to_pylist()
    wanted = sorted({v for v in values if v is not None})
    if not wanted:
        return []
    mine = list(zip(*_key_columns(table, key, taken)))
    in_batch = set(zip(*_key_columns(table, key, None)))
    held = sink_rows(schema.qualified_name, [column], [(parse_value(v, logical),) for v in wanted])
    by_value = {key_text(found[0]): row for found, row in held.items() if row.get(SOFT_DELETED) is None}
    out: list[Violation] = []
    for position, value in enumerate(values):
        row = by_value.get(key_text(parse_value(value, logical))) if value is not None else None
        if row is None:
            continue
        holder = tuple(None if row.get(c.name) is None else key_text(row.get(c.name)) for c in key)
        if holder == mine[position] or holder in in_batch:
            continue
        shown = ", ".join(f"{c.name}={text}" for c, text in zip(key, holder))
        out.append(Violation(int(rows[position]), check.suite_id, check.rule_id, "unique against the sink", column,
                             check.policy, f"{column} {value!r} is in the sink already, at {shown}", value))
    return out


def _key_columns(table: pa.Table, key: Sequence[Column], taken: pa.Array | None) -> list[list[str | None]]:
    """Each key column's values as :func:`key_text` gives them (the batch holds portable text)."""
    out = []
    for column in key:
        values = table.column(column.name)
        texts = (values.take(taken) if taken is not None else values).to_pylist()
        out.append([None if t is None else key_text(parse_value(t, column.logical_type)) for t in texts])
    return out
