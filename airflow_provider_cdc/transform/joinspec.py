"""A ``join`` rule's parameters, checked: which reference table, matched on what, giving which target fields.

Parsed without any table or database (so ``config check`` reports a bad join offline); :mod:`.join` runs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_cdc.transform.rules import ColumnLineage

MISSING_POLICIES = ("null", "quarantine")
DEFAULT_TTL_SECONDS = 300.0
SOURCE_DATASET = "source"
"""How lineage names the source's own database (a join without ``connector``)."""

_KEYS = frozenset({"connector", "table", "on", "fields", "ttl_seconds", "missing"})


@dataclasses.dataclass(frozen=True)
class JoinSpec:
    """``on``: batch field -> reference column (in order: the key's columns); ``fields``: reference column ->
    target field."""

    connector: str | None
    table: str
    on: dict[str, str]
    fields: dict[str, str]
    ttl_seconds: float
    missing: str

    @property
    def key_columns(self) -> list[str]:
        """The reference table's key columns, in ``on`` order (the order of every key tuple)."""
        return list(self.on.values())

    @property
    def targets(self) -> list[str]:
        return list(self.fields.values())

    @property
    def dataset(self) -> str:
        """The reference table as lineage names it: ``connector:table`` (``source:table`` for the source's own)."""
        return f"{self.connector or SOURCE_DATASET}:{self.table}"

    def lineage(self, rule_id: str) -> list[ColumnLineage]:
        """Each target comes from its reference column (DIRECT) and depends on the batch's key fields (INDIRECT:
        they pick the reference row)."""
        from airflow_provider_cdc.transform.rules import ColumnLineage

        out: list[ColumnLineage] = []
        for column, target in self.fields.items():
            out.append(ColumnLineage(rule_id, "join", column, target, "DIRECT", "IDENTITY", dataset=self.dataset))
            out += [ColumnLineage(rule_id, "join", field, target, "INDIRECT", "JOIN") for field in self.on]
        return out

    @classmethod
    def parse(cls, parameters: Mapping[str, Any], add: Callable[..., None]) -> JoinSpec | None:
        """The spec of ``parameters``, each problem reported through ``add(reason, key=..., field=...)``; None
        when the join cannot run."""
        ok = True
        if True in parameters and "on" not in parameters:  # YAML 1.1 (PyYAML) reads the key ``on`` as true
            parameters = {("on" if k is True else k): v for k, v in parameters.items()}
        for name in sorted(set(map(str, parameters)) - _KEYS):
            add(f"unknown join parameter (known: {', '.join(sorted(_KEYS))})", key=f"parameters.{name}")
        connector = parameters.get("connector")
        if connector is not None and (not isinstance(connector, str) or not connector):
            add("must be the id of a connector of connectors.yaml (omit it for the source's own database)",
                key="parameters.connector")
            ok = False
        table = parameters.get("table")
        if not isinstance(table, str) or not table.strip():
            add("a join needs the reference table (schema.table; MongoDB: database.collection)",
                key="parameters.table")
            ok = False
        on = _pairs(parameters.get("on"), "parameters.on", "a join needs on: {batch field: reference column}", add)
        fields = _pairs(parameters.get("fields"), "parameters.fields",
                        "a join needs fields: {reference column: target field}", add)
        if on is None or fields is None:
            ok = False
        elif len(set(fields.values())) != len(fields):
            add("two reference columns write the same target field", key="parameters.fields")
            ok = False
        ttl = parameters.get("ttl_seconds", DEFAULT_TTL_SECONDS)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0:
            add(f"must be a number of seconds >= 0 (got {ttl!r}); 0 caches per batch only",
                key="parameters.ttl_seconds")
            ok = False
        missing = parameters.get("missing", "null")
        missing = "null" if missing is None else missing  # YAML's unquoted null
        if missing not in MISSING_POLICIES:
            add(f"must be one of {', '.join(MISSING_POLICIES)} (got {missing!r})", key="parameters.missing")
            ok = False
        if not ok:
            return None
        assert isinstance(table, str) and on is not None and fields is not None
        return cls(connector, table.strip(), on, fields, float(ttl), str(missing))


def _pairs(value: Any, key: str, needed: str, add: Callable[..., None]) -> dict[str, str] | None:
    if value is None:
        add(needed, key=key)
        return None
    if not isinstance(value, Mapping) or not value:
        add(f"must be a non-empty mapping of names to names ({needed})", key=key)
        return None
    bad = [k for k, v in value.items() if not isinstance(k, str) or not k or not isinstance(v, str) or not v]
    if bad:
        add("names must be non-empty strings", key=key, field=str(bad[0]))
        return None
    return dict(value)
