"""The snapshot of a MongoDB source, and how it converges with the change stream.

The resume token is taken first (the stream's point "now"), then collections are read in ``_id`` order, one page per
batch, while the stream keeps flowing: a run reads the stream first (half the batch while a snapshot is pending),
then the next page. Stream changes of a collection whose snapshot has not started, or of documents its snapshot has
not reached, are dropped: the snapshot reads those documents later, with the changes in them. Every other change is
applied in stream order, and each document converges to its last change; the sink's ``_cdc_position`` guard and
ledger absorb what is read twice. Truncates (a dropped or renamed collection) are never dropped.

Pages follow the ``_id`` index with ``min()`` bounds, so keys of every BSON type come in the server's own order (a
``{_id: {$gt: k}}`` query would only see keys of ``k``'s type), under the collection's default collation. Whether a
stream change lies beyond the snapshot's last key is asked of the server too, with the same collation. The last key
read is kept in the position as canonical Extended JSON, which restores its exact BSON type.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bson.json_util import CANONICAL_JSON_OPTIONS, JSONOptions
from bson.json_util import dumps as json_util_dumps
from bson.json_util import loads as json_util_loads
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from airflow_provider_cdc.connectors.mongodb.connection import CODEC_OPTIONS
from airflow_provider_cdc.connectors.mongodb.documents import ID_FIELD, canonical_key
from airflow_provider_cdc.connectors.mongodb.rows import BatchRows
from airflow_provider_cdc.errors import SourceError
from airflow_provider_cdc.events import OP_READ, OP_TRUNCATE

log = logging.getLogger("airflow_provider_cdc.source.mongodb")

_KEY_JSON = JSONOptions(json_mode=CANONICAL_JSON_OPTIONS.json_mode, tz_aware=True)
# Keys compared per server round trip (a command stays far below 16 MB).
_COMPARE_CHUNK = 5_000


def dump_key(value: Any) -> str:
    return json_util_dumps({ID_FIELD: value}, json_options=CANONICAL_JSON_OPTIONS)


def load_key(text: str) -> Any:
    return json_util_loads(text, json_options=_KEY_JSON)[ID_FIELD]


def collation_of(client: MongoClient, table: str) -> dict[str, Any] | None:
    db, _, coll = table.partition(".")
    for info in client[db].list_collections(filter={"name": coll}):
        return (info.get("options") or {}).get("collation")
    return None


def read_page(client: MongoClient, table: str, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` documents of ``table`` after the key ``after`` (canonical Extended JSON), in ``_id`` order."""
    db, _, coll = table.partition(".")
    collection = client[db].get_collection(coll, codec_options=CODEC_OPTIONS)
    cursor = collection.find({}).hint([(ID_FIELD, 1)]).sort(ID_FIELD, 1)
    skip_key = None
    if after is not None:
        bound = load_key(after)
        cursor = cursor.min([(ID_FIELD, bound)])
        skip_key = canonical_key(bound)
    docs = list(cursor.limit(limit + (1 if skip_key is not None else 0)))
    if skip_key is not None and docs and canonical_key(docs[0][ID_FIELD]) == skip_key:
        docs = docs[1:]
    return docs[:limit]


def keys_beyond(client: MongoClient, table: str, keys: list[Any], after: str) -> set[int]:
    """Indexes of ``keys`` that sort after ``after`` in the collection's ``_id`` order (asked of the server)."""
    db = table.partition(".")[0]
    bound = load_key(after)
    collation = collation_of(client, table)
    out: set[int] = set()
    for start in range(0, len(keys), _COMPARE_CHUNK):
        chunk = [{"i": start + i, "k": key} for i, key in enumerate(keys[start:start + _COMPARE_CHUNK])]
        pipeline: list[dict[str, Any]] = [
            {"$documents": chunk}, {"$match": {"$expr": {"$gt": ["$k", {"$literal": bound}]}}},
            {"$project": {"_id": 0, "i": 1}},
        ]
        out.update(doc["i"] for doc in client[db].aggregate(pipeline, collation=collation))
    return out


def drop_unread(client: MongoClient, rows: BatchRows, snapshot: dict[str, Any], source_id: str) -> int:
    """Drop the stream's document changes that the pending snapshot reads later (see the module docstring)."""
    pending = list(snapshot.get("pending") or [])
    after = snapshot.get("after")
    dropped = 0
    for name, collection in rows.collections.items():
        if name not in pending:
            continue
        changes = collection.changes
        if name != pending[0] or after is None:  # its snapshot has not started
            kept = [c for c in changes if c.op == OP_TRUNCATE]
        else:
            candidates = [i for i, c in enumerate(changes) if c.op != OP_TRUNCATE]
            try:
                beyond = keys_beyond(client, name, [changes[i].key for i in candidates], after)
            except PyMongoError as exc:
                raise SourceError(source_id, f"comparing stream keys with the snapshot's progress failed: {exc}",
                                  table=name) from exc
            gone = {candidates[j] for j in beyond}
            kept = [c for i, c in enumerate(changes) if i not in gone]
        dropped += len(changes) - len(kept)
        collection.changes = kept
    if dropped:
        log.info("source %s: %d stream changes of documents the snapshot has not read yet were dropped (the "
                 "snapshot reads them, changes included)", source_id, dropped)
    return dropped


def add_snapshot_pages(client: MongoClient, rows: BatchRows, snapshot: dict[str, Any], budget: int, *,
                       source_id: str) -> dict[str, Any] | None:
    """Read snapshot pages into ``rows`` until ``budget`` documents or the end; returns the snapshot state left
    (None: done)."""
    pending = list(snapshot.get("pending") or [])
    after = snapshot.get("after")
    now_ms = int(time.time() * 1000)
    while pending and budget > 0:
        table = pending[0]
        started = time.monotonic()
        try:
            docs = read_page(client, table, after, budget)
        except PyMongoError as exc:
            raise SourceError(source_id, f"snapshot read failed: {exc}", table=table) from exc
        for doc in docs:
            rows.add(table, OP_READ, key=doc[ID_FIELD], doc=doc, ts_ms=now_ms, tx=None, pos=None)
        budget -= len(docs)
        log.info("source %s: snapshot of %s: %d documents in %.2fs", source_id, table, len(docs),
                 time.monotonic() - started)
        if budget > 0:  # the page ended before the budget: the collection is done
            log.info("source %s: snapshot of %s is complete", source_id, table)
            pending.pop(0)
            after = None
        else:
            after = dump_key(docs[-1][ID_FIELD])
    return {"pending": pending, "after": after} if pending else None
