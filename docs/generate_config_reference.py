"""Writes docs/configuration.md, the reference of every config key, from the pydantic models that check them.

    python docs/generate_config_reference.py          # write docs/configuration.md
    python docs/generate_config_reference.py --check  # exit 1 when the committed file differs from the models

The files and their top-level keys come from the config loader (:data:`airflow_provider_cdc.config.loader.FILES`),
each entry's keys from its model (:mod:`airflow_provider_cdc.config.models`), and the ``options:`` of each
connector type from that connector's own options models (:mod:`airflow_provider_cdc.connectors.registry`). A key's
type, default and constraints are read from the model; its description is the model's own (``Field(description=)``,
else the comment above the field or at its end), else the entry in :data:`DESCRIBED_HERE` below, which holds what
the models do not say yet. A test (tests/docs/test_config_reference.py) checks that the committed file is what this
script writes, and that every key has a description.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

DOCS = Path(__file__).resolve().parent
TARGET = DOCS / "configuration.md"

# Descriptions of keys whose model does not describe them (yet), by ``Model.field``. A description given in the
# model wins; the test fails for an entry here that the model now describes, so that this list only shrinks.
DESCRIBED_HERE: dict[str, str] = {
    "ConnectorConfig.id": "The connector's id: sources name it in `sink:` (where their changes go) or `connector:` "
                          "(where they are read).",
    "ConnectorConfig.type": "The connector type; whether it can be a source, a sink or both is its own.",
    "ConnectorConfig.conn_id": "An Airflow Connection id, resolved by the provider hook of the type (see "
                               "[Connections](connections.md)).",
    "ConnectorConfig.connection_string": "A driver URL; `${ENV_VAR}` is interpolated. For `type: file`, the root of "
                                         "the Delta tables: a path, `file://`, `s3://` or `gs://`.",
    "ConnectorConfig.options": "The connector type's sink options (see [options by connector type]"
                               "(#options-by-connector-type)).",
    "SourceConfig.id": "The source's id: its DAG is `cdc_<id>`, its position the Variable `cdc.position.<id>`, and "
                       "ledger rows and batch ids carry it.",
    "SourceConfig.type": "The connector type to capture from.",
    "SourceConfig.connection_string": "A driver URL of the source database; `${ENV_VAR}` is interpolated.",
    "SourceConfig.connector": "The id of a `connectors.yaml` entry to read the source through.",
    "SourceConfig.conn_id": "An Airflow Connection id of the source database (see [Connections](connections.md)).",
    "SourceConfig.poll_interval": "Seconds between the sensor's (or trigger's) looks for new changes, and between "
                                  "the fused loop's.",
    "SourceConfig.tables": "The tables to capture: `table` or `schema.table`; MongoDB: `collection`, "
                           "`db.collection` or `db.*`.",
    "SourceConfig.snapshot": "`initial` reads every table once before the stream takes over (and a table added "
                             "later on its first run); `never` captures only changes from now on.",
    "SourceConfig.batch_size": "At most this many changes per micro-batch, except that one source transaction is "
                               "never split; a backlog drains over consecutive runs.",
    "SourceConfig.sink": "The id of the `connectors.yaml` entry the changes are loaded into.",
    "SourceConfig.target_schema": "The sink's schema (MongoDB: database) of the sink tables, which keep the source "
                                  "tables' names.",
    "SourceConfig.delete_mode": "`hard` deletes a deleted row from the sink; `soft` keeps it, with its deletion "
                                "time in `_cdc_deleted_at`.",
    "SourceConfig.transformations": "The ids of the `transformations.yaml` rules this source runs, in file order; "
                                    "omitted: every enabled rule (each applies to the tables of its `tables:`).",
    "SourceConfig.quality": "The ids of the `quality.yaml` suites this source runs; omitted: every suite.",
    "SourceConfig.schedule": "The DAG's schedule: `@continuous` (a new run as soon as one ends), another preset "
                             "such as `@hourly`, or a 5-field cron expression.",
    "SourceConfig.mode": "`staged`: a task per step (capture, each stage, load, commit), each retried on its own; "
                         "`fused`: the same steps in one task, for the lowest latency.",
    "SourceConfig.staging_format": "The file format of staged batches on `CDC_STAGING_URL`: `parquet` or Arrow "
                                   "IPC (`arrow`).",
    "SourceConfig.staging_retention_hours": "Hours a committed batch's staged files are kept before they are "
                                            "purged.",
    "SourceConfig.max_active_runs": "DAG runs at a time; 1 with `@continuous`.",
    "SourceConfig.schema_changes": "What the source does with schema changes (see [`sources[].schema_changes`]"
                                   "(#sourcesschema_changes)).",
    "SchemaChangesDefaults.mode": "`evolve` applies compatible changes and holds a table whose change is refused; "
                                  "`lenient`, `ignore` and `stop` are described in the README (Schema changes).",
    "SchemaChangesDefaults.compatibility": "The compatibility level a new schema version must meet (any case).",
    "SourceSchemaChanges.mode": "As the top-level `schema_changes.mode`, for this source.",
    "SourceSchemaChanges.compatibility": "As the top-level `schema_changes.compatibility`, for this source.",
    "SourceSchemaChanges.table_compatibility": "A level per table (`table` or `schema.table` of the source's "
                                               "`tables`).",
    "RuleConfig.rule_id": "The rule's id: sources name it in `transformations:`, and quarantined rows name it.",
    "RuleConfig.name": "A name for people (the UI, the audit trail).",
    "RuleConfig.rule_type": "What the rule does: `map` (a computed field), `filter` (keep rows), `aggregate`, or "
                            "`join` (fields of a reference table); each type adds its own keys.",
    "RuleConfig.tables": "The tables the rule applies to; omitted: every table of the source.",
    "RuleConfig.source_fields": "The fields the expression reads.",
    "RuleConfig.target_field": "The field the rule writes.",
    "RuleConfig.expression": "A Jinja2 expression, run sandboxed and compiled once.",
    "RuleConfig.enabled": "`false` keeps the rule in the file but does not run it.",
    "FunctionsSettings.modules": "Python modules whose public functions rules may call.",
    "SuiteConfig.id": "The suite's id: sources name it in `quality:`.",
    "PgSourceOptions.slot_name": "The replication slot; default `cdc_<source id>`, lowercased. Slots are named for "
                                 "the whole server: two sources on one server need two.",
    "PgSourceOptions.publication_name": "The publication of the source's tables; default `cdc_<source id>_pub`.",
    "PgSourceOptions.create_slot": "Create the slot when it is absent; `false` expects it to exist.",
    "PgSourceOptions.create_publication": "Create (and keep up to date) the publication when it is absent; "
                                          "`false` expects it to exist.",
    "DeltaSinkOptions.format": "`delta`: one Delta Lake table per source table, merged exactly once; `parquet`: an "
                               "append-only change log of Parquet files with a manifest per batch.",
    "SuiteConfig.tables": "The tables the suite checks; omitted: every table of the source.",
    "SuiteConfig.rules": "The checks: a `type` (`type`, `range`, `pattern`, `not_null`, `unique`, `in_set`, "
                         "`length`) with its keys, or a Great Expectations `expectation` with `kwargs`; each with a "
                         "`policy`.",
}

# What the shared field types' validators accept, by validator function name (the type's words in the tables).
_VALIDATED = {
    "_check_identifier": "identifier (letters, digits, `_`)",
    "_check_table": "table name",
    "_check_policy": "mapping",
}


def _validated_choices() -> dict[str, list[str]]:
    """Validators that accept one of a list of names, with that list (read from where the names are defined)."""
    from airflow_provider_cdc.connectors.registry import CONNECTOR_MODULES
    from airflow_provider_cdc.schema.compatibility import LEVELS
    from airflow_provider_cdc.schema.policy import MODES

    return {"_check_connector_type": list(CONNECTOR_MODULES), "_check_schema_mode": list(MODES),
            "_check_level": list(LEVELS)}


# --- reading a model ---------------------------------------------------------------------------------------------


def rst_to_markdown(text: str) -> str:
    """Docstring markup as Markdown: ``code`` → `code`, :class:`~a.b.C` → `C`, :mod:`a.b` → `a.b`."""
    text = re.sub(r":[a-z]+:`~[\w.]*?\.(\w+)`", r"`\1`", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


_BULLET = re.compile(r"- ``(\w+)``: (.*)")


def split_doc(model: type[BaseModel]) -> tuple[str, dict[str, str]]:
    """``model``'s docstring as Markdown, without its bullets of the form ``- ``key``: text``, and those bullets'
    texts by key (keys of the model only): the options models describe their keys that way."""
    lines = inspect.cleandoc(model.__doc__ or "").splitlines()
    kept: list[str] = []
    bullets: dict[str, list[str]] = {}
    current: str | None = None
    for line in lines:
        match = _BULLET.fullmatch(line)
        if match and match.group(1) in model.model_fields:
            current = match.group(1)
            bullets[current] = [match.group(2)]
        elif current is not None and line.startswith("  "):
            bullets[current].append(line.strip())
        else:
            current = None
            kept.append(line)
    doc = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    return rst_to_markdown(doc), {key: rst_to_markdown(" ".join(text)) for key, text in bullets.items()}


def model_doc(model: type[BaseModel]) -> str:
    return split_doc(model)[0]


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment above each field of ``model``'s class body (or at the end of its line), joined into one text."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tree = ast.parse(source)
    comments: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        row = node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#"):
            above.insert(0, lines[row].strip().lstrip("#").strip())
            row -= 1
        line = lines[node.lineno - 1]
        trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
        text = " ".join(part for part in (" ".join(above), trailing) if part)
        if text:
            comments[node.target.id] = rst_to_markdown(text)
    return comments


def own_description(model: type[BaseModel], name: str) -> str:
    """What the model itself says of field ``name``: its ``description``, else its comment, else its bullet in the
    class docstring (or '')."""
    info = model.model_fields[name]
    return info.description or field_comments(model).get(name, "") or split_doc(model)[1].get(name, "")


def description(model: type[BaseModel], name: str) -> str:
    own = own_description(model, name)
    return own or DESCRIBED_HERE.get(f"{model.__name__}.{name}", "")


def _constraint_texts(metadata: list[Any]) -> list[str]:
    texts = []
    for item in metadata:
        if isinstance(item, annotated_types.Gt):
            texts.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Ge):
            texts.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Lt):
            texts.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.Le):
            texts.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.MinLen):
            texts.append("not empty" if item.min_length == 1 else f"at least {item.min_length} long")
        elif isinstance(item, annotated_types.MaxLen):
            texts.append(f"at most {item.max_length} long")
        elif getattr(item, "pattern", None):
            texts.append(f"matches `{item.pattern}`")
        elif isinstance(item, FieldInfo):
            texts += _constraint_texts(item.metadata)
    return texts


def type_text(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A key's type in words: ``text``, ``list of table name``, ``one of `a`, `b```..."""
    metadata = list(metadata or [])
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0], [*metadata, *annotation.__metadata__])
    validators = [getattr(item, "func", None) for item in metadata]
    choices = _validated_choices()
    for func in validators:
        name = getattr(func, "__name__", "")
        if name in choices:
            return "one of " + ", ".join(f"`{choice}`" for choice in choices[name])
        if name in _VALIDATED:
            return _VALIDATED[name]
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_text(arg, metadata) for arg in args if arg is not type(None)]
        return " or ".join(parts) + (" or `null`" if type(None) in args else "")
    if origin is list:
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        if args and args[1] is not Any:
            return f"mapping of {type_text(args[0])} to {type_text(args[1])}"
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    words = {str: "text", int: "integer", float: "number", bool: "boolean", Path: "path"}
    text = words.get(annotation, getattr(annotation, "__name__", str(annotation)))
    constraints = _constraint_texts(metadata)
    return f"{text} ({', '.join(constraints)})" if constraints else text


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
    if isinstance(value, float) and value.is_integer():
        value = int(value) if abs(value) < 1e15 else value
    return f"`{json.dumps(value)}`"


def key_rows(model: type[BaseModel]) -> Iterator[str]:
    yield "| key | type | default | description |"
    yield "| --- | --- | --- | --- |"
    for name, info in model.model_fields.items():
        kind = type_text(info.annotation, info.metadata)
        constraints = [] if " (" in kind else _constraint_texts(info.metadata)
        if constraints:
            kind += f" ({', '.join(constraints)})"
        text = description(model, name).replace("|", "\\|")
        text = text[:1].upper() + text[1:]
        yield f"| `{name}` | {kind.replace('|', chr(92) + '|')} | {default_text(info)} | {text} |"


def model_section(title: str, model: type[BaseModel], level: int = 3, where: str = "") -> list[str]:
    lines = [f"{'#' * level} {title}", ""]
    if where:
        lines += [f"Where: {where}.", ""]
    doc = model_doc(model)
    if doc:
        lines += [doc, ""]
    one_of: tuple[str, ...] = getattr(model, "_one_of", ())
    if one_of:
        lines += [f"Give exactly one of {', '.join(f'`{key}`' for key in one_of)}.", ""]
    extra = model.model_config.get("extra")
    if extra == "allow":
        lines += ["Keys not listed here are kept (a rule type's own keys).", ""]
    lines += [*key_rows(model), ""]
    return lines


# --- the document ------------------------------------------------------------------------------------------------


def nested_models(model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """Fields of ``model`` that are models themselves (``schema_changes``), to document in sections of their own."""
    found = []
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found.append((name, info.annotation))
    return found


def options_sections() -> list[str]:
    from airflow_provider_cdc.connectors.registry import CONNECTOR_MODULES, NoOptions, factory

    lines = ["## Options by connector type", "",
             "Connector-specific keys go under `options:`: a source's in `cdc.yaml`, a sink's under its "
             "`connectors.yaml` entry. Each connector type checks its own; a type without options refuses any key.",
             ""]
    for connector_type in CONNECTOR_MODULES:
        built = factory(connector_type)
        for role, model, where in (("source", built.source_options, "`cdc.yaml`: `sources[].options`"),
                                   ("sink", built.sink_options, "`connectors.yaml`: `connectors[].options`")):
            if model is NoOptions:
                continue
            lines += model_section(f"`{connector_type}` {role} options", model, where=where)
    return lines


def render() -> str:
    from airflow_provider_cdc.config.loader import FILES

    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by docs/generate_config_reference.py from the config models; do not edit by hand. -->",
        "",
        "Four files in the config folder (`CDC_CONFIG_DIR`, default `include/config`) describe the pipelines; "
        "`cdc_config(...)` builds the same four documents from arguments for a DAG written by hand (see "
        "[Operators](operators.md#the-pipelines-config-without-yaml)). Both are checked by the same loader: an "
        "unknown key is an error that names the file, the key and the nearest valid key.",
        "",
    ]
    for spec in FILES:
        lines += [f"## {spec.name}", ""]
        top = [f"`{spec.list_key}` (a list of the entries below)",
               *(f"`{key}` (a mapping, below)" for key, _ in spec.settings)]
        lines += [f"Top-level keys: {', '.join(top)}." + (" The file is required." if spec.required else ""), ""]
        lines += model_section(f"`{spec.list_key}[]`", spec.model)
        for name, nested in nested_models(spec.model):
            lines += model_section(f"`{spec.list_key}[].{name}`", nested, level=4)
        for key, model in spec.settings:
            lines += model_section(f"`{key}`", model)
    lines += options_sections()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date: run python docs/generate_config_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
