"""Running a ``join`` rule: enrichment of a batch's rows from a reference table, through a lookup callable.

The engine stays database-free: it is given ``lookup(connector_id | None, table, key_columns, keys)`` (the
transform stage builds one from the connectors' reference readers) and asks it for rows by key, at most **once per
batch and rule**, for the distinct keys of the rule's rows (c/u/r rows, after the earlier rules) that the
:class:`LookupCache` does not hold. Keys go out as the value contract's Python values (parsed from the batch's
portable text); the reader answers with its rows keyed by its own key values, and both sides are matched by their
canonical text (:func:`~.types.canonical_text`), so an integer key of the batch finds a decimal or text key of the
reference (``5`` = ``5.00`` = ``"5"``).

- A row whose key has a NULL gets NULL targets (no lookup). A row without a match gets NULL targets, or, under
  ``missing: quarantine``, is a :class:`~.state.RowFailure`.
- Targets are typed by the reference values (unified over the batch, remembered per rule for batches that give no
  value), like a map's inferred type; a value that does not convert fails its row.
- A key field the source did not resend (``_cdc_unchanged``) leaves the targets unchanged too (the sink keeps them).
- Deletes keep their keys and get NULL targets; ``t`` rows pass through.
- The cache is per :class:`~.engine.RuleSet` (so per process), keyed by rule id and key, misses included; an entry
  lives ``ttl_seconds`` (0: this batch only). A replay within the TTL sees the same reference values; after it, the
  current ones (a reference table is not captured, so its history is not known).
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from airflow_provider_cdc.errors import is_terminal
from airflow_provider_cdc.transform.errors import JoinLookupError, RuleConfigError, problem
from airflow_provider_cdc.transform.joinspec import JoinSpec
from airflow_provider_cdc.transform.rowpath import TEXT_KINDS
from airflow_provider_cdc.transform.rules import CompiledRule
from airflow_provider_cdc.transform.state import TableState, scatter
from airflow_provider_cdc.transform.types import ConversionError, OutType, canonical_text, to_text, type_of_value, unify
from airflow_provider_cdc.values import parse_value

log = logging.getLogger(__name__)

Key = tuple[Any, ...]
Lookup = Callable[[str | None, str, list[str], list[Key]], Mapping[Key, Mapping[str, Any]]]
"""``(connector id | None, table, key columns, keys) -> {key: row}``: rows as column -> typed Python value."""
Clock = Callable[[], float]

MAX_CACHED_KEYS = 200_000
"""Per rule: beyond this the expired entries go, then the oldest (a reference table far larger than a batch)."""

_Canon = tuple[str, ...]


class LookupCache:
    """Looked-up rows (and misses) per rule and key, each until its expiry on ``clock`` (seconds)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._entries: dict[str, dict[_Canon, tuple[float, Mapping[str, Any] | None]]] = {}

    def get(self, rule_id: str, key: _Canon, now: float) -> tuple[Mapping[str, Any] | None] | None:
        """``(row or None for a cached miss,)``, or None when ``key`` is not cached (or expired)."""
        entry = self._entries.get(rule_id, {}).get(key)
        if entry is None or entry[0] <= now:
            return None
        return (entry[1],)

    def put(self, rule_id: str, key: _Canon, row: Mapping[str, Any] | None, ttl: float, now: float) -> None:
        if ttl <= 0:
            return
        entries = self._entries.setdefault(rule_id, {})
        entries.pop(key, None)  # re-inserted: the dict's order is the age order
        entries[key] = (now + ttl, row)
        if len(entries) > MAX_CACHED_KEYS:
            for stale in [k for k, (expiry, _) in entries.items() if expiry <= now]:
                del entries[stale]
            while len(entries) > MAX_CACHED_KEYS:
                del entries[next(iter(entries))]

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())


def apply_join(rule: CompiledRule, state: TableState, lookup: Lookup | None, cache: LookupCache,
               inferred: dict[tuple[str, str], OutType]) -> None:
    """Run join ``rule`` over ``state`` (see the module docstring)."""
    spec = rule.join
    assert spec is not None
    for target in spec.targets:
        if target in state.key:
            raise RuleConfigError(problem(rule.rule_id, "is a key column: a join may not overwrite a key",
                                          key="parameters.fields", field=target, table=state.table_name),
                                  rule_id=rule.rule_id, table=state.table_name, field=target)
    rows = state.live()
    state.paths[rule.rule_id] = "lookup"
    absent = rule.missing(state.columns, frozenset())
    if absent:
        reason = (f"field {absent[0]!r} is not a column of {state.table_name} (columns: {', '.join(state.columns)}); "
                  "fix parameters.on or the source")
        for i in rows:
            state.fail(i, rule, absent[0], reason)
        state.paths[rule.rule_id] = "failed"
        for target in spec.targets:
            current = state.columns.get(target)
            state.set_column(target, current or OutType("text").column(target), pa.nulls(state.rows, pa.string()))
        return
    fields = list(spec.on)
    hits = state.unchanged_hits(rows, fields)
    evaluate = np.array([i for i in rows if int(i) not in hits], dtype=np.int64) if hits else rows
    canon = _row_keys(rule, state, evaluate, fields)
    matches = _matches(rule, spec, state.table_name, canon, lookup, cache, state)
    found: list[Mapping[str, Any] | None] = [None if c is None else matches.get(c[0]) for c in canon]
    if spec.missing == "quarantine":
        for k, (c, row) in enumerate(zip(canon, found)):
            if c is not None and row is None and not state.dead[evaluate[k]]:
                shown = ", ".join(f"{f}={v!r}" for f, v in zip(fields, c[1]))
                state.fail(int(evaluate[k]), rule, fields[0],
                           f"no row of {spec.table} matches {shown} (missing: quarantine); add the reference row, "
                           "then re-apply the quarantined row")
    for column, target in spec.fields.items():
        _write_target(rule, state, evaluate, found, column, target, inferred)
        if hits or state.unchanged is not None:
            state.mark_unchanged(list(hits), target, evaluate)
    state.counts["python_rows"] += len(evaluate)


def _row_keys(rule: CompiledRule, state: TableState, rows: np.ndarray,
              fields: Sequence[str]) -> list[tuple[_Canon, Key] | None]:
    """Per row: (canonical key, typed key), or None for a key with a NULL (or a row that failed here)."""
    texts = {f: state.texts(f, rows) for f in fields}
    kinds = {f: state.columns[f].logical_type for f in fields}
    out: list[tuple[_Canon, Key] | None] = []
    for k in range(len(rows)):
        parts = [texts[f][k] for f in fields]
        if any(p is None for p in parts):
            out.append(None)
            continue
        typed: list[Any] = []
        for f, text in zip(fields, parts):
            try:
                typed.append(text if kinds[f] in TEXT_KINDS else parse_value(text, kinds[f]))
            except (ValueError, TypeError, ArithmeticError) as exc:
                assert text is not None
                state.fail(int(rows[k]), rule, f, f"value {text[:80]!r} of field {f!r} is not a valid {kinds[f]}: "
                                                  f"{exc}")
                break
        if len(typed) != len(fields):
            out.append(None)
            continue
        out.append((_canonical(typed), tuple(typed)))
    return out


def _canonical(values: Sequence[Any]) -> _Canon:
    out = []
    for value in values:
        try:
            out.append(canonical_text(value))
        except ConversionError:
            out.append(str(value))
    return tuple(out)


def _matches(rule: CompiledRule, spec: JoinSpec, table: str, keys: list[tuple[_Canon, Key] | None],
             lookup: Lookup | None, cache: LookupCache, state: TableState) -> dict[_Canon, Mapping[str, Any] | None]:
    """Canonical key -> reference row (None: no match) for every key of ``keys``: the cache's, then ONE lookup."""
    typed: dict[_Canon, Key] = {}
    for entry in keys:
        if entry is not None:
            typed.setdefault(entry[0], entry[1])
    now = cache.clock()
    out: dict[_Canon, Mapping[str, Any] | None] = {}
    wanted: list[_Canon] = []
    for key in typed:
        cached = cache.get(rule.rule_id, key, now)
        if cached is None:
            wanted.append(key)
        else:
            out[key] = cached[0]
    state.counts["join_cache_hits"] = state.counts.get("join_cache_hits", 0) + len(out)
    state.counts["join_keys_looked_up"] = state.counts.get("join_keys_looked_up", 0) + len(wanted)
    if not wanted:
        return out
    if lookup is None:
        raise RuleConfigError(problem(rule.rule_id, "a join needs a lookup, but none was given to "
                                                    "RuleSet.from_config", table=table),
                              rule_id=rule.rule_id, table=table)
    where = f"connector {spec.connector!r}" if spec.connector else "the source's own database"
    try:
        answer = lookup(spec.connector, spec.table, spec.key_columns, [typed[k] for k in wanted])
    except Exception as exc:  # a reader's failure of any kind stops the batch; the position does not move
        raise JoinLookupError(
            problem(rule.rule_id, f"looking up {len(wanted)} keys in {spec.table} through {where} failed: "
                                  f"{type(exc).__name__}: {exc}", table=table) +
            ("" if is_terminal(exc) else "; the task retries, and nothing was loaded"),
            rule_id=rule.rule_id, table=table, terminal=is_terminal(exc)) from exc
    width = len(spec.key_columns)
    answered: dict[_Canon, Mapping[str, Any]] = {}
    for their_key, their_row in answer.items():
        their_key = their_key if isinstance(their_key, tuple) else (their_key,)
        if len(their_key) == width:
            answered.setdefault(_canonical(their_key), their_row)
    for key in wanted:
        row = answered.get(key)
        out[key] = row
        cache.put(rule.rule_id, key, row, spec.ttl_seconds, now)
    return out


def _write_target(rule: CompiledRule, state: TableState, rows: np.ndarray, found: list[Mapping[str, Any] | None],
                  column: str, target: str, inferred: dict[tuple[str, str], OutType]) -> None:
    values: list[Any] = []
    matched = seen = 0
    for row in found:
        if row is None:
            values.append(None)
            continue
        matched += 1
        if column in row:
            seen += 1
        values.append(row.get(column))
    if matched and not seen:
        log.warning("join rule %r: none of the %d reference rows found has column %r (columns: %s); %s is NULL",
                    rule.rule_id, matched, column, ", ".join(next(r for r in found if r is not None)), target)
    memory = (f"{rule.rule_id}\x1f{target}", state.table_name)
    types = [t for t in (type_of_value(v) for k, v in enumerate(values) if not state.dead[rows[k]]) if t is not None]
    if types:
        inferred[memory] = out_type = unify(types)
    elif memory in inferred:
        out_type = inferred[memory]
    else:
        current = state.columns.get(target)
        out_type = OutType.of_column(current) if current is not None and current.source_type != "?" else OutType("text")
    texts: list[str | None] = [None] * len(rows)
    for k, value in enumerate(values):
        if value is None or state.dead[rows[k]]:
            continue
        try:
            texts[k] = to_text(value, out_type)
        except ConversionError as exc:
            state.fail(int(rows[k]), rule, target, f"reference value of {column!r} does not convert to {out_type}: "
                                                   f"{exc}")
    state.set_column(target, out_type.column(target), scatter(pa.array(texts, pa.string()), rows, state.rows))


def contract_value(value: Any) -> Any:
    """A driver's Python value as the value contract's (what a reference reader returns): aware timestamps in UTC,
    ``bytes`` for binary, ``datetime.time`` for a time of day; values no logical type holds (intervals, ranges...)
    become their text."""
    if value is None or isinstance(value, (bool, int, float, decimal.Decimal, str, uuid.UUID, bytes)):
        return value
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc) if value.tzinfo is not None else value
    if isinstance(value, (dt.date, dt.time)):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dt.timedelta) and dt.timedelta(0) <= value < dt.timedelta(days=1):  # MySQL's TIME
        return (dt.datetime.min + value).time()
    if isinstance(value, Mapping):
        return {str(k): contract_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [contract_value(v) for v in value]
    return str(value)


def key_text(value: Any) -> str:
    """A key value as text a database casts back to the key column's type (``5``, ``2024-05-01T12:00:00Z``...)."""
    try:
        return canonical_text(value)
    except ConversionError:
        return str(value)


def chunks(keys: Sequence[Key], size: int = 1000) -> list[Sequence[Key]]:
    """``keys`` in statements of at most ``size`` keys (one lookup may need several round trips)."""
    return [keys[i:i + size] for i in range(0, len(keys), size)]
