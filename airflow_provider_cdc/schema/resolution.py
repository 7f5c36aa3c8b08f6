"""Reading changes written with one schema version with another: Avro's schema resolution, on a batch's columns.

Held changes wait in the sink while their table is held; by the time ``schema accept`` replays them, the table may
follow a newer version, and a staged batch may be read after the registry moved on. Either way the events are read
with the newer (reader) schema, by Avro's rules:

* a column both have is kept (values are the value contract's text, so a promotion needs no conversion);
* a column the reader has under another name that the writer had (a rename: same ordinal, or an Avro alias) takes
  the writer's values;
* a column only the reader has gets its default: the backfill older rows hold (``Column.backfill``), else NULL;
* a column only the writer has is dropped.

Before-images (``_cdc_before:<column>``) and the list of unchanged columns follow the same mapping.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.events import BEFORE_PREFIX
from airflow_provider_cdc.tables import RESERVED_PREFIX, TableSchema


def writer_columns(writer: TableSchema, reader: TableSchema, *, by_ordinal: bool = True) -> dict[str, str | None]:
    """Reader column → the writer column its values come from (None: not in the writer, take the default)."""
    by_name = set(writer.column_names)
    by_ord = {col.ordinal: col.name for col in writer.columns if col.ordinal is not None} if by_ordinal else {}
    out: dict[str, str | None] = {}
    for col in reader.columns:
        if col.name in by_name:
            out[col.name] = col.name
        elif col.ordinal is not None and col.ordinal in by_ord and by_ord[col.ordinal] not in reader.column_names:
            out[col.name] = by_ord[col.ordinal]
        else:
            out[col.name] = None
    return out


def resolve_table(events: pa.Table, writer: TableSchema, reader: TableSchema, *, by_ordinal: bool = True,
                  use_defaults: bool = True) -> pa.Table:
    """``events`` (one table's changes, written with ``writer``) as ``reader`` reads them (module docstring).

    ``use_defaults=False``: a reader column the writer lacks is NULL (a sink column the source no longer feeds)."""
    mapping = writer_columns(writer, reader, by_ordinal=by_ordinal)
    present = set(events.column_names)
    n = events.num_rows
    arrays: list[pa.Array | pa.ChunkedArray] = []
    fields: list[pa.Field] = []
    for name in events.column_names:
        if name.startswith(RESERVED_PREFIX) and not name.startswith(BEFORE_PREFIX):
            arrays.append(events[name])
            fields.append(events.schema.field(name))
    # A writer column's name as the reader knows it; a column the reader lacks is not "unchanged" in the reader (a
    # sink would look for a value it has no column for).
    read_as = {source: target for target, source in mapping.items() if source is not None}
    remapped = any(source != target for source, target in read_as.items()) or not set(writer.column_names) <= set(
        read_as)
    if "_cdc_unchanged" in present and remapped:
        index = fields.index(events.schema.field("_cdc_unchanged"))
        arrays[index] = _rename_in_lists(events["_cdc_unchanged"].combine_chunks(), read_as)
    defaults = {col.name: col.backfill for col in reader.columns} if use_defaults else {}
    has_before = any(name.startswith(BEFORE_PREFIX) for name in present)
    for prefix in ("", BEFORE_PREFIX) if has_before else ("",):
        for name, source in mapping.items():
            if source is not None and prefix + source in present:
                arrays.append(events[prefix + source])
            else:
                default = defaults.get(name)
                arrays.append(pa.repeat(pa.scalar(default, pa.string()), n) if default is not None
                              else pa.nulls(n, pa.string()))
            fields.append(pa.field(prefix + name, pa.string()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _rename_in_lists(lists: pa.ListArray, read_as: dict[str, str]) -> pa.ListArray:
    """Each list of column names with every name mapped through ``read_as``, names it lacks left out; NULL lists
    stay NULL. Columnar: one lookup over all the names, then the lists rebuilt from their parents' counts."""
    names = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists)
    index = pc.index_in(names, value_set=pa.array(list(read_as), pa.string()))
    kept = pc.is_valid(index)
    renamed = pc.take(pa.array(list(read_as.values()), pa.string()), index.filter(kept))
    counts = np.bincount(parents.filter(kept).to_numpy(zero_copy_only=False), minlength=len(lists))
    offsets = pa.array(np.concatenate(([0], np.cumsum(counts))), pa.int32())
    return pa.ListArray.from_arrays(offsets, renamed, mask=lists.is_null())
