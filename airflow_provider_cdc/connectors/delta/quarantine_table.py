"""The file sink's quarantine (``<root>/_cdc_quarantine``): the changes a stage took out of a batch, with their reason
(:mod:`airflow_provider_cdc.quarantine`), one row per ``quarantine_id`` (source, batch, seq and stage).

A Delta sink has no transaction across tables, so these rows cannot commit with the batch's data. They are written
as the sink's other bookkeeping tables are (:mod:`.registry`): **inserted if absent** by one ``MERGE`` on the key,
before the batch's ledger row (:class:`~.sink.DeltaSink` says where in its order of writes). A crash before the
``MERGE`` commits leaves none of them and no ledger row: the replay stores them. A crash after it leaves them
without the ledger row: the replay's ``MERGE`` finds every key and adds nothing (each row keeps its first
``quarantined_at``). The position moves on only after the ledger row, so no quarantined change is lost, and none is
stored twice.

``row`` is the change's row image as JSON text; ``event_time`` and ``quarantined_at`` are UTC timestamps.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from airflow_provider_cdc.connectors.delta.ledger_table import sql_text
from airflow_provider_cdc.connectors.delta.registry import SmallMergeTable
from airflow_provider_cdc.connectors.delta.storage import join
from airflow_provider_cdc.connectors.delta.types import UTC_MICROS
from airflow_provider_cdc.quarantine import KEY_COLUMNS, QUARANTINE_TABLE, SINK_COLUMNS, sort_rows, stored_row

_ARROW_OF_KIND = {"text": pa.string(), "json": pa.string(), "integer": pa.int64(), "timestamptz": UTC_MICROS}
QUARANTINE_SCHEMA = pa.schema([pa.field(name, _ARROW_OF_KIND[kind], nullable=name not in KEY_COLUMNS)
                               for name, kind in SINK_COLUMNS])


class QuarantineTable(SmallMergeTable):
    """``<root>/_cdc_quarantine`` (module docstring)."""

    schema = QUARANTINE_SCHEMA
    key = KEY_COLUMNS

    def __init__(self, root: str, storage_options: dict[str, str]) -> None:
        super().__init__(join(root, QUARANTINE_TABLE), storage_options)

    def insert(self, records: Iterable[dict[str, Any]]) -> int:
        """Store quarantined changes (:func:`airflow_provider_cdc.quarantine.sink_records`) in one commit, each if its
        key is absent (a key twice in ``records`` keeps the first). Returns how many records were given."""
        unique: dict[tuple[Any, ...], dict[str, Any]] = {}
        for record in records:
            unique.setdefault(tuple(record[name] for name in KEY_COLUMNS), {
                **record, "row": json.dumps(record["row"], ensure_ascii=False, sort_keys=True)})
        if not unique:
            return 0
        self.merge(pa.Table.from_pylist(list(unique.values()), schema=QUARANTINE_SCHEMA), update=False)
        self._compact_now_and_then()
        return len(unique)

    def rows(self, source_id: str) -> list[dict[str, Any]]:
        """The quarantined changes of ``source_id`` (``row`` parsed), by ``seq`` and stage."""
        records = self.read(ds.field("source_id") == source_id).to_pylist()
        for record in records:
            record["row"] = json.loads(record["row"])
        return sorted(records, key=lambda record: (record["seq"], record["stage"]))

    def stored(self, source_id: str, *, waiting_only: bool = True) -> list[dict[str, Any]]:
        """The rows of ``source_id`` as :meth:`Sink.quarantined` gives them (``waiting_only``: not replayed)."""
        where = ds.field("source_id") == source_id
        if waiting_only:
            where = where & ds.field("replayed_batch_id").is_null()
        return sort_rows(stored_row(record) for record in self.read(where).to_pylist())

    def mark_replayed(self, source_id: str, quarantine_ids: list[str], batch_id: str) -> None:
        """Set ``replayed_batch_id`` of the waiting ``quarantine_ids`` (one ``UPDATE`` commit; idempotent: a row
        already marked keeps its mark, and a second call changes nothing)."""
        table = self.table()
        if table is None or not quarantine_ids:
            return
        ids = ", ".join(sql_text(quarantine_id) for quarantine_id in sorted(set(quarantine_ids)))
        table.update(updates={"replayed_batch_id": sql_text(batch_id)},
                     predicate=f"source_id = {sql_text(source_id)} AND replayed_batch_id IS NULL"
                               f" AND quarantine_id IN ({ids})")
