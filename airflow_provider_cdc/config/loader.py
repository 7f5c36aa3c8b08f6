"""Load a config directory into a ``CdcConfig``, or report every problem in it at once.

Fixing config one error per DAG-parse cycle is slow, so nothing here stops at the first problem: YAML syntax,
environment interpolation, the shape of each entry and the references between files are all checked, and each
problem is reported with its file and key (``cdc.yaml: sources[1].sink: unknown connector 'wharehouse'``).

Entries are validated one by one, so a bad entry does not hide the others; a reference to an entry that exists
but is itself invalid is not reported twice.

What is specific to one database is asked of its connector factory (:mod:`airflow_provider_cdc.connectors.registry`):
whether the type can be a source or a sink, the ``options`` model of each source and sink connector, the sink's
capabilities (``delete_mode: soft`` needs a sink that keeps deleted rows) and checks across the sources of one type
(two sources sharing one replication slot, say). A factory whose driver is not installed is a problem naming the
``pip install`` that fixes it.

Rules and quality rules registered through the REST API (Airflow Variables ``cdc.api.rules`` and ``cdc.api.quality``,
:mod:`airflow_provider_cdc.api.registered`) are merged in after the YAML is read, and checked with it. The YAML stays
primary: a rule id that both define with different content is a problem at the YAML's key, never resolved silently;
the same content is kept once. A suite of quality.yaml that the API added rules to gets them after its own. Outside
Airflow (no metadata database) nothing is registered, quietly.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from airflow_provider_cdc.config.api_sources import merge_api_sources, without_registrations
from airflow_provider_cdc.config.models import (
    DEFAULT_TABLE_SCHEMA,
    CdcConfig,
    ConnectorConfig,
    FunctionsSettings,
    RuleConfig,
    SchemaChangesDefaults,
    SourceConfig,
    SuiteConfig,
    mask_url,
)
from airflow_provider_cdc.connectors import registry
from airflow_provider_cdc.errors import CdcError, ConnectorUnavailableError, MissingExtraError

if TYPE_CHECKING:
    from airflow_provider_cdc.api.registered import Registered

CONFIG_DIR_ENV = "CDC_CONFIG_DIR"
DEFAULT_CONFIG_DIR = Path("include") / "config"
INLINE_ORIGIN = "<inline config>"  # the directory name of a config given as documents (load_config(documents=))
CHECK_COMMAND = "python -m airflow_provider_cdc.config check"

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a config file: which file, which key (``sources[1].sink``, may be empty), and why."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}" if self.key else f"{self.file}: {self.reason}"


class ConfigError(CdcError):
    """The config directory has problems; ``problems`` lists all of them, in file order."""

    terminal = True

    def __init__(self, problems: Sequence[ConfigProblem], directory: str | os.PathLike[str] | None = None) -> None:
        self.problems = list(problems)
        self.directory = Path(directory) if directory is not None else None
        where = f" in {self.directory}" if self.directory is not None else ""
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        lines = [f"{count} in the CDC config{where}:", *(f"  {problem}" for problem in self.problems)]
        lines.append(f"Fix them, then check again: {CHECK_COMMAND} {self.directory or '<dir>'}")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:  # custom __init__: keep the exception picklable
        return (type(self), (self.problems, self.directory))


@dataclass(frozen=True)
class _FileSpec:
    name: str
    list_key: str
    model: type[BaseModel]
    id_field: str
    required: bool = False
    # Top-level keys beside the list, each a mapping validated by its model (cdc.yaml's ``schema_changes``).
    settings: tuple[tuple[str, type[BaseModel]], ...] = ()
    # A key that is valid elsewhere, but not here: (key in a setting) -> where it belongs.
    misplaced: tuple[tuple[str, str, str], ...] = ()

    @property
    def top_level_keys(self) -> list[str]:
        return [self.list_key, *(key for key, _ in self.settings)]


_CONNECTORS = _FileSpec("connectors.yaml", "connectors", ConnectorConfig, "id")
_SOURCES = _FileSpec(
    "cdc.yaml", "sources", SourceConfig, "id", required=True,
    settings=(("schema_changes", SchemaChangesDefaults),),
    misplaced=(("schema_changes", "table_compatibility",
                "is set per source: put it under that source's schema_changes"),),
)
_RULES = _FileSpec("transformations.yaml", "rules", RuleConfig, "rule_id",
                   settings=(("functions", FunctionsSettings),))
_SUITES = _FileSpec("quality.yaml", "suites", SuiteConfig, "id")
FILES: tuple[_FileSpec, ...] = (_CONNECTORS, _SOURCES, _RULES, _SUITES)


@dataclass
class _Loaded:
    """What one file yielded: every raw entry (interpolated), the valid ones as models, and whether it was read.

    References are checked against the raw ids, so a pointer to an existing-but-invalid entry gets no second,
    misleading "unknown" problem.
    """

    spec: _FileSpec
    present: bool = False
    readable: bool = True
    entries: dict[int, Any] = field(default_factory=dict)
    raw: list[Any] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the valid top-level settings, as models
    registered: dict[int, str] = field(default_factory=dict)  # entry index -> its key in the API's Variable

    def where(self, index: int) -> tuple[str, str]:
        """(file, key) of entry ``index``: ``transformations.yaml``/``rules[2]``, or the API's Variable and key."""
        if index in self.registered:
            variable = _REGISTERED_VARIABLES[self.spec.list_key]
            return f"Airflow Variable {variable}", self.registered[index]
        return self.spec.name, _format_key((self.spec.list_key, index))

    @property
    def raw_ids(self) -> list[Any]:
        return [item.get(self.spec.id_field) if isinstance(item, dict) else None for item in self.raw]


class _Problems:
    """Collects problems; keys whose ``${VAR}`` could not be resolved get no follow-up problems."""

    def __init__(self) -> None:
        self.items: list[ConfigProblem] = []
        self._unresolved: set[tuple[str, str]] = set()

    def add(self, file: str, loc: Loc | str, reason: str, *, always: bool = False) -> None:
        key = loc if isinstance(loc, str) else _format_key(loc)
        if always or not self._follows_unresolved(file, key):
            problem = ConfigProblem(file, key, reason)
            if problem not in self.items:
                self.items.append(problem)

    def add_unresolved(self, file: str, loc: Loc, reason: str) -> None:
        self.add(file, loc, reason)
        self._unresolved.add((file, _format_key(loc)))

    def _follows_unresolved(self, file: str, key: str) -> bool:
        return any(f == file and (key == k or key.startswith((k + ".", k + "["))) for f, k in self._unresolved)


def _format_key(loc: Iterable[str | int]) -> str:
    """``('sources', 1, 'batch_size')`` -> ``sources[1].batch_size``."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def default_config_dir() -> Path:
    """``$CDC_CONFIG_DIR`` if set, else ``include/config`` under the current directory (the Astro layout)."""
    return Path(os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR)


def load_config(directory: str | os.PathLike[str] | None = None, *, registered: Registered | None = None,
                documents: Mapping[str, Any] | None = None) -> CdcConfig:
    """Read and check every config file of ``directory``, with what the REST API registered merged in; raise
    ``ConfigError`` listing all problems.

    Only ``cdc.yaml`` is required; a missing optional file means an empty list. ``registered``: the API's rules and
    suites to merge (default: read from the Airflow Variables, once per call; ``Registered.empty()``: the YAML alone).
    ``documents``: the files' parsed contents by file name (``{"cdc.yaml": {"sources": [...]}, ...}``), checked
    exactly as files are, instead of reading ``directory`` (a DAG written without YAML:
    :func:`airflow_provider_cdc.config.inline.cdc_config`); ``directory`` then only names their origin.
    """
    problems = _Problems()
    if documents is not None:
        root = Path(directory) if directory is not None else Path(INLINE_ORIGIN)
    else:
        root = Path(directory) if directory is not None else default_config_dir()
        if not root.is_dir():
            state = "is not a directory" if root.exists() else "does not exist"
            problems.add(_SOURCES.name, "", f"config directory {root} {state} (pass another one or set "
                                            f"{CONFIG_DIR_ENV})")
            raise ConfigError(problems.items, root)
    loaded = {spec.list_key: _load_file(root, spec, problems, documents) for spec in FILES}
    if documents is not None:
        # A DAG's own inline config: what the REST API registers goes into the YAML's config, not into this one.
        with without_registrations():
            api_sources = merge_api_sources(loaded["sources"], problems)
        from airflow_provider_cdc.api.registered import Registered as _Registered

        registered = registered or _Registered.empty()
    else:
        api_sources = merge_api_sources(loaded["sources"], problems)  # sources registered through the REST API
    if registered is None:
        from airflow_provider_cdc.api.registered import read_registered

        registered = read_registered()
    _merge_registered(loaded, registered, problems)
    for result in loaded.values():
        _check_duplicate_ids(result, problems)
    _check_references(loaded, problems)
    _check_connector_roles(loaded, problems)
    _check_rules(loaded["rules"], [str(i) for i in loaded["connectors"].raw_ids if i], problems)
    _check_suites(loaded["suites"], problems)
    api_sources.relabel(problems)
    if problems.items:
        raise ConfigError(sorted(problems.items, key=_reading_order), root)
    lists: dict[str, Any] = {key: list(result.entries.values()) for key, result in loaded.items()}
    return CdcConfig(directory=root, **lists, **loaded["sources"].settings, **loaded["rules"].settings,
                     registered_schemas=registered.schema_shapes)


def _reading_order(problem: ConfigProblem) -> tuple[int, int]:
    """Files in ``FILES`` order, then entry by entry, so all problems of ``sources[1]`` stand together."""
    files = [spec.name for spec in FILES]
    entry = re.match(r"\w+\[(\d+)\]", problem.key)
    return (files.index(problem.file) if problem.file in files else len(files), int(entry.group(1)) if entry else -1)


# --------------------------------------------------------------------------------------------- one file

_UNREADABLE = object()  # _read_yaml's "no document": None would mean an empty file


def _load_file(root: Path, spec: _FileSpec, problems: _Problems,
               documents: Mapping[str, Any] | None = None) -> _Loaded:
    result = _Loaded(spec)
    path = root / spec.name
    if documents is not None:
        if documents.get(spec.name) is None:
            if spec.required:
                problems.add(spec.name, "", f"not given in the inline config ({root})")
            return result
        document = copy.deepcopy(documents[spec.name])
    elif not path.exists():
        if spec.required:
            problems.add(spec.name, "", f"file not found in {root}")
        return result
    else:
        document = _read_yaml(path, spec.name, problems)
    result.present = True
    if document is _UNREADABLE:
        result.readable = False
        return result
    document = _interpolate(document, (), spec.name, problems)
    items = _top_level_list(document, spec, problems)
    if isinstance(document, dict):
        _load_settings(document, spec, result, problems)
    if items is None:
        result.readable = False
        return result
    for index, raw in enumerate(items):
        result.raw.append(raw)
        try:
            result.entries[index] = spec.model.model_validate(raw)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc: Loc = (spec.list_key, index, *error["loc"])
                # An unknown key is wrong whatever its ${VAR} resolves to: report it even then.
                problems.add(spec.name, loc, _reason(error, spec.model), always=error["type"] == "extra_forbidden")
    return result


def _top_level_list(document: Any, spec: _FileSpec, problems: _Problems) -> list[Any] | None:
    if document is None:
        document = {}
    if not isinstance(document, dict):
        problems.add(spec.name, "", f"should be a mapping with the key {spec.list_key!r}")
        return None
    for key in document:
        if key not in spec.top_level_keys:
            problems.add(spec.name, str(key), _unknown_key(str(key), spec.top_level_keys))
    if spec.list_key not in document:
        if spec.required:
            problems.add(spec.name, spec.list_key, "is required")
        return []
    items = document[spec.list_key]
    if items is None:
        return []
    if not isinstance(items, list):
        problems.add(spec.name, spec.list_key, "should be a list of entries (each starting with '- ')")
        return None
    return items


def _load_settings(document: dict[Any, Any], spec: _FileSpec, result: _Loaded, problems: _Problems) -> None:
    """Validate the file's top-level settings (cdc.yaml's ``schema_changes:``); the valid ones go into ``result``."""
    for key, model in spec.settings:
        value = document.get(key)
        if value is None:
            continue
        try:
            result.settings[key] = model.model_validate(value)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc: Loc = (key, *error["loc"])
                reason = _reason(error, model)
                if error["type"] == "extra_forbidden":
                    reason = next((where for setting, name, where in spec.misplaced
                                   if (setting, name) == (key, error["loc"][0])), reason)
                problems.add(spec.name, loc, reason, always=error["type"] == "extra_forbidden")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML would silently keep the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys are PyYAML's own error
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, file: str, problems: _Problems) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(file, "", f"cannot read: {exc}")
        return _UNREADABLE
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, not str(exc): that quotes the offending line, which may hold a password.
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}" if mark else ""
        column = f" (column {mark.column + 1})" if mark else ""
        problems.add(file, line, f"invalid YAML: {exc.problem or exc.context}{column}")
    except yaml.YAMLError as exc:
        problems.add(file, "", f"invalid YAML: {exc}")
    return _UNREADABLE


# -------------------------------------------------------------------------------------------- interpolation

_VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


def _interpolate(value: Any, loc: Loc, file: str, problems: _Problems) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML document.

    ``$${`` stands for a literal ``${``. The default applies when the variable is unset or empty, as in a shell.
    An unset variable without default is a problem at its key; the string is then left as written.
    """
    if isinstance(value, dict):
        return {k: _interpolate(v, (*loc, str(k)), file, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*loc, i), file, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    missing: list[str] = []
    malformed = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal malformed
        text, name, default = match.group(0), match.group(1), match.group(2)
        if text == "$${":
            return "${"
        if name is None:
            malformed = True
            return text
        resolved = os.environ.get(name)
        if default is not None and not resolved:
            return default
        if resolved is None:
            missing.append(name)
            return text
        return resolved

    result = _VARIABLE.sub(substitute, value)
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        plural = "s" if len(set(missing)) > 1 else ""
        problems.add_unresolved(file, loc, f"environment variable{plural} {names} not set (or write ${{VAR:-default}})")
        return value
    if malformed:
        problems.add_unresolved(file, loc, "malformed ${...}: write ${VAR} or ${VAR:-default}, or $${ for a literal ${")
        return value
    return result


# ------------------------------------------------------------------------------------------------ messages


def _reason(error: ErrorDetails, model: type[BaseModel]) -> str:
    """Turn one pydantic error into a short reason.

    The input is echoed only when it is a short scalar, masked with ``mask_url``, and never under a key that names
    a secret (``options.password``).
    """
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        if len(error["loc"]) > 1:  # a key of a nested mapping: the model's own field names would mislead
            return "unknown key"
        if not model.model_fields:
            return "unknown key (no options are allowed here)"
        return _unknown_key(str(error["loc"][-1]), list(model.model_fields))
    if kind in ("model_type", "dict_type"):
        return "should be a mapping of keys to values"
    if kind == "too_short" and (error.get("ctx") or {}).get("min_length") == 1:
        return "should not be empty"
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    reason = message.replace("Input should be", "should be", 1)
    value = error.get("input")
    secret_key = any(isinstance(p, str) and re.search("password|secret|token", p, re.I) for p in error["loc"])
    if isinstance(value, (str, int, float, bool)) and not secret_key:
        shown = mask_url(value) if isinstance(value, str) else value
        if len(repr(shown)) <= 60:
            reason += f" (got {shown!r})"
    return reason


def _unknown_key(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown key; did you mean {close[0]!r}?" if close else f"unknown key (allowed: {', '.join(known)})"


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, [k for k in known if isinstance(k, str)], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# ------------------------------------------------------------------------------------------- cross-file


def _check_duplicate_ids(result: _Loaded, problems: _Problems) -> None:
    spec, first_at = result.spec, dict[str, int]()
    for index, raw_id in enumerate(result.raw_ids):
        if not isinstance(raw_id, str):
            continue
        if raw_id in first_at:
            problems.add(
                spec.name,
                (spec.list_key, index, spec.id_field),
                f"duplicate id {raw_id!r} (also {_format_key((spec.list_key, first_at[raw_id]))})",
            )
        else:
            first_at[raw_id] = index


def _check_rules(rules: _Loaded, connector_ids: list[str], problems: _Problems) -> None:
    """Compile the valid rules of transformations.yaml in the sandbox: Jinja syntax, refused constructs, unknown
    functions and missing salts, each reported at its rule (fields are checked against table schemas where they are
    known: at run time, and by ``config check`` online)."""
    if not rules.entries:
        return
    from airflow_provider_cdc.transform.engine import RuleSet
    from airflow_provider_cdc.transform.functions import FunctionError, FunctionRegistry

    settings = rules.settings.get("functions")
    modules = list(settings.modules) if settings is not None else []
    try:
        functions = FunctionRegistry.default(modules)
    except (FunctionError, ImportError) as exc:
        problems.add(_RULES.name, "functions.modules", f"cannot load the functions: {exc}")
        return
    index = {entry.rule_id: i for i, entry in rules.entries.items()}
    for line in RuleSet.from_config(list(rules.entries.values()), functions=functions,
                                    connectors=connector_ids).problems():
        rule_id = next((r for r in index if line.startswith(f"rule {r!r}")), None)
        problems.add(*(rules.where(index[rule_id]) if rule_id is not None else (_RULES.name, "rules")), line)


def _check_suites(suites: _Loaded, problems: _Problems) -> None:
    """Compile the valid suites of quality.yaml without GX: rule kinds, keys, values, regexes, bounds and policies,
    each reported at its suite (expectation names and kwargs need GX: ``config check`` asks it; columns need the
    tables: at run time, and ``config check`` online)."""
    from airflow_provider_cdc.quality.rules import check_rules

    for i, suite in suites.entries.items():
        for line in check_rules(suite):
            problems.add(*suites.where(i), line)


def _check_references(loaded: dict[str, _Loaded], problems: _Problems) -> None:
    """Sources point at connectors, rules and suites: check each pointer and the connector's type.

    Works on the raw entries, so that an entry with a bad ``batch_size`` still has its ``sink`` checked.
    """
    connectors, rules, suites = loaded["connectors"], loaded["rules"], loaded["suites"]
    valid_connectors: dict[str, ConnectorConfig] = {}
    for connector in connectors.entries.values():
        valid_connectors.setdefault(connector.id, connector)
    file = _SOURCES.name

    for index, raw in enumerate(loaded["sources"].raw):
        if not isinstance(raw, dict):
            continue
        at = ("sources", index)
        for key in ("sink", "connector"):
            _check_pointer(raw.get(key), connectors, "connector", file, (*at, key), problems)
        connector = raw.get("connector")
        target = valid_connectors.get(connector) if isinstance(connector, str) else None
        source_type = raw.get("type")
        if target is not None and source_type in registry.CONNECTOR_MODULES and target.type != source_type:
            problems.add(
                file, (*at, "type"), f"{source_type!r} does not match connector {target.id!r} of type {target.type!r}"
            )
        for key, other, what in (("transformations", rules, "rule"), ("quality", suites, "quality suite")):
            names = raw.get(key)
            for position, name in enumerate(names if isinstance(names, list) else []):
                _check_pointer(name, other, what, file, (*at, key, position), problems)
    _check_sink_tables(loaded["sources"], problems)


def _check_pointer(name: Any, target: _Loaded, what: str, file: str, loc: Loc, problems: _Problems) -> None:
    if not isinstance(name, str) or not target.readable or name in target.raw_ids:
        return  # not a name (already reported), target file unreadable (already reported), or found
    hint = "" if target.present else f" (there is no {target.spec.name})"
    problems.add(file, loc, f"unknown {what} {name!r}{_suggest(name, target.raw_ids)}{hint}")


def _check_sink_tables(sources: _Loaded, problems: _Problems) -> None:
    """Two sources must not load into one sink table: each would overwrite the other's rows, and the row guard
    compares ``seq`` numbers of different sources. A sink table is ``<sink>.<target_schema>.<table name>``: the
    source schema is not part of it, so ``a.users`` and ``b.users`` collide too. One problem per pair of sources.
    """
    owner: dict[tuple[str, str, str], int] = {}
    clashes: dict[tuple[int, int], list[str]] = {}
    for index, source in sources.entries.items():
        for _, table in source.qualified_tables(DEFAULT_TABLE_SCHEMA):
            target = (source.sink, source.target_schema, table)
            first = owner.setdefault(target, index)
            if first != index:
                clashes.setdefault((index, first), []).append(table)
    for (index, first), tables in clashes.items():
        source, other = sources.entries[index], sources.entries[first]
        if source.id == other.id:
            continue  # a duplicate id, reported as such
        names = ", ".join(repr(t) for t in tables)
        problems.add(
            sources.spec.name,
            ("sources", index, "tables"),
            f"sources {other.id!r} (sources[{first}]) and {source.id!r} would both load "
            f"table{'s' if len(tables) > 1 else ''} "
            f"{names} into schema {source.target_schema!r} of sink {source.sink!r}; give one of them another "
            f"target_schema",
        )


# ------------------------------------------------------------------------------------ registered by the API

_REGISTERED_VARIABLES = {"rules": "cdc.api.rules", "suites": "cdc.api.quality"}


def _merge_registered(loaded: dict[str, _Loaded], registered: Registered, problems: _Problems) -> None:
    """Add the API's rules and suites to what the YAML gave (see the module docstring)."""
    rules, suites = loaded["rules"], loaded["suites"]
    variable = f"Airflow Variable {_REGISTERED_VARIABLES['rules']}"
    for item in registered.rules:
        key = f"rules.{item.rule_id}"
        try:
            model = RuleConfig.model_validate({**item.rule, "rule_id": item.rule_id})
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                problems.add(variable, (key, *error["loc"]), _reason(error, RuleConfig))
            continue
        if item.rule_id in rules.raw_ids:
            index = rules.raw_ids.index(item.rule_id)
            own = rules.entries.get(index)
            if own is not None and _same(own, model):
                continue  # the YAML holds the very same rule: keep it once
            problems.add(_RULES.name, (rules.spec.list_key, index, "rule_id"),
                         f"rule {item.rule_id!r} is also registered through the REST API (version {item.version}, "
                         f"{variable}) with different content; keep one: make the two the same, or remove the rule "
                         f"from this file or from the Variable")
            continue
        _append(rules, model.model_dump(exclude_unset=True), model, key)
    variable = f"Airflow Variable {_REGISTERED_VARIABLES['suites']}"
    for suite in registered.suites:
        key = f"suites.{suite.suite_id}"
        if suite.suite_id in suites.raw_ids:
            index = suites.raw_ids.index(suite.suite_id)
            own = suites.entries.get(index)
            if own is None:
                continue  # the YAML's suite is invalid: reported as such
            added = [rule for rule in suite.rules if rule not in own.rules]
            if added:
                suites.entries[index] = own.model_copy(update={"rules": [*own.rules, *added]})
            continue
        try:
            built = SuiteConfig.model_validate({"id": suite.suite_id, "tables": suite.tables, "rules": suite.rules})
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                problems.add(variable, (key, *error["loc"]), _reason(error, SuiteConfig))
            continue
        _append(suites, {"id": suite.suite_id}, built, key)


def _append(result: _Loaded, raw: dict[str, Any], model: BaseModel, key: str) -> None:
    index = len(result.raw)
    result.raw.append(raw)
    result.entries[index] = model
    result.registered[index] = key


def _same(one: BaseModel, other: BaseModel) -> bool:
    """The same entry, whatever keys were left to their defaults."""
    return one.model_dump(mode="json") == other.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------- connectors


class _Factories:
    """Each connector type's factory, imported once; an import failure is kept as the reason to report."""

    def __init__(self) -> None:
        self._cache: dict[str, registry.ConnectorFactory | str] = {}

    def get(self, connector_type: str) -> registry.ConnectorFactory | str:
        """The factory, or why there is none (the driver is missing, or the type is not in this version)."""
        if connector_type not in self._cache:
            try:
                self._cache[connector_type] = registry.factory(connector_type)
            except MissingExtraError as exc:
                self._cache[connector_type] = f"connector type {connector_type!r} needs a driver: {exc}"
            except ConnectorUnavailableError as exc:
                self._cache[connector_type] = str(exc)
        return self._cache[connector_type]


def _check_connector_roles(loaded: dict[str, _Loaded], problems: _Problems) -> None:
    """Ask each connector factory about the sources and sinks of its type (see the module docstring).

    Options are validated from the raw entries, so a bad ``options.slot_name`` is reported together with a bad
    ``batch_size`` of the same source; the factory's checks across sources see only entries that are valid whole.
    """
    factories = _Factories()
    valid_options = _check_source_options(loaded["sources"], factories, problems)
    for connector_type, entries in valid_options.items():
        built = factories.get(connector_type)
        if isinstance(built, str) or built.check_sources is None or not entries:
            continue
        for index, key, reason in built.check_sources(entries):
            at = _format_key(("sources", index))
            problems.add(_SOURCES.name, f"{at}.{key}" if key else at, reason)
    _check_sinks(loaded["connectors"], loaded["sources"], factories, problems)


def _check_source_options(
    sources: _Loaded, factories: _Factories, problems: _Problems
) -> dict[str, list[tuple[int, SourceConfig, Any]]]:
    """Whether each source's type can capture, and its ``options``; the valid ones by type, for ``check_sources``."""
    valid: dict[str, list[tuple[int, SourceConfig, Any]]] = {}
    for index, raw in enumerate(sources.raw):
        connector_type = raw.get("type") if isinstance(raw, dict) else None
        if not isinstance(connector_type, str) or connector_type not in registry.CONNECTOR_MODULES:
            continue  # not a dict, or a bad type: reported by the model
        at: Loc = ("sources", index)
        built = factories.get(connector_type)
        if isinstance(built, str):
            problems.add(_SOURCES.name, (*at, "type"), built)
            continue
        if built.source is None:
            problems.add(_SOURCES.name, (*at, "type"), f"connector type {connector_type!r} cannot be a source")
            continue
        options = raw.get("options", {})
        if not isinstance(options, dict):
            continue  # reported by the model
        parsed = _validate_options(built.source_options, options, _SOURCES.name, (*at, "options"), problems)
        entry = sources.entries.get(index)
        if parsed is not None and entry is not None:
            valid.setdefault(connector_type, []).append((index, entry, parsed))
    return valid


def _check_sinks(connectors: _Loaded, sources: _Loaded, factories: _Factories, problems: _Problems) -> None:
    """Each connector named by a ``sink:``: it can be a sink, its ``options`` fit, and it can do what the sources
    loading into it ask (``delete_mode: soft``). A connector used by no sink has no use for options."""
    sink_users: dict[str, list[int]] = {}
    source_users: dict[str, list[int]] = {}
    for index, raw in enumerate(sources.raw):
        if isinstance(raw, dict):
            for key, by_connector in (("sink", sink_users), ("connector", source_users)):
                if isinstance(raw.get(key), str):
                    by_connector.setdefault(raw[key], []).append(index)
    seen: set[str] = set()
    for position, connector in connectors.entries.items():
        if connector.id in seen:
            continue  # a duplicate id, reported as such
        seen.add(connector.id)
        at: Loc = ("connectors", position)
        users = sink_users.get(connector.id, [])
        built = factories.get(connector.type)
        if not users:
            if connector.options and source_users.get(connector.id):
                where = ", ".join(_format_key(("sources", i)) for i in source_users[connector.id])
                problems.add(connectors.spec.name, (*at, "options"),
                             f"connector {connector.id!r} is used by no sink, only as a source ({where}), so these "
                             "options would be ignored: a source's options go under that source's options: in cdc.yaml")
            elif connector.options and not isinstance(built, str) and built.sink is not None:
                _validate_options(built.sink_options, connector.options, connectors.spec.name, (*at, "options"),
                                  problems)
            continue
        if isinstance(built, str):
            problems.add(connectors.spec.name, (*at, "type"), built)
            continue
        if built.sink is None:
            for index in users:
                problems.add(_SOURCES.name, ("sources", index, "sink"),
                             f"connector {connector.id!r} is of type {connector.type!r}, which cannot be a sink")
            continue
        _validate_options(built.sink_options, connector.options, connectors.spec.name, (*at, "options"), problems)
        keeps_deleted_rows = built.capabilities is None or built.capabilities.soft_delete
        for index in users:
            if sources.raw[index].get("delete_mode") == "soft" and not keeps_deleted_rows:
                problems.add(_SOURCES.name, ("sources", index, "delete_mode"),
                             f"sink {connector.id!r} (type {connector.type!r}) cannot keep deleted rows; use "
                             "delete_mode: hard, or a sink that can")


def _validate_options(model: type[BaseModel], options: dict[str, Any], file: str, loc: Loc,
                      problems: _Problems) -> Any:
    """``options`` validated by a connector's model, or None after reporting each of its problems under ``loc``."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            problems.add(file, (*loc, *error["loc"]), _reason(error, model),
                         always=error["type"] == "extra_forbidden")
        return None
