"""Rules compiled from ``transformations.yaml`` entries: their shape checked, their Jinja compiled once, their
version hashed.

A rule (the seed's shape, :class:`~airflow_provider_cdc.config.models.RuleConfig`) may add these keys:

``parameters``   a dict: ``type`` of an aggregate (sum | avg | min | max | count); ``salt``, the *name* of the secret
                 ``hash()`` salts with (the caller resolves it from an Airflow Variable or Connection)
``target_type``  the logical type of the target (``integer``, ``decimal(12,2)``, ``text``...): results convert to it
                 exactly, and a row whose result does not is a row failure
``rename_from``  on a ``map`` without ``expression``: rename that field to ``target_field`` (values and type kept)
``drop_fields``  fields removed after the rule ran

A ``join`` rule (enrichment from a reference table, :mod:`.join`) has no expression; its ``parameters`` are
``connector`` (a connectors.yaml id; omitted: the source's own database), ``table``, ``on`` (batch field ->
reference column), ``fields`` (reference column -> target field), ``ttl_seconds`` (default 300; 0: per batch only)
and ``missing`` (``null``, the default, or ``quarantine``).

``tables`` scopes a rule: an entry matches a table by its qualified name (``public.users``) or by its bare name
(``users`` matches ``users`` in any schema or database). Problems found without a table (bad shape, Jinja that does
not compile, unknown functions, sandbox refusals, a ``hash()`` without a salt) are :attr:`CompiledRule.problems`;
those that need the table's columns come from :meth:`CompiledRule.check`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from pydantic import ValidationError

from airflow_provider_cdc.config.models import RuleConfig
from airflow_provider_cdc.tables import RESERVED_PREFIX, Column
from airflow_provider_cdc.transform.errors import RuleConfigError, problem
from airflow_provider_cdc.transform.joinspec import JoinSpec
from airflow_provider_cdc.transform.sandbox import ROW_VAR, Program, Sandbox, describe_syntax_error
from airflow_provider_cdc.transform.types import OutType, parse_type

RULE_TYPES = ("map", "filter", "aggregate", "join")
AGGREGATES = ("sum", "avg", "min", "max", "count")
EXTRA_KEYS = frozenset({"parameters", "target_type", "rename_from", "drop_fields", "policy", "description"})
"""Keys a rule may have beyond :class:`RuleConfig`'s own; any other is reported (a typo must not pass silently)."""
FILTER_TARGET = "*"
"""The target a filter's sources map to in :attr:`TableResult.columns`: it decides which rows exist, not a field."""
_MASKING = frozenset({"mask", "hash"})
_UNKNOWN_TYPE = "?"  # a column whose type only the data decides (checks skip type rules for it)


@dataclasses.dataclass(frozen=True)
class ColumnLineage:
    """One source field -> target field edge of a rule, typed as OpenLineage's column-lineage facet types it."""

    rule_id: str
    rule_type: str
    source: str
    target: str
    type: str  # DIRECT | INDIRECT
    subtype: str  # IDENTITY | TRANSFORMATION | AGGREGATION | FILTER | JOIN
    masking: bool = False
    dataset: str | None = None  # the source field's dataset when it is not the batch's table (a join's reference)


@dataclasses.dataclass(frozen=True)
class CompiledRule:
    """One rule, ready to run. Build with :meth:`compile`; ``problems`` lists what stops it from running."""

    rule_id: str
    rule_type: str
    config: RuleConfig
    tables: tuple[str, ...] | None
    source_fields: tuple[str, ...]
    target_field: str | None
    target_type: OutType | None
    rename_from: str | None
    drop_fields: tuple[str, ...]
    parameters: Mapping[str, Any]
    aggregate: str | None
    program: Program | None
    issues: tuple[tuple[str, str | None, str | None], ...]  # (reason, key, field) found without a table
    version: str
    join: JoinSpec | None = None

    @property
    def problems(self) -> list[str]:
        """What stops this rule from running, found without a table."""
        return self.problems_on(None)

    def problems_on(self, table: str | None) -> list[str]:
        """:attr:`problems`, each naming ``table`` too."""
        return [problem(self.rule_id, reason, key=key, field=field, table=table) for reason, key, field in self.issues]

    @property
    def salt_name(self) -> str | None:
        salt = self.parameters.get("salt")
        return salt if isinstance(salt, str) and salt else None

    @property
    def uses_hash(self) -> bool:
        return self.program is not None and self.program.analysis.uses("hash")

    @property
    def masking(self) -> bool:
        return self.program is not None and any(self.program.analysis.uses(f) for f in _MASKING)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def applies_to(self, table: str) -> bool:
        """Whether ``tables`` scopes this rule to ``table`` (``schema.name``); no ``tables`` means every table."""
        if self.tables is None:
            return True
        _, _, name = table.partition(".")
        return any(entry == table or entry == name for entry in self.tables)

    # --- what the rule reads ---

    def referenced(self, columns: Mapping[str, Column]) -> list[str]:
        """Fields the expression reads, in a stable order (``row`` reads them all)."""
        if self.program is None:
            return []
        names = self.program.analysis.names
        if ROW_VAR in names and ROW_VAR not in columns:
            return list(columns)
        return sorted(n for n in names if n in columns)

    def inputs(self, columns: Mapping[str, Column]) -> list[str]:
        """The fields a row's result depends on: ``source_fields``, then what the expression reads."""
        if self.rename_from:
            return [self.rename_from]
        if self.join is not None:
            return list(self.join.on)
        out = [f for f in self.source_fields]
        out += [f for f in self.referenced(columns) if f not in out]
        return out

    def missing(self, columns: Mapping[str, Column], known_globals: frozenset[str]) -> list[str]:
        """Names the rule needs that ``columns`` lack (and that are no function either)."""
        wanted = list(self.source_fields) + (list(self.join.on) if self.join is not None else [])
        if self.program is not None:
            wanted += sorted(n for n in self.program.analysis.names if n != ROW_VAR and n not in known_globals)
        return list(dict.fromkeys(n for n in wanted if n not in columns))

    def lineage(self, columns: Mapping[str, Column]) -> list[ColumnLineage]:
        inputs = self.inputs(columns)
        if self.rule_type == "map" and self.rename_from:
            assert self.target_field is not None
            return [ColumnLineage(self.rule_id, "map", self.rename_from, self.target_field, "DIRECT", "IDENTITY")]
        if self.rule_type == "filter":
            return [ColumnLineage(self.rule_id, "filter", f, FILTER_TARGET, "INDIRECT", "FILTER") for f in inputs]
        if self.join is not None:
            return self.join.lineage(self.rule_id)
        assert self.target_field is not None
        if self.rule_type == "aggregate":
            return [ColumnLineage(self.rule_id, "aggregate", f, self.target_field, "DIRECT", "AGGREGATION")
                    for f in inputs]
        node = self.program.analysis.node if self.program is not None else None
        identity = isinstance(node, nodes.Name) and len(inputs) == 1
        return [ColumnLineage(self.rule_id, "map", f, self.target_field, "DIRECT",
                              "IDENTITY" if identity else "TRANSFORMATION", self.masking) for f in inputs]

    # --- checks against a table ---

    def check(self, columns: Mapping[str, Column], key: list[str], table: str,
              known_globals: frozenset[str]) -> list[str]:
        """Problems of this rule on a table whose columns (at this point of the rule chain) are ``columns``."""
        out: list[str] = []
        listing = ", ".join(columns) or "none"

        def add(reason: str, key_name: str, field: str | None) -> None:
            out.append(problem(self.rule_id, reason, key=key_name, field=field, table=table))

        for i, name in enumerate(self.source_fields):
            if name not in columns:
                add(f"unknown source field (columns of {table}: {listing})", f"source_fields[{i}]", name)
        if self.program is not None:
            analysis = self.program.analysis
            for name in sorted(analysis.names):
                if name in columns or name in known_globals or name == ROW_VAR or name in self.source_fields:
                    continue
                add(f"unknown field (columns of {table}: {listing})", "expression", name)
            for name in sorted(analysis.called & set(columns)):
                add(f"field {name!r} shadows the function of that name in this expression; rename one", "expression",
                    name)
        if self.rename_from:
            if self.rename_from not in columns:
                add(f"no such column to rename (columns of {table}: {listing})", "rename_from", self.rename_from)
            if self.target_field in columns and self.target_field != self.rename_from:
                add("a column of that name exists already", "target_field", self.target_field)
        elif self.target_field is not None and self.target_field in key:
            add("is a key column: a rule may rename a key but not compute one (deletes could not find their rows)",
                "target_field", self.target_field)
        for i, name in enumerate(self.drop_fields):
            if name not in columns:
                add(f"no such column to drop (columns of {table}: {listing})", f"drop_fields[{i}]", name)
            elif name in key:
                add("is a key column: the sink merges by key, so it cannot be dropped", f"drop_fields[{i}]", name)
        if self.join is not None:
            for name in self.join.on:
                if name not in columns:
                    add(f"unknown batch field (columns of {table}: {listing})", f"parameters.on.{name}", name)
            for column_name, target in self.join.fields.items():
                if target in key:
                    add("is a key column: a join may not overwrite a key (deletes could not find their rows)",
                        f"parameters.fields.{column_name}", target)
        if self.aggregate is not None:
            reason = aggregate_type_problem(self.aggregate, [columns[f] for f in self.source_fields if f in columns])
            if reason:
                add(reason, "source_fields", None)
        return out

    def after(self, columns: Mapping[str, Column], out_type: OutType | None) -> dict[str, Column]:
        """``columns`` as this rule leaves them (for checking the next rule of the chain)."""
        result = dict(columns)
        if self.rename_from and self.target_field and self.rename_from in result:
            result = {(self.target_field if n == self.rename_from else n): (
                dataclasses.replace(c, name=self.target_field) if n == self.rename_from else c)
                for n, c in result.items()}
        elif self.target_field and self.rule_type in ("map", "aggregate"):
            result[self.target_field] = out_type.column(self.target_field) if out_type is not None else Column(
                self.target_field, _UNKNOWN_TYPE, "other")
        elif self.join is not None:  # the reference values' types are known only once rows were looked up
            for target in self.join.targets:
                result[target] = Column(target, _UNKNOWN_TYPE, "other")
        for name in self.drop_fields:
            result.pop(name, None)
        return result

    # --- building ---

    @classmethod
    def compile(cls, config: RuleConfig | Mapping[str, Any], sandbox: Sandbox) -> CompiledRule:
        """Compile one rule; never raises for a bad rule (its problems are listed instead), only for a mapping that
        is no rule config at all (:class:`RuleConfigError`, naming each key): config files and the REST API hand
        over validated :class:`RuleConfig` objects."""
        issues: list[tuple[str, str | None, str | None]] = []
        if not isinstance(config, RuleConfig):
            config = _validated(config)
        rule_id = config.rule_id
        extra = dict(config.model_extra or {})

        def add(reason: str, key: str | None = None, field: str | None = None) -> None:
            issues.append((reason, key, field))

        for name in sorted(set(extra) - EXTRA_KEYS):
            add(f"unknown key (known extra keys: {', '.join(sorted(EXTRA_KEYS))})", key=name)
        parameters = extra.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            add("must be a mapping of names to values", key="parameters")
            parameters = {}
        target_type = _target_type(extra.get("target_type"), add)
        rename_from = extra.get("rename_from")
        if rename_from is not None and not isinstance(rename_from, str):
            add("must be a field name", key="rename_from")
            rename_from = None
        drop_fields = extra.get("drop_fields") or []
        if not isinstance(drop_fields, list) or not all(isinstance(f, str) for f in drop_fields):
            add("must be a list of field names", key="drop_fields")
            drop_fields = []
        for i, name in enumerate(drop_fields):
            if name.startswith(RESERVED_PREFIX):
                add(f"fields starting with {RESERVED_PREFIX!r} are bookkeeping", key=f"drop_fields[{i}]", field=name)
        for i, name in enumerate(config.source_fields):
            if name.startswith(RESERVED_PREFIX):
                add(f"fields starting with {RESERVED_PREFIX!r} are bookkeeping", key=f"source_fields[{i}]",
                    field=name)
        target = config.target_field
        if target is not None and target.startswith(RESERVED_PREFIX):
            add(f"fields starting with {RESERVED_PREFIX!r} are bookkeeping", key="target_field", field=target)
        if target is not None and not target:
            add("must not be empty", key="target_field")

        aggregate = _check_shape(config, parameters, rename_from, add)
        join = JoinSpec.parse(parameters, add) if config.rule_type == "join" else None
        if join is not None:
            for target in join.targets:
                if target.startswith(RESERVED_PREFIX):
                    add(f"fields starting with {RESERVED_PREFIX!r} are bookkeeping", key="parameters.fields",
                        field=target)
        program = _compile_expression(config, sandbox, add)
        if program is not None:
            analysis = program.analysis
            for name in sorted(analysis.called - sandbox.known_globals - set(config.source_fields)):
                add(f"unknown function {name!r} (known: {', '.join(sorted(sandbox.functions.names()))})",
                    key="expression", field=None)
            if analysis.uses("hash") and not (isinstance(parameters.get("salt"), str) and parameters.get("salt")):
                add("hash() needs a salt: add parameters: {salt: <name of an Airflow Variable or Connection>} (the "
                    "salt itself never goes in the YAML)", key="parameters.salt")
        return cls(
            rule_id=rule_id,
            rule_type=config.rule_type,
            config=config,
            tables=tuple(config.tables) if config.tables is not None else None,
            source_fields=tuple(config.source_fields),
            target_field=target,
            target_type=target_type,
            rename_from=rename_from,
            drop_fields=tuple(drop_fields),
            parameters=dict(parameters),
            aggregate=aggregate,
            program=program,
            issues=tuple(issues),
            version=rule_version(config),
            join=join,
        )


def rule_version(config: RuleConfig) -> str:
    """SHA-256 of the rule's normalised config (keys sorted, nulls left out): equal configs, equal versions."""
    data = config.model_dump(mode="json", exclude_none=True)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def aggregate_type_problem(kind: str, columns: list[Column]) -> str | None:
    """Why an aggregate of ``kind`` cannot run over ``columns`` (None: it can)."""
    known = [c for c in columns if c.source_type != _UNKNOWN_TYPE]
    if kind == "count":
        return None
    kinds = {c.logical_type for c in known}
    if kind in ("sum", "avg"):
        bad = [c.name for c in known if c.logical_type not in ("integer", "decimal", "float")]
        if bad:
            return f"{kind} needs numbers; not numeric: {', '.join(bad)}"
    elif len(kinds) > 1 and not kinds <= {"integer", "decimal", "float"}:
        return f"{kind} compares values of one kind; these fields mix {', '.join(sorted(kinds))}"
    return None


def _target_type(value: Any, add: Any) -> OutType | None:
    if value is None:
        return None
    try:
        return parse_type(value)
    except ValueError as exc:
        add(str(exc), key="target_type")
        return None


def _check_shape(config: RuleConfig, parameters: Mapping[str, Any], rename_from: str | None, add: Any) -> str | None:
    """The keys each rule type needs; returns the aggregate kind of an aggregate."""
    kind = config.rule_type
    if config.expression is not None and not config.expression.strip():
        add("is empty; write a Jinja expression such as {{ price + tax }}", key="expression")
    if kind == "map":
        if not config.target_field:
            add("a map needs target_field", key="target_field")
        if (config.expression is None) == (rename_from is None):
            add("a map needs exactly one of expression and rename_from", key="expression")
    elif kind == "filter":
        if config.expression is None:
            add("a filter needs an expression", key="expression")
        if config.target_field is not None:
            add("a filter writes no field; remove target_field", key="target_field")
        if rename_from is not None:
            add("only a map renames", key="rename_from")
    elif kind == "aggregate":
        if not config.target_field:
            add("an aggregate needs target_field", key="target_field")
        if not config.source_fields:
            add("an aggregate needs source_fields", key="source_fields")
        if config.expression is not None:
            add("an aggregate computes parameters.type over source_fields; remove expression", key="expression")
        if rename_from is not None:
            add("only a map renames", key="rename_from")
        aggregate = parameters.get("type")
        if aggregate not in AGGREGATES:
            add(f"must be one of {', '.join(AGGREGATES)} (got {aggregate!r})", key="parameters.type")
            return None
        return str(aggregate)
    elif kind == "join":
        if config.expression is not None:
            add("a join looks values up; remove expression", key="expression")
        if config.target_field is not None:
            add("a join writes parameters.fields (reference column -> target field); remove target_field",
                key="target_field")
        if rename_from is not None:
            add("only a map renames", key="rename_from")
    return None


def _compile_expression(config: RuleConfig, sandbox: Sandbox, add: Any) -> Program | None:
    if config.expression is None or config.rule_type not in RULE_TYPES:
        return None
    try:
        analysis = sandbox.analyse(config.expression)
    except TemplateError as exc:
        add(describe_syntax_error(exc), key="expression")
        return None
    for reason in analysis.problems:
        add(reason, key="expression")
    if analysis.problems:
        return None
    try:
        return sandbox.program(config.expression)
    except (TemplateError, ValueError) as exc:
        add(f"does not compile: {exc}", key="expression")
        return None


def _validated(config: Mapping[str, Any]) -> RuleConfig:
    """``config`` as a :class:`RuleConfig`, or a :class:`RuleConfigError` naming the rule and each bad key."""
    try:
        return RuleConfig.model_validate(dict(config))
    except ValidationError as exc:
        rule_id = config.get("rule_id")
        name = rule_id if isinstance(rule_id, str) and rule_id else "?"
        lines = [problem(name, error["msg"], key=".".join(str(part) for part in error["loc"]) or None)
                 for error in exc.errors(include_url=False)]
        raise RuleConfigError("; ".join(lines), rule_id=name) from None
