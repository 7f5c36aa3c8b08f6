"""Typed shape of the four configuration files (connectors, cdc, transformations, quality).

Each list entry of a file is one model; ``CdcConfig`` holds them all once the loader has checked the references
between files. The models forbid unknown keys so that a typo (``batchsize:``) is reported instead of silently
ignored; transformation rules are the exception because later rule types add their own options.

``schema_changes:`` (per source, and once at the top of cdc.yaml as the default of every source) says what a source
does with a schema change: :meth:`SourceConfig.schema_policy` turns it into the
:class:`~airflow_provider_cdc.schema.SchemaPolicy` the sink's schema gate applies.

Connector-specific keys (a replication slot name, a server id, table format options) are not part of these models:
they sit under ``options:`` of a source or connector, and the loader validates them with that connector's own
model (:mod:`airflow_provider_cdc.connectors.registry`). Connector types, too, come from the registry, so a new
database needs no change here.

A connection string may hold a password, so ``repr()``/``str()`` of a model masks it with :func:`mask_url`, and
validation errors never include the input (``hide_input_in_errors``): a traceback in a DAG import error must not
leak a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from airflow_provider_cdc.connectors import registry
from airflow_provider_cdc.errors import UnknownConfigEntryError

if TYPE_CHECKING:
    from airflow_provider_cdc.schema.policy import SchemaPolicy

QualityPolicy = Literal["warn", "quarantine", "fail"]

QUALITY_POLICIES: tuple[str, ...] = ("warn", "quarantine", "fail")
SCHEDULE_PRESETS: frozenset[str] = frozenset(
    {"@continuous", "@once", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually",
     "@midnight"}
)
DEFAULT_TABLE_SCHEMA = "public"
"""The schema of an unqualified table name in cdc.yaml wherever a name is compared across sources and commands
(``users`` is ``public.users``): the sink-table check, ``table_compatibility``, ``resnapshot`` and ``schema``."""

# ---------------------------------------------------------------------------------------------------- secrets

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_SECRET_WORD = r"(?:password|passwd|pwd|secret|token|api_?key|access_?key)"
_SECRET_PARAM = re.compile(
    rf"(?i)(?<![A-Za-z0-9_])([A-Za-z0-9_.\-]*{_SECRET_WORD}[A-Za-z0-9_.\-]*\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&;#]+)"
)
_SECRET_KEY = re.compile(rf"(?i){_SECRET_WORD}")
MASK = "***"


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, for logs, reprs and error messages.

    Handles URLs (``scheme://user:pw@host/db`` -> ``scheme://user:***@host/db``), secret query parameters
    (``?password=...``, ``&token=...``) and key/value DSNs (``host=h password=pw``). When in doubt it masks
    too much rather than too little: a password with an unencoded ``@``, ``/`` or ``?`` is still hidden.
    """
    return _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, _mask_userinfo(url))


def _mask_userinfo(url: str) -> str:
    scheme_end = url.find("://")
    if scheme_end <= 0 or not _SCHEME.fullmatch(url[:scheme_end]):
        return url
    start = scheme_end + 3
    first_at = url.find("@", start)
    if first_at < 0:
        return url
    # The user info ends at the last '@' before the query: a password with an unencoded '@', '/' or '?' is masked
    # whole. The cost is over-masking an '@' in the query of a URL without user info, which is harmless here.
    query = min((i for i in (url.find("?", first_at), url.find("#", first_at)) if i >= 0), default=len(url))
    at = url.rfind("@", start, query)
    colon = url.find(":", start, at)
    if colon < 0:
        return url
    return f"{url[:colon + 1]}{MASK}{url[at:]}"


def _mask_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: MASK if _SECRET_KEY.search(str(k)) else v for k, v in options.items()}


# ---------------------------------------------------------------------------------------------- field types

_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+")
# A name, or schema.name (the first dot splits); inner spaces are part of a name, outer ones are typos.
_TABLE = re.compile(r"[^.\s](?:[^.]*[^.\s])?(\..*\S)?")
_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,\-?LW#]+")


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{value!r} may contain only letters, digits and underscores")
    return value


def _not_one_of(known: Iterable[str]) -> PydanticCustomError:
    """The error of a value outside ``known``, worded like a ``Literal`` mismatch (``should be 'a', 'b' or 'c'``)."""
    names = [repr(name) for name in known]
    expected = " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))
    return PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


def _check_connector_type(value: str) -> str:
    """A type the registry knows."""
    if value not in registry.CONNECTOR_MODULES:
        raise _not_one_of(registry.CONNECTOR_MODULES)
    return value


def _check_schema_mode(value: str) -> str:
    """One of the schema gate's modes. Imported when used: the schema package brings pyarrow and avro, which a
    config without ``schema_changes:`` never needs."""
    from airflow_provider_cdc.schema.policy import MODES

    if value not in MODES:
        raise _not_one_of(MODES)
    return value


def _check_level(value: str) -> str:
    """A compatibility level (any case: ``backward`` is ``BACKWARD``, as the registry spells it)."""
    from airflow_provider_cdc.schema.compatibility import LEVELS

    if value.upper() not in LEVELS:
        raise _not_one_of(LEVELS)
    return value.upper()


def _check_table(value: str) -> str:
    if not _TABLE.fullmatch(value) or value.endswith("."):
        raise ValueError(f"{value!r} is not a table name; write table or schema.table (no leading or trailing spaces)")
    return value


def _check_policy(rule: dict[str, Any]) -> dict[str, Any]:
    policy = rule.get("policy")
    if policy is not None and policy not in QUALITY_POLICIES:
        raise ValueError(f"policy {policy!r} is not one of {', '.join(QUALITY_POLICIES)}")
    return rule


Identifier = Annotated[str, AfterValidator(_check_identifier)]
ConnectorType = Annotated[str, AfterValidator(_check_connector_type)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
TableName = Annotated[str, AfterValidator(_check_table)]
QualityRule = Annotated[dict[str, Any], AfterValidator(_check_policy)]
SchemaMode = Annotated[str, AfterValidator(_check_schema_mode)]
CompatibilityLevel = Annotated[str, AfterValidator(_check_level)]


def qualify_table(name: str, default_schema: str) -> str:
    """``schema.table`` of a ``tables`` entry: an unqualified name gets ``default_schema`` (as
    :meth:`SourceConfig.qualified_tables` does; the first dot splits, so ``db.coll.2024`` stays whole)."""
    return name if "." in name else f"{default_schema}.{name}"


# --------------------------------------------------------------------------------------------------- models


class _ConfigModel(BaseModel):
    """Base of the config models: frozen, typo-proof, and never showing a password.

    ``_one_of`` names keys of which exactly one must be given. That check runs in a wrap validator so that it is
    reported together with the field errors of the same entry, not only after they are fixed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    _one_of: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _exactly_one(cls, data: Any, handler: Any) -> Any:
        extra: list[InitErrorDetails] = []
        if cls._one_of and isinstance(data, dict):
            given = [key for key in cls._one_of if data.get(key) is not None]
            if len(given) != 1:
                got = f"got {', '.join(given)}" if given else "got none"
                message = f"give exactly one of {', '.join(cls._one_of)} ({got})"
                extra.append(InitErrorDetails(type=PydanticCustomError("one_of", message), loc=(), input=None))
        try:
            model = handler(data)
        except ValidationError as exc:
            if not extra:
                raise
            line_errors: list[Any] = [*exc.errors(), *extra]  # ErrorDetails are valid InitErrorDetails
            raise ValidationError.from_exception_data(exc.title, line_errors, hide_input=True) from None
        if extra:
            raise ValidationError.from_exception_data(cls.__name__, extra, hide_input=True)
        return model

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "connection_string" and isinstance(value, str):
                value = mask_url(value)
            elif name == "options" and isinstance(value, dict):
                value = _mask_options(value)
            yield name, value


class ConnectorConfig(_ConfigModel):
    """One entry of ``connectors.yaml``: where data lives, as an Airflow Connection id or a URL.

    For ``type: file`` the connection string is a path or URL (``s3://bucket/prefix``) of the files. ``options``
    are the connector's sink options, validated by the loader with its factory's ``sink_options`` model.
    """

    _one_of: ClassVar[tuple[str, ...]] = ("conn_id", "connection_string")

    id: Identifier
    type: ConnectorType
    conn_id: NonEmptyStr | None = None
    connection_string: NonEmptyStr | None = None
    options: dict[str, Any] = {}


class SchemaChangesDefaults(_ConfigModel):
    """The top-level ``schema_changes:`` of cdc.yaml: the policy of every source that does not say otherwise.

    Unset keys are the schema gate's own defaults (mode ``evolve``, compatibility ``BACKWARD``)."""

    mode: SchemaMode | None = None
    compatibility: CompatibilityLevel | None = None


class SourceSchemaChanges(SchemaChangesDefaults):
    """``schema_changes:`` of one source: its mode and level (unset: the top-level ones), and a level per table
    (``table`` or ``schema.table`` of the source's ``tables``)."""

    table_compatibility: dict[TableName, CompatibilityLevel] = {}


class SourceConfig(_ConfigModel):
    """One entry of ``cdc.yaml``: which tables of which database to capture, and where they go.

    Becomes one DAG ``cdc_<id>``. The connection is given exactly one way: inline ``connection_string``, a
    ``connector`` id from connectors.yaml, or an Airflow ``conn_id``. Whether ``type`` can be a source at all, and
    which ``options`` it takes, is its connector factory's business (checked by the loader).
    """

    _one_of: ClassVar[tuple[str, ...]] = ("connection_string", "connector", "conn_id")

    id: Identifier
    type: ConnectorType
    connection_string: NonEmptyStr | None = None
    connector: NonEmptyStr | None = None
    conn_id: NonEmptyStr | None = None
    poll_interval: float = Field(1.0, gt=0)
    tables: list[TableName] = Field(min_length=1)
    snapshot: Literal["initial", "never"] = "initial"
    batch_size: int = Field(50000, gt=0)
    sink: NonEmptyStr
    target_schema: NonEmptyStr = "public"
    # Where the sink keeps its _cdc_ledger; None: in target_schema, so the sink role needs no rights elsewhere.
    ledger_schema: NonEmptyStr | None = None
    delete_mode: Literal["hard", "soft"] = "hard"
    transformations: list[NonEmptyStr] | None = None
    quality: list[NonEmptyStr] | None = None
    schedule: str = "@continuous"
    mode: Literal["staged", "fused"] = "staged"
    # Fused mode: seconds one run keeps capturing and loading batches (0: one batch per run). See fused_loop.py.
    loop_seconds: float = Field(0.0, ge=0, le=24 * 3600)
    heartbeat_interval: float = Field(60.0, ge=0)  # seconds; 0 disables
    staging_format: Literal["parquet", "arrow"] = "parquet"
    staging_retention_hours: float = Field(24.0, gt=0)
    max_active_runs: int = Field(1, ge=1, validate_default=True)
    schema_changes: SourceSchemaChanges = SourceSchemaChanges()
    # Connector-specific keys, validated by the loader with the source type's ``source_options`` model.
    options: dict[str, Any] = {}

    @field_validator("tables")
    @classmethod
    def _no_duplicate_tables(cls, tables: list[str]) -> list[str]:
        seen = {t for i, t in enumerate(tables) if t in tables[:i]}
        if seen:
            raise ValueError(f"listed twice: {', '.join(sorted(seen))}")
        return tables

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, schedule: str) -> str:
        fields = schedule.split()
        if schedule in SCHEDULE_PRESETS or (len(fields) == 5 and all(_CRON_FIELD.fullmatch(f) for f in fields)):
            return schedule
        raise ValueError(f"{schedule!r} is neither a preset like @continuous or @hourly nor a 5-field cron expression")

    @field_validator("loop_seconds")
    @classmethod
    def _loop_is_fused(cls, loop_seconds: float, info: ValidationInfo) -> float:
        if loop_seconds and info.data.get("mode") != "fused":
            raise ValueError("applies to mode: fused only (a staged run is one batch through its tasks); set mode: "
                             "fused or remove loop_seconds")
        return loop_seconds

    @field_validator("max_active_runs")
    @classmethod
    def _continuous_runs_one_at_a_time(cls, max_active_runs: int, info: ValidationInfo) -> int:
        if info.data.get("schedule") == "@continuous" and max_active_runs != 1:
            raise ValueError("must be 1 with schedule @continuous (Airflow runs a continuous DAG one run at a time)")
        return max_active_runs

    @model_validator(mode="after")
    def _overrides_name_configured_tables(self) -> SourceConfig:
        """Each ``table_compatibility`` key is one of ``tables`` (qualified alike), and no table is given twice."""
        configured = self.qualified_names(DEFAULT_TABLE_SCHEMA)
        errors: list[InitErrorDetails] = []
        first: dict[str, str] = {}
        for name in self.schema_changes.table_compatibility:
            qualified = qualify_table(name, DEFAULT_TABLE_SCHEMA)
            if qualified not in configured:
                message = f"{qualified} is not one of this source's tables ({', '.join(configured)})"
            elif qualified in first:
                message = f"the same table as {first[qualified]!r}: give it once"
            else:
                first[qualified] = name
                continue
            errors.append(InitErrorDetails(type=PydanticCustomError("unknown_table", message),
                                           loc=("schema_changes", "table_compatibility", name), input=None))
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors, hide_input=True)
        return self

    @property
    def dag_id(self) -> str:
        return f"cdc_{self.id}"

    def qualified_names(self, default_schema: str) -> list[str]:
        """``schema.table`` of every entry of ``tables``, in config order."""
        return [f"{schema}.{table}" for schema, table in self.qualified_tables(default_schema)]

    def schema_policy(self, defaults: SchemaChangesDefaults | None = None,
                      registered: Mapping[str, Mapping[str, int]] | None = None) -> SchemaPolicy:
        """The schema policy the sink's gate applies to this source: its own ``schema_changes`` keys, else those of
        ``defaults`` (the top-level ``schema_changes`` of cdc.yaml), else the gate's defaults; table levels keyed by
        ``schema.table`` (the registry's subjects are ``<source_id>.<schema>.<table>``). ``registered``: the schemas
        the REST API registered ahead, by subject (this source's are kept)."""
        from airflow_provider_cdc.schema.policy import SchemaPolicy

        shared = defaults or SchemaChangesDefaults()
        own = self.schema_changes
        settings: dict[str, Any] = {
            "tables": {qualify_table(name, DEFAULT_TABLE_SCHEMA): level
                       for name, level in own.table_compatibility.items()},
        }
        for key in ("mode", "compatibility"):
            value = getattr(own, key) or getattr(shared, key)
            if value is not None:
                settings[key] = value
        prefix = f"{self.id}."
        settings["registered"] = {subject: shapes for subject, shapes in (registered or {}).items()
                                  if subject.startswith(prefix)}
        return SchemaPolicy.from_dict(settings)

    def qualified_tables(self, default_schema: str) -> list[tuple[str, str]]:
        """``(schema, table)`` for every entry of ``tables``; an unqualified name gets ``default_schema``.

        Splits at the first dot, so a MongoDB ``db.collection`` whose collection name has dots stays whole.
        """
        pairs: list[tuple[str, str]] = []
        for name in self.tables:
            schema, dot, table = name.partition(".")
            pairs.append((schema, table) if dot else (default_schema, name))
        return pairs


def describe_policy(policy: SchemaPolicy) -> str:
    """``mode evolve, compatibility BACKWARD, per table: public.orders NONE`` (``config check``, the DAG's docs)."""
    text = f"mode {policy.mode}, compatibility {policy.compatibility}"
    if policy.tables:
        text += ", per table: " + ", ".join(f"{table} {level}" for table, level in sorted(policy.tables.items()))
    return text


class RuleConfig(_ConfigModel):
    """One entry of ``transformations.yaml``. Extra keys are kept: each rule type adds its own options."""

    model_config = ConfigDict(extra="allow")

    rule_id: NonEmptyStr
    name: str | None = None
    rule_type: Literal["map", "filter", "aggregate", "join"]
    tables: list[TableName] | None = None
    source_fields: list[str] = []
    target_field: str | None = None
    expression: str | None = None
    enabled: bool = True


class FunctionsSettings(_ConfigModel):
    """The top-level ``functions:`` of transformations.yaml: modules whose public functions rules may call (beside the
    built-ins and the entry-point group ``airflow_provider_cdc.functions``)."""

    modules: list[NonEmptyStr] = []


class SuiteConfig(_ConfigModel):
    """One entry of ``quality.yaml``: a named list of checks. Only each rule's ``policy`` is checked here."""

    id: NonEmptyStr
    tables: list[TableName] | None = None
    rules: list[QualityRule] = []


class CdcConfig(_ConfigModel):
    """Every file of one config directory, after the references between them were checked."""

    directory: Path
    connectors: list[ConnectorConfig] = []
    sources: list[SourceConfig] = []
    rules: list[RuleConfig] = []
    suites: list[SuiteConfig] = []
    schema_changes: SchemaChangesDefaults = SchemaChangesDefaults()
    functions: FunctionsSettings = FunctionsSettings()
    # Schemas registered ahead through the REST API: subject → {shape key → version} (Airflow Variable
    # ``cdc.api.schemas``, :mod:`airflow_provider_cdc.api.registered`); not a YAML key.
    registered_schemas: dict[str, dict[str, int]] = {}

    def schema_policy(self, source_id: str) -> SchemaPolicy:
        """The effective schema policy of source ``source_id`` (:meth:`SourceConfig.schema_policy`)."""
        return self.source(source_id).schema_policy(self.schema_changes, self.registered_schemas)

    def connector(self, connector_id: str) -> ConnectorConfig:
        for connector in self.connectors:
            if connector.id == connector_id:
                return connector
        raise UnknownConfigEntryError(f"unknown connector {connector_id!r} in {self.directory / 'connectors.yaml'}")

    def source(self, source_id: str) -> SourceConfig:
        for source in self.sources:
            if source.id == source_id:
                return source
        raise UnknownConfigEntryError(f"unknown source {source_id!r} in {self.directory / 'cdc.yaml'}")
