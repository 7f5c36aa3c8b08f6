"""OpenLineage for the CDC operators: the three ``get_openlineage_facets_*`` methods that
apache-airflow-providers-openlineage's ``DefaultExtractor`` calls, as a mixin of ``_CdcOperator``.

The datasets and facets are built in :mod:`airflow_provider_cdc.lineage.openlineage` from the source's lineage graph;
this module only gathers what that needs at run time: the config, the resolved connection URLs (never put in an
event: names come from :mod:`airflow_provider_cdc.lineage.naming`), the schemas in the sink's registry, and, on
complete, the task's summary (what ``execute`` returned, i.e. its XCom value, kept on the operator by
:func:`remember_results`) and load's manifest, which carries the validate stage's metrics.

Lineage never fails a task: without OpenLineage the methods return ``None``; any error is logged as a warning and
gives an empty ``OperatorLineage``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_provider_cdc.hooks.cdc import CdcHook
    from airflow_provider_cdc.lineage.graph import LineageGraph
    from airflow_provider_cdc.tables import TableSchema

log = logging.getLogger(__name__)

# operator class -> its role in airflow_provider_cdc.lineage.openlineage (a stage operator's role is its stage)
_ROLES = {"CdcCaptureOperator": "capture", "CdcLoadOperator": "load", "CdcCommitOperator": "commit",
          "CdcFusedOperator": "fused"}


def lineage_role(operator: object) -> str:
    """``capture``, ``load``, ``commit``, ``fused``, or the stage name of a stage operator (subclasses too)."""
    stage = getattr(operator, "stage", None)
    if isinstance(stage, str):
        return stage
    for cls in type(operator).__mro__:
        if cls.__name__ in _ROLES:
            return _ROLES[cls.__name__]
    return "unknown"


_RESULT = "_cdc_lineage_result"
_WRAPPED = "_cdc_lineage_remembers"


def remember_results(cls: type) -> type:
    """Make ``cls.execute`` keep its return value (the task's summary) on the operator, for
    ``get_openlineage_facets_on_complete``. Idempotent.

    Why not pull the summary from XCom: the provider calls the method in a process it forks from the task, and
    there the task runner's channel to its supervisor is not ours to use (under ``dag.test()`` the pull hangs until
    the provider kills the fork, and the COMPLETE event is lost)."""
    execute: Callable[..., Any] | None = getattr(cls, "execute", None)
    if execute is None or getattr(execute, _WRAPPED, False):
        return cls

    @functools.wraps(execute)
    def execute_remembering(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = execute(self, *args, **kwargs)
        setattr(self, _RESULT, result)
        _remember_config(self)
        return result

    setattr(execute_remembering, _WRAPPED, True)
    cls.execute = execute_remembering  # type: ignore[attr-defined]
    return cls


_CONFIG = "_cdc_lineage_config"


def _remember_config(operator: Any) -> None:
    """The config as the task saw it (the REST API's registrations included, read from Airflow Variables, which the
    forked lineage process cannot read), for the COMPLETE and FAIL events."""
    try:
        from airflow_provider_cdc.config import load_config

        setattr(operator, _CONFIG, load_config(operator.config_dir, documents=getattr(operator, "cdc_config", None)))
    except Exception as exc:  # lineage never fails a task
        log.info("OpenLineage: the config is not kept for the lineage events (%s)", type(exc).__name__)


def _masked(exc: BaseException) -> str:
    """An error's text with any URL's password masked (a driver error may quote its connection string)."""
    from airflow_provider_cdc.config.models import mask_url

    return " ".join(mask_url(word) for word in str(exc).split())


class CdcLineageMixin:
    """``get_openlineage_facets_on_start/_on_complete/_on_failure`` for an operator with ``source_id`` and
    ``config_dir`` (the CDC operators). Every subclass's ``execute`` keeps its summary for the COMPLETE event
    (:func:`remember_results`)."""

    if TYPE_CHECKING:
        source_id: str
        config_dir: str | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        remember_results(cls)

    def get_openlineage_facets_on_start(self) -> OperatorLineage | None:
        return self._cdc_lineage("start")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage | None:
        return self._cdc_lineage("complete", task_instance)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> OperatorLineage | None:
        return self._cdc_lineage("failure")

    def _cdc_lineage(self, phase: str, task_instance: Any = None) -> OperatorLineage | None:
        try:
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        try:
            from airflow_provider_cdc.config.api_sources import without_registrations
            from airflow_provider_cdc.hooks.cdc import CdcHook
            from airflow_provider_cdc.lineage.openlineage import task_datasets, to_openlineage

            role = lineage_role(self)
            hook = CdcHook(self.source_id, self.config_dir, documents=getattr(self, "cdc_config", None))
            kept = getattr(self, _CONFIG, None)
            if kept is not None:
                hook.__dict__["config"] = kept  # CdcHook.config is a cached property: the task's own config
            with without_registrations():  # this process must not read Airflow Variables (see _remember_config)
                hook.source_config  # noqa: B018 -- a config that does not load fails here, once
                summary = self._cdc_summary(task_instance) if phase == "complete" else None
                manifest = self._cdc_manifest() if summary is not None and role == "load" else None
                schemas = self._cdc_schemas(hook)
                graph = self._cdc_graph(hook, schemas)
                inputs, outputs = task_datasets(graph, self.source_id, role, schemas=schemas, summary=summary,
                                                manifest=manifest)
            ol_inputs, ol_outputs = to_openlineage(inputs, outputs)
            return OperatorLineage(inputs=ol_inputs, outputs=ol_outputs)
        except Exception as exc:  # lineage never fails a task
            log.warning("OpenLineage: no lineage for source %s (%s): %s: %s", getattr(self, "source_id", "?"),
                        phase, type(exc).__name__, _masked(exc))
            return OperatorLineage()

    def _cdc_summary(self, task_instance: Any) -> Mapping[str, Any] | None:
        """The summary ``execute`` returned (kept by :func:`remember_results`), or None."""
        value = getattr(self, _RESULT, None)
        return value if isinstance(value, Mapping) else None

    def _cdc_manifest(self) -> Mapping[str, Any] | None:
        """The staged manifest load applied (its ``stage_versions``), or None when it cannot be read."""
        uri = getattr(self, "manifest_uri", None)
        if not isinstance(uri, str) or not uri:
            return None
        from airflow_provider_cdc.staging import BatchStore

        try:
            return BatchStore.read_manifest(uri)
        except Exception as exc:
            log.warning("OpenLineage: the manifest of source %s cannot be read (%s); no quality facets",
                        self.source_id, type(exc).__name__)
            return None

    def _cdc_schemas(self, hook: CdcHook) -> dict[str, TableSchema]:
        """``schema.table`` -> the source table's latest schema in the sink's registry; empty when the sink cannot
        be read (lineage then has no schema or column facets, but still its datasets)."""
        from airflow_provider_cdc.config.fields import registered_schemas

        try:
            return registered_schemas(hook.config, hook.source_config)
        except Exception as exc:
            log.warning("OpenLineage: the schema registry of source %s cannot be read (%s: %s); no schema facets",
                        self.source_id, type(exc).__name__, _masked(exc))
            return {}

    def _cdc_graph(self, hook: CdcHook, schemas: Mapping[str, TableSchema]) -> LineageGraph:
        """The lineage graph of this source alone, with its source and sink URLs resolved by the hook."""
        from airflow_provider_cdc.lineage.graph import build_graph

        source = hook.source_config
        config = hook.config.model_copy(update={"sources": [source]})
        urls = {hook.sink_config.id: hook.sink_dsn(), source.id: hook.source_dsn()}
        return build_graph(config, schemas={(source.id, table): schema for table, schema in schemas.items()},
                           urls=urls)
