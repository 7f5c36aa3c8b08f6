"""The OpenLineage datasets of one CDC task: which tables it reads and writes, with their facets.

Built from the lineage graph (:func:`~.graph.build_graph`) of the task's source, and, once the task has run, from
its XCom summary (and, for load, its manifest). The builders return the OpenLineage JSON shape as plain dicts
(``namespace``, ``name``, ``facets``, ``inputFacets``/``outputFacets``, facets without ``_producer`` and
``_schemaURL``), so they are testable without OpenLineage; :func:`to_openlineage` turns them into
``openlineage.client`` datasets (imported there, lazily: OpenLineage is an optional extra).

Which datasets each task names (its *role*):

==========================  =================================  ============================================
role                        inputs                             outputs
==========================  =================================  ============================================
``capture``, ``commit``     the source's tables                none (capture writes a staged batch, commit a
                                                               position: neither is a dataset)
a stage (``transform``...)  the source's tables                none
``load``, ``fused``         the source's tables                the sink tables, and the quarantine when the
                                                               batch quarantined rows
==========================  =================================  ============================================

Facets: ``dataSource`` and ``schema`` (when the sink's registry knows the table) on every dataset;
``columnLineage`` (the graph's column edges: the rules, ``masked_email <- email`` for the seed's ``mask_email``)
on sink tables; on complete, ``outputStatistics`` (rows upserted plus rows deleted) on sink tables, and the
validate stage's ``dataQualityAssertions`` / ``dataQualityMetrics`` as *input* facets of the source table whose
batch was judged (both are InputDatasetFacets in the spec; the batch judged is that table's changes as the
rules made them, so a metric may name a column a rule derived).

Schema types: a source table's fields carry the type as the source declares it; a sink table's fields carry the
portable logical type (the sink's own type depends on its dialect). Bookkeeping columns are left out.

Nothing here holds a credential: every namespace and name comes from :mod:`.naming`, which never reads the user or
password of a URL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.lineage.graph import (
    COLUMN_EDGE,
    CONTAINS,
    DAG,
    FEEDS,
    FILTER,
    READS,
    SOURCE,
    LineageGraph,
)

if TYPE_CHECKING:
    from airflow_provider_cdc.tables import TableSchema

DatasetDict = dict[str, Any]
WRITING_ROLES = frozenset({"load", "fused"})
"""Roles whose task writes the sink tables (the others read the source, or stage files between tasks)."""


def source_tables(graph: LineageGraph, source_id: str) -> dict[str, str]:
    """``schema.table`` -> dataset node id of the tables ``source_id`` captures (the datasets its capture or fused
    task reads: a dataset's ``source_ids`` also name the sources that write it)."""
    g = graph.graph
    readers = {task for dag in graph.nodes(DAG) if g.nodes[dag].get("source_id") == source_id
               for _, task, edge in g.out_edges(dag, data=True)
               if edge["kind"] == CONTAINS and g.nodes[task].get("task_id") in ("capture", "fused")}
    out: dict[str, str] = {}
    for node in graph.datasets(SOURCE):
        if any(edge["kind"] == READS and task in readers for _, task, edge in g.out_edges(node, data=True)):
            out[str(g.nodes[node]["table"])] = node
    return out


def sink_of(graph: LineageGraph, source_id: str, source_node: str, via: str | None = None) -> str | None:
    """The sink table (``via=None``) or quarantine (``via="quarantine"``) ``source_node`` feeds for ``source_id``."""
    for _, target, data in graph.graph.out_edges(source_node, data=True):
        if data["kind"] == FEEDS and data.get("source_id") == source_id and data.get("via") == via:
            return str(target)
    return None


def dataset_dict(graph: LineageGraph, node: str, schema: TableSchema | None = None) -> DatasetDict:
    """A dataset with its ``dataSource`` facet, and its ``schema`` facet when its columns are known (``schema``: the
    source's declaration, whose types are used instead of the portable ones)."""
    data = graph.graph.nodes[node]
    namespace, name = str(data["namespace"]), str(data["name"])
    facets: dict[str, Any] = {"dataSource": {"name": namespace,
                                             "uri": namespace if "://" in namespace else f"{namespace}://"}}
    fields = _schema_fields(graph, node, schema)
    if fields:
        facets["schema"] = {"fields": fields}
    return {"namespace": namespace, "name": name, "facets": facets}


def column_lineage(graph: LineageGraph, sink_node: str) -> dict[str, Any] | None:
    """The ``columnLineage`` facet of a sink table: per column, the columns it is computed from and how (the rules
    that made it, DIRECT/INDIRECT, subtype, masking); ``dataset``: the columns filters read. None: nothing known."""
    fields: dict[str, Any] = {}
    for column in graph.columns(sink_node):
        inputs = []
        for origin, _, edge in graph.graph.in_edges(column, data=True):
            if edge["kind"] != COLUMN_EDGE:
                continue
            inputs.append(_input_field(graph, origin, edge))
        if inputs:
            fields[str(graph.graph.nodes[column]["column"])] = {"inputFields": _sorted(inputs)}
    dataset = [_input_field(graph, origin, edge) for origin, _, edge in graph.graph.in_edges(sink_node, data=True)
               if edge["kind"] == FILTER]
    if not fields and not dataset:
        return None
    facet: dict[str, Any] = {"fields": fields}
    if dataset:
        facet["dataset"] = _sorted(dataset)
    return facet


def task_datasets(
    graph: LineageGraph,
    source_id: str,
    role: str,
    *,
    schemas: Mapping[str, TableSchema] | None = None,
    summary: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> tuple[list[DatasetDict], list[DatasetDict]]:
    """The inputs and outputs of a task of ``source_id`` in ``role`` (see the module docstring).

    ``schemas``: ``schema.table`` -> the source table's registered schema. ``summary``: the task's XCom summary
    (None before it ran, or when it failed); ``manifest``: the staged manifest load applied (its
    ``stage_versions``)."""
    schemas = schemas or {}
    tables = source_tables(graph, source_id)
    inputs: dict[str, DatasetDict] = {t: dataset_dict(graph, node, schemas.get(t)) for t, node in tables.items()}
    outputs: dict[str, DatasetDict] = {}
    quarantine: DatasetDict | None = None
    if role in WRITING_ROLES:
        for table, node in tables.items():
            sink = sink_of(graph, source_id, node)
            if sink is None:
                continue
            output = dataset_dict(graph, sink)
            lineage = column_lineage(graph, sink)
            if lineage is not None:
                output["facets"]["columnLineage"] = lineage
            outputs[table] = output
    if summary is not None:
        stage_versions = summary.get("stage_versions") or (manifest or {}).get("stage_versions") or {}
        metrics = (stage_versions.get("validate") or {}).get("metrics") or {}
        for table, table_metrics in metrics.items():
            if table in inputs and table_metrics:
                inputs[table]["inputFacets"] = quality_input_facets(table_metrics)
        if role in WRITING_ROLES:
            load = summary.get("load") if role == "fused" else summary
            load = load or {}
            written = load.get("tables") or {}
            for table, output in outputs.items():
                stats = written.get(table) or {}
                output["outputFacets"] = {"outputStatistics": {
                    "rowCount": int(stats.get("upserted") or 0) + int(stats.get("deleted") or 0)}}
            quarantined = int(load.get("quarantined") or 0)
            if quarantined:
                quarantine = _quarantine(graph, source_id, tables, quarantined)
    out = list(outputs.values()) + ([quarantine] if quarantine is not None else [])
    return list(inputs.values()), out


def quality_input_facets(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``dataQualityAssertions`` and ``dataQualityMetrics`` of one table's validate metrics (without the
    ``_producer``/``_schemaURL`` that :func:`~airflow_provider_cdc.quality.facets.quality_facets` adds)."""
    from airflow_provider_cdc.quality.facets import quality_facets

    return {key: {k: v for k, v in facet.items() if not k.startswith("_")}
            for key, facet in quality_facets(metrics, producer="").items()}


def to_openlineage(inputs: Sequence[DatasetDict], outputs: Sequence[DatasetDict]) -> tuple[list[Any], list[Any]]:
    """``openlineage.client`` ``InputDataset``s and ``OutputDataset``s of :func:`task_datasets`' dicts (the facet
    classes add ``_producer`` and ``_schemaURL``)."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset

    return ([InputDataset(namespace=d["namespace"], name=d["name"], facets=_facets(d.get("facets")),
                          inputFacets=_facets(d.get("inputFacets"))) for d in inputs],
            [OutputDataset(namespace=d["namespace"], name=d["name"], facets=_facets(d.get("facets")),
                           outputFacets=_facets(d.get("outputFacets"))) for d in outputs])


# --- helpers ----------------------------------------------------------------------------------------------------------


def _schema_fields(graph: LineageGraph, node: str, schema: TableSchema | None) -> list[dict[str, Any]]:
    if schema is not None:
        return [{"name": c.name, "type": c.source_type, "ordinal_position": i}
                for i, c in enumerate(schema.columns, start=1)]
    out = []
    for i, column in enumerate(graph.columns(node), start=1):
        data = graph.graph.nodes[column]
        field: dict[str, Any] = {"name": str(data["column"]), "ordinal_position": i}
        if data.get("logical_type"):
            field["type"] = str(data["logical_type"])
        out.append(field)
    return out


def _input_field(graph: LineageGraph, origin: str, edge: Mapping[str, Any]) -> dict[str, Any]:
    column = graph.graph.nodes[origin]
    dataset = graph.graph.nodes[column["dataset"]]
    transformation: dict[str, Any] = {"type": edge.get("type") or "DIRECT", "masking": bool(edge.get("masking"))}
    if edge.get("subtype"):
        transformation["subtype"] = edge["subtype"]
    rule_ids = list(edge.get("rule_ids") or [])
    if rule_ids:
        label = "rule" if len(rule_ids) == 1 else "rules"
        kind = f" ({edge['rule_type']})" if edge.get("rule_type") else ""
        transformation["description"] = f"{label} {' -> '.join(rule_ids)}{kind}"
    return {"namespace": str(dataset["namespace"]), "name": str(dataset["name"]), "field": str(column["column"]),
            "transformations": [transformation]}


def _sorted(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(fields, key=lambda f: (f["namespace"], f["name"], f["field"],
                                         str(f["transformations"][0].get("description"))))


def _quarantine(graph: LineageGraph, source_id: str, tables: Mapping[str, str], rows: int) -> DatasetDict | None:
    for node in tables.values():
        target = sink_of(graph, source_id, node, via="quarantine")
        if target is not None:
            out = dataset_dict(graph, target)
            out["outputFacets"] = {"outputStatistics": {"rowCount": rows}}
            return out
    return None


def _facets(facets: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``openlineage.client`` facet objects of a dict of facets (the keys this module writes)."""
    from openlineage.client.facet_v2 import (
        column_lineage_dataset,
        data_quality_assertions_dataset,
        data_quality_metrics_input_dataset,
        datasource_dataset,
        output_statistics_output_dataset,
        schema_dataset,
    )

    def schema_field(f: Mapping[str, Any]) -> Any:
        return schema_dataset.SchemaDatasetFacetFields(name=f["name"], type=f.get("type"),
                                                       ordinal_position=f.get("ordinal_position"))

    def input_field(f: Mapping[str, Any]) -> Any:
        return column_lineage_dataset.InputField(
            namespace=f["namespace"], name=f["name"], field=f["field"],
            transformations=[column_lineage_dataset.Transformation(
                type=t["type"], subtype=t.get("subtype"), description=t.get("description"), masking=t.get("masking"))
                for t in f.get("transformations") or []])

    out: dict[str, Any] = {}
    for key, value in (facets or {}).items():
        if key == "dataSource":
            out[key] = datasource_dataset.DatasourceDatasetFacet(name=value.get("name"), uri=value.get("uri"))
        elif key == "schema":
            out[key] = schema_dataset.SchemaDatasetFacet(fields=[schema_field(f) for f in value["fields"]])
        elif key == "columnLineage":
            out[key] = column_lineage_dataset.ColumnLineageDatasetFacet(
                fields={name: column_lineage_dataset.Fields(inputFields=[input_field(f) for f in entry["inputFields"]])
                        for name, entry in value["fields"].items()},
                dataset=[input_field(f) for f in value.get("dataset") or []])
        elif key == "outputStatistics":
            out[key] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=value["rowCount"])
        elif key == "dataQualityAssertions":
            assertions = data_quality_assertions_dataset
            out[key] = assertions.DataQualityAssertionsDatasetFacet(assertions=[
                assertions.Assertion(**a) for a in value["assertions"]])
        elif key == "dataQualityMetrics":
            quality = data_quality_metrics_input_dataset
            out[key] = quality.DataQualityMetricsInputDatasetFacet(
                rowCount=value.get("rowCount"),
                columnMetrics={name: quality.ColumnMetrics(**metrics)
                               for name, metrics in (value.get("columnMetrics") or {}).items()})
        else:
            raise ValueError(f"no OpenLineage facet class for {key!r}")
    return out


__all__ = ["WRITING_ROLES", "column_lineage", "dataset_dict", "quality_input_facets", "sink_of", "source_tables",
           "task_datasets", "to_openlineage"]
