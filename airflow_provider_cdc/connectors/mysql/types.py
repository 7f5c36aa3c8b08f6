"""MySQL and MariaDB column types: each column's logical type, and the portable text of each value, whether it was
read from the binlog (pymysqlreplication 1.0.17) or by a snapshot (pymysql).

**The rule: a value reaches the same portable text on both paths.** The two libraries hand over different Python
values for the same stored value (see the findings below), so each path has its own formatter
(:func:`binlog_formatter`, :func:`snapshot_formatter`) and the tests compare both against hand-written texts on a
real MariaDB.

=========================================  =======================  ============================================
MySQL / MariaDB type (``COLUMN_TYPE``)     logical type             portable text, and why
=========================================  =======================  ============================================
TINYINT SMALLINT MEDIUMINT INT BIGINT      ``integer``              ``-42``
(signed), any of them UNSIGNED but BIGINT
BIGINT UNSIGNED                            ``decimal(20,0)``        ``18446744073709551615``: beyond int64
TINYINT(1), BOOL, BOOLEAN                  ``integer``              ``0``, ``1``, ``2``, ``-1``: the binlog has
                                                                    no display width and the column holds any
                                                                    TINYINT, so it stays an exact integer
BIT(n), n < 64                             ``integer``              ``5`` for ``b'101'``
BIT(64)                                    ``decimal(20,0)``        up to ``18446744073709551615``
DECIMAL(p,s) NUMERIC                       ``decimal(p,s)``         ``-1234.500``: exact, all ``s`` digits
FLOAT                                      ``float``                the shortest text that reads back as the
                                                                    same 4-byte float (``1.2345679``): both
                                                                    paths hold the exact float32
DOUBLE REAL                                ``float``                shortest round-trip digits (``0.1``)
CHAR VARCHAR TINYTEXT..LONGTEXT            ``text``                 the string (any supported charset, decoded
                                                                    exactly; CHAR drops trailing spaces as
                                                                    MySQL reads it)
ENUM                                       ``text``                 the label (``''`` for MySQL's invalid-value
                                                                    index 0)
SET                                        ``text``                 labels joined with ``,`` in definition
                                                                    order, MySQL's own form (``''``: empty set)
JSON (MySQL: binary JSON)                  ``json``                 ``json.dumps(..., ensure_ascii=False,
                                                                    separators=(", ", ": "))`` of the parsed
                                                                    document (MySQL's own print form)
JSON (MariaDB: LONGTEXT with a             ``json``                 the text exactly as stored (MariaDB keeps
``json_valid`` CHECK; ``source_type``                               the text: key order, spaces and number
stays ``longtext``)                                                 forms survive)
BINARY(n) VARBINARY TINYBLOB..LONGBLOB     ``binary``               lowercase hex; BINARY(n) always ``n`` bytes
DATE                                       ``date``                 ``1899-12-31``, ``9999-12-31``
DATETIME(fsp)                              ``timestamp``            ``2024-05-01T12:00:00.000001``: the wall
                                                                    clock as written, no zone
TIMESTAMP(fsp)                             ``timestamptz``          ``2024-05-01T06:30:00.123456Z``: an instant,
                                                                    whatever the writer's session zone
TIME(fsp)                                  ``time``                 ``12:00:00.5`` within a day; outside
                                                                    0..24h MySQL's own text (``-01:00:00.001``,
                                                                    ``838:59:59``), which a MySQL sink stores
                                                                    exactly and ``typed_table`` refuses with
                                                                    ``UntypedValueError`` like ``infinity``
YEAR                                       ``integer``              ``2024``; ``0`` for YEAR 0000
GEOMETRY POINT LINESTRING POLYGON MULTI*   ``other``                lowercase hex of MySQL's internal value (a
GEOMETRYCOLLECTION                                                  4-byte little-endian SRID, then WKB): both
                                                                    paths carry these bytes; a MySQL sink
                                                                    stores ``UNHEX(text)`` as it is
UUID (MariaDB 10.7+)                       ``uuid``                 ``123e4567-e89b-12d3-a456-426614174000``
INET4 INET6 (MariaDB 10.10+ / 10.5+)       ``text``                 MariaDB's own text (``::ffff:1.2.3.4``)
anything else                              ``other``                the driver's text (bytes as hex)
=========================================  =======================  ============================================

**What each library returns** (measured on MariaDB 10.11 with ``binlog_row_metadata=FULL``; the MySQL-only
rows are read from the library's source):

- Integers: ``int`` on both paths, signed or unsigned as declared. YEAR: pymysql ``int``; pymysqlreplication
  ``stored + 1900``, so YEAR 0000 arrives as ``1900`` (a year YEAR cannot hold): read back as ``0``.
- BIT: pymysql ``bytes`` (big-endian); pymysqlreplication a ``str`` of ``'0'``/``'1'`` digits.
- DECIMAL: ``Decimal`` with all ``s`` digits on both paths.
- FLOAT: pymysqlreplication the exact float32 (``1.2345678806304932``); a plain ``SELECT`` gets MySQL's text
  rounded to 6 digits (``1.23457``, and ``16777217`` reads ``16777200``): **the snapshot must select
  ``col + 0e0``** (:func:`snapshot_select_expr`), which is the exact float32 as a double.
- DOUBLE: ``float`` on both paths, equal.
- Text: ``str`` on both paths. The snapshot session is utf8mb4, so the server converts every charset. The binlog
  reader decodes with Python codecs named after the column's charset, and gets latin1 wrong: MySQL's latin1 is
  cp1252 whose five holes (0x81 0x8D 0x8F 0x90 0x9D) map to U+0081...; Python's cp1252 raises on them and stops
  the stream. :func:`bind_table_map` swaps in exact decoders (verified byte for byte against the server).
  For utf16/utf32 it picks Python codecs that read little-endian without a BOM, and none for ucs2 (bytes come
  out), while MySQL's are big-endian: same fix.
  ENUM/SET labels in the table map are decoded as UTF-8 and become ``''`` when that fails (latin1 labels with
  accents): :func:`bind_table_map` puts the catalog's labels back. The catalog itself (``information_schema`` and
  ``SHOW CREATE TABLE``) is utf8mb3: an emoji in a default or an ENUM/SET label reads ``?`` there, so such a
  default is unknown (:func:`backfill_of`) and such labels are taken from the table map.
- ENUM: the label on both paths (``''`` for index 0).
- SET: pymysql the server's text ``'a,c'``; pymysqlreplication a Python ``set`` (unordered), and ``None`` for the
  empty set (``none_sources`` says ``empty set``): :func:`restore_binlog_values` turns that back into an empty set.
- BINARY(n): pymysql all ``n`` bytes; the binlog drops trailing ``0x00`` bytes (``x'00000000'`` arrives as
  ``b''``), so the binlog formatter pads to ``n``. An empty BLOB arrives from the binlog as ``''`` (``str``).
- JSON: MariaDB: ``str`` on both paths (the stored text). MySQL: pymysql the server's text; pymysqlreplication a
  parsed document whose keys and strings are ``bytes``, opaque DECIMAL as ``Decimal``, DATETIME/TIME as
  ``datetime``/``time``. A MySQL JSON ``null`` document arrives from the binlog as ``None``, indistinguishable
  from SQL NULL, so the snapshot turns a top-level ``null`` document into NULL as well (the only lossy case, and the
  same on both paths). A JSON DATE inside a document is decoded by the library as a datetime and differs from the
  snapshot's ``"2015-01-15"`` (not seen on MariaDB; MySQL was not available to test).
- DATE / DATETIME: ``date``/``datetime`` (naive) on both paths.
- TIMESTAMP: pymysqlreplication a naive ``datetime`` in UTC (``utcfromtimestamp``); pymysql a naive ``datetime``
  in the session zone, UTC in our sessions (``connection.connect``). Both are read as UTC.
- TIME: ``timedelta`` on both paths, negative values included. pymysqlreplication decodes a **negative TIME with a
  fraction** wrongly (``-01:00:00.001`` arrives as ``-01:00:00.999``: it subtracts the stored fraction from the
  integer part that MySQL had already rounded down); the binlog formatter undoes it exactly (``2*floor(x) + 1 - x``
  on the magnitude in seconds).
- UUID / INET6 / INET4: pymysql the server's text; pymysqlreplication the 16 / 4 raw bytes (trailing zero bytes
  dropped as for BINARY, padded back). UUIDs are in text order in the binlog of MariaDB 10.11.
- GEOMETRY: ``bytes`` (SRID + WKB) on both paths.
- Generated columns: VIRTUAL and STORED columns are in every row image (insert, both update images, delete) on
  MariaDB 10.11 with ``binlog_row_image=FULL``, and in the snapshot: ordinary columns.

**Zero dates** (``0000-00-00``, ``2024-00-10``, ``0000-00-00 00:00:00``, and invalid dates such as ``2024-02-31``
that ``ALLOW_INVALID_DATES`` lets in) have no portable form. The policy is the caller's: ``zero_dates="null"``
(default) gives NULL and calls ``on_zero_date(column_name, raw)`` so the caller can warn and count;
``zero_dates="refuse"`` raises :class:`ZeroDateError` (the caller adds the row's key). What each path sees:

- snapshot: pymysql cannot parse them and returns the server's text (``'0000-00-00'``), so ``raw`` is that text.
- binlog, DATE/DATETIME: pymysqlreplication returns ``None`` and says why in the row's ``none_sources``
  (``out of date range``, ``out of datetime2 range``); :func:`restore_binlog_values` marks them (:data:`ZERO_DATE`)
  so the formatter can tell them from NULL. ``raw`` is ``None``: the library keeps no text.
- binlog, TIMESTAMP: the zero TIMESTAMP is stored as 0 seconds and arrives as ``1970-01-01 00:00:00``, which no real
  TIMESTAMP can hold (the range starts one second later): treated as the zero date.
- binlog, an invalid DATE (``2024-02-31``): pymysqlreplication raises ``ValueError`` inside the reader (it does
  catch it for DATETIME). Nothing here can intercept it; the stream stops with that error.

**The binlog path, in order**: on each TableMapEvent, :func:`table_map_matches` against the catalog's schema (else
:func:`schema_from_binlog`), then :func:`bind_table_map` with that schema, before the event's rows are read; on each
row image, :func:`restore_binlog_values` with its ``none_sources``, then one :func:`binlog_formatter` per column
(build them once per schema). The reader must keep ``ignore_decode_errors=False`` (its default: with ``True`` it
drops undecodable bytes silently).
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime as dt
import decimal
import ipaddress
import json
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from functools import lru_cache
from typing import Any

from pymysqlreplication.constants import FIELD_TYPE, NONE_SOURCE

from airflow_provider_cdc.connectors.mysql.connection import MYSQL_DIALECT, quote_name
from airflow_provider_cdc.tables import Column, TableSchema
from airflow_provider_cdc.values import format_value

Formatter = Callable[[Any], "str | None"]
OnZeroDate = Callable[[str, "str | None"], None]
ZERO_DATE_POLICIES = ("null", "refuse")


class ZeroDateError(ValueError):
    """A zero or invalid date under ``zero_dates="refuse"``; the caller adds table and row key to the message."""

    def __init__(self, column: str, raw: str | None) -> None:
        self.column, self.raw = column, raw
        shown = repr(raw) if raw is not None else "a zero or invalid date (the binlog keeps no text of it)"
        super().__init__(
            f"column {column!r} holds {shown}, which no other database can store: fix the row at the source, or set "
            f"zero_dates: null to load NULL instead (each such value is logged)"
        )


class UnsupportedCharsetError(ValueError):
    """A text column in a character set the binlog reader cannot decode exactly."""

    def __init__(self, column: str, charset: str | None) -> None:
        self.column, self.charset = column, charset
        super().__init__(
            f"column {column!r} uses character set {charset or 'unknown'!r}, which the binlog reader cannot decode "
            f"exactly (supported: {', '.join(sorted(EXACT_CODECS))}); convert it, e.g. ALTER TABLE ... CONVERT TO "
            f"CHARACTER SET utf8mb4"
        )


class _ZeroDate:
    """The mark :func:`restore_binlog_values` puts where the binlog reader returned None for a zero date."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ZERO_DATE"


ZERO_DATE = _ZeroDate()
_ZERO_DATE_SOURCES = frozenset({
    NONE_SOURCE.OUT_OF_DATE_RANGE, NONE_SOURCE.OUT_OF_DATETIME_RANGE, NONE_SOURCE.OUT_OF_DATETIME2_RANGE,
})


def restore_binlog_values(values: MutableMapping[str, Any], none_sources: Mapping[str, str]) -> None:
    """Put back, in place, what pymysqlreplication turned into ``None``: an empty SET (``frozenset()``) and a zero
    date (:data:`ZERO_DATE`). Call it on every row image with its ``none_sources`` before formatting; it only looks
    at the image's None values."""
    for name, source in none_sources.items():
        if source in _ZERO_DATE_SOURCES:
            values[name] = ZERO_DATE
        elif source == NONE_SOURCE.EMPTY_SET:
            values[name] = frozenset()


# --- declared types ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceType:
    """A ``COLUMN_TYPE`` taken apart: ``decimal(12,2) unsigned`` -> base ``decimal``, args ``(12, 2)``, unsigned."""

    base: str
    args: tuple[int, ...] = ()
    labels: tuple[str, ...] = ()
    unsigned: bool = False


_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "%": "\\%", "_": "\\_"}


def unquote_literal(text: str) -> str:
    """The value of a SQL string literal as the server prints it (``'it''s'``, ``'a\\\\b'``, ``'ab\\0'``)."""
    body = text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text
    quote = text[0] if text[:1] in ("'", '"') else "'"
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
            i += 2
        elif ch == quote and body[i + 1:i + 2] == quote:
            out.append(quote)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def quote_label(label: str) -> str:
    """An ENUM/SET label as ``COLUMN_TYPE`` writes it."""
    return "'" + label.replace("\\", "\\\\").replace("'", "''") + "'"


def _split_labels(inner: str) -> tuple[str, ...]:
    labels: list[str] = []
    i = 0
    while i < len(inner):
        if inner[i] != "'":
            i += 1
            continue
        j = i + 1
        while j < len(inner):
            if inner[j] == "\\":
                j += 2
            elif inner[j] == "'" and inner[j + 1:j + 2] == "'":
                j += 2
            elif inner[j] == "'":
                break
            else:
                j += 1
        labels.append(unquote_literal(inner[i:j + 1]))
        i = j + 1
    return tuple(labels)


@lru_cache(maxsize=4096)
def parse_source_type(text: str) -> SourceType:
    """Take a ``COLUMN_TYPE`` apart (``int(10) unsigned``, ``enum('a','b')``, ``datetime(6)``, ``varchar(20)``)."""
    match = re.match(r"\s*([A-Za-z][A-Za-z0-9_]*)", text)
    if not match:
        return SourceType(text.strip().lower())
    base, rest = match.group(1).lower(), text[match.end():]
    inner = ""
    if rest.lstrip().startswith("("):
        start = text.index("(", match.end())
        depth, quoted, i = 0, False, start
        while i < len(text):
            ch = text[i]
            if quoted:
                if ch == "\\" or (ch == "'" and text[i + 1:i + 2] == "'"):
                    i += 2  # an escaped character or a doubled quote stays inside the label
                    continue
                quoted = ch != "'"
            elif ch == "'":
                quoted = True
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        inner, rest = text[start + 1:i], text[i + 1:]
    words = rest.lower().split()
    if base in ("enum", "set"):
        return SourceType(base, (), _split_labels(inner), "unsigned" in words)
    args = tuple(int(part) for part in inner.split(",") if part.strip().isdigit())
    return SourceType(base, args, (), "unsigned" in words)


_INTEGERS = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year", "bool", "boolean"})
_DECIMALS = frozenset({"decimal", "numeric", "dec", "fixed"})
_FLOATS = frozenset({"float", "double", "real"})
_TEXTS = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "inet4",
                    "inet6"})
_BINARIES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
_GEOMETRIES = frozenset({"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
                         "multipolygon", "geometrycollection", "geomcollection"})
_TEMPORALS = {"date": "date", "datetime": "timestamp", "timestamp": "timestamptz", "time": "time"}


def logical_of(data_type: str, column_type: str, *, is_json: bool = False) -> tuple[str, int | None, int | None]:
    """``(logical_type, precision, scale)`` of a column from ``DATA_TYPE`` and ``COLUMN_TYPE`` (see the module
    table). ``is_json``: a MariaDB LONGTEXT that a ``json_valid`` CHECK makes a JSON column."""
    base = data_type.strip().lower()
    declared = parse_source_type(column_type)
    if is_json or base == "json":
        return "json", None, None
    if base == "bigint" and declared.unsigned:
        return "decimal", 20, 0
    if base in _INTEGERS:
        return "integer", None, None
    if base == "bit":
        return ("decimal", 20, 0) if (declared.args[:1] or (1,))[0] >= 64 else ("integer", None, None)
    if base in _DECIMALS:
        precision = declared.args[0] if declared.args else 10
        return "decimal", precision, declared.args[1] if len(declared.args) > 1 else 0
    if base in _FLOATS:
        return "float", None, None
    if base in _TEXTS:
        return "text", None, None
    if base in _BINARIES:
        return "binary", None, None
    if base in _TEMPORALS:
        return _TEMPORALS[base], None, None
    if base == "uuid":
        return "uuid", None, None
    return "other", None, None


def _kind(column: Column) -> str:
    """How a column's values are formatted: the declared base type, refined where values differ."""
    declared = parse_source_type(column.source_type)
    base = declared.base
    if column.logical_type == "json":
        return "json_mysql" if base == "json" else "json_text"
    if base == "year":
        return "year"
    if base == "bit":
        return "bit"
    if base in _INTEGERS:
        return "integer"
    if base in _DECIMALS:
        return "decimal"
    if base == "float":
        return "float32"
    if base in ("double", "real"):
        return "float64"
    if base == "set":
        return "set"
    if base in ("inet4", "inet6", "uuid"):
        return base
    if base in _TEXTS:
        return "text"
    if base == "binary":
        return "binary_fixed"
    if base in _BINARIES:
        return "binary"
    if base in _TEMPORALS:
        return base
    if base in _GEOMETRIES:
        return "geometry"
    return "other"


# --- values -------------------------------------------------------------------------------------------------------

_F32 = struct.Struct("<f")
_F32_MAX = 3.4028234663852886e38
_EPOCH = dt.datetime(1970, 1, 1)


def _round_float32(value: float) -> float | None:
    """``value`` rounded to the nearest 4-byte float; None beyond the largest float32 (which MySQL refuses to store,
    even where IEEE rounding would take it back to the largest)."""
    if abs(value) > _F32_MAX:
        return None
    return float(_F32.unpack(_F32.pack(value))[0])


def float32_text(value: float) -> str:
    """The shortest text that reads back as the same 4-byte float, in Python's ``repr`` style (``1.2345679``), and
    that MySQL accepts back into a FLOAT (the largest float32 keeps all its digits: ``3.4028235e+38`` is refused)."""
    if value != value or value in (float("inf"), float("-inf")):
        return format_value(value, "float") or ""
    exact = _round_float32(value)
    if exact is None:
        raise ValueError(f"{value!r} is beyond the range of a FLOAT")
    for digits in range(1, 10):
        text = f"{exact:.{digits}g}"
        if _round_float32(float(text)) == exact:
            return repr(float(text))
    return repr(exact)


def _trim_fraction(text: str) -> str:
    head, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return f"{head}.{frac}" if frac else head


def _datetime_text(value: dt.datetime) -> str:
    return _trim_fraction(value.isoformat(timespec="microseconds"))


def time_text(micros: int) -> str:
    """A TIME of ``micros`` microseconds: ``HH:MM:SS[.f]`` within a day (the portable ``time``), else MySQL's own
    text (``-01:00:00.001``, ``838:59:59``)."""
    sign = "-" if micros < 0 else ""
    seconds, fraction = divmod(abs(micros), 1_000_000)
    text = f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{text}.{fraction:06d}".rstrip("0") if fraction else text


def _micros(value: dt.timedelta) -> int:
    return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds


def _binlog_time_micros(value: dt.timedelta) -> int:
    """Undo pymysqlreplication's decoding of a negative TIME with a fraction (see the module docstring): it returns
    ``-(D + 1 - f)`` for the stored ``-(D + f)``, an involution on the magnitude ``x``: ``2*floor(x) + 1 - x``."""
    micros = _micros(value)
    if micros < 0 and micros % 1_000_000:
        magnitude = -micros
        whole = magnitude // 1_000_000 * 1_000_000
        return -(2 * whole + 1_000_000 - magnitude)
    return micros


def inet6_text(packed: bytes) -> str:
    """An INET6 value as MariaDB prints it (``Inet6::to_string``): the longest run of zero groups (even a single
    one; the first of equal runs) becomes ``::``; IPv4-compatible and IPv4-mapped addresses end in dotted quad."""
    words = struct.unpack(">8H", packed.ljust(16, b"\0"))
    gap_pos, gap_len, run_pos, run_len = -1, -1, -1, -1
    for i, word in enumerate(words):
        if word == 0:
            if run_pos < 0:
                run_pos, run_len = i, 1
            else:
                run_len += 1
        elif run_pos >= 0:
            if run_len > gap_len:
                gap_pos, gap_len = run_pos, run_len
            run_pos, run_len = -1, -1
    if run_pos >= 0 and run_len > gap_len:
        gap_pos, gap_len = run_pos, run_len
    out: list[str] = []
    i = 0
    while i < 8:
        if i == gap_pos:
            out.append("::" if i == 0 else ":")
            i += gap_len
            continue
        if i == 6 and gap_pos == 0 and (gap_len == 6 or (gap_len == 5 and words[5] == 0xFFFF)):
            out.append(".".join(str(b) for b in packed.ljust(16, b"\0")[12:]))
            break
        out.append(f"{words[i]:x}" + (":" if i < 7 else ""))
        i += 1
    return "".join(out)


def _json_plain(value: Any) -> Any:
    """A MySQL binary-JSON document as pymysqlreplication parses it, in the Python types ``json.loads`` of MySQL's
    printed text gives (keys and strings are bytes there; opaque DECIMAL/DATETIME/TIME are Python objects)."""
    if isinstance(value, dict):
        return {_json_key(k): _json_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    if isinstance(value, decimal.Decimal):
        return float(value)  # MySQL prints it as a JSON number, which json.loads reads as a float
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dt.time):
        return value.strftime("%H:%M:%S.%f")
    return value


def _json_key(key: Any) -> str:
    return key.decode("utf-8") if isinstance(key, (bytes, bytearray)) else str(key)


def _json_dump(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(", ", ": "))


def _label_order(column: Column) -> dict[str, int]:
    return {label: i for i, label in enumerate(parse_source_type(column.source_type).labels)}


def _fixed_length(column: Column, default: int) -> int:
    declared = parse_source_type(column.source_type)
    return declared.args[0] if declared.args else default


def _zero_handler(column: str, zero_dates: str, on_zero_date: OnZeroDate | None) -> Callable[[str | None], None]:
    if zero_dates not in ZERO_DATE_POLICIES:
        raise ValueError(f"zero_dates must be one of {', '.join(ZERO_DATE_POLICIES)}, not {zero_dates!r}")

    def zero(raw: str | None) -> None:
        if zero_dates == "refuse":
            raise ZeroDateError(column, raw)
        if on_zero_date is not None:
            on_zero_date(column, raw)
        return None

    return zero


def _as_text(column: Column, path: str) -> Formatter:
    def fmt(v: Any) -> str | None:
        if v is None or isinstance(v, str):
            return v
        raise TypeError(
            f"column {column.name!r}: the {path} reader returned {type(v).__name__} for a text column; on the binlog "
            f"path call bind_table_map() on each TableMapEvent so that every charset is decoded"
        )
    return fmt


def _none_or(convert: Callable[[Any], str]) -> Formatter:
    def fmt(v: Any) -> str | None:
        return None if v is None else convert(v)
    return fmt


def _common_formatter(kind: str, column: Column) -> Formatter | None:
    """Formatters that are the same on both paths."""
    if kind in ("integer",):
        return _none_or(str)
    if kind == "decimal":
        return _none_or(lambda v: format(v, "f"))
    if kind == "float64":
        return _none_or(lambda v: format_value(v, "float") or "")
    if kind == "float32":
        return _none_or(float32_text)
    if kind == "json_text":
        return _as_text(column, "driver")
    if kind in ("binary", "geometry"):
        return _none_or(lambda v: v.hex() if isinstance(v, (bytes, bytearray)) else v.encode("utf-8").hex())
    return None


def binlog_formatter(column: Column, *, zero_dates: str = "null", on_zero_date: OnZeroDate | None = None
                     ) -> Formatter:
    """The portable text of a value as pymysqlreplication returns it for ``column`` (after
    :func:`bind_table_map` on the TableMapEvent and :func:`restore_binlog_values` on the row image)."""
    kind = _kind(column)
    zero = _zero_handler(column.name, zero_dates, on_zero_date)
    common = _common_formatter(kind, column)
    if common is not None:
        return common
    if kind == "year":
        return _none_or(lambda v: "0" if v == 1900 else str(v))
    if kind == "bit":
        return _none_or(lambda v: str(int(v, 2)) if isinstance(v, str) else str(int.from_bytes(v, "big")))
    if kind == "text":
        return _as_text(column, "binlog")
    if kind == "set":
        order = _label_order(column)

        def set_text(v: Any) -> str | None:
            if v is None or isinstance(v, str):
                return v
            return ",".join(sorted(v, key=lambda label: order.get(label, len(order))))
        return set_text
    if kind == "json_mysql":
        return _none_or(lambda v: _json_dump(_json_plain(v)))
    if kind == "binary_fixed":
        size = _fixed_length(column, 1)
        return _none_or(lambda v: (v if isinstance(v, bytes) else v.encode("utf-8")).ljust(size, b"\0").hex())
    if kind in ("uuid", "inet6", "inet4"):
        size = 4 if kind == "inet4" else 16
        text_of: Callable[[bytes], str] = {
            "uuid": lambda b: str(uuid.UUID(bytes=b)),
            "inet6": inet6_text,
            "inet4": lambda b: ".".join(str(x) for x in b),
        }[kind]

        def packed_text(v: Any) -> str | None:
            if v is None:
                return None
            raw = v if isinstance(v, (bytes, bytearray)) else v.encode("latin-1")
            return text_of(bytes(raw).ljust(size, b"\0"))
        return packed_text
    if kind == "date":
        def date_text(v: Any) -> str | None:
            if v is None:
                return None
            if v is ZERO_DATE:
                return zero(None)
            return str(v.isoformat())
        return date_text
    if kind == "datetime":
        def datetime_text(v: Any) -> str | None:
            if v is None:
                return None
            if v is ZERO_DATE:
                return zero(None)
            return _datetime_text(v)
        return datetime_text
    if kind == "timestamp":
        def timestamp_text(v: Any) -> str | None:
            if v is None:
                return None
            if v is ZERO_DATE or v == _EPOCH:  # the zero TIMESTAMP is 0 seconds; real ones start at 1 second
                return zero(None if v is ZERO_DATE else "0000-00-00 00:00:00")
            return _datetime_text(v) + "Z"
        return timestamp_text
    if kind == "time":
        return _none_or(lambda v: time_text(_binlog_time_micros(v)))
    return _none_or(_other_text)


def snapshot_formatter(column: Column, *, zero_dates: str = "null", on_zero_date: OnZeroDate | None = None
                       ) -> Formatter:
    """The portable text of a value as pymysql returns it for ``column`` in a session of ``connection.connect``
    (UTC, utf8mb4), selected with :func:`snapshot_select_expr`."""
    kind = _kind(column)
    zero = _zero_handler(column.name, zero_dates, on_zero_date)
    common = _common_formatter(kind, column)
    if common is not None:
        return common
    if kind == "year":
        return _none_or(str)
    if kind == "bit":
        return _none_or(lambda v: str(int.from_bytes(v, "big")) if isinstance(v, bytes) else str(int(v)))
    if kind in ("text", "set", "inet4", "inet6"):
        return _as_text(column, "snapshot")
    if kind == "json_mysql":
        def json_text(v: Any) -> str | None:
            if v is None:
                return None
            document = json.loads(v)
            return None if document is None else _json_dump(document)  # the binlog cannot tell JSON null from NULL
        return json_text
    if kind == "binary_fixed":
        return _none_or(lambda v: bytes(v).hex())
    if kind == "uuid":
        return _none_or(lambda v: str(uuid.UUID(v if isinstance(v, str) else bytes(v).decode("ascii"))))
    if kind == "date":
        def date_text(v: Any) -> str | None:
            if v is None:
                return None
            if isinstance(v, str):  # pymysql returns the server's text when Python has no such date
                return zero(v)
            return str(v.isoformat())
        return date_text
    if kind in ("datetime", "timestamp"):
        suffix = "Z" if kind == "timestamp" else ""

        def datetime_text(v: Any) -> str | None:
            if v is None:
                return None
            if isinstance(v, str):
                return zero(v)
            return _datetime_text(v) + suffix
        return datetime_text
    if kind == "time":
        return _none_or(lambda v: time_text(_micros(v)))
    return _none_or(_other_text)


def _other_text(value: Any) -> str:
    return bytes(value).hex() if isinstance(value, (bytes, bytearray)) else str(value)


def snapshot_select_expr(column: Column) -> str:
    """The SELECT-list expression that reads ``column`` for :func:`snapshot_formatter`: the quoted name, except
    FLOAT, which the server prints rounded to 6 digits: ``col + 0e0`` is its exact value as a double. List every
    column by name (never ``SELECT *``: it leaves out INVISIBLE columns, which the binlog has)."""
    name = quote_name(column.name)
    return f"({name} + 0e0)" if _kind(column) == "float32" else name


# --- charsets of the binlog reader --------------------------------------------------------------------------------

# MySQL's latin1 is cp1252 whose five undefined bytes map to the C1 controls of the same number (checked against
# CONVERT(... USING utf8mb4) for all 256 bytes); its ascii turns bytes above 0x7F into '?'.
_CP1252 = bytes(range(256)).decode("cp1252", errors="replace")
_MYSQL_LATIN1 = "".join(chr(b) if ch == "\ufffd" else ch for b, ch in enumerate(_CP1252))
_MYSQL_ASCII = "".join(chr(b) if b < 0x80 else "?" for b in range(256))
_CHARMAPS = {"cdc_mysql_latin1": _MYSQL_LATIN1, "cdc_mysql_ascii": _MYSQL_ASCII}


def _codec_search(name: str) -> codecs.CodecInfo | None:
    key = name.replace("-", "_").lower()
    table = _CHARMAPS.get(key)
    if table is None:
        return None
    encoding_table = codecs.charmap_build(table)

    def decode(data: Any, errors: str = "strict") -> tuple[str, int]:
        return codecs.charmap_decode(data, errors, table)

    def encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
        return codecs.charmap_encode(text, errors, encoding_table)

    return codecs.CodecInfo(encode, decode, name=key)


codecs.register(_codec_search)

# MySQL charset -> the Python codec that decodes it exactly ('binary': left as bytes by the reader).
EXACT_CODECS = {
    "utf8mb4": "utf-8", "utf8mb3": "utf-8", "utf8": "utf-8",
    "latin1": "cdc_mysql_latin1", "ascii": "cdc_mysql_ascii",
    "ucs2": "utf-16-be", "utf16": "utf-16-be", "utf16le": "utf-16-le", "utf32": "utf-32-be",
    "binary": "binary",
}
# Bytes per character, to turn a table map's byte length into CHAR(n)/VARCHAR(n).
_MAX_BYTES_PER_CHAR = {
    "utf8mb4": 4, "utf8mb3": 3, "utf8": 3, "latin1": 1, "ascii": 1, "binary": 1, "ucs2": 2, "utf16": 4,
    "utf16le": 4, "utf32": 4, "big5": 2, "gbk": 2, "gb2312": 2, "gb18030": 4, "sjis": 2, "cp932": 2, "ujis": 3,
    "eucjpms": 3, "euckr": 2,
}


def charset_of_collation(collation: str | None) -> str | None:
    """``latin1_swedish_ci`` -> ``latin1``; ``binary`` -> ``binary``."""
    if not collation:
        return None
    return collation.split("_", 1)[0].lower()


def _binlog_charset(col: Any) -> str | None:
    return charset_of_collation(getattr(col, "collation_name", None))


def _is_binary(col: Any) -> bool:
    return _binlog_charset(col) == "binary"


_DECODED_TYPES = frozenset({FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.BLOB})


def bind_table_map(schema: TableSchema | None, columns: Sequence[Any]) -> None:
    """Make pymysqlreplication decode a TableMapEvent's rows exactly; call it on each TableMapEvent, before its row
    events are read (they are parsed lazily, when ``rows`` is first read).

    It points each text column at an exact codec (:data:`EXACT_CODECS`; the reader looks up
    ``character_set_name``), raising :class:`UnsupportedCharsetError` for any other charset, and, when ``schema``
    (the catalog's, matched by :func:`table_map_matches`) is given, replaces ENUM/SET labels with the catalog's,
    which the table map's UTF-8 decoding loses for non-UTF-8 labels."""
    catalog = {c.name: c for c in schema.columns} if schema is not None else {}
    for col in columns:
        if col.type in _DECODED_TYPES and getattr(col, "collation_name", None) is not None:
            charset = _binlog_charset(col)
            if charset not in EXACT_CODECS:
                raise UnsupportedCharsetError(col.name, charset)
            col.character_set_name = EXACT_CODECS[charset]
        known = catalog.get(col.name)
        if known is not None and col.type in (FIELD_TYPE.ENUM, FIELD_TYPE.SET):
            labels = parse_source_type(known.source_type).labels
            if col.type == FIELD_TYPE.ENUM and col.enum_values is not None and len(col.enum_values) == len(labels) + 1:
                col.enum_values = ["", *_repaired_labels(col.enum_values[1:], labels)]
            if col.type == FIELD_TYPE.SET and col.set_values is not None and len(col.set_values) == len(labels):
                col.set_values = _repaired_labels(col.set_values, labels)


def _repaired_labels(binlog: Sequence[str], catalog: Sequence[str]) -> list[str]:
    """The table map's labels, with the catalog's where the table map's failed to decode (``''``). The table map's
    are kept otherwise: the catalog shows characters beyond the BMP as ``?`` (it is utf8mb3)."""
    return [want if got == "" else got for got, want in zip(binlog, catalog)]


def catalog_text(text: str) -> str:
    """``text`` as the server's catalog shows it: ``information_schema`` and ``SHOW CREATE TABLE`` are utf8mb3, so
    every character beyond the BMP (emoji...) becomes ``?`` in defaults and ENUM/SET labels."""
    return _BEYOND_BMP.sub("?", text)


_BEYOND_BMP = re.compile("[\U00010000-\U0010FFFF]")


# --- backfill: what rows older than a column hold -----------------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_BIT_LITERAL = re.compile(r"^[bB]'([01]*)'$")
_HEX_LITERAL = re.compile(r"^(?:0[xX]([0-9a-fA-F]*)|[xX]'([0-9a-fA-F]*)')$")
_NOW = re.compile(r"^(current_timestamp|now|localtime|localtimestamp)(\(\d*\))?$", re.IGNORECASE)
_SUPPLEMENTARY_CHARSETS = frozenset({"utf8mb4", "utf16", "utf16le", "utf32"})
_TIME_LITERAL = re.compile(r"^(-)?(\d+):(\d{1,2}):(\d{1,2})(?:\.(\d{1,6}))?$")


def backfill_of(column: Column, info: Mapping[str, Any]) -> tuple[str | None, bool]:
    """``(backfill, backfill_unknown)``: what rows that existed before ``ADD COLUMN`` hold in ``column``, as its
    portable text, from ``COLUMN_DEFAULT``. MariaDB writes the default as SQL (``'abc'`` quoted, ``NULL``, ``3``,
    ``b'101'``, or an expression such as ``current_timestamp()``); MySQL writes literals bare, SQL NULL for no
    default, and flags expressions with ``DEFAULT_GENERATED`` in ``EXTRA``. Unknown (``True``): an expression default,
    a generated column (older rows hold computed values), AUTO_INCREMENT (numbered at the ALTER), and a text default
    with a ``?`` in a charset that holds emoji (the catalog shows those as ``?``: :func:`catalog_text`; pass
    ``CHARACTER_SET_NAME``). A NOT NULL column
    without a default gives older rows the type's implicit default (``0``, ``''``, the first ENUM label). Zero dates
    give None, as the ``null`` zero-date policy does."""
    extra = str(info.get("EXTRA") or "").lower()
    if info.get("GENERATION_EXPRESSION") or "virtual generated" in extra or "stored generated" in extra:
        return None, True
    if "auto_increment" in extra:
        return None, True
    default = info.get("COLUMN_DEFAULT")
    mariadb = bool(info.get("mariadb"))
    if default is None or (mariadb and default == "NULL"):
        return (None, False) if column.nullable else _implicit_default(column)
    text = str(default)
    if mariadb:
        if text[:1] == "'":
            literal = unquote_literal(text)
        elif _NUMBER.match(text) or _BIT_LITERAL.match(text) or _HEX_LITERAL.match(text):
            literal = text
        else:
            return None, True  # an expression: current_timestamp(), uuid(), (1 + 1)
    else:
        if "default_generated" in extra or _NOW.match(text):
            return None, True
        literal = text
    charset = str(info.get("CHARACTER_SET_NAME") or "").lower()
    if "?" in literal and charset in _SUPPLEMENTARY_CHARSETS:
        return None, True  # the catalog shows emoji and other characters beyond the BMP as '?'
    try:
        return _literal_backfill(column, literal), False
    except (ValueError, ArithmeticError, TypeError):
        return None, True  # a default we cannot read: never guess


def _literal_bytes(literal: str) -> bytes:
    hex_match = _HEX_LITERAL.match(literal)
    if hex_match:
        return bytes.fromhex(hex_match.group(1) or hex_match.group(2) or "")
    return literal.encode("utf-8")


def _literal_backfill(column: Column, literal: str) -> str | None:
    kind = _kind(column)
    declared = parse_source_type(column.source_type)
    if kind in ("integer", "year", "bit"):
        bits = _BIT_LITERAL.match(literal)
        if bits:
            return str(int(bits.group(1) or "0", 2))
        if _HEX_LITERAL.match(literal):
            return str(int.from_bytes(_literal_bytes(literal), "big"))
        return str(int(decimal.Decimal(literal)))
    if kind == "decimal":
        number = decimal.Decimal(literal)
        if column.scale is not None:
            number = number.quantize(decimal.Decimal(1).scaleb(-column.scale))
        return format(number, "f")
    if kind == "float32":
        return float32_text(float(literal))
    if kind == "float64":
        return format_value(float(literal), "float")
    if kind == "set":
        order = _label_order(column)
        return ",".join(sorted((p for p in literal.split(",") if p), key=lambda label: order.get(label, len(order))))
    if kind == "text":
        return literal.rstrip(" ") if declared.base == "char" else literal
    if kind == "json_text":
        return literal
    if kind == "json_mysql":
        return _json_dump(json.loads(literal))
    if kind in ("binary", "binary_fixed"):
        packed = _literal_bytes(literal)
        return packed.ljust(_fixed_length(column, 1), b"\0").hex() if kind == "binary_fixed" else packed.hex()
    if kind == "date":
        try:
            return dt.date.fromisoformat(literal).isoformat()
        except ValueError:
            if re.match(r"^\d{4}-\d{2}-\d{2}$", literal):
                return None  # a zero or invalid date
            raise
    if kind in ("datetime", "timestamp"):
        try:
            value = dt.datetime.fromisoformat(literal)
        except ValueError:
            if re.match(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?$", literal):
                return None
            raise
        return _datetime_text(value) + ("Z" if kind == "timestamp" else "")  # read in a UTC session
    if kind == "time":
        match = _TIME_LITERAL.match(literal)
        if not match:
            raise ValueError(f"not a TIME literal: {literal!r}")
        sign, hours, minutes, seconds, fraction = match.groups()
        micros = ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1_000_000
        micros += int((fraction or "").ljust(6, "0"))
        return time_text(-micros if sign else micros)
    if kind == "uuid":
        return str(uuid.UUID(literal))
    if kind == "inet6":
        return inet6_text(ipaddress.IPv6Address(literal).packed)
    if kind == "inet4":
        return str(ipaddress.IPv4Address(literal))
    raise ValueError(f"no literal default for {column.source_type}")


def _implicit_default(column: Column) -> tuple[str | None, bool]:
    """What MySQL and MariaDB give existing rows for ``ADD COLUMN c <type> NOT NULL`` without a default."""
    kind = _kind(column)
    declared = parse_source_type(column.source_type)
    if declared.base == "enum":
        return (declared.labels[0] if declared.labels else ""), False
    implicit: dict[str, str | None] = {
        "integer": "0", "year": "0", "bit": "0", "float32": "0.0", "float64": "0.0", "text": "", "set": "",
        "json_text": "", "binary": "", "time": "00:00:00", "date": None, "datetime": None, "timestamp": None,
        "uuid": "00000000-0000-0000-0000-000000000000", "inet6": "::", "inet4": "0.0.0.0",
    }
    if kind == "decimal":
        return _literal_backfill(column, "0"), False
    if kind == "binary_fixed":
        return "00" * _fixed_length(column, 1), False
    if kind in implicit:
        return implicit[kind], False
    return None, True  # MySQL JSON, geometry, unknown types


# --- columns from the catalog and from the binlog -----------------------------------------------------------------

_BLOB_BY_LENGTH_SIZE = {1: "tinyblob", 2: "blob", 3: "mediumblob", 4: "longblob"}
_TEXT_BY_LENGTH_SIZE = {1: "tinytext", 2: "text", 3: "mediumtext", 4: "longtext"}
_LENGTH_SIZE = {**{v: k for k, v in _BLOB_BY_LENGTH_SIZE.items()}, **{v: k for k, v in _TEXT_BY_LENGTH_SIZE.items()}}
_INT_NAMES = {FIELD_TYPE.TINY: "tinyint", FIELD_TYPE.SHORT: "smallint", FIELD_TYPE.INT24: "mediumint",
              FIELD_TYPE.LONG: "int", FIELD_TYPE.LONGLONG: "bigint"}


def column_from_catalog(info: Mapping[str, Any]) -> Column:
    """A column from one ``information_schema.COLUMNS`` row (keys as the server names them: ``COLUMN_NAME``,
    ``DATA_TYPE``, ``COLUMN_TYPE``, ``IS_NULLABLE``, ``COLUMN_DEFAULT``, ``EXTRA``, ``GENERATION_EXPRESSION``,
    ``CHARACTER_SET_NAME``; read in a UTC session, which is how TIMESTAMP defaults are shown), plus
    ``primary_key`` (bool), ``is_json`` (MariaDB: a ``json_valid`` CHECK on it) and ``mariadb`` (how
    ``COLUMN_DEFAULT`` is written). ``source_type`` is ``COLUMN_TYPE`` verbatim."""
    logical, precision, scale = logical_of(info["DATA_TYPE"], info["COLUMN_TYPE"], is_json=bool(info.get("is_json")))
    column = Column(
        name=info["COLUMN_NAME"], source_type=info["COLUMN_TYPE"], logical_type=logical,
        nullable=str(info.get("IS_NULLABLE", "YES")).upper() == "YES", primary_key=bool(info.get("primary_key")),
        precision=precision, scale=scale,
    )
    backfill, unknown = backfill_of(column, info)
    return dataclasses.replace(column, backfill=backfill, backfill_unknown=unknown)


def binlog_source_type(col: Any) -> str:
    """The ``COLUMN_TYPE`` a table map column implies (``decimal(12,2)``, ``varchar(20)``, ``int unsigned``,
    ``enum('a','b')``), as close as the binlog tells: no display widths, TINYINT(1) is ``tinyint``, a MariaDB JSON is
    ``longtext``, UUID/INET6 are ``binary(16)``, INET4 ``binary(4)``."""
    t = col.type
    unsigned = " unsigned" if getattr(col, "unsigned", False) else ""
    if t in _INT_NAMES:
        return _INT_NAMES[t] + unsigned
    if t == FIELD_TYPE.NEWDECIMAL:
        return f"decimal({col.precision},{col.decimals}){unsigned}"
    if t == FIELD_TYPE.FLOAT:
        return "float" + unsigned
    if t == FIELD_TYPE.DOUBLE:
        return "double" + unsigned
    if t == FIELD_TYPE.YEAR:
        return "year"
    if t == FIELD_TYPE.BIT:
        return f"bit({col.bits})"
    if t in (FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE):
        return "date"
    for code, old_code, name in ((FIELD_TYPE.TIME2, FIELD_TYPE.TIME, "time"),
                                 (FIELD_TYPE.DATETIME2, FIELD_TYPE.DATETIME, "datetime"),
                                 (FIELD_TYPE.TIMESTAMP2, FIELD_TYPE.TIMESTAMP, "timestamp")):
        if t in (code, old_code):
            fsp = getattr(col, "fsp", 0) or 0
            return f"{name}({fsp})" if fsp else name
    if t in (FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING):
        fixed = t == FIELD_TYPE.STRING
        if _is_binary(col):
            return f"{'binary' if fixed else 'varbinary'}({col.max_length})"
        per_char = _MAX_BYTES_PER_CHAR.get(_binlog_charset(col) or "utf8mb4", 1)
        return f"{'char' if fixed else 'varchar'}({col.max_length // per_char})"
    if t in (FIELD_TYPE.BLOB, FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB):
        names = _BLOB_BY_LENGTH_SIZE if _is_binary(col) else _TEXT_BY_LENGTH_SIZE
        return names.get(getattr(col, "length_size", 2), "longblob")
    if t == FIELD_TYPE.ENUM:
        return "enum(" + ",".join(quote_label(v) for v in (col.enum_values or [""])[1:]) + ")"
    if t == FIELD_TYPE.SET:
        return "set(" + ",".join(quote_label(v) for v in (col.set_values or [])) + ")"
    if t == FIELD_TYPE.JSON:
        return "json"
    if t == FIELD_TYPE.GEOMETRY:
        return "geometry"
    return f"unknown_type_{t}"


def column_from_binlog(col: Any) -> Column:
    """A column from a pymysqlreplication ``Column`` of a TableMapEvent with full metadata: what the catalog would
    give where the binlog tells (types, lengths, precision, labels, key), else the closest faithful column
    (nullability is not in the column: ``nullable=True``; see :func:`binlog_source_type`)."""
    source_type = binlog_source_type(col)
    declared = parse_source_type(source_type)
    logical, precision, scale = logical_of(declared.base, source_type)
    return Column(name=col.name, source_type=source_type, logical_type=logical, nullable=True,
                  primary_key=bool(getattr(col, "is_primary", False)), precision=precision, scale=scale)


def schema_from_binlog(database: str, table: str, columns: Iterable[Any]) -> TableSchema:
    """A table's schema from its TableMapEvent alone (when the catalog has moved on since the event)."""
    return TableSchema(database, table, tuple(column_from_binlog(c) for c in columns), MYSQL_DIALECT)


# Table map type codes each declared base type may arrive as.
_CODES: dict[str, frozenset[int]] = {
    "tinyint": frozenset({FIELD_TYPE.TINY}), "bool": frozenset({FIELD_TYPE.TINY}),
    "boolean": frozenset({FIELD_TYPE.TINY}), "smallint": frozenset({FIELD_TYPE.SHORT}),
    "mediumint": frozenset({FIELD_TYPE.INT24}), "int": frozenset({FIELD_TYPE.LONG}),
    "integer": frozenset({FIELD_TYPE.LONG}), "bigint": frozenset({FIELD_TYPE.LONGLONG}),
    **{name: frozenset({FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.DECIMAL}) for name in _DECIMALS},
    "float": frozenset({FIELD_TYPE.FLOAT}), "double": frozenset({FIELD_TYPE.DOUBLE}),
    "real": frozenset({FIELD_TYPE.DOUBLE}), "bit": frozenset({FIELD_TYPE.BIT}), "year": frozenset({FIELD_TYPE.YEAR}),
    "date": frozenset({FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE}), "time": frozenset({FIELD_TYPE.TIME2, FIELD_TYPE.TIME}),
    "datetime": frozenset({FIELD_TYPE.DATETIME2, FIELD_TYPE.DATETIME}),
    "timestamp": frozenset({FIELD_TYPE.TIMESTAMP2, FIELD_TYPE.TIMESTAMP}),
    "char": frozenset({FIELD_TYPE.STRING}), "binary": frozenset({FIELD_TYPE.STRING}),
    "uuid": frozenset({FIELD_TYPE.STRING}), "inet6": frozenset({FIELD_TYPE.STRING}),
    "inet4": frozenset({FIELD_TYPE.STRING}),
    "varchar": frozenset({FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING}),
    "varbinary": frozenset({FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING}),
    **{name: frozenset({FIELD_TYPE.BLOB, FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB})
       for name in _LENGTH_SIZE},
    "enum": frozenset({FIELD_TYPE.ENUM}), "set": frozenset({FIELD_TYPE.SET}), "json": frozenset({FIELD_TYPE.JSON}),
    **{name: frozenset({FIELD_TYPE.GEOMETRY}) for name in _GEOMETRIES},
}
_FIXED_BINARY_SIZES = {"uuid": 16, "inet6": 16, "inet4": 4}
_NUMERIC_BASES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "float", "double",
                            "real", *_DECIMALS})


def _labels_match(catalog: Sequence[str], binlog: Sequence[str] | None, charset: str | None) -> bool:
    """ENUM/SET labels agree; a table map label is ``''`` where pymysqlreplication failed to decode it as UTF-8."""
    if binlog is None or len(catalog) != len(binlog):
        return False
    for want, got in zip(catalog, binlog):
        if want == got or want == catalog_text(got):
            continue
        if got != "" or charset not in EXACT_CODECS:
            return False
        try:
            want.encode(EXACT_CODECS[charset]).decode("utf-8")
        except (UnicodeError, LookupError):
            continue  # undecodable as UTF-8: the library shows ''
        return False
    return True


def _column_matches(known: Column, col: Any) -> bool:
    declared = parse_source_type(known.source_type)
    base = declared.base
    codes = _CODES.get(base)
    if codes is None:
        return True  # a type we do not know: only its name is compared
    if col.type not in codes:
        return False
    if base in _NUMERIC_BASES and bool(getattr(col, "unsigned", False)) != declared.unsigned:
        return False
    if base in _DECIMALS:
        return (col.precision, col.decimals) == (known.precision, known.scale)
    if base == "bit":
        return int(col.bits) == (declared.args[:1] or (1,))[0]
    if base in ("time", "datetime", "timestamp"):
        return (getattr(col, "fsp", 0) or 0) == (declared.args[:1] or (0,))[0]
    if base in ("char", "varchar"):
        per_char = _MAX_BYTES_PER_CHAR.get(_binlog_charset(col) or "")
        length = declared.args[0] if declared.args else 1
        return not _is_binary(col) and (per_char is None or col.max_length == length * per_char)
    if base in ("binary", "varbinary") or base in _FIXED_BINARY_SIZES:
        length = _FIXED_BINARY_SIZES.get(base) or (declared.args[0] if declared.args else 1)
        return _is_binary(col) and col.max_length == length
    if base in _LENGTH_SIZE:
        is_blob = base.endswith("blob")
        return _is_binary(col) == is_blob and getattr(col, "length_size", 0) == _LENGTH_SIZE[base]
    if base == "enum":
        return _labels_match(declared.labels, (col.enum_values or [""])[1:], _binlog_charset(col))
    if base == "set":
        return _labels_match(declared.labels, col.set_values, _binlog_charset(col))
    return True


def table_map_matches(schema: TableSchema, columns: Sequence[Any]) -> bool:
    """Whether a TableMapEvent's columns agree with the catalog's schema: the same names in the same order, type
    codes that the declared types are written as (a MariaDB JSON is a LONGTEXT BLOB, TINYINT(1) is TINY, UUID a
    BINARY(16)), signedness, decimal precision and scale, fractional seconds, lengths, ENUM/SET labels, and the
    primary key when the table map names one."""
    if len(columns) != len(schema.columns):
        return False
    primary = {c.name for c in columns if getattr(c, "is_primary", False)}
    if primary and primary != set(schema.primary_key):
        return False
    return all(known.name == col.name and _column_matches(known, col) for known, col in zip(schema.columns, columns))
