"""Transformation rules, quality rules and schemas registered through the REST API, kept in Airflow's metadata
database.

The YAML files stay the primary, git-friendly path; what the API registers lives in three Airflow Variables (JSON, no
secret: a rule holds expressions and names, a salt is the *name* of a Variable or Connection):

``cdc.api.rules``    ``{"rules": {rule_id: {"versions": [{"version": n, "rule": {...}, "registered_at", "actor"}]}}}``
``cdc.api.quality``  ``{"suites": {suite_id: {"tables": [...] | null, "versions": [{"version": n, "rules": [...],
                     "added": {...}, "registered_at", "actor"}]}}}``
``cdc.api.schemas``  ``{"subjects": {subject: {"versions": [{"version": n, "schema": {...}, "shape": key,
                     "registered_at", "actor"}]}}}``: Avro schemas approved ahead of a change
                     (:mod:`airflow_provider_cdc.schema.policy`); every version stays an approval.

Every POST of a rule id appends a version (the rule in effect is the latest); a POST of the same content adds none.
A suite's version holds all the rules the API added to it so far, so the latest version alone is what merges.

The config loader (:func:`airflow_provider_cdc.config.loader.load_config`) merges the latest versions with the YAML
(:class:`Registered`); it reads both Variables once per load through :func:`read_registered`, which answers "nothing
registered" quietly outside an Airflow process (``config check``, plain unit tests) and wherever no Variable store
can be reached.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("airflow_provider_cdc.api.registered")

RULES_VARIABLE = "cdc.api.rules"
QUALITY_VARIABLE = "cdc.api.quality"
SCHEMAS_VARIABLE = "cdc.api.schemas"
_DESCRIPTIONS = {
    RULES_VARIABLE: "CDC transformation rules registered through the REST API (POST /cdc/api/v1/transformations); "
                    "merged with transformations.yaml, which stays primary. Versions are kept, the latest applies.",
    QUALITY_VARIABLE: "CDC quality rules registered through the REST API (POST /cdc/api/v1/quality/add-rule); merged "
                      "with quality.yaml, which stays primary. Versions are kept, the latest applies.",
    SCHEMAS_VARIABLE: "CDC schemas registered ahead through the REST API (POST /cdc/api/v1/schema/register): a change "
                      "of a table to one of these schemas is applied, not held. Every version stays registered.",
}


@dataclasses.dataclass(frozen=True)
class RegisteredRule:
    rule_id: str
    version: int
    rule: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RegisteredSuite:
    suite_id: str
    version: int
    tables: list[str] | None
    rules: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class RegisteredSchema:
    subject: str
    version: int
    schema: dict[str, Any]
    shape: str
    registered_at: str = ""
    actor: str = ""


@dataclasses.dataclass(frozen=True)
class Registered:
    """The latest version of every API-registered rule and suite: what the loader merges with the YAML.

    ``rules_doc`` and ``quality_doc`` are the Variables' whole documents (history included), as read."""

    rules_doc: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    quality_doc: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    schemas_doc: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def empty(cls) -> Registered:
        return cls()

    @property
    def rules(self) -> list[RegisteredRule]:
        out = []
        for rule_id, entry in sorted(_mapping(self.rules_doc.get("rules")).items()):
            latest = _latest(entry)
            if latest is not None:
                rule = dict(_mapping(latest.get("rule")))
                out.append(RegisteredRule(str(rule_id), int(latest.get("version") or 0), rule))
        return out

    @property
    def suites(self) -> list[RegisteredSuite]:
        out = []
        for suite_id, entry in sorted(_mapping(self.quality_doc.get("suites")).items()):
            latest = _latest(entry)
            if latest is None:
                continue
            tables = _mapping(entry).get("tables")
            rules = latest.get("rules")
            out.append(RegisteredSuite(str(suite_id), int(latest.get("version") or 0),
                                       list(tables) if isinstance(tables, list) else None,
                                       [dict(r) if isinstance(r, Mapping) else r for r in rules]
                                       if isinstance(rules, list) else []))
        return out

    def schema_versions(self, subject: str) -> list[RegisteredSchema]:
        """Every schema the API registered for ``subject``, oldest first."""
        entry = _mapping(_mapping(self.schemas_doc.get("subjects")).get(subject))
        versions = entry.get("versions")
        return [RegisteredSchema(subject, int(v.get("version") or 0), dict(_mapping(v.get("schema"))),
                                 str(v.get("shape") or ""), str(v.get("registered_at") or ""),
                                 str(v.get("actor") or ""))
                for v in (versions if isinstance(versions, list) else []) if isinstance(v, Mapping)]

    @property
    def schema_shapes(self) -> dict[str, dict[str, int]]:
        """Subject → {shape key → version}: what the config hands the schema gate as approved in advance."""
        out: dict[str, dict[str, int]] = {}
        for subject in sorted(_mapping(self.schemas_doc.get("subjects"))):
            for item in self.schema_versions(str(subject)):
                if item.shape:
                    out.setdefault(item.subject, {}).setdefault(item.shape, item.version)
        return out

    def rule_versions(self, rule_id: str) -> list[dict[str, Any]]:
        """Every stored version of ``rule_id``, oldest first (empty when the API never registered it)."""
        entry = _mapping(_mapping(self.rules_doc.get("rules")).get(rule_id))
        versions = entry.get("versions")
        return [dict(v) for v in versions if isinstance(v, Mapping)] if isinstance(versions, list) else []

    def suite_versions(self, suite_id: str) -> list[dict[str, Any]]:
        entry = _mapping(_mapping(self.quality_doc.get("suites")).get(suite_id))
        versions = entry.get("versions")
        return [dict(v) for v in versions if isinstance(v, Mapping)] if isinstance(versions, list) else []

    # -- new versions (in memory; :func:`store` writes them) --

    def with_rule(self, rule: Mapping[str, Any], *, actor: str) -> tuple[Registered, int, bool]:
        """This registry with ``rule`` as the next version of its ``rule_id``: (registry, version, changed). The same
        content as the latest version adds no version (changed False)."""
        doc = copy.deepcopy(dict(self.rules_doc))
        rules = doc.setdefault("rules", {})
        if not isinstance(rules, dict):
            rules = doc["rules"] = {}
        entry = rules.setdefault(str(rule["rule_id"]), {"versions": []})
        versions = entry.setdefault("versions", [])
        latest = versions[-1] if versions else None
        if latest is not None and _canonical(latest.get("rule")) == _canonical(rule):
            return self, int(latest["version"]), False
        version = int(latest["version"]) + 1 if latest is not None else 1
        versions.append({"version": version, "rule": dict(rule), "registered_at": _now(), "actor": actor})
        return dataclasses.replace(self, rules_doc=doc), version, True

    def with_quality_rule(self, suite_id: str, rule: Mapping[str, Any], *, tables: list[str] | None,
                          actor: str) -> tuple[Registered, int, bool]:
        """This registry with ``rule`` added to the API's rules of ``suite_id`` (a new version of the suite); a rule
        the suite already has (same content) adds no version. ``tables``: the scope of a suite the API creates."""
        doc = copy.deepcopy(dict(self.quality_doc))
        suites = doc.setdefault("suites", {})
        if not isinstance(suites, dict):
            suites = doc["suites"] = {}
        entry = suites.setdefault(suite_id, {"tables": tables, "versions": []})
        versions = entry.setdefault("versions", [])
        latest = versions[-1] if versions else None
        current = list(latest.get("rules") or []) if latest is not None else []
        if any(_canonical(existing) == _canonical(rule) for existing in current):
            return self, int(latest["version"]) if latest is not None else 0, False
        version = int(latest["version"]) + 1 if latest is not None else 1
        versions.append({"version": version, "rules": [*current, dict(rule)], "added": dict(rule),
                         "registered_at": _now(), "actor": actor})
        return dataclasses.replace(self, quality_doc=doc), version, True


    def with_schema(self, subject: str, schema: Mapping[str, Any], shape: str, *,
                    actor: str) -> tuple[Registered, int, bool]:
        """This registry with ``schema`` registered for ``subject``: (registry, version, changed). A schema of a shape
        registered already adds no version (its version is answered)."""
        for existing in self.schema_versions(subject):
            if existing.shape == shape:
                return self, existing.version, False
        doc = copy.deepcopy(dict(self.schemas_doc))
        subjects = doc.setdefault("subjects", {})
        if not isinstance(subjects, dict):
            subjects = doc["subjects"] = {}
        versions = subjects.setdefault(subject, {"versions": []}).setdefault("versions", [])
        version = int(versions[-1]["version"]) + 1 if versions else 1
        versions.append({"version": version, "schema": dict(schema), "shape": shape, "registered_at": _now(),
                         "actor": actor})
        return dataclasses.replace(self, schemas_doc=doc), version, True


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _latest(entry: Any) -> Mapping[str, Any] | None:
    versions = _mapping(entry).get("versions")
    if not isinstance(versions, list) or not versions or not isinstance(versions[-1], Mapping):
        return None
    return versions[-1]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- the Variables --------------------------------------------------------------------------------------------------


def _in_task() -> bool:
    from airflow_provider_cdc.positions import _in_task as in_task

    return in_task()


def _read(key: str) -> Any:
    """The Variable's JSON document, or None. In a task or a DAG parse the Task SDK reads it (through the API
    server); elsewhere the metadata database directly, without the secrets backends' error logging."""
    if _in_task():
        from airflow.sdk import Variable

        return Variable.get(key, default=None, deserialize_json=True)
    from airflow import settings
    from airflow.models import Variable as VariableModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    url = str(getattr(settings, "SQL_ALCHEMY_CONN", "") or "")
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///").split("?")[0]).exists():
        return None  # no metadata database here (opening it would create an empty file)
    with create_session() as session:
        found = session.scalars(select(VariableModel).where(VariableModel.key == key).limit(1)).first()
        text = found.val if found is not None else None
    return json.loads(text) if text else None


def read_registered() -> Registered:
    """What the API registered, or nothing, quietly, where no Variable store is reachable (no metadata database) or
    a Variable is not a JSON object.

    Only inside an Airflow process (one that imported Airflow already: a DAG parse, a task, the API server, the
    ``airflow`` CLI): the config package must load in plain Python without importing Airflow (``config check``, unit
    tests), and there the YAML alone is the config."""
    from airflow_provider_cdc.config.api_sources import registrations_off

    if "airflow" not in sys.modules or registrations_off():
        return Registered.empty()
    docs: list[Mapping[str, Any]] = []
    for key in (RULES_VARIABLE, QUALITY_VARIABLE, SCHEMAS_VARIABLE):
        try:
            value = _read(key)
        except Exception as exc:  # no Airflow, no database, no API server: the YAML alone
            log.debug("Variable %s not read (%s); no API-registered entries", key, type(exc).__name__)
            return Registered.empty()
        docs.append(value if isinstance(value, Mapping) else {})
    return Registered(docs[0], docs[1], docs[2])


def store(registered: Registered, *, base: Registered, rules: bool = False, quality: bool = False,
          schemas: bool = False) -> None:
    """Write the rules, quality and/or schemas documents of ``registered`` to their Variables, if they still hold
    what ``base`` read (:func:`store_documents`)."""
    store_documents([(key, doc, before, _DESCRIPTIONS[key]) for key, flag, doc, before in (
        (RULES_VARIABLE, rules, registered.rules_doc, base.rules_doc),
        (QUALITY_VARIABLE, quality, registered.quality_doc, base.quality_doc),
        (SCHEMAS_VARIABLE, schemas, registered.schemas_doc, base.schemas_doc)) if flag])


def store_documents(documents: list[tuple[str, Mapping[str, Any], Mapping[str, Any], str]]) -> None:
    """Write each ``(key, document, what it held when read, description)`` to its Variable as JSON, if the Variable
    still holds what was read, all in one transaction: a request that checked its change against an older state is
    refused (:class:`~airflow_provider_cdc.api.writes.ConflictError`) rather than losing what another request stored
    in between.

    The check and the write are one statement (``UPDATE ... WHERE`` the stored, encrypted value is the one read; an
    ``INSERT`` for a new Variable, which the key's uniqueness guards), because row locks are not everywhere: SQLite
    ignores ``FOR UPDATE``, and there two requests read the same value before either writes."""
    from airflow.models import Variable as VariableModel
    from airflow.utils.session import create_session
    from sqlalchemy import select, update
    from sqlalchemy.exc import IntegrityError, OperationalError

    from airflow_provider_cdc.api.writes import ConflictError

    def conflict(key: str) -> ConflictError:
        return ConflictError(f"Variable {key} was changed by another request meanwhile; send yours again")

    try:
        with create_session() as session:
            for key, doc, before, description in documents:
                row = session.scalars(select(VariableModel).where(VariableModel.key == key).limit(1)).first()
                current = json.loads(row.val) if row is not None and row.val else {}
                if _canonical(current) != _canonical(dict(before)):
                    raise conflict(key)
                fresh = VariableModel(key=key, val=json.dumps(dict(doc), indent=1, sort_keys=True),
                                      description=description)  # encrypted as Airflow stores Variables
                if row is None:
                    session.add(fresh)
                    session.flush()
                    continue
                read = row._val
                session.expunge(row)
                changed = session.execute(
                    update(VariableModel)
                    .where(VariableModel.key == key,
                           VariableModel._val.is_(None) if read is None else VariableModel._val == read)
                    .values(_val=fresh._val, is_encrypted=fresh.is_encrypted, description=description)
                    .execution_options(synchronize_session=False))
                if changed.rowcount != 1:  # type: ignore[attr-defined]
                    raise conflict(key)
    except (IntegrityError, OperationalError) as exc:  # a concurrent insert of the key; SQLite: the other writer
        log.info("Variables %s not stored: %s", ", ".join(key for key, *_ in documents), type(exc).__name__)
        raise conflict(documents[0][0]) from None
