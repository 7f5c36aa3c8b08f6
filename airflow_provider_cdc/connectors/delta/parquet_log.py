"""The file sink's append-only change log (``format: parquet``): plain Parquet files for readers without Delta.

Nothing is merged: every batch's events (after the source's high water) are written per table, typed like the
Delta tables (:mod:`.types`), with the bookkeeping columns ``_cdc_op``, ``_cdc_position`` (the event's ``seq``),
``_cdc_ts`` (commit time, UTC), ``_cdc_tx_id``, ``_cdc_pos`` (source position), ``_cdc_unchanged`` and, where the
source sent them, ``_cdc_before:<col>``. A reader folds them itself (last ``_cdc_position`` per key wins).

Exactly once by names: a table's file is ``<root>/<schema>/<table>/<seq_from>-<seq_to>.parquet`` (zero-padded), so a
replay overwrites the same file, and the batch's manifest ``<root>/_cdc_manifests/<source_id>/<seq_to>.json``,
holding its ledger row, is written **last**: a batch is committed when its manifest exists. A crash before it
leaves files that the replay rewrites identically; readers should list files through the manifests.

Schema changes: an append-only log records every change as it came (each file carries its own schema), so it never
holds a table, whatever the source's ``schema_changes`` mode. It still keeps the registry, so that ``schema``
commands and the ledger see versions for this sink too: every new version is registered ``applied`` (the gate runs
in ``evolve`` mode with compatibility ``NONE``: the log follows everything, and a verdict it does not act on would
only mislead). A batch's new versions go into its manifest (``schema_versions``), so they commit with the batch and
a crash before the manifest leaves none (the replay registers the same ones). A whole re-snapshot, which deletes the
manifests, first folds the registry into ``<root>/_cdc_schemas/<source_id>.json``.

The audit trail: a batch's entries (:func:`airflow_provider_cdc.connectors.audit.batch_audit_entries`) go into its
manifest (``audit``), so they commit with it; other entries are one file each, ``<root>/_cdc_audit/<audit_id>.json``
(written once: a second write of the same id is skipped). A whole re-snapshot moves the manifests' entries into such
files before deleting the manifests: the trail is history.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
import time
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_provider_cdc.connectors.audit import AUDIT_TABLE, AuditEntry, batch_audit_entries, matches, newest_first
from airflow_provider_cdc.connectors.base import AcceptResult, ApplyResult, SinkCapabilities
from airflow_provider_cdc.connectors.delta.ledger_table import newest_rows
from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
from airflow_provider_cdc.connectors.delta.storage import is_local, join, normalise_root
from airflow_provider_cdc.connectors.delta.types import OP, POSITION, TS, UTC_MICROS, typed_columns
from airflow_provider_cdc.connectors.ledger import LedgerRow, ledger_row
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import (
    BEFORE_PREFIX,
    OP_CREATE,
    OP_DELETE,
    OP_READ,
    OP_TRUNCATE,
    OP_UPDATE,
    ChangeBatch,
)
from airflow_provider_cdc.local_files import write_whole
from airflow_provider_cdc.schema import HeldChunk, SchemaPolicy, SchemaVersion, decide
from airflow_provider_cdc.tables import RESERVED_PREFIX, TableSchema

log = logging.getLogger("airflow_provider_cdc.sink.parquet")

MANIFESTS = "_cdc_manifests"
SCHEMAS = "_cdc_schemas"
SEQ_DIGITS = 20  # a seq is an int64: 19 digits at most, so names sort as numbers
# The gate's policy here: follow every change (module docstring).
FOLLOW_EVERYTHING = SchemaPolicy(mode="evolve", compatibility="NONE")

PARQUET_LOG_CAPABILITIES = SinkCapabilities(
    native_types=frozenset({"integer", "decimal", "float", "boolean", "text", "timestamptz", "timestamp", "date",
                            "json", "binary"}),
    dialect="",
    transactional=False,
    merge_by_key=False,
    soft_delete=False,
    stores_other_exactly=False,
)


def _padded(seq: int) -> str:
    return f"{seq:0{SEQ_DIGITS}d}"


class ParquetChangeLogSink:
    """Writes change batches as Parquet files plus one manifest per batch under ``root`` (module docstring)."""

    capabilities = PARQUET_LOG_CAPABILITIES

    def __init__(self, root: str, *, sink_id: str, target_schema: str = "public", delete_mode: str = "hard",
                 options: DeltaSinkOptions | None = None) -> None:
        if delete_mode != "hard":
            raise SinkError(sink_id, "the Parquet change log keeps every delete as an event and cannot soft-delete "
                                     "rows; use delete_mode: hard, or format: delta", terminal=True)
        if target_schema.startswith(RESERVED_PREFIX) or "/" in target_schema:
            raise SinkError(sink_id, f"target_schema {target_schema!r} cannot be a folder of the change log",
                            terminal=True)
        options = options or DeltaSinkOptions(format="parquet")
        self.sink_id = sink_id
        self.target_schema = target_schema
        self.root = normalise_root(root)
        self.fs, self.base = fsspec.core.url_to_fs(self.root, **options.storage_options)
        self._manifests: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        """Nothing to release."""

    # --- paths -------------------------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        """``parts`` under the root; every name checked, and a local path also where it resolves (a symlink)."""
        try:
            if is_local(self.root):
                return join(self.base, *parts)
            join(self.root, *parts)  # the names' checks (object stores have no links); the file system takes base
        except ValueError as exc:
            raise SinkError(self.sink_id, f"no place for the change log: {exc}", terminal=True) from exc
        return posixpath.join(self.base, *parts)

    def table_dir(self, table: str) -> str:
        return self._path(self.target_schema, table)

    def manifest_path(self, source_id: str, seq_to: int) -> str:
        return self._path(MANIFESTS, source_id, f"{_padded(seq_to)}.json")

    # --- manifests: the ledger -------------------------------------------------------------------------------

    def _manifest_names(self, source_id: str) -> list[str]:
        folder = self._path(MANIFESTS, source_id)
        if not self.fs.exists(folder):
            return []
        names = [posixpath.basename(path) for path in self.fs.ls(folder, detail=False)]
        return sorted(name for name in names if name.endswith(".json") and name[:-5].isdigit())

    def _read_manifest(self, path: str) -> dict[str, Any] | None:
        if path not in self._manifests:
            try:
                with self.fs.open(path, "rb") as handle:
                    self._manifests[path] = json.loads(handle.read())
            except FileNotFoundError:
                return None
            except ValueError:  # torn (a crash mid-write where a write is not atomic): not committed
                return None
        return self._manifests[path]

    def manifests(self, source_id: str) -> list[dict[str, Any]]:
        """The committed batches of ``source_id`` in ``seq`` order (each with its ledger row under ``ledger``)."""
        out = []
        for name in self._manifest_names(source_id):
            manifest = self._read_manifest(self._path(MANIFESTS, source_id, name))
            if manifest is not None:
                out.append(manifest)
        return out

    def has_batch(self, batch_id: str) -> bool:
        """Whether a manifest holds ``batch_id``: newest first, so the batch just loaded is found at once."""
        source_id = batch_id.split(":", 1)[0]
        for name in reversed(self._manifest_names(source_id)):
            manifest = self._read_manifest(self._path(MANIFESTS, source_id, name))
            if manifest is not None and manifest["ledger"]["batch_id"] == batch_id:
                return True
        return False

    def high_water(self, source_id: str) -> int:
        names = self._manifest_names(source_id)
        return int(names[-1][:-5]) if names else 0

    def last_committed(self, source_id: str) -> dict[str, Any] | None:
        manifests = self.manifests(source_id)
        return manifests[-1]["ledger"]["position_to"] if manifests else None

    def ledger_rows(self, source_id: str, limit: int = 100) -> list[LedgerRow]:
        """The ``limit`` latest ledger rows of ``source_id`` (one per manifest), newest first."""
        rows = []
        for manifest in self.manifests(source_id):
            record = dict(manifest["ledger"])
            if isinstance(record.get("committed_at"), str):  # JSON keeps the time as ISO text
                record["committed_at"] = dt.datetime.fromisoformat(record["committed_at"])
            rows.append(LedgerRow.from_record(record))
        return newest_rows(rows, limit)

    # --- Sink protocol -----------------------------------------------------------------------------------------

    def ensure_tables(self, schemas: list[TableSchema]) -> None:
        """Nothing to create: a table's folder appears with its first file, each file carrying its own schema."""

    def held_tables(self, source_id: str) -> dict[str, str]:
        return {}  # every file has its own schema: no schema change needs holding a table

    def release_table(self, source_id: str, table: str) -> bool:
        return False

    def hold_table(self, source_id: str, table: str, reason: str) -> bool:
        raise SinkError(self.sink_id, f"table {table} of source {source_id!r} cannot be held: a Parquet change log "
                                      f"records every change as it came and keeps no held changes to replay",
                        table=table, terminal=True)

    def quarantined(self, source_id: str, *, waiting_only: bool = True) -> list[dict[str, Any]]:
        return []  # capabilities.quarantine is False: a change log keeps no quarantine

    def replay_quarantined(
        self, batch: ChangeBatch, quarantine_ids: list[str], *, run_id: str | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
    ) -> ApplyResult:
        raise SinkError(self.sink_id, "the Parquet change log keeps no quarantine, so there is nothing to replay",
                        batch_id=batch.batch_id, terminal=True)

    def schema_versions(self, source_id: str) -> list[SchemaVersion]:
        """The versions folded by a whole re-snapshot, then those of each committed batch (in its manifest)."""
        found: dict[tuple[str, int], SchemaVersion] = {}
        folded = self._read_manifest(self._path(SCHEMAS, f"{source_id}.json")) or {}
        documents = [*folded.get("versions", []),
                     *(data for manifest in self.manifests(source_id) for data in manifest.get("schema_versions", []))]
        for data in documents:
            version = SchemaVersion.from_dict(data)
            found[(version.subject, version.version)] = version
        return [found[key] for key in sorted(found)]

    def held_changes(self, source_id: str, table: str) -> list[HeldChunk]:
        return []  # nothing is ever held

    def accept_table(self, source_id: str, table: str, *, policy: SchemaPolicy | None = None,
                     run_id: str | None = None) -> AcceptResult:
        raise SinkError(self.sink_id, f"table {table} of source {source_id!r} is not held: a Parquet change log "
                                      f"records every change as it came and never holds a table, so there is "
                                      f"nothing to accept", table=table, terminal=True)

    def apply(self, batch: ChangeBatch, *, run_id: str | None = None,
              versions: dict[str, dict[str, Any] | None] | None = None,
              policy: SchemaPolicy | None = None) -> ApplyResult:
        """Write the batch's files, then its manifest. ``policy`` is accepted for the Sink protocol, but a change
        log follows every change (module docstring)."""
        started = time.monotonic()
        result = ApplyResult(batch_id=batch.batch_id, applied=False)
        try:
            # A batch id fixes the position range, hence seq_to: its manifest can only have this one name.
            manifest = self._read_manifest(self.manifest_path(batch.source_id, batch.seq_to))
            if manifest is not None and manifest["ledger"]["batch_id"] == batch.batch_id:
                log.info("sink %s: batch %s has its manifest; nothing to do", self.sink_id, batch.batch_id)
                return result
            high_water = self.high_water(batch.source_id)
            decision = decide(batch, self.schema_versions(batch.source_id), {}, FOLLOW_EVERYTHING, high_water)
            files = self._typed_files(batch, high_water, result)  # every value checked before anything is written
            written = []
            for table, path in files:
                self._write_atomically(path, lambda handle, table=table: pq.write_table(table, handle))
                written.append(posixpath.relpath(path, self.base))
            row = ledger_row(batch, result, high_water=high_water, run_id=run_id,
                             versions={**(versions or {}), "schema_versions": decision.ledger_versions()})
            record = row.to_record()
            record["committed_at"] = (row.committed_at or dt.datetime.now(dt.timezone.utc)).isoformat()
            names = self._manifest_names(batch.source_id)
            previous = self._read_manifest(self._path(MANIFESTS, batch.source_id, names[-1])) if names else None
            audit = batch_audit_entries(row, decision, versions=versions, quarantined=batch.quarantined_count,
                                        previous=LedgerRow.from_record(previous["ledger"]) if previous else None)
            document = {"ledger": record, "files": written,
                        "schema_changes": [c.to_dict() for c in batch.schema_changes if c.seq > high_water],
                        "schema_versions": [version.to_dict() for version in decision.registrations],
                        "audit": [entry.to_dict() for entry in audit]}
            path = self.manifest_path(batch.source_id, batch.seq_to)
            payload = json.dumps(document, sort_keys=True).encode()
            self._write_atomically(path, lambda handle: handle.write(payload))
            self._manifests[path] = json.loads(payload)
            result.applied = True
            result.schema_versions = decision.registry.in_effect()
        except (OSError, pa.ArrowException) as exc:
            raise SinkError(self.sink_id, f"writing the change log failed ({type(exc).__name__}: {exc}); apply the "
                                          f"batch again: its files are rewritten under the same names",
                            batch_id=batch.batch_id) from exc
        result.seconds = time.monotonic() - started
        log.info("sink %s: batch %s written to the change log: %d upserts, %d deletes in %.3f s", self.sink_id,
                 batch.batch_id, result.upserted, result.deleted, result.seconds)
        return result

    def _typed_files(self, batch: ChangeBatch, high_water: int, result: ApplyResult) -> list[tuple[pa.Table, str]]:
        files = []
        for name in sorted(batch.tables):
            events = batch.tables[name]
            schema = batch.schemas.get(name)
            if schema is None:
                raise SinkError(self.sink_id, f"the batch has changes for {name} but no schema for it", table=name,
                                batch_id=batch.batch_id, terminal=True)
            total = events.num_rows
            if high_water:
                events = events.filter(pc.greater(events["_cdc_seq"], high_water))
            stats = {"events": total, "skipped_replayed": total - events.num_rows, "upserted": 0, "deleted": 0,
                     "truncates": 0}
            result.skipped_replayed += stats["skipped_replayed"]
            if events.num_rows:
                label = f"{self.target_schema}.{schema.name}"
                typed = self._typed(events.sort_by("_cdc_seq"), schema, label, batch.batch_id)
                path = posixpath.join(self.table_dir(schema.name),
                                      f"{_padded(batch.seq_from)}-{_padded(batch.seq_to)}.parquet")
                files.append((typed, path))
                ops = pc.value_counts(events["_cdc_op"]).to_pylist()
                counts = {item["values"]: item["counts"] for item in ops}
                stats["upserted"] = sum(counts.get(op, 0) for op in (OP_CREATE, OP_UPDATE, OP_READ))
                stats["deleted"] = counts.get(OP_DELETE, 0)
                stats["truncates"] = counts.get(OP_TRUNCATE, 0)
            result.tables[name] = stats
            result.upserted += stats["upserted"]
            result.deleted += stats["deleted"]
            result.truncated_tables += 1 if stats["truncates"] else 0
        return files

    def _typed(self, events: pa.Table, schema: TableSchema, label: str, batch_id: str) -> pa.Table:
        names = [n for n in events.column_names if not n.startswith(RESERVED_PREFIX) or n.startswith(BEFORE_PREFIX)]
        typed = typed_columns(events, schema, names, sink_id=self.sink_id, label=label, batch_id=batch_id)
        ts = pc.cast(pc.multiply(pc.cast(typed["_cdc_ts_ms"], pa.int64()), 1000), pa.int64()).cast(UTC_MICROS)
        columns = {OP: typed["_cdc_op"], POSITION: typed["_cdc_seq"], TS: ts, "_cdc_tx_id": typed["_cdc_tx_id"],
                   "_cdc_pos": typed["_cdc_pos"], "_cdc_unchanged": typed["_cdc_unchanged"]}
        columns.update({name: typed[name] for name in names})
        return pa.table(columns)

    def _write_atomically(self, path: str, write: Any) -> None:
        """Write ``path`` through a temporary name and a rename (an object store's PUT is atomic anyway). Locally
        the temporary name is unique, so two appliers writing one file at once never write into each other's."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if is_local(self.root):
            write_whole(path, write)
            return
        temporary = f"{path}.tmp"
        with self.fs.open(temporary, "wb") as handle:
            write(handle)
        self.fs.mv(temporary, path)

    # --- audit trail -------------------------------------------------------------------------------------------

    def record_audit(self, entries: list[AuditEntry]) -> int:
        """Write each of ``entries`` as ``_cdc_audit/<audit_id>.json`` unless that file is there (a manifest's
        entries, the batch rows, are never given here; reading merges by ``audit_id`` anyway)."""
        written = 0
        try:
            for entry in {entry.audit_id: entry for entry in entries}.values():
                path = self._path(AUDIT_TABLE, f"{entry.audit_id}.json")
                if self.fs.exists(path):
                    continue
                payload = json.dumps(entry.to_dict(), sort_keys=True).encode()
                self._write_atomically(path, lambda handle, payload=payload: handle.write(payload))
                written += 1
        except OSError as exc:
            raise SinkError(self.sink_id, f"cannot write the audit trail ({type(exc).__name__}: {exc})") from exc
        return written

    def audit_entries(
        self, source_id: str | None = None, *, batch_id: str | None = None, action: str | None = None,
        since: dt.datetime | None = None, limit: int = 100,
    ) -> list[AuditEntry]:
        """The entries of the manifests and of ``_cdc_audit/``, newest first."""
        try:
            folder = self._path(MANIFESTS)
            sources = [source_id] if source_id is not None else (
                [posixpath.basename(path) for path in self.fs.ls(folder, detail=False)]
                if self.fs.exists(folder) else [])
            found = [entry for source in sources for entry in self._manifest_entries(source)]
            audit_dir = self._path(AUDIT_TABLE)
            if self.fs.exists(audit_dir):
                for path in self.fs.ls(audit_dir, detail=False):
                    if path.endswith(".json"):
                        with self.fs.open(path, "rb") as handle:
                            found.append(AuditEntry.from_record(json.loads(handle.read())))
        except (OSError, ValueError) as exc:
            raise SinkError(self.sink_id, f"cannot read the audit trail ({type(exc).__name__}: {exc})") from exc
        return newest_first((entry for entry in found if matches(entry, source_id=source_id, batch_id=batch_id,
                                                                  action=action, since=since)), limit)

    def _manifest_entries(self, source_id: str) -> list[AuditEntry]:
        return [AuditEntry.from_record(record) for manifest in self.manifests(source_id)
                for record in manifest.get("audit", [])]

    # --- re-snapshot ---------------------------------------------------------------------------------------------

    def forget_source(self, source_id: str) -> int:
        """Delete the manifests of ``source_id`` (its ``seq`` starts again); returns how many.

        Their schema versions are folded into ``_cdc_schemas/<source_id>.json`` first, so the registry outlives
        them (a crash part-way leaves every version in one place or the other; forgetting again finishes), and
        their audit entries into ``_cdc_audit/`` the same way."""
        entries = self._manifest_entries(source_id)
        for entry in entries:
            path = self._path(AUDIT_TABLE, f"{entry.audit_id}.json")
            payload = json.dumps(entry.to_dict(), sort_keys=True).encode()
            self._write_atomically(path, lambda handle, payload=payload: handle.write(payload))
        versions = self.schema_versions(source_id)
        if versions:
            path = self._path(SCHEMAS, f"{source_id}.json")
            payload = json.dumps({"versions": [version.to_dict() for version in versions]}, sort_keys=True).encode()
            self._write_atomically(path, lambda handle: handle.write(payload))
            self._manifests[path] = json.loads(payload)
        names = self._manifest_names(source_id)
        for name in names:
            path = self._path(MANIFESTS, source_id, name)
            self.fs.rm(path)
            self._manifests.pop(path, None)
        return len(names)

    def reset_table(self, table: TableSchema | str) -> bool:
        """Delete the table's change-log files before its re-snapshot; True when there were any."""
        folder = self.table_dir(table.name if isinstance(table, TableSchema) else table)
        if not self.fs.exists(folder):
            return False
        self.fs.rm(folder, recursive=True)
        return True
