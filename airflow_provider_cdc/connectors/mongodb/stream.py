"""Reading one micro-batch from a change stream, resumed with ``start_after`` from the stored resume token.

**Scope.** The stream watches one database (``db.watch``) when every configured collection lives there, else the
cluster (``client.watch``); a ``$match`` stage keeps the configured collections (or every collection of a database
captured whole, ``db.*``), renames onto them, and ``dropDatabase``. Filtered events still move the stream's
post-batch resume token, so a quiet collection beside busy ones keeps a fresh position.

**Batches.** A batch reads up to ``max_changes`` events, and never splits a multi-document transaction: its events
share ``lsid`` and ``txnNumber`` and come one after the other, so the batch reads on while they do. The position
stored after the batch is the resume token of its last event when it stopped at the limit (an event read past it
is read again next time), or the stream's **post-batch resume token** when the stream had nothing more: that one
advances even when nothing was read, so an idle source's position moves with the oplog.

**Events** (``show_expanded_events``): ``insert`` is ``c``; ``update`` and ``replace`` are ``u`` with the whole
document (``full_document='updateLookup'``, or the post-image), so an ``$unset`` field becomes NULL; ``delete`` is
``d``. Pre-images (``fullDocumentBeforeChange``), where the collection keeps them, are the before-image. An update
whose document is gone when the stream reads it (``updateLookup`` finds nothing) is a ``d``: the document was
deleted later, and that delete follows in the stream; with a pre-image the exact post-image is rebuilt from the
update description instead (unless a path in it is ambiguous: mongod 6.0 does not say whether ``"a.b"`` names a
field with a dot). ``full_document='required'`` without a post-image stops with a terminal error. ``drop`` of a
collection, and ``rename`` of it away, empty its table (a ``t`` event: the collection has no documents any more; a
collection of that name created later flows again); a ``rename`` onto a captured name queues that collection for a
new snapshot (its documents never passed through the stream); ``dropDatabase`` empties every captured collection of
it; ``invalidate`` ends the batch, and the next one starts after it. ``create``, ``createIndexes``, ``dropIndexes``
and ``modify`` change no document.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from bson import Timestamp
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from airflow_provider_cdc.connectors.mongodb.documents import ID_FIELD
from airflow_provider_cdc.connectors.mongodb.options import MongoSourceOptions
from airflow_provider_cdc.connectors.mongodb.rows import BatchRows
from airflow_provider_cdc.errors import PositionLostError, SourceError
from airflow_provider_cdc.events import OP_CREATE, OP_DELETE, OP_TRUNCATE, OP_UPDATE

log = logging.getLogger("airflow_provider_cdc.source.mongodb")

WILDCARD = "*"
# Server codes of a resume point that is gone: ChangeStreamHistoryLost (the oplog rolled over it) and
# ChangeStreamFatalError (the token is not in this replica set's oplog: another set, or a restore).
POSITION_LOST_CODES = {286: "the oplog no longer holds it (ChangeStreamHistoryLost: the oplog rolled over)",
                       280: "this replica set's oplog does not hold it (ChangeStreamFatalError: another replica set "
                            "or a restored one)"}
NO_DOCUMENT_EVENTS = {"create", "createIndexes", "dropIndexes", "modify", "shardCollection",
                      "refineCollectionShardKey", "reshardCollection"}


class Scope:
    """What one source captures: listed collections (``db.coll``) and whole databases (``db.*``)."""

    def __init__(self, tables: list[str]) -> None:
        self.tables = [t for t in tables if not t.endswith("." + WILDCARD)]
        self.whole = sorted({t.partition(".")[0] for t in tables if t.endswith("." + WILDCARD)})
        self.databases = sorted({t.partition(".")[0] for t in self.tables} | set(self.whole))
        self._listed = frozenset(self.tables)

    def covers(self, table: str) -> bool:
        return table in self._listed or table.partition(".")[0] in self.whole

    def watch(self, client: MongoClient) -> tuple[Any, list[dict[str, Any]]]:
        """The object to ``watch`` and the ``$match`` pipeline of this scope."""
        ors: list[dict[str, Any]] = []
        for db in self.databases:
            if db in self.whole:
                ors += [{"ns.db": db}, {"to.db": db}]
                continue
            colls = [t.partition(".")[2] for t in self.tables if t.partition(".")[0] == db]
            ors += [{"ns.db": db, "ns.coll": {"$in": colls}}, {"to.db": db, "to.coll": {"$in": colls}},
                    {"operationType": "dropDatabase", "ns.db": db}]
        ors.append({"operationType": "invalidate"})
        # collectionUUID (added by show_expanded_events) is decoded into a Binary per event and never read.
        pipeline: list[dict[str, Any]] = [{"$match": {"$or": ors}}, {"$unset": ["collectionUUID"]}]
        if len(self.databases) == 1:
            return client[self.databases[0]], pipeline
        return client, pipeline


def token_time(token: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """The cluster time (seconds, increment) a resume token starts with (its ``_data`` is a hex KeyString whose
    first value is that timestamp)."""
    data = (token or {}).get("_data")
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    return int(data[2:10], 16), int(data[10:18], 16)


def lost_reason(exc: PyMongoError) -> str | None:
    """Why a resume failed because the position is gone (None: some other error)."""
    if isinstance(exc, OperationFailure):
        if exc.code in POSITION_LOST_CODES:
            return POSITION_LOST_CODES[exc.code]
        if "resume" in str(exc).lower() and "not found" in str(exc).lower():
            return POSITION_LOST_CODES[280]
    return None


class PartialUpdateError(SourceError):
    """An update that carries neither the document nor enough to rebuild it."""

    terminal = True


# NoMatchingDocument: ``full_document='required'`` and the collection kept no post-image for an event.
_NO_POST_IMAGE = 47
# BSONObjectTooLarge: an event over 16 MB (a large document's update with its pre-image and post-image).
_TOO_LARGE = 10334
# What a slim stream leaves out of each event (the documents: :meth:`StreamBatch.read` looks them up itself).
_SLIM = {"$project": {"fullDocument": 0, "fullDocumentBeforeChange": 0, "updateDescription": 0}}


class EventTooLarge(SourceError):
    """An event larger than a BSON document may be (16 MB). The capture reads it again without its documents, so
    this escapes only where that is not possible."""

    terminal = True


def stream_error(exc: PyMongoError, position: Mapping[str, Any], source_id: str, doing: str) -> SourceError:
    """The error to raise for a failed read: a lost position, an event too large, a missing required post-image (all
    terminal: a retry reads the same event again), or a transient SourceError."""
    reason = lost_reason(exc)
    if reason:
        return PositionLostError(source_id, dict(position), reason)
    if isinstance(exc, OperationFailure) and exc.code == _TOO_LARGE:
        return EventTooLarge(source_id, f"an event after {_brief_token(position)} is larger than 16 MB with its "
                             f"documents ({exc}); set options.before_images: off if the pre-images make it so")
    if isinstance(exc, OperationFailure) and exc.code == _NO_POST_IMAGE and "post-image" in str(exc):
        return PartialUpdateError(
            source_id, f"an event has no post-image, which options.full_document: required asks for ({exc}). Enable "
            "changeStreamPreAndPostImages on the collection (collMod) before its changes, or use full_document: "
            "updateLookup or whenAvailable; then re-snapshot the table: python -m airflow_provider_cdc resnapshot "
            f"{source_id} --table <db.collection>")
    return SourceError(source_id, f"{doing}: {exc}")


def _brief_token(position: Mapping[str, Any]) -> str:
    time = token_time(position.get("resume_token"))
    return f"cluster time {time[0]}.{time[1]}" if time else "the start"


def open_stream(client: MongoClient, scope: Scope, position: Mapping[str, Any], options: MongoSourceOptions, *,
                source_id: str, max_await_ms: int, batch_size: int | None = None, slim: bool = False) -> Any:
    """A change stream of ``scope`` after ``position``'s token; a token that is gone is a PositionLostError.

    A ``slim`` stream carries no documents (no lookup, no pre-image, no update description): what the probe needs,
    and how an event too large with its documents is read at all."""
    target, pipeline = scope.watch(client)
    kwargs: dict[str, Any] = {"show_expanded_events": True, "max_await_time_ms": max_await_ms}
    if slim:
        pipeline = [*pipeline, _SLIM]
    else:
        kwargs["full_document"] = options.full_document
        if options.before_images != "off":
            kwargs["full_document_before_change"] = "whenAvailable"
    if batch_size:
        kwargs["batch_size"] = batch_size
    token = position.get("resume_token")
    if token:
        kwargs["start_after"] = token
    try:
        return target.watch(pipeline, **kwargs)
    except PyMongoError as exc:
        raise stream_error(exc, position, source_id, "cannot open the change stream") from exc


def next_change(stream: Any, position: Mapping[str, Any], source_id: str) -> Mapping[str, Any] | None:
    try:
        return stream.try_next()
    except PyMongoError as exc:
        raise stream_error(exc, position, source_id, "reading the change stream failed") from exc


def _tx_of(change: Mapping[str, Any]) -> str | None:
    lsid, number = change.get("lsid"), change.get("txnNumber")
    if lsid is None or number is None:
        return None
    session = lsid.get("id")
    try:
        session_text = str(uuid.UUID(bytes=bytes(session)))
    except (TypeError, ValueError):
        session_text = str(session)
    return f"{session_text}:{number}"


def _ts_ms(change: Mapping[str, Any]) -> int:
    wall = change.get("wallTime")
    if isinstance(wall, dt.datetime):
        if wall.tzinfo is None:
            wall = wall.replace(tzinfo=dt.timezone.utc)
        return int(wall.timestamp() * 1000)
    cluster = change.get("clusterTime")
    return cluster.time * 1000 if isinstance(cluster, Timestamp) else 0


def _pos(change: Mapping[str, Any]) -> str | None:
    cluster = change.get("clusterTime")
    return f"{cluster.time}.{cluster.inc}" if isinstance(cluster, Timestamp) else None


def _table(ns: Mapping[str, Any] | None) -> str | None:
    if not ns or "coll" not in ns:
        return None
    return f"{ns['db']}.{ns['coll']}"


def _has_dotted_names(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any("." in str(k) or _has_dotted_names(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_dotted_names(v) for v in value)
    return False


def rebuildable(before: Mapping[str, Any], description: Mapping[str, Any]) -> bool:
    """Whether :func:`apply_update` reads every path of ``description`` as the server meant it. mongod 6.0 sends no
    ``disambiguatedPaths`` (6.1 does): there, ``"a.b"`` may name the field ``a.b`` or ``b`` inside ``a`` when the
    document has field names with dots, and the update cannot be rebuilt."""
    if description.get("disambiguatedPaths") is not None:
        return True
    paths = [*(description.get("updatedFields") or {}), *(description.get("removedFields") or []),
             *(a["field"] for a in description.get("truncatedArrays") or [])]
    return not any("." in path for path in paths) or not _has_dotted_names(before)


def apply_update(before: Mapping[str, Any], description: Mapping[str, Any]) -> dict[str, Any]:
    """The document after an update: ``before`` with the update description applied (dotted paths, array indexes,
    removed fields and truncated arrays; ``disambiguatedPaths`` names fields that contain dots)."""
    import copy

    doc: dict[str, Any] = copy.deepcopy(dict(before))
    paths = description.get("disambiguatedPaths") or {}

    def parts(path: str) -> list[Any]:
        return list(paths.get(path) or path.split("."))

    def parent(components: list[Any]) -> tuple[Any, Any]:
        node: Any = doc
        for part in components[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        last = components[-1]
        return node, (int(last) if isinstance(node, list) else last)

    for array in description.get("truncatedArrays") or []:
        node, key = parent(parts(array["field"]))
        node[key] = node[key][: array["newSize"]]
    for path, value in (description.get("updatedFields") or {}).items():
        node, key = parent(parts(path))
        if isinstance(node, list):
            node.extend([None] * (key + 1 - len(node)))
        node[key] = value
    for path in description.get("removedFields") or []:
        node, key = parent(parts(path))
        if isinstance(node, list):
            node[key] = None
        else:
            node.pop(key, None)
    return doc


def partial_update(description: Mapping[str, Any], table: str, key: Any, source_id: str) -> dict[str, Any]:
    """The top-level fields an update sets (removed ones as None), when it carries no document; a change inside a
    field (a dotted path, a truncated array) cannot be applied without the document, and stops the capture."""
    paths = description.get("disambiguatedPaths") or {}
    out: dict[str, Any] = {}
    nested = [p for p in description.get("updatedFields") or {} if len(paths.get(p) or p.split(".")) > 1]
    nested += [p for p in description.get("removedFields") or [] if len(paths.get(p) or p.split(".")) > 1]
    nested += [a["field"] for a in description.get("truncatedArrays") or []]
    if nested:
        raise PartialUpdateError(
            source_id, f"an update of {', '.join(map(str, nested))} in the document with _id {key!r} came without "
            "the document (no post-image): it cannot be applied exactly. Enable changeStreamPreAndPostImages on the "
            "collection or use options.full_document: updateLookup, then re-snapshot the table "
            f"(python -m airflow_provider_cdc resnapshot {source_id} --table {table})", table=table)
    for path, value in (description.get("updatedFields") or {}).items():
        out[(paths.get(path) or [path])[0]] = value
    for path in description.get("removedFields") or []:
        out[(paths.get(path) or [path])[0]] = None
    return out


class StreamBatch:
    """One batch's read of the change stream (see the module docstring)."""

    def __init__(self, *, source_id: str, client: MongoClient, position: Mapping[str, Any], scope: Scope,
                 options: MongoSourceOptions, rows: BatchRows, max_changes: int,
                 keep: Callable[[str], bool] = lambda table: True) -> None:
        self.source_id = source_id
        self.client = client
        self.position = position
        self.scope = scope
        self.options = options
        self.rows = rows
        self.max_changes = max_changes
        self.keep = keep
        self.token: Mapping[str, Any] | None = position.get("resume_token")
        self.events = 0
        self.transactions = 0
        self.queued_snapshots: list[str] = []
        self.lookups_gone = 0
        self.too_large = 0

    def _open(self, *, slim: bool = False) -> Any:
        """The stream after the last event read (``self.token``)."""
        return open_stream(self.client, self.scope, {**self.position, "resume_token": self.token}, self.options,
                           source_id=self.source_id, max_await_ms=self.options.idle_wait_ms,
                           batch_size=1 if slim else min(self.max_changes + 1, 10_000), slim=slim)

    def read(self) -> Mapping[str, Any] | None:
        """Read the batch into ``rows``; returns the resume token to store."""
        last_tx: str | None = None
        stream: Any = None
        try:
            while True:
                try:
                    if stream is None:
                        stream = self._open()  # the first batch of an aggregate is read while it opens
                    asked = time.monotonic()
                    change = next_change(stream, self.position, self.source_id)
                except EventTooLarge:
                    if stream is not None:
                        stream.close()
                    stream = None  # reopened after this event
                    change = self._read_large()
                if change is None:
                    moved = stream.resume_token
                    early = time.monotonic() - asked < self.options.idle_wait_ms / 2000
                    if moved is not None and moved != self.token and self.events < self.max_changes and early:
                        # An empty getMore that came back before the wait was over may have scanned only part of a
                        # long stretch of other namespaces' entries: ask again before calling the stream drained.
                        self.token = moved
                        continue
                    self.token = moved or self.token
                    break
                tx = _tx_of(change)
                if self.events >= self.max_changes and (tx is None or tx != last_tx):
                    break  # this event is read again by the next batch (the token stays before it)
                if tx != last_tx or tx is None:
                    self.transactions += 1
                last_tx = tx
                self.token = change["_id"]
                if self._apply(change, tx):
                    break
        finally:
            if stream is not None:
                stream.close()
        if self.too_large:
            log.warning("source %s: %d events were larger than 16 MB with their documents (a large document's "
                        "update with its pre-image): each was read without them, with the document as it is now "
                        "and no before-image", self.source_id, self.too_large)
        if self.lookups_gone:
            log.info("source %s: %d updates found their document deleted when read (updateLookup): each is loaded "
                     "as the delete that follows it in the stream", self.source_id, self.lookups_gone)
        return self.token

    def _read_large(self) -> Mapping[str, Any]:
        """The next event, which is too large with its documents: read from a slim stream, with the document as it
        is now (updateLookup's semantics); a document gone since makes it the delete that follows it."""
        with self._open(slim=True) as stream:
            for _ in range(100):  # an empty getMore may end before the event: ask again
                change = next_change(stream, self.position, self.source_id)
                if change is not None:
                    break
            else:
                raise EventTooLarge(self.source_id, f"the event after {_brief_token({'resume_token': self.token})} "
                                    "is larger than 16 MB and could not be read without its documents either")
        self.too_large += 1
        kind = change.get("operationType")
        if kind not in ("insert", "update", "replace"):
            return change
        ns = change["ns"]
        try:
            doc = self.client[ns["db"]][ns["coll"]].find_one({ID_FIELD: change["documentKey"][ID_FIELD]})
        except PyMongoError as exc:
            raise SourceError(self.source_id, f"reading the document of an event larger than 16 MB failed: {exc}",
                              table=_table(ns)) from exc
        if doc is None:
            return {**change, "operationType": "delete"}
        return {**change, "fullDocument": doc}

    def _apply(self, change: Mapping[str, Any], tx: str | None) -> bool:
        """Add one event (of transaction ``tx``) to the batch; True when the batch must end after it (invalidate)."""
        kind = change.get("operationType")
        table = _table(change.get("ns"))
        common: dict[str, Any] = {"ts_ms": _ts_ms(change), "tx": tx, "pos": _pos(change)}
        if kind == "invalidate":
            log.warning("source %s: the change stream was invalidated (the database was dropped or renamed); "
                        "the next batch starts after it", self.source_id)
            return True
        if kind in ("insert", "update", "replace", "delete"):
            if table is None or not self.scope.covers(table) or not self.keep(table):
                return False
            self.events += 1
            key = change["documentKey"]["_id"]
            before = change.get("fullDocumentBeforeChange")
            doc = change.get("fullDocument")
            if kind == "insert":
                self.rows.add(table, OP_CREATE, key=key, doc=doc, **common)
            elif kind == "delete":
                self.rows.add(table, OP_DELETE, key=key, before=before, **common)
            elif doc is not None:
                self.rows.add(table, OP_UPDATE, key=key, doc=doc, before=before, **common)
            elif kind == "update" and before is not None and rebuildable(before, change.get("updateDescription") or {}):
                rebuilt = apply_update(before, change.get("updateDescription") or {})
                self.rows.add(table, OP_UPDATE, key=key, doc=rebuilt, before=before, **common)
            elif self.options.full_document == "updateLookup":
                self.lookups_gone += 1
                self.rows.add(table, OP_DELETE, key=key, **common)
            else:
                fields = partial_update(change.get("updateDescription") or {}, table, key, self.source_id)
                self.rows.add(table, OP_UPDATE, key=key, doc={"_id": key, **fields}, partial=True, **common)
            return False
        if kind == "drop" and table and self.scope.covers(table):
            log.warning("source %s: collection %s was dropped: its sink table is emptied (a collection of that "
                        "name created later flows again)", self.source_id, table)
            self.events += 1
            self.rows.add(table, OP_TRUNCATE, key=None, **common)
        elif kind == "rename":
            target = _table(change.get("to"))
            if table and self.scope.covers(table):
                log.warning("source %s: collection %s was renamed to %s: its sink table is emptied", self.source_id,
                            table, target)
                self.events += 1
                self.rows.add(table, OP_TRUNCATE, key=None, **common)
            if target and self.scope.covers(target):
                log.warning("source %s: collection %s was renamed onto the captured %s: %s gets a new snapshot (its "
                            "documents did not pass through the stream)", self.source_id, table, target, target)
                self.events += 1
                self.rows.add(target, OP_TRUNCATE, key=None, **common)
                self.queued_snapshots.append(target)
        elif kind == "dropDatabase":
            db = (change.get("ns") or {}).get("db")
            log.warning("source %s: database %s was dropped: its captured collections are emptied", self.source_id,
                        db)
            for name in self.rows.known_tables():
                if name.partition(".")[0] == db and self.scope.covers(name):
                    self.events += 1
                    self.rows.add(name, OP_TRUNCATE, key=None, **common)
        elif kind in NO_DOCUMENT_EVENTS:
            log.info("source %s: %s on %s (no document changes)", self.source_id, kind, table or change.get("ns"))
        return False

