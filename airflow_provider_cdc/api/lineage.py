"""The lineage questions of the REST API, over :mod:`airflow_provider_cdc.lineage`.

The graph is built from the whole config (another pipeline may read a sink this one writes), with the connection
URLs the hook resolves (``CdcHook.lineage_urls``) and the source schemas each sink's registry knows
(``CdcHook.registered_schemas``): with them, datasets have their real namespaces and columns. Neither is required:
an unresolved connection or an unreadable registry leaves the graph coarser and is listed in its ``problems``.
Node ids hold no credentials (:mod:`airflow_provider_cdc.lineage.naming`).

An asset id is what :meth:`~airflow_provider_cdc.lineage.graph.LineageGraph.resolve` takes (``users``,
``users.email``, ``shop:users``, a node id), plus the original spec's ``<source_id>_<table>`` form
(``postgres_main_users``), so that its curl examples work as written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from airflow_provider_cdc.api.errors import InvalidQuestionError, NotFoundError, UnavailableError, known_names
from airflow_provider_cdc.api.models import ImpactAnswer, LineageAnswer, LineageFlow
from airflow_provider_cdc.lineage import GraphvizMissingError, build_graph, to_dot, to_mermaid, to_svg
from airflow_provider_cdc.lineage import downstream as lineage_downstream
from airflow_provider_cdc.lineage import impact as lineage_impact
from airflow_provider_cdc.lineage import upstream as lineage_upstream
from airflow_provider_cdc.lineage.graph import DATASET

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig
    from airflow_provider_cdc.lineage import LineageGraph
    from airflow_provider_cdc.tables import TableSchema

log = logging.getLogger(__name__)

FlowFormat = Literal["json", "dot", "mermaid", "svg"]
MEDIA_TYPES: dict[str, str] = {"json": "application/json", "dot": "text/vnd.graphviz", "mermaid": "text/plain",
                               "svg": "image/svg+xml"}


def graph_of(config: CdcConfig, hook: Callable[[str], Any] | None = None) -> LineageGraph:
    """The lineage graph of ``config``; ``hook``: source id -> ``CdcHook``-like (``lineage_urls``,
    ``registered_schemas``), default a ``CdcHook`` sharing ``config``."""
    if hook is None:
        hook = _cdc_hook(config)
    urls: Mapping[str, str] = {}
    schemas: dict[tuple[str, str], TableSchema] = {}
    problems: list[str] = []
    if config.sources:
        try:
            urls = hook(config.sources[0].id).lineage_urls()  # every source and connector of the config
        except Exception as exc:
            problems.append(f"connection URLs: {type(exc).__name__}")
    for source in config.sources:
        try:
            schemas.update(hook(source.id).registered_schemas())
        except Exception as exc:  # no columns for this source's tables; the tables stay
            log.info("lineage: no registered schemas for source %s (%s)", source.id, type(exc).__name__)
            problems.append(f"source {source.id!r}: the sink's schema registry could not be read "
                            f"({type(exc).__name__}); its tables are shown without columns")
    graph = build_graph(config, schemas=schemas, urls=urls)
    if problems:
        graph.graph.graph["problems"] = [*graph.problems, *problems]
    return graph


def _cdc_hook(config: CdcConfig) -> Callable[[str], Any]:
    from airflow_provider_cdc.hooks.cdc import CdcHook

    def make(source_id: str) -> CdcHook:
        made = CdcHook(source_id, config_dir=str(config.directory))
        made.config = config  # the cached_property's slot: no second load
        return made

    return make


def resolve_asset(graph: LineageGraph, asset_id: str) -> str:
    """The node id ``asset_id`` names, or :class:`NotFoundError` naming the datasets that exist."""
    try:
        return graph.resolve(asset_id)
    except LookupError as exc:
        first = exc
    alias = _spec_alias(graph, asset_id)
    if alias is not None:
        try:
            return graph.resolve(alias)
        except LookupError:
            pass
    tables = [str(graph.graph.nodes[n]["table"]) for n in graph.nodes(DATASET)]
    raise NotFoundError("asset", asset_id, f"{first.args[0] if first.args else first}; datasets: "
                        f"{known_names(tables)}")


def _spec_alias(graph: LineageGraph, asset_id: str) -> str | None:
    """``postgres_main_users`` -> ``postgres_main:users`` when ``postgres_main`` is a source of the graph (the
    longest source id that prefixes it)."""
    sources = sorted({s for n in graph.nodes(DATASET) for s in graph.graph.nodes[n]["source_ids"]}, key=len,
                     reverse=True)
    for source_id in sources:
        if asset_id.startswith(f"{source_id}_") and len(asset_id) > len(source_id) + 1:
            return f"{source_id}:{asset_id[len(source_id) + 1:]}"
    return None


def _walk(graph: LineageGraph, asset_id: str, direction: str, max_depth: int | None) -> LineageAnswer:
    node = resolve_asset(graph, asset_id)
    query = lineage_downstream if direction == "downstream" else lineage_upstream
    try:
        return LineageAnswer.model_validate(query(graph, node, max_depth))
    except ValueError as exc:  # a rule, suite, DAG or task node: not a dataset or a column
        raise InvalidQuestionError(str(exc)) from exc


def downstream(graph: LineageGraph, asset_id: str, max_depth: int | None = None) -> LineageAnswer:
    return _walk(graph, asset_id, "downstream", max_depth)


def upstream(graph: LineageGraph, asset_id: str, max_depth: int | None = None) -> LineageAnswer:
    return _walk(graph, asset_id, "upstream", max_depth)


def impact(graph: LineageGraph, asset_id: str) -> ImpactAnswer:
    node = resolve_asset(graph, asset_id)
    try:
        return ImpactAnswer.model_validate(lineage_impact(graph, node))
    except ValueError as exc:
        raise InvalidQuestionError(str(exc)) from exc


def flow(graph: LineageGraph, fmt: FlowFormat) -> LineageFlow | str:
    """The whole graph: a :class:`LineageFlow` for ``json``, else the diagram's text (media type in
    :data:`MEDIA_TYPES`)."""
    if fmt == "json":
        return LineageFlow.model_validate(graph.to_dict())
    if fmt == "dot":
        return to_dot(graph)
    if fmt == "mermaid":
        return to_mermaid(graph)
    try:
        return to_svg(graph)
    except GraphvizMissingError as exc:
        raise UnavailableError(str(exc)) from exc
