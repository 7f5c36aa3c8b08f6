"""Request and response models of the API's writes: transformation rules, quality rules and checks, schemas. Like
:mod:`.models`, they make the OpenAPI spec, and a request that does not fit them is FastAPI's 422 per field."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cdc.api.models import RuleInfo

RULE_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"
Name = Field(min_length=1, max_length=200)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- transformations --------------------------------------------------------------------------------------------------


class TransformationRequest(BaseModel):
    """A rule in the shape of transformations.yaml. Keys beyond these are the rule type's own options
    (``parameters``, ``policy``, a join's keys...), checked when the rule compiles."""

    model_config = ConfigDict(extra="allow")

    rule_id: str = Field(min_length=1, max_length=200, pattern=RULE_ID_PATTERN)
    name: str | None = Field(None, max_length=500)
    rule_type: Literal["map", "filter", "aggregate", "join"]
    tables: list[str] | None = Field(None, description="the tables it applies to (omitted: every table)")
    source_fields: list[str] = Field(default_factory=list)
    target_field: str | None = None
    expression: str | None = Field(None, max_length=20000, description="Jinja2, run in the sandbox")
    enabled: bool = True


class RuleVersion(_Answer):
    version: int
    registered_at: str | None = None
    actor: str | None = None
    rule: dict[str, Any]


class VersionedRuleInfo(RuleInfo):
    version: int | None = Field(None, description="the version in effect (rules registered through the API)")
    versions: list[RuleVersion] = Field(default_factory=list, description="every version the API registered")


class VersionedRuleList(_Answer):
    rules: list[VersionedRuleInfo]


class WriteAnswer(_Answer):
    changed: bool = Field(description="false when the same content was registered already (no new version)")
    sources: list[str] = Field(description="the sources the change applies to")
    audited: list[str] = Field(default_factory=list, description="sources whose audit trail recorded the write")
    notes: list[str] = Field(default_factory=list)


class TransformationRegistered(WriteAnswer):
    rule: VersionedRuleInfo
    version: int
    checked_tables: list[str] = Field(default_factory=list,
                                      description="source.schema.table whose registered schema the fields were "
                                      "checked against")


# --- quality ----------------------------------------------------------------------------------------------------------


class QualityRuleRequest(_Request):
    """Add ``rule`` (the shape of a rule of quality.yaml) to suite ``suite_id``; a suite that does not exist yet is
    created with ``tables`` as its scope."""

    suite_id: str = Field(min_length=1, max_length=200, pattern=RULE_ID_PATTERN)
    rule: dict[str, Any] = Field(description="type, column, policy... or expectation and kwargs")
    tables: list[str] | None = Field(None, description="scope of a new suite (omitted: every table)")


class QualityRuleAdded(WriteAnswer):
    suite_id: str
    version: int
    rules: list[dict[str, Any]] = Field(description="the suite's rules after the addition, YAML's first")
    checked_tables: list[str] = Field(default_factory=list)


class QualityCheckRequest(_Request):
    """Records to validate, with a suite of the config (``suite_id``) or posted rules (``rules``). The records'
    columns are typed from the table's registered schema when ``source_id`` and ``table`` name one, else from the
    JSON values."""

    records: list[dict[str, Any]] = Field(max_length=100000)
    suite_id: str | None = Field(None, min_length=1, max_length=200)
    rules: list[dict[str, Any]] | None = None
    table: str = Field("records", min_length=1, max_length=200, description="table or schema.table")
    source_id: str | None = Field(None, min_length=1, max_length=200)


class RowFailure(_Answer):
    row: int = Field(description="index of the record in the request")
    reason: str
    value: Any = None


class RuleOutcome(_Answer):
    suite_id: str
    rule_id: str
    expectation: str
    policy: str
    passed: bool
    failed_rows: list[RowFailure] = Field(default_factory=list)
    failure: str | None = Field(None, description="a table-level check's failure, or why it could not be evaluated")


class QualityCheckAnswer(_Answer):
    table: str
    records: int
    passed: bool
    score: float | None = Field(None, description="passing records / records")
    rules: list[RuleOutcome]
    schema_from: Literal["registry", "records"]


# --- schema -----------------------------------------------------------------------------------------------------------


class CompatibilityRequest(_Request):
    subject: str = Field(min_length=1, max_length=500, description="<source_id>.<schema>.<table>")
    schema_: dict[str, Any] = Field(alias="schema", description="an Avro record schema")
    level: Literal["BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE",
                   "NONE"] | None = Field(None, description="default: the subject's level from cdc.yaml")


class CompatibilityAnswer(_Answer):
    subject: str
    level: str
    compatible: bool
    against_versions: list[int]
    problems: list[dict[str, Any]] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)


class RegisterRequest(_Request):
    subject: str = Field(min_length=1, max_length=500, description="<source_id>.<schema>.<table>")
    schema_: dict[str, Any] = Field(alias="schema", description="an Avro record schema: the table as it will be after "
                                                                "the change (edit the current version's document)")
    force: bool = Field(False, description="register it although it is not compatible at the subject's level: the "
                                           "change it describes will then be applied, not held")


class RegisterAnswer(_Answer):
    subject: str
    version: int = Field(description="the API's version number of this schema for the subject")
    shape: str = Field(description="what a change is matched on: names, order and types of the fields")
    registered: bool = Field(description="false when a schema of this shape was registered already")
    level: str
    compatible: bool = Field(description="whether it is compatible at the level with the registry's versions")
    against_versions: list[int]
    reasons: list[str] = Field(default_factory=list)
    message: str
    problems: list[str] = Field(default_factory=list, description="what could not be done beside the registration")


class SchemaVersionsAnswer(_Answer):
    subject: str
    level: str
    versions: list[dict[str, Any]] = Field(description="the sink registry's versions, oldest first (the Avro document "
                                                       "in schema), with the gate's outcome")
    registered: list[dict[str, Any]] = Field(description="schemas registered ahead through the API")


class AcceptRequest(_Request):
    subject: str = Field(min_length=1, max_length=500, description="<source_id>.<schema>.<table> of a held table")
    force: bool = Field(False, description="go ahead even while a run of the source's DAG is running")


class AcceptAnswer(_Answer):
    subject: str
    table: str
    accepted_versions: list[int]
    batch_id: str | None
    replayed_events: int
    upserted: int
    deleted: int
    applied: bool
    message: str
    warnings: list[str] = Field(default_factory=list)
    accepted_at: dt.datetime
