"""The lineage graph of a config: which tables and columns feed which, through which rules, jobs and checks.

:func:`build_graph` reads the config (sources, sinks, rules, suites), the known source table schemas and the
connectors' URLs, and builds a :class:`LineageGraph` on a networkx ``MultiDiGraph``. Nothing here connects anywhere
or imports Airflow: the graph is the same in a task, in the schema gate and in the REST API.

**Nodes** (``kind`` attribute), with stable, readable ids:

=========  ==================================================  ==========================================
kind       id                                                   what
=========  ==================================================  ==========================================
dataset    ``postgres://db:5432/shop.public.users``             a source, sink, reference or quarantine
                                                                table (its OpenLineage namespace and name
                                                                as one URI, :mod:`.naming`)
column     ``postgres://db:5432/shop.public.users#email``       a column of a dataset
rule       ``rule:mask_email``                                  a transformation rule
suite      ``suite:users_checks``                               a quality suite
dag        ``dag:cdc_shop``                                     the DAG of a source
task       ``task:cdc_shop.load``                               a task of it (OpenLineage's job name)
=========  ==================================================  ==========================================

**Edges** (``kind`` attribute):

==========  ===================  ================================================================================
kind        from -> to           meaning
==========  ===================  ================================================================================
feeds       dataset -> dataset   table-level lineage: a source (or a join's reference) table feeds a sink table or
                                 the quarantine; ``source_id``, ``dag_id``
has_column  dataset -> column    containment
column      column -> column     column-level lineage: ``rule_id`` (None: passed through unchanged),
                                 ``rule_ids`` (a chain of rules), ``type`` DIRECT|INDIRECT, ``subtype``
                                 IDENTITY|TRANSFORMATION|AGGREGATION|JOIN, ``masking``
filter      column -> dataset    a filter reads the column to decide which rows reach the sink (INDIRECT/FILTER)
reads       dataset -> task      a task reads the dataset (capture: the source tables; transform: references)
writes      task -> dataset      a task writes the dataset (load: sink tables and the quarantine)
contains    dag -> task          the DAG's tasks
precedes    task -> task         task order in the DAG
applies     rule -> dataset      a rule shapes that sink table
defines     rule -> column       a rule writes that sink column
validates   suite -> dataset     a suite judges the batches bound for that sink table
checks      suite -> column      a suite's check reads that sink column (``check``, ``policy``)
==========  ===================  ================================================================================

How it is built (rules run on an empty table, chains, masking): :mod:`.builder`.

Problems that do not stop the build (a rule reading a column the table lacks, an unresolved connection, a URL
without a database) are listed in :attr:`LineageGraph.problems`; the affected parts are left out or named
``cdc://<entry id>/<table>`` (``resolved: false``) instead of failing: lineage degrades, it never stops a pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import networkx as nx

if TYPE_CHECKING:
    from airflow_provider_cdc.config.models import CdcConfig
    from airflow_provider_cdc.tables import TableSchema
    from airflow_provider_cdc.transform.functions import FunctionRegistry

# node kinds
DATASET, COLUMN, RULE, SUITE, DAG, TASK = "dataset", "column", "rule", "suite", "dag", "task"
# edge kinds
FEEDS, HAS_COLUMN, COLUMN_EDGE, FILTER = "feeds", "has_column", "column", "filter"
READS, WRITES, CONTAINS, PRECEDES = "reads", "writes", "contains", "precedes"
APPLIES, DEFINES, VALIDATES, CHECKS = "applies", "defines", "validates", "checks"
# dataset roles (a sink table another source captures has two)
SOURCE, SINK, REFERENCE, QUARANTINE = "source", "sink", "reference", "quarantine"
ROLE_ORDER = (SOURCE, REFERENCE, SINK, QUARANTINE)
"""The order in which :meth:`LineageGraph.resolve` prefers the roles of datasets a short name matches."""

UNRESOLVED_SCHEME = "cdc"
_SOURCE_PREFIX = re.compile(r"^([A-Za-z0-9_]+):(?!//)(.+)$")


def column_id(dataset: str, column: str) -> str:
    """The node id of ``column`` of ``dataset`` (``<dataset uri>#<column>``)."""
    return f"{dataset}#{column}"


def rule_node(rule_id: str) -> str:
    return f"rule:{rule_id}"


def suite_node(suite_id: str) -> str:
    return f"suite:{suite_id}"


def dag_node(dag_id: str) -> str:
    return f"dag:{dag_id}"


def task_node(dag_id: str, task_id: str) -> str:
    """``task:<dag_id>.<task_id>``: OpenLineage names an Airflow task's job ``{dag}.{task}``."""
    return f"task:{dag_id}.{task_id}"


class LineageGraph:
    """A built lineage graph (see the module docstring): the networkx graph plus lookups that keep callers away from
    its encoding. Every value it returns is JSON-safe."""

    def __init__(self, graph: nx.MultiDiGraph) -> None:
        self.graph = graph

    # --- lookups ---

    @property
    def problems(self) -> list[str]:
        """What could not be traced (each names source, table, rule or connector), in build order."""
        return list(self.graph.graph.get("problems", []))

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.graph

    def kind(self, node_id: str) -> str:
        return str(self.graph.nodes[node_id]["kind"])

    def node(self, node_id: str) -> dict[str, Any]:
        """The node's attributes, with its ``id``."""
        return {"id": node_id, **self.graph.nodes[node_id]}

    def nodes(self, kind: str | None = None) -> list[str]:
        """Node ids (of one ``kind``), sorted."""
        return sorted(n for n, data in self.graph.nodes(data=True) if kind is None or data["kind"] == kind)

    def edges(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Edges (of one ``kind``) as dicts: ``source``, ``target`` and the edge's attributes, in a stable order."""
        out = [{"source": u, "target": v, **data} for u, v, data in self.graph.edges(data=True)
               if kind is None or data["kind"] == kind]
        return sorted(out, key=lambda e: (e["kind"], e["source"], e["target"], str(e.get("rule_ids"))))

    def datasets(self, role: str | None = None) -> list[str]:
        """Dataset ids (having ``role``), sorted."""
        return [n for n in self.nodes(DATASET) if role is None or role in self.graph.nodes[n]["roles"]]

    def columns(self, dataset: str) -> list[str]:
        """Column ids of ``dataset``, in table order."""
        return [v for _, v, data in self.graph.out_edges(dataset, data=True) if data["kind"] == HAS_COLUMN]

    def dataset_of(self, column: str) -> str:
        return str(self.graph.nodes[column]["dataset"])

    def resolve(self, ref: str) -> str:
        """The node id ``ref`` names: a node id, or a short name of a dataset or column (``users``,
        ``public.users``, ``users.email``, ``shop.public.users.email``), optionally after ``<source_id>:`` to pick
        that source's tables. A short name prefers source tables (first those no pipeline writes), then references,
        sinks and the quarantine; a name matching several datasets alike raises :class:`LookupError` listing them."""
        if ref in self.graph:
            return ref
        source_id: str | None = None
        name = ref
        match = _SOURCE_PREFIX.match(ref)
        if match and dag_node(f"cdc_{match.group(1)}") in self.graph:
            source_id, name = match.group(1), match.group(2)
        found = self._datasets_named(name, source_id)
        if found:
            return found
        table, dot, column = name.rpartition(".")
        if dot:
            dataset = self._datasets_named(table, source_id)
            if dataset:
                node = column_id(dataset, column)
                if node in self.graph:
                    return node
                known = ", ".join(self.graph.nodes[c]["column"] for c in self.columns(dataset)) or "none known"
                raise LookupError(f"{dataset} has no column {column!r} (columns: {known})")
        raise LookupError(f"no dataset or column of the lineage graph is named {ref!r}; give a node id or a table "
                          f"name such as {self._example()}")

    def _datasets_named(self, name: str, source_id: str | None) -> str | None:
        matches: list[str] = []
        for node in self.datasets():
            data = self.graph.nodes[node]
            if source_id is not None and source_id not in data["source_ids"]:
                continue
            table = data["table"]
            if name in (table, table.partition(".")[2], data["name"]):
                matches.append(node)
        if not matches:
            return None
        def rank(node: str) -> tuple[int, int]:  # a pure source (no pipeline writes it) before a captured sink
            roles = self.graph.nodes[node]["roles"]
            return min(ROLE_ORDER.index(r) for r in roles), len(roles)

        first = min(rank(n) for n in matches)
        best = [n for n in matches if rank(n) == first]
        if len(best) > 1:
            role = ROLE_ORDER[first[0]]
            raise LookupError(f"{name!r} names {len(best)} {role} datasets: {', '.join(best)}; give the node id or "
                              "prefix the name with a source id (shop:users.email)")
        return best[0]

    def _example(self) -> str:
        sources = self.datasets(SOURCE)
        return repr(self.graph.nodes[sources[0]]["table"]) if sources else "'public.users'"

    def to_dict(self) -> dict[str, Any]:
        """The whole graph, JSON-safe: ``nodes`` (each with its ``id``), ``edges`` and ``problems``."""
        return {"nodes": [self.node(n) for n in self.nodes()], "edges": self.edges(), "problems": self.problems}

    # --- queries and exports (see .queries and .export) ---

    def upstream(self, node: str, max_depth: int | None = None) -> dict[str, Any]:
        from airflow_provider_cdc.lineage.queries import upstream

        return upstream(self, node, max_depth)

    def downstream(self, node: str, max_depth: int | None = None) -> dict[str, Any]:
        from airflow_provider_cdc.lineage.queries import downstream

        return downstream(self, node, max_depth)

    def impact(self, node: str) -> dict[str, Any]:
        from airflow_provider_cdc.lineage.queries import impact

        return impact(self, node)


# --- building ---------------------------------------------------------------------------------------------------------


def build_graph(config: CdcConfig, *, schemas: Mapping[tuple[str, str], TableSchema] | None = None,
                urls: Mapping[str, str] | None = None, functions: FunctionRegistry | None = None) -> LineageGraph:
    """The lineage graph of ``config``.

    ``schemas``: ``(source_id, "schema.table") -> TableSchema`` of the source tables known so far (from the sinks'
    schema registries; the key's table is qualified as the connector qualifies it: ``public.users``,
    ``shop.users`` for MySQL and MongoDB). A table without one still appears, without columns.
    ``urls``: source or connector id -> driver URL, for entries whose connection only Airflow can resolve
    (``conn_id``); entries with a ``connection_string`` need none. Credentials in them never reach the graph.
    ``functions``: the custom rule functions (default: the built-ins, the entry points and ``functions.modules``
    of the config).
    """
    from airflow_provider_cdc.lineage.builder import GraphBuilder

    return LineageGraph(GraphBuilder(config, schemas or {}, urls or {}, functions).build())
