"""Typed shape of the four configuration files (connectors, cdc, transformations, quality).

Each list entry of a file is one model; ``CdcConfig`` holds them all once the loader has checked the references
between files. The models forbid unknown keys so that a typo (``batchsize:``) is reported instead of silently
ignored; transformation rules are the exception because later rule types add their own options.

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
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

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

QualityPolicy = Literal["warn", "quarantine", "fail"]

QUALITY_POLICIES: tuple[str, ...] = ("warn", "quarantine", "fail")
SCHEDULE_PRESETS: frozenset[str] = frozenset(
    {"@continuous", "@once", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually",
     "@midnight"}
)

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
_TABLE = re.compile(r"[^.\s]+(\.[^\s]+)?")
_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,\-?LW#]+")


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{value!r} may contain only letters, digits and underscores")
    return value


def _check_connector_type(value: str) -> str:
    """A type the registry knows. Reported like a ``Literal`` mismatch (``should be 'a', 'b' or 'c'``)."""
    known = list(registry.CONNECTOR_MODULES)
    if value not in known:
        expected = " or ".join(filter(None, [", ".join(repr(k) for k in known[:-1]), repr(known[-1])]))
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
    return value


def _check_table(value: str) -> str:
    if not _TABLE.fullmatch(value) or value.endswith("."):
        raise ValueError(f"{value!r} is not a table name; write table or schema.table")
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
    heartbeat_interval: float = Field(60.0, ge=0)  # seconds; 0 disables
    staging_format: Literal["parquet", "arrow"] = "parquet"
    staging_retention_hours: float = Field(24.0, gt=0)
    max_active_runs: int = Field(1, ge=1, validate_default=True)
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

    @field_validator("max_active_runs")
    @classmethod
    def _continuous_runs_one_at_a_time(cls, max_active_runs: int, info: ValidationInfo) -> int:
        if info.data.get("schedule") == "@continuous" and max_active_runs != 1:
            raise ValueError("must be 1 with schedule @continuous (Airflow runs a continuous DAG one run at a time)")
        return max_active_runs

    @property
    def dag_id(self) -> str:
        return f"cdc_{self.id}"

    def qualified_tables(self, default_schema: str) -> list[tuple[str, str]]:
        """``(schema, table)`` for every entry of ``tables``; an unqualified name gets ``default_schema``.

        Splits at the first dot, so a MongoDB ``db.collection`` whose collection name has dots stays whole.
        """
        pairs: list[tuple[str, str]] = []
        for name in self.tables:
            schema, dot, table = name.partition(".")
            pairs.append((schema, table) if dot else (default_schema, name))
        return pairs


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
