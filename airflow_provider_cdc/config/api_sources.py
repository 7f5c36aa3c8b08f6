"""Sources registered through the REST API (``POST /cdc/api/v1/sources/connect``), merged with cdc.yaml.

They live in the Airflow metadata database, in the Variable ``cdc.api.sources``: a JSON mapping of source id to
``{"source": <a cdc.yaml entry>, "registered_by": ..., "registered_at": ...}``. An entry holds no secret: its
connection is a ``conn_id`` of the Airflow Connection the API created (secrets live there only).

The YAML stays the primary, git-friendly path, so the merge never overrides it:

- an API source whose id is not in cdc.yaml is added after the YAML sources, and checked like them (its sink, its
  options, its sink tables against every other source's);
- an id in both with the same content (a source moved into the YAML) is the YAML's, silently;
- an id in both with different content is a config problem, reported under ``Variable cdc.api.sources``, and
  nothing is chosen for the user.

Problems of an API source found by the loader's checks (``cdc.yaml: sources[4].sink``) are reported under the
Variable and the source's id instead (:meth:`ApiSources.relabel`), so that they point where the entry lives.

This package imports no ``airflow``: the Variable is read only when Airflow is already imported by the process
(the DAG processor, a task, ``airflow dags test``, the API server). ``python -m airflow_provider_cdc.config check``
and plain-Python callers see the YAML alone. No Variable store reachable means no API sources, quietly.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from airflow_provider_cdc.config.models import SourceConfig

if TYPE_CHECKING:
    from airflow_provider_cdc.config.loader import ConfigProblem, _Loaded, _Problems

VARIABLE = "cdc.api.sources"
ORIGIN = f"Airflow Variable {VARIABLE}"
YAML_FILE = "cdc.yaml"


_OVERRIDE: ContextVar[Mapping[str, Mapping[str, Any]] | None] = ContextVar("cdc_api_sources_override",
                                                                          default=None)


_READS_OFF: ContextVar[bool] = ContextVar("cdc_api_registrations_off", default=False)


@contextlib.contextmanager
def without_registrations() -> Iterator[None]:
    """Within the block, configs load from the YAML alone: no Airflow Variable is read (neither the API's sources
    nor its rules and suites). For processes that must not talk to Airflow's supervisor: the OpenLineage provider
    runs the lineage methods in a process it forks from the task, where a Variable read hangs until the provider
    kills it (and the event is lost)."""
    token = _READS_OFF.set(True)
    try:
        yield
    finally:
        _READS_OFF.reset(token)


def registrations_off() -> bool:
    return _READS_OFF.get()


@contextlib.contextmanager
def registered_as(records: Mapping[str, Mapping[str, Any]]) -> Iterator[None]:
    """Within the block (this thread or task only), load configs as if the Variable held ``records``: how the API
    checks a registration with the whole config before it stores anything."""
    token = _OVERRIDE.set(records)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def read_registered() -> dict[str, dict[str, Any]]:
    """The Variable's mapping (source id -> record), or ``{}`` when Airflow is not imported, the metadata database
    cannot be reached, or the Variable is absent or not a JSON mapping."""
    if "airflow" not in sys.modules or registrations_off():
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # models.Variable hands over to the Task SDK itself
            from airflow.models import Variable

            text = Variable.get(VARIABLE, default_var=None)
    except Exception:
        return {}
    try:
        document = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return {}
    return {str(k): v for k, v in document.items() if isinstance(v, dict)} if isinstance(document, dict) else {}


@dataclass
class ApiSources:
    """What the merge added: the positions of the API sources in the loaded list, to relabel their problems."""

    added: dict[int, str] = field(default_factory=dict)  # index in the sources list -> source id

    def relabel(self, problems: _Problems) -> None:
        """Problems the loader found at an API source's index point at the Variable and the source's id."""
        from airflow_provider_cdc.config.loader import ConfigProblem

        def moved(problem: ConfigProblem) -> ConfigProblem:
            for index, source_id in self.added.items():
                prefix = f"sources[{index}]"
                if problem.file == YAML_FILE and (problem.key == prefix or problem.key.startswith(
                        (prefix + ".", prefix + "["))):
                    return ConfigProblem(ORIGIN, f"{source_id}{problem.key[len(prefix):]}", problem.reason)
            return problem

        problems.items[:] = [moved(problem) for problem in problems.items]


def merge_api_sources(sources: _Loaded, problems: _Problems,
                      read: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None) -> ApiSources:
    """Append the API sources to cdc.yaml's loaded ``sources`` (see the module docstring); a conflicting id is a
    problem. ``read`` gives the registered records (default: :func:`registered_as`'s, else the Variable's)."""
    merged = ApiSources()
    override = _OVERRIDE.get()
    registered = override if override is not None else (read or read_registered)()
    if not registered:
        return merged
    yaml_ids = {raw.get("id"): index for index, raw in enumerate(sources.raw) if isinstance(raw, dict)}
    for source_id, record in sorted(registered.items()):
        entry = record.get("source")
        if not isinstance(entry, dict) or entry.get("id") != source_id:
            problems.add(ORIGIN, source_id, "is not a source entry with this id; register it again with POST "
                                            "/cdc/api/v1/sources/connect, or delete it from the Variable")
            continue
        if source_id in yaml_ids:
            index = yaml_ids[source_id]
            if not _same(sources.raw[index], entry):
                problems.add(ORIGIN, source_id, f"source {source_id!r} is also in {YAML_FILE} (sources[{index}]) "
                                                f"with different content ({_difference(sources.raw[index], entry)}); "
                                                f"keep one: delete it from {YAML_FILE} or from the Variable")
            continue
        index = len(sources.raw)
        sources.raw.append(entry)
        merged.added[index] = source_id
        try:
            sources.entries[index] = SourceConfig.model_validate(entry)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
                problems.add(ORIGIN, f"{source_id}{where}", error["msg"].removeprefix("Value error, "))
    return merged


def _same(yaml_entry: Any, api_entry: dict[str, Any]) -> bool:
    """Equal as sources (defaults filled in: ``poll_interval: 1`` is ``1.0``), else as written."""
    try:
        return SourceConfig.model_validate(yaml_entry) == SourceConfig.model_validate(api_entry)
    except ValidationError:
        return bool(yaml_entry == api_entry)


def _difference(yaml_entry: Any, api_entry: dict[str, Any]) -> str:
    """The keys whose values differ, named but not shown (a value may be a connection string)."""
    left = yaml_entry if isinstance(yaml_entry, dict) else {}
    keys = sorted(key for key in {*left, *api_entry} if left.get(key) != api_entry.get(key))
    return "differing keys: " + ", ".join(keys) if keys else "different after defaults"


def problems_of(problems: list[ConfigProblem], source_id: str) -> list[ConfigProblem]:
    """The problems that concern API source ``source_id`` (for the API's answer to a connect)."""
    return [problem for problem in problems if problem.file == ORIGIN and (
        problem.key == source_id or problem.key.startswith((source_id + ".", source_id + "[")))]
