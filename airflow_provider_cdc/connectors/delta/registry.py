"""The file sink's schema registry (``<root>/_cdc_schemas``) and held changes (``<root>/_cdc_held_changes``).

Both are small Delta tables beside the ledger (:mod:`.ledger_table`), written by :class:`~.sink.DeltaSink` in the
order its module docstring explains. Each write is idempotent, because a Delta sink has no transaction across tables
and a crashed apply is replayed:

* a schema version is one row per ``(subject, version)``, **upserted** by one ``MERGE`` (a version's status changes:
  ``held`` → ``accepted``); writing the same versions twice leaves the same rows;
* a held chunk is one row per ``(source_id, source_table, batch_id)``, **inserted if absent** by one ``MERGE``: a
  replayed batch holds the same events again and finds its chunk there.

A version is stored whole as JSON text (:meth:`SchemaVersion.to_dict`), with the columns a reader filters on beside
it; a chunk's events as the Arrow IPC stream :meth:`HeldChunk.data_bytes` gives, its schema and positions as JSON.

:func:`decide_replayable` is how an apply reads them for the gate: without what a crashed attempt of the same batch
stored, so that the replay decides exactly as that attempt did.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import write_deltalake

from airflow_provider_cdc.connectors.delta.ledger_table import HeldTables, SmallTable, sql_text
from airflow_provider_cdc.connectors.delta.storage import join
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.schema import GateDecision, HeldChunk, SchemaPolicy, SchemaVersion, decide

log = logging.getLogger("airflow_provider_cdc.sink.delta")

SCHEMAS_TABLE = "_cdc_schemas"
HELD_CHANGES_TABLE = "_cdc_held_changes"

SCHEMAS_SCHEMA = pa.schema([
    pa.field("source_id", pa.string()),
    pa.field("subject", pa.string()),
    pa.field("version", pa.int64()),
    pa.field("status", pa.string()),
    pa.field("schema_id", pa.string()),
    pa.field("seq", pa.int64()),
    pa.field("batch_id", pa.string()),
    pa.field("registered_at", pa.string()),
    pa.field("document", pa.string()),  # SchemaVersion.to_dict() as JSON text
])
HELD_CHANGES_SCHEMA = pa.schema([
    pa.field("source_id", pa.string()),
    pa.field("source_table", pa.string()),
    pa.field("batch_id", pa.string()),
    pa.field("seq_from", pa.int64()),
    pa.field("seq_to", pa.int64()),
    pa.field("meta", pa.string()),  # HeldChunk.meta() as JSON text
    pa.field("data", pa.binary()),  # HeldChunk.data_bytes(): the events as an Arrow IPC stream (NULL: none)
])


class SmallMergeTable(SmallTable):
    """A bookkeeping table written by ``MERGE`` on a key (created by the first write)."""

    key: tuple[str, ...] = ()

    def merge(self, rows: pa.Table, *, update: bool) -> None:
        """Insert the rows whose key is absent; with ``update``, also overwrite those whose key is there."""
        if rows.num_rows == 0:
            return
        table = self.table()
        if table is None:  # nothing stored yet: every key is absent
            write_deltalake(self.uri, rows, mode="append", storage_options=self.storage_options or None)
            return
        merger = table.merge(rows, " AND ".join(f"t.{name} = s.{name}" for name in self.key), source_alias="s",
                             target_alias="t")
        if update:
            merger = merger.when_matched_update_all()
        merger.when_not_matched_insert_all().execute()


class SchemaVersionTable(SmallMergeTable):
    """``<root>/_cdc_schemas``: every registered schema version, one row per ``(subject, version)``."""

    schema = SCHEMAS_SCHEMA
    key = ("subject", "version")

    def __init__(self, root: str, storage_options: dict[str, str]) -> None:
        super().__init__(join(root, SCHEMAS_TABLE), storage_options)

    def versions(self, source_id: str) -> list[SchemaVersion]:
        """The versions of ``source_id``'s subjects, by subject and version."""
        rows = self.read(ds.field("source_id") == source_id, ["document"]).to_pylist()
        versions = [SchemaVersion.from_dict(json.loads(row["document"])) for row in rows]
        return sorted(versions, key=lambda version: (version.subject, version.version))

    def store(self, source_id: str, versions: Iterable[SchemaVersion],
              replacing: Mapping[tuple[str, int], SchemaVersion] | None = None) -> None:
        """Upsert ``versions`` in one commit (a status change replaces the row of that version).

        ``replacing``: what a crashed attempt of the same batch stored; a version it has already keeps its
        ``registered_at``, so that the replay writes the very same row."""
        kept = []
        for version in versions:
            before = (replacing or {}).get((version.subject, version.version))
            if before is not None and before.key == version.key:
                version = dataclasses.replace(version, registered_at=before.registered_at)
            kept.append(version)
        records = [{
            "source_id": source_id, "subject": version.subject, "version": version.version,
            "status": version.status, "schema_id": version.id, "seq": version.seq, "batch_id": version.batch_id,
            "registered_at": version.registered_at, "document": json.dumps(version.to_dict(), sort_keys=True),
        } for version in kept]
        self.merge(pa.Table.from_pylist(records, schema=SCHEMAS_SCHEMA), update=True)


class HeldChangeTable(SmallMergeTable):
    """``<root>/_cdc_held_changes``: the changes of held tables, one chunk per table and batch."""

    schema = HELD_CHANGES_SCHEMA
    key = ("source_id", "source_table", "batch_id")

    def __init__(self, root: str, storage_options: dict[str, str]) -> None:
        super().__init__(join(root, HELD_CHANGES_TABLE), storage_options)

    def chunks(self, source_id: str, source_table: str) -> list[HeldChunk]:
        """The chunks held for ``source_table``, oldest first."""
        where = (ds.field("source_id") == source_id) & (ds.field("source_table") == source_table)
        rows = self.read(where).to_pylist()
        chunks = [HeldChunk.from_stored(source_id=row["source_id"], table=row["source_table"],
                                        batch_id=row["batch_id"], seq_from=row["seq_from"], seq_to=row["seq_to"],
                                        meta=row["meta"], data=row["data"]) for row in rows]
        return sorted(chunks, key=lambda chunk: (chunk.seq_from, chunk.seq_to))

    def insert(self, chunks: Iterable[HeldChunk]) -> None:
        """Store ``chunks`` in one commit; a chunk already stored (a replayed batch) is left as it is."""
        records = [{
            "source_id": chunk.source_id, "source_table": chunk.table, "batch_id": chunk.batch_id,
            "seq_from": chunk.seq_from, "seq_to": chunk.seq_to, "meta": json.dumps(chunk.meta(), sort_keys=True),
            "data": chunk.data_bytes(),
        } for chunk in chunks]
        self.merge(pa.Table.from_pylist(records, schema=HELD_CHANGES_SCHEMA), update=False)

    def delete(self, source_id: str, source_table: str) -> int:
        """Delete the chunks of ``source_table`` (after an accept replayed them, or a release discarded them)."""
        table = self.table()
        if table is None:
            return 0
        metrics = table.delete(f"source_id = {sql_text(source_id)} AND source_table = {sql_text(source_table)}")
        return int(metrics.get("num_deleted_rows", 0))


def decide_replayable(batch: ChangeBatch, high_water: int, policy: SchemaPolicy | None, *,
                      versions: SchemaVersionTable, held: HeldTables,
                      sink_id: str) -> tuple[GateDecision, dict[tuple[str, int], SchemaVersion]]:
    """The gate's decision on ``batch``, and the versions a crashed attempt of this batch stored already.

    What that attempt stored (versions and held marks carrying this batch's id) is left out of what the gate reads,
    so that it decides as the attempt did (:mod:`.sink` explains why); its versions are returned to keep their
    ``registered_at``. A replay decides the same versions again; if it does not, those versions are not a crashed
    attempt's but an older batch's of the same id (a source re-snapshotted from scratch repeats its snapshot batch
    ids), and the gate decides on everything stored, as for any batch."""
    stored = versions.versions(batch.source_id)
    marks = held.marks(batch.source_id)
    own = {(version.subject, version.version): version for version in stored if version.batch_id == batch.batch_id}
    earlier = [version for version in stored if version.batch_id != batch.batch_id]
    decision = decide(batch, earlier, {table: reason for table, (reason, by) in marks.items() if by != batch.batch_id},
                      policy, high_water)
    changed = decision.registry.changed
    if all(key in changed and changed[key].key == version.key for key, version in own.items()):
        return decision, own
    log.warning("sink %s, batch %s: versions %s carry this batch's id but are not this batch's; deciding on every "
                "stored version", sink_id, batch.batch_id, sorted(own))
    return decide(batch, stored, {table: reason for table, (reason, _) in marks.items()}, policy, high_water), {}
