"""A captured table as an Avro record schema: what the registry versions and the compatibility checker compares.

Each column becomes a field whose type comes from the value contract's ``logical_type``
(:mod:`airflow_provider_cdc.values`), so every connector maps the same way:

============  ==========================================================================
logical type  Avro type
============  ==========================================================================
integer       ``int`` when the source declares at most 32 bits (smallint, integer), else ``long``
decimal       ``bytes`` with logicalType ``decimal`` (precision, scale); unconstrained: ``string``
float         ``float`` for a 4-byte source type (real, float4), else ``double``
boolean       ``boolean``
text, json,   ``string`` (json and other keep their family in the field's ``cdc.logical_type``)
other
timestamptz   ``long`` with logicalType ``timestamp-micros``
timestamp     ``long`` with logicalType ``local-timestamp-micros``
date          ``int`` with logicalType ``date``
time          ``long`` with logicalType ``time-micros``
binary        ``bytes``
uuid          ``string`` with logicalType ``uuid``
============  ==========================================================================

A nullable column is the union ``["null", T]`` with default ``null``; a column with a backfill (the value rows that
existed before an ``ADD COLUMN ... DEFAULT`` hold) has that value as its default. Those defaults are what make an
added column BACKWARD compatible, exactly as in a Confluent registry.

Avro names allow only ``[A-Za-z_][A-Za-z0-9_]*``; a column named otherwise gets a field name made of its letters
(``Order Date`` → ``Order_Date``), and its exact name stays in the field's ``cdc.column``. A column renamed at the
source (same ordinal, new name) carries its former field names as ``aliases``, so a reader of the new version finds
the old field: a rename is then compatible where Avro says it is.

Identity and fingerprint: Avro's Parsing Canonical Form drops logical types, defaults and aliases, so ``numeric(12,2)``
and ``numeric(10,2)`` share it. Versions are therefore told apart by the whole schema (:func:`schema_key`, a SHA-256
of its sorted JSON); :func:`fingerprint` is the CRC-64-AVRO of the canonical form, as Avro tools print it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import avro.errors
import avro.schema

from airflow_provider_cdc.tables import Column, TableSchema
from airflow_provider_cdc.values import parse_value

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INVALID = re.compile(r"[^A-Za-z0-9_]")
# Source types whose integers fit in 32 bits, and 4-byte floats (PostgreSQL and MySQL spellings).
_INT32 = ("smallint", "integer", "int2", "int4", "int", "tinyint", "mediumint", "smallserial", "serial", "serial4",
          "int16", "int32")
_FLOAT32 = ("real", "float4", "float")

AvroDoc = dict[str, Any]
_EPOCH_DATE = dt.date(1970, 1, 1)
_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=dt.timezone.utc)
_MICRO = dt.timedelta(microseconds=1)


def avro_name(name: str) -> str:
    """``name`` if Avro accepts it, else its letters with ``_`` for the rest (and ``_`` first if it starts badly)."""
    if _NAME.fullmatch(name):
        return name
    cleaned = _INVALID.sub("_", name) or "_"
    return cleaned if _NAME.fullmatch(cleaned) else f"_{cleaned}"


def field_names(columns: Sequence[Column]) -> dict[str, str]:
    """Column name → Avro field name, unique within the record.

    A column whose name is a valid Avro name always has it as its field name; a cleaned name that clashes gets
    ``_2``, ``_3``... in column order. Valid names go first so that a column's field never depends on whether an
    unrelated column exists: with ``a b`` then ``a_b``, dropping ``a b`` must not move field ``a_b`` to another
    column (the checker would then compare ``a b``'s old values with ``a_b``'s type)."""
    used = {col.name for col in columns if _NAME.fullmatch(col.name)}
    out: dict[str, str] = {}
    for col in columns:
        name = base = avro_name(col.name)
        if name != col.name:
            n = 1
            while name in used:
                n += 1
                name = f"{base}_{n}"
            used.add(name)
        out[col.name] = name
    return out


def _base_type(column: Column) -> Any:
    source = column.source_type.lower().split("(")[0].strip()
    source = source.removesuffix(" unsigned").strip()
    logical = column.logical_type
    if logical == "integer":
        # The type's first word: MySQL adds "(11)", "unsigned", "zerofill" after it. Only a 32-bit unsigned int
        # outgrows Avro's int; unsigned tinyint, smallint and mediumint (at most 16777215) fit.
        word = re.split(r"[\s(]", column.source_type.lower().strip(), maxsplit=1)[0]
        unsigned = "unsigned" in column.source_type.lower()
        return "int" if word in _INT32 and not (unsigned and word in ("int", "integer")) else "long"
    if logical == "decimal":
        if column.precision is None:
            return "string"
        return {"type": "bytes", "logicalType": "decimal", "precision": column.precision,
                "scale": column.scale or 0}
    if logical == "float":
        return "float" if source in _FLOAT32 and column.source_type.lower() in _FLOAT32 else "double"
    if logical == "boolean":
        return "boolean"
    if logical == "timestamptz":
        return {"type": "long", "logicalType": "timestamp-micros"}
    if logical == "timestamp":
        return {"type": "long", "logicalType": "local-timestamp-micros"}
    if logical == "date":
        return {"type": "int", "logicalType": "date"}
    if logical == "time":
        return {"type": "long", "logicalType": "time-micros"}
    if logical == "binary":
        return "bytes"
    if logical == "uuid":
        return {"type": "string", "logicalType": "uuid"}
    return "string"  # text, json, other


def _default_of(column: Column, base: Any) -> Any:
    """The Avro default (JSON, in the field's physical encoding) for a column's backfill text; ValueError when the
    backfill has no Avro form (``infinity``, a numeric NaN, more digits than the scale)."""
    value = parse_value(column.backfill, column.logical_type)
    logical = base.get("logicalType") if isinstance(base, dict) else None
    kind = base if isinstance(base, str) else base["type"]
    if isinstance(value, str) and column.logical_type not in ("text", "json", "other", "uuid"):
        raise ValueError(f"no Avro form for {value!r}")  # a special such as infinity
    if logical == "decimal":
        unscaled = value.scaleb(column.scale or 0)
        if unscaled != unscaled.to_integral_value() or not unscaled.is_finite():
            raise ValueError(f"{value} does not fit the scale")
        number = int(unscaled)
        size = max(1, (number.bit_length() + 8) // 8)
        return number.to_bytes(size, "big", signed=True).decode("latin-1")
    if logical == "date":
        return (value - _EPOCH_DATE).days
    if logical == "timestamp-micros":
        return (value - _EPOCH_UTC) // _MICRO
    if logical == "local-timestamp-micros":
        return (value - _EPOCH) // _MICRO
    if logical == "time-micros":
        return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
    if kind in ("float", "double") and not math.isfinite(value):
        raise ValueError(f"no JSON form for {value}")  # Avro defaults are JSON, which has no NaN or Infinity
    if kind in ("int", "long", "float", "double", "boolean"):
        return value
    if kind == "bytes":
        return value.decode("latin-1")  # Avro's JSON encoding of bytes: one code point per byte
    return column.backfill if column.logical_type != "uuid" else str(value)


def avro_field(column: Column, name: str, aliases: Sequence[str] = ()) -> AvroDoc:
    """One column as an Avro field (see the module docstring)."""
    base = _base_type(column)
    field: AvroDoc = {"name": name}
    default: Any = ...
    if column.backfill is not None:
        try:
            default = _default_of(column, base)
        except (ValueError, ArithmeticError):
            default = ...  # no Avro form: the backfill stays in ``cdc.backfill`` only
    if column.nullable and not column.primary_key:
        if default is ... or default is None:
            field["type"] = ["null", base]
            field["default"] = None
        else:
            field["type"] = [base, "null"]  # a union's default has the type of its first branch
            field["default"] = default
    else:
        field["type"] = base
        if default is not ...:
            field["default"] = default
    if column.backfill is not None:
        field["cdc.backfill"] = column.backfill
    if aliases:
        field["aliases"] = sorted(set(aliases))
    if name != column.name:
        field["cdc.column"] = column.name
    field["cdc.logical_type"] = column.logical_type
    field["cdc.source_type"] = column.source_type
    if column.primary_key:
        field["cdc.key"] = True
    if column.derived:
        field["cdc.derived"] = True  # made by a transformation rule: not part of the source table's shape
    return field


def avro_schema(table: TableSchema, *, source_id: str, previous: TableSchema | None = None,
                previous_doc: Mapping[str, Any] | None = None) -> AvroDoc:
    """The Avro record schema of ``table``.

    ``previous`` (the source table as it was before this change) gives renamed columns (same ordinal, another
    name) their former names as aliases; ``previous_doc`` (the previous version's schema) passes on the aliases a
    field had already, so that a column renamed twice still reads the first version."""
    names = field_names(table.columns)
    old_aliases: dict[str, list[str]] = {}
    if previous_doc is not None:
        for field in previous_doc.get("fields", []):
            old_aliases[field["name"]] = list(field.get("aliases", []))
    old_by_ordinal: dict[int, str] = {}
    if previous is not None:
        previous_names = field_names(previous.columns)
        old_by_ordinal = {col.ordinal: previous_names[col.name] for col in previous.columns if col.ordinal is not None}
    fields = []
    for col in table.columns:
        name = names[col.name]
        aliases = list(old_aliases.get(name, []))
        former = old_by_ordinal.get(col.ordinal) if col.ordinal is not None else None
        if former is not None and former != name:
            aliases += [former, *old_aliases.get(former, [])]
        fields.append(avro_field(col, name, [a for a in aliases if a != name]))
    return {
        "type": "record",
        "name": avro_name(table.name),
        "namespace": ".".join(avro_name(part) for part in (source_id, table.schema)),
        "fields": fields,
        "cdc.table": table.qualified_name,
        **({"cdc.dialect": table.dialect} if table.dialect else {}),
    }


def parse(doc: Mapping[str, Any]) -> avro.schema.Schema:
    """The Avro library's schema object of ``doc`` (what the compatibility checker takes).

    The Python library does not know ``local-timestamp-micros`` and warns on every parse; the type is Avro's own
    (specification 1.10+), and the checker compares its ``long`` either way."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", avro.errors.IgnoredLogicalType)
        return avro.schema.parse(json.dumps(doc))


def schema_key(doc: Mapping[str, Any]) -> str:
    """SHA-256 of the whole schema as sorted JSON: equal keys mean the same version."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fingerprint(doc: Mapping[str, Any]) -> str:
    """CRC-64-AVRO of Avro's Parsing Canonical Form, in hex (what ``avro`` tools print for a schema)."""
    return parse(doc).fingerprint().hex()


def canonical_form(doc: Mapping[str, Any]) -> str:
    return str(parse(doc).canonical_form)


# What the shape of a schema is made of (:func:`shape_key`): Avro's own attributes that change what a reader decodes.
_SHAPE_KEYS = frozenset({"type", "name", "namespace", "fields", "items", "values", "symbols", "size", "logicalType",
                         "precision", "scale"})


def _shape(node: Any) -> Any:
    if isinstance(node, Mapping):
        shaped = {key: _shape(value) for key, value in node.items() if key in _SHAPE_KEYS}
        if isinstance(node.get("fields"), list):
            shaped["fields"] = [_shape(field) for field in node["fields"]
                                if not (isinstance(field, Mapping) and field.get("cdc.derived"))]
        return shaped
    if isinstance(node, list):
        return [_shape(item) for item in node]
    return node


def shape_key(doc: Mapping[str, Any]) -> str:
    """What a schema registered ahead of a change (``POST /cdc/api/v1/schema/register``) is matched on: the record's
    names, field names, order and types with their logical types, precision and scale, as 16 hex digits.

    Defaults, aliases, docs, the ``cdc.*`` attributes and the fields transformation rules add (``cdc.derived``) do
    not count, so a user who edits the current version's document (one field's type) matches the document the gate
    makes from the source's change, stale ``cdc.*`` attributes and all; unlike :func:`fingerprint`,
    ``numeric(12,2)`` and ``numeric(10,2)`` differ."""
    text = json.dumps(_shape(doc), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def column_of(field: Mapping[str, Any]) -> str:
    """The source column an Avro field stands for."""
    return str(field.get("cdc.column", field["name"]))
