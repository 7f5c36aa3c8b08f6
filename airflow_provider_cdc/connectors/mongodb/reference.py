"""A join rule's reference reader for MongoDB: documents of one collection by key (``$in``; ``$or`` for a composite
key).

``database.collection`` (or a collection of the URL's database). Keys go out as BSON (a decimal as Decimal128, a
UUID as binary subtype 4; a 24-hex-digit text also as the ObjectId it may be); documents come back as the value
contract's values through :mod:`.documents` (an ObjectId as its hex text, a Decimal128 as a decimal, a nested
document as JSON).
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from bson import Binary, Decimal128, ObjectId

from airflow_provider_cdc.connectors.mongodb.connection import connect, database_of
from airflow_provider_cdc.connectors.mongodb.documents import bson_alias, logical_type, portable
from airflow_provider_cdc.transform.join import chunks, key_text
from airflow_provider_cdc.values import parse_value


def _bson(value: Any) -> list[Any]:
    """The BSON values a key value may be stored as."""
    if isinstance(value, decimal.Decimal):
        return [Decimal128(value)]
    if isinstance(value, uuid.UUID):
        return [Binary.from_uuid(value)]
    if isinstance(value, dt.datetime):
        return [value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)]
    if isinstance(value, dt.date):
        return [dt.datetime.combine(value, dt.time(), dt.timezone.utc)]
    if isinstance(value, str) and ObjectId.is_valid(value) and len(value) == 24:
        return [value, ObjectId(value)]
    if isinstance(value, (dt.time, dict, list)):
        return [key_text(value)]
    return [value]


def _value(value: Any) -> Any:
    if value is None:
        return None
    alias = bson_alias(value)
    return parse_value(portable(value, alias), logical_type(alias))


def lookup(url: str, table: str, key_columns: list[str], keys: list[tuple[Any, ...]], *,
           missing_ok: bool = False) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The documents of ``table`` whose ``key_columns`` equal one of ``keys``: ``{key: {field: value}}``. A
    collection that does not exist holds nothing, with or without ``missing_ok``."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    if not keys:
        return out
    database, _, name = table.rpartition(".")
    database = database or database_of(url)
    if not database:
        raise ValueError(f"reference collection {table!r}: name its database (database.collection) or put the "
                         "database in the connection URL")
    client = connect(url)
    try:
        collection = client[database][name]
        for chunk in chunks(keys):
            if len(key_columns) == 1:
                query: dict[str, Any] = {key_columns[0]: {"$in": [b for key in chunk for b in _bson(key[0])]}}
            else:
                query = {"$or": [{c: {"$in": _bson(v)} for c, v in zip(key_columns, key)} for key in chunk]}
            for document in collection.find(query):
                typed = {field: _value(value) for field, value in document.items()}
                out.setdefault(tuple(typed.get(c) for c in key_columns), typed)
    finally:
        client.close()
    return out
