"""Where a MongoDB sink keeps its bookkeeping: collections in the ledger database, written in the batch's transaction.

==========================  ======================================================================================
``_cdc_ledger``             one document per applied batch (:func:`~airflow_provider_cdc.connectors.ledger.ledger_row`),
                            ``_id`` = the batch id; JSON columns as embedded documents
``_cdc_held``               source tables whose changes wait (a schema change the sink does not follow)
``_cdc_schemas``            the schema registry: one document per ``(subject, version)``, the version itself as its
                            exact JSON text (a version is identified by the hash of that document, so it must read
                            back byte for byte)
``_cdc_held_changes``       the held changes, their events as Arrow IPC in parts of at most :data:`PART_BYTES` (a
                            document holds at most 16 MB)
``_cdc_locks``              one document per source, written first by every apply and accept: two transactions of
                            one source write the same document, so the second waits for (or retries after) the first
``_cdc_audit``              the audit trail (:mod:`airflow_provider_cdc.connectors.audit`): one document per entry,
                            ``_id`` = its ``audit_id``, ``details`` an embedded document; a batch's entries inserted
                            in its transaction
``_cdc_quarantine``         the changes a stage took out, with their reason (:mod:`airflow_provider_cdc.quarantine`):
                            one document per ``quarantine_id`` (source, batch, seq and stage), its ``_id``; the
                            row image an embedded
                            document, ``event_time`` and ``quarantined_at`` dates
==========================  ======================================================================================

They are created, with their indexes, before a transaction starts (:meth:`Bookkeeping.ensure`): creating a
collection inside a multi-document transaction is refused under read concern ``snapshot``. Reading before that finds
nothing, as in the other sinks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from bson import Binary, Int64
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import BulkWriteError, CollectionInvalid, DuplicateKeyError, OperationFailure

from airflow_provider_cdc.connectors.audit import AUDIT_TABLE, AuditEntry, missing, newest_first, since_utc
from airflow_provider_cdc.connectors.ledger import LEDGER_TABLE, LedgerRow
from airflow_provider_cdc.connectors.mongodb.sink_values import exact_json, plain
from airflow_provider_cdc.quarantine import KEY_COLUMNS, QUARANTINE_TABLE, SINK_COLUMNS, sort_rows, stored_row
from airflow_provider_cdc.schema.gate import HeldChunk
from airflow_provider_cdc.schema.registry import SchemaVersion, subject_of

HELD_TABLE = "_cdc_held"
VERSIONS_TABLE = "_cdc_schemas"
HELD_CHANGES_TABLE = "_cdc_held_changes"
LOCKS_TABLE = "_cdc_locks"
BOOKKEEPING_TABLES = (LEDGER_TABLE, HELD_TABLE, VERSIONS_TABLE, HELD_CHANGES_TABLE, LOCKS_TABLE, QUARANTINE_TABLE,
                      AUDIT_TABLE)
_NAMESPACE_EXISTS = 48  # a concurrent creation of the same collection won
PART_BYTES = 8 * 1024 * 1024  # held changes are stored in parts of this size (a document holds at most 16 MB)

_INDEXES: dict[str, list[list[tuple[str, int]]]] = {
    LEDGER_TABLE: [[("source_id", 1), ("seq_to", -1), ("committed_at", -1)]],
    HELD_TABLE: [[("source_id", 1)]],
    VERSIONS_TABLE: [[("source_id", 1), ("subject", 1), ("version", 1)]],
    HELD_CHANGES_TABLE: [[("source_id", 1), ("source_table", 1), ("seq_from", 1)]],
    AUDIT_TABLE: [[("source_id", 1), ("at", -1)], [("batch_id", 1)], [("at", -1)]],
}
_DUPLICATE_KEY = 11000


class DuplicateBatch(Exception):
    """The ledger insert met a commit of the same batch."""


def ensure_collections(database: Database, names: Iterable[str]) -> list[str]:
    """Create the collections of ``names`` that ``database`` lacks; returns those created (idempotent, and a
    concurrent creation of the same collection is no error)."""
    names = list(dict.fromkeys(names))
    if not names:
        return []
    existing = set(database.list_collection_names(filter={"name": {"$in": names}}))
    created = []
    for name in names:
        if name in existing:
            continue
        try:
            database.create_collection(name)
            created.append(name)
        except CollectionInvalid:
            pass  # created in the meantime
        except OperationFailure as exc:
            if exc.code != _NAMESPACE_EXISTS:
                raise
    return created


class Bookkeeping:
    """The bookkeeping collections of one ledger database (see the module docstring). Every method takes the
    transaction's session (None: a read of its own)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._ensured = False

    @property
    def name(self) -> str:
        return self.database.name

    def ensure(self) -> None:
        """Create the collections and their indexes (once per sink object; idempotent)."""
        if self._ensured:
            return
        ensure_collections(self.database, BOOKKEEPING_TABLES)
        for table, indexes in _INDEXES.items():
            for keys in indexes:
                self.database[table].create_index(keys)
        self._ensured = True

    # --- lock ----------------------------------------------------------------------------------------------------

    def lock(self, session: ClientSession, source_id: str) -> None:
        """Write the source's lock document first thing in the transaction: appliers of one source serialize on it
        (a second writer gets a write conflict, and its transaction is retried after the first commits)."""
        self.database[LOCKS_TABLE].update_one(
            {"_id": source_id}, {"$inc": {"transactions": 1}, "$set": {"at": dt.datetime.now(dt.timezone.utc)}},
            upsert=True, session=session)

    # --- ledger --------------------------------------------------------------------------------------------------

    def ledger_has(self, session: ClientSession | None, batch_id: str) -> bool:
        return self.database[LEDGER_TABLE].find_one({"_id": batch_id}, {"_id": 1}, session=session) is not None

    def high_water(self, session: ClientSession | None, source_id: str) -> int:
        row = self.database[LEDGER_TABLE].find_one({"source_id": source_id}, {"seq_to": 1},
                                                   sort=[("seq_to", -1)], session=session)
        return int(row["seq_to"]) if row is not None and row.get("seq_to") is not None else 0

    def last_committed(self, session: ClientSession | None, source_id: str) -> LedgerRow | None:
        row = self.database[LEDGER_TABLE].find_one({"source_id": source_id},
                                                   sort=[("seq_to", -1), ("committed_at", -1)], session=session)
        # Plain values: a position is JSON, and BSON reads its large integers back as Int64.
        return None if row is None else LedgerRow.from_record(plain(row))

    def recent_rows(self, session: ClientSession | None, source_id: str, limit: int) -> list[LedgerRow]:
        """The ``limit`` latest rows of ``source_id``, in :meth:`last_committed`'s order (newest first)."""
        if limit <= 0:
            return []
        found = self.database[LEDGER_TABLE].find({"source_id": source_id}, sort=[("seq_to", -1), ("committed_at", -1)],
                                                 limit=limit, session=session)
        return [LedgerRow.from_record(plain(row)) for row in found]

    def insert_ledger(self, session: ClientSession, row: LedgerRow) -> None:
        record = row.to_record()
        document = {"_id": row.batch_id, **{name: Int64(value) if name in ("seq_from", "seq_to") else value
                                            for name, value in record.items()}}
        try:
            self.database[LEDGER_TABLE].insert_one(document, session=session)
        except DuplicateKeyError as exc:
            raise DuplicateBatch() from exc

    def forget(self, session: ClientSession, source_id: str) -> int:
        return self.database[LEDGER_TABLE].delete_many({"source_id": source_id}, session=session).deleted_count

    # --- audit trail -------------------------------------------------------------------------------------------

    def insert_audit(self, session: ClientSession | None, entries: list[AuditEntry]) -> int:
        """Insert those of ``entries`` whose ``audit_id`` is not there yet (in the batch's transaction, or on their
        own with no session); how many. Looked up, then inserted, as the quarantine: a duplicate key would abort a
        transaction. Outside one, a concurrent insert of the same id keeps the first."""
        if not entries:
            return 0
        collection = self.database[AUDIT_TABLE]
        found = collection.find({"_id": {"$in": [entry.audit_id for entry in entries]}}, {"_id": 1}, session=session)
        new = missing(entries, (row["_id"] for row in found))
        if not new:
            return 0
        documents = [{"_id": entry.audit_id, **entry.to_record()} for entry in new]
        if session is not None:
            collection.insert_many(documents, ordered=True, session=session)
            return len(documents)
        try:
            collection.insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            if any(error.get("code") != _DUPLICATE_KEY for error in exc.details.get("writeErrors", [])):
                raise
            return int(exc.details.get("nInserted", 0))
        return len(documents)

    def read_audit(self, source_id: str | None, batch_id: str | None, action: str | None,
                   since: Any, limit: int) -> list[AuditEntry]:
        query: dict[str, Any] = {name: value for name, value in
                                 (("source_id", source_id), ("batch_id", batch_id), ("action", action))
                                 if value is not None}
        if since is not None:
            query["at"] = {"$gte": since_utc(since)}
        if limit <= 0:
            return []
        found = self.database[AUDIT_TABLE].find(query, {"_id": 0}).sort("at", -1).limit(limit)
        return newest_first(AuditEntry.from_record(plain(document)) for document in found)

    # --- quarantine ----------------------------------------------------------------------------------------------

    def insert_quarantine(self, session: ClientSession, records: list[dict[str, Any]]) -> int:
        """Store a batch's quarantined changes (:func:`airflow_provider_cdc.quarantine.sink_records`) in the batch's
        transaction, each if absent: a change already there (same source, batch, seq and stage) keeps its first
        document.
        Returns how many were new.

        Looked up, then inserted: a duplicate key inside a transaction would abort it, and an upsert would refuse a
        row image whose field names hold ``$`` or ``.``. The source's lock document serializes the appliers that
        could insert the same keys."""
        documents: dict[tuple[Any, ...], dict[str, Any]] = {}
        for record in records:
            documents.setdefault(tuple(record[name] for name in KEY_COLUMNS), _quarantine_document(record))
        if not documents:
            return 0
        collection = self.database[QUARANTINE_TABLE]
        found = collection.find({"_id": {"$in": [document["_id"] for document in documents.values()]}}, {"_id": 1},
                                session=session)
        present = {tuple(plain(row["_id"][name]) for name in KEY_COLUMNS) for row in found}
        new = [document for key, document in documents.items() if key not in present]
        if new:
            collection.insert_many(new, ordered=True, session=session)
        return len(new)

    def read_quarantine(self, session: ClientSession | None, source_id: str,
                        waiting_only: bool) -> list[dict[str, Any]]:
        """The quarantined changes of ``source_id`` as plain values (``row`` a dict; dates UTC)."""
        query: dict[str, Any] = {"source_id": source_id}
        if waiting_only:
            query["replayed_batch_id"] = None
        found = self.database[QUARANTINE_TABLE].find(query, {"_id": 0}, session=session)
        return sort_rows(stored_row(plain(document)) for document in found)

    def mark_replayed(self, session: ClientSession, source_id: str, quarantine_ids: list[str], batch_id: str) -> int:
        """Set ``replayed_batch_id`` of the waiting ``quarantine_ids``, in the replay's transaction."""
        if not quarantine_ids:
            return 0
        return self.database[QUARANTINE_TABLE].update_many(
            {"source_id": source_id, "quarantine_id": {"$in": list(quarantine_ids)}, "replayed_batch_id": None},
            {"$set": {"replayed_batch_id": batch_id}}, session=session).modified_count

    # --- held tables ---------------------------------------------------------------------------------------------

    def held_tables(self, session: ClientSession | None, source_id: str) -> dict[str, str]:
        return {row["source_table"]: row.get("reason") or ""
                for row in self.database[HELD_TABLE].find({"source_id": source_id}, session=session)}

    def store_held(self, session: ClientSession, source_id: str, held: dict[str, str], batch_id: str | None) -> None:
        """Mark tables held; a table held already keeps its first mark."""
        now = dt.datetime.now(dt.timezone.utc)
        for table, reason in held.items():
            self.database[HELD_TABLE].update_one(
                {"_id": _held_id(source_id, table)},
                {"$setOnInsert": {"source_id": source_id, "source_table": table, "reason": reason,
                                  "batch_id": batch_id, "held_at": now}},
                upsert=True, session=session)

    def delete_held(self, session: ClientSession, source_id: str, table: str) -> int:
        return self.database[HELD_TABLE].delete_many({"_id": _held_id(source_id, table)},
                                                     session=session).deleted_count

    # --- schema versions -----------------------------------------------------------------------------------------

    def read_versions(self, session: ClientSession | None, source_id: str) -> list[SchemaVersion]:
        """Every version of ``source_id``'s subjects, in subject and version order."""
        rows = self.database[VERSIONS_TABLE].find({"source_id": source_id}, {"document": 1}, session=session)
        versions = [SchemaVersion.from_dict(json.loads(row["document"])) for row in rows]
        return sorted(versions, key=lambda version: (version.subject, version.version))

    def store_versions(self, session: ClientSession, source_id: str, versions: Iterable[SchemaVersion]) -> int:
        """Insert new versions, or replace one of the same (subject, version): its status can change."""
        count = 0
        for version in versions:
            self.database[VERSIONS_TABLE].replace_one(
                {"_id": {"subject": version.subject, "version": version.version}},
                {"_id": {"subject": version.subject, "version": version.version}, "source_id": source_id,
                 "subject": version.subject, "version": version.version, "status": version.status,
                 "seq": Int64(version.seq), "batch_id": version.batch_id,
                 "document": json.dumps(version.to_dict(), sort_keys=True)},
                upsert=True, session=session)
            count += 1
        return count

    def accept_held_versions(self, session: ClientSession, source_id: str, table: str) -> int:
        """Mark the held versions of ``table`` accepted (a re-snapshot follows the source's schema as it is)."""
        subject = subject_of(source_id, table)
        held = [version for version in self.read_versions(session, source_id)
                if version.subject == subject and version.status == "held"]
        return self.store_versions(session, source_id, [dataclasses.replace(version, status="accepted")
                                                        for version in held])

    # --- held changes --------------------------------------------------------------------------------------------

    def store_chunks(self, session: ClientSession, chunks: Iterable[HeldChunk]) -> int:
        """Insert held chunks in parts; a chunk already stored (same source, table and batch) stays as it is.
        Returns how many were new."""
        collection = self.database[HELD_CHANGES_TABLE]
        inserted = 0
        for chunk in chunks:
            first = _chunk_id(chunk.source_id, chunk.table, chunk.batch_id, 0)
            if collection.find_one({"_id": first}, {"_id": 1}, session=session) is not None:
                continue
            data = chunk.data_bytes()
            pieces: list[bytes | None] = ([data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
                                          if data else [None])
            collection.insert_many([{
                "_id": _chunk_id(chunk.source_id, chunk.table, chunk.batch_id, part),
                "source_id": chunk.source_id, "source_table": chunk.table, "batch_id": chunk.batch_id,
                "seq_from": Int64(chunk.seq_from), "seq_to": Int64(chunk.seq_to), "part": part,
                "parts": len(pieces), "meta": json.dumps(chunk.meta(), sort_keys=True) if part == 0 else None,
                "data": None if piece is None else Binary(piece),
            } for part, piece in enumerate(pieces)], session=session)
            inserted += 1
        return inserted

    def read_chunks(self, session: ClientSession | None, source_id: str, table: str) -> list[HeldChunk]:
        """The held chunks of ``table`` in ``seq`` order (the order a replay must follow), parts joined."""
        rows = self.database[HELD_CHANGES_TABLE].find(
            {"source_id": source_id, "source_table": table}, session=session,
            sort=[("seq_from", 1), ("seq_to", 1), ("batch_id", 1), ("part", 1)])
        chunks: dict[str, dict[str, Any]] = {}
        for row in rows:
            entry = chunks.setdefault(row["batch_id"], {"row": row, "data": []})
            if row["part"] == 0:
                entry["row"] = row
            if row.get("data") is not None:
                entry["data"].append((row["part"], bytes(row["data"])))
        out = []
        for batch_id, entry in chunks.items():
            row = entry["row"]
            data = b"".join(piece for _, piece in sorted(entry["data"])) or None
            out.append(HeldChunk.from_stored(source_id=source_id, table=table, batch_id=batch_id,
                                             seq_from=row["seq_from"], seq_to=row["seq_to"], meta=row["meta"],
                                             data=data))
        return sorted(out, key=lambda chunk: (chunk.seq_from, chunk.seq_to, chunk.batch_id))

    def delete_chunks(self, session: ClientSession, source_id: str, table: str) -> int:
        """Delete the held chunks of ``table``; returns how many chunks (not parts) went."""
        collection = self.database[HELD_CHANGES_TABLE]
        chunks = collection.count_documents({"source_id": source_id, "source_table": table, "part": 0},
                                            session=session)
        collection.delete_many({"source_id": source_id, "source_table": table}, session=session)
        return chunks


def _quarantine_document(record: dict[str, Any]) -> dict[str, Any]:
    """One quarantined change as a document: ``_id`` its key (fields in :data:`KEY_COLUMNS` order, so that equal keys
    compare equal), ``seq`` an int64, the row image an embedded document with exact numbers (an integer beyond int64
    becomes Decimal128, as a json value does in the sink's tables), NULLs kept as nulls."""
    document: dict[str, Any] = {name: record[name] for name, _ in SINK_COLUMNS}
    document["seq"] = Int64(record["seq"])
    document["row"] = exact_json(json.dumps(record["row"], ensure_ascii=False))
    return {"_id": {name: document[name] for name in KEY_COLUMNS}, **document}


def _held_id(source_id: str, table: str) -> dict[str, str]:
    return {"source_id": source_id, "source_table": table}


def _chunk_id(source_id: str, table: str, batch_id: str, part: int) -> dict[str, Any]:
    return {"source_id": source_id, "source_table": table, "batch_id": batch_id, "part": part}
