"""Lineage (issue 13): the graph of a config's datasets, columns, rules, suites and jobs, the questions asked of it,
and its flow diagram. A plain library, without Airflow: operators attach it to OpenLineage, the schema gate quotes
its impact analysis, the REST API serves it.

``naming``   OpenLineage dataset namespaces and names per connector, never with a credential
``graph``    :func:`build_graph` -> :class:`LineageGraph` (networkx), its node and edge kinds
``builder``  how the graph is built from the config, the schemas and the rules
``queries``  upstream, downstream (``max_depth``, table and column level) and :func:`impact`
``export``   the flow diagram as DOT, Mermaid and SVG (Graphviz)
"""

from __future__ import annotations

from airflow_provider_cdc.lineage.export import GraphvizMissingError, to_dot, to_mermaid, to_svg
from airflow_provider_cdc.lineage.graph import LineageGraph, build_graph
from airflow_provider_cdc.lineage.naming import (
    DatasetName,
    DatasetNamingError,
    namespace_of,
    quarantine_dataset,
    sink_dataset,
    table_dataset,
)
from airflow_provider_cdc.lineage.queries import downstream, impact, upstream

__all__ = [
    "DatasetName", "DatasetNamingError", "GraphvizMissingError", "LineageGraph", "build_graph", "downstream",
    "impact", "namespace_of", "quarantine_dataset", "sink_dataset", "table_dataset", "to_dot", "to_mermaid", "to_svg",
    "upstream",
]
