"""The impact of a held table, in the schema gate's message: when a schema change is refused, the message that fails
the run also says what the table feeds (sink tables, rules, quality suites, DAGs) and how severe a change there is
(:func:`~airflow_provider_cdc.lineage.queries.impact`). So whoever reads the failed task's log knows what waits on
the decision before running ``schema accept``.

The gate knows nothing of the config; a load opens :func:`impact_in_hold_messages` around its sink work, which puts a
:class:`HoldImpact` into :data:`airflow_provider_cdc.schema.gate.IMPACT_HOOKS` for that time. The graph is built
only when a table is held (rarely), from the whole config (another pipeline may read this sink), once per load.
An impact that cannot be told (a connection not resolvable, a graph error) leaves the message as it was: the hold
itself never depends on lineage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig
    from airflow_provider_cdc.lineage.graph import LineageGraph
    from airflow_provider_cdc.tables import TableSchema

log = logging.getLogger(__name__)

MAX_LISTED = 8  # names per kind in the message; the rest are counted


class HoldImpact:
    """``(source_id, table) -> text``: the impact of a change to a captured table (``schema.table`` as the batch
    names it), for the gate's hold message. ``urls``: connector or source id -> driver URL, called once, for the
    entries that only Airflow can resolve; ``schemas``: ``(source_id, schema.table)`` -> the captured tables'
    schemas (as :func:`~airflow_provider_cdc.lineage.graph.build_graph` takes them), called once."""

    def __init__(self, config: CdcConfig, urls: Callable[[], Mapping[str, str]] | None = None,
                 schemas: Callable[[], Mapping[tuple[str, str], TableSchema]] | None = None) -> None:
        self.config = config
        self.urls = urls
        self.schemas = schemas
        self._graph: LineageGraph | None = None

    def graph(self) -> LineageGraph:
        if self._graph is None:
            from airflow_provider_cdc.lineage.graph import build_graph

            schemas: Mapping[tuple[str, str], TableSchema] = {}
            if self.schemas is not None:
                try:  # columns make the impact column-level (a key column: severity high); tables suffice without
                    schemas = self.schemas()
                except Exception as exc:
                    log.info("lineage: no schemas for the impact of a hold (%s)", type(exc).__name__)
            self._graph = build_graph(self.config, urls=self.urls() if self.urls else None, schemas=schemas)
        return self._graph

    def __call__(self, source_id: str, table: str) -> str | None:
        try:
            from airflow_provider_cdc.lineage.openlineage import source_tables
            from airflow_provider_cdc.lineage.queries import impact

            graph = self.graph()
            node = source_tables(graph, source_id).get(table)
            if node is None:
                return None
            return describe_impact(graph, impact(graph, node))
        except Exception as exc:
            log.warning("source %s: the impact of held table %s cannot be told (%s); the hold stands", source_id,
                        table, type(exc).__name__)
            return None


def describe_impact(graph: LineageGraph, found: Mapping[str, Any]) -> str:
    """One sentence of an :func:`~airflow_provider_cdc.lineage.queries.impact` result."""
    g = graph.graph

    def names(nodes: list[str], attr: str = "label") -> str:
        shown = [str(g.nodes[n].get(attr) or n) if n in g.nodes else n for n in nodes[:MAX_LISTED]]
        more = len(nodes) - len(shown)
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")

    parts = [f"impact: severity {found['severity']} ({'; '.join(found['reasons'])})"]
    if found["datasets"]:
        parts.append(f"tables downstream: {names(found['datasets'])}")
    if found["rules"]:
        parts.append(f"rules: {', '.join(found['rules'][:MAX_LISTED])}")
    if found["suites"]:
        parts.append(f"quality suites: {', '.join(found['suites'][:MAX_LISTED])}")
    if found["dags"]:
        parts.append(f"DAGs: {names(found['dags'])}")
    return "; ".join(parts)


@contextmanager
def impact_in_hold_messages(config: CdcConfig, urls: Callable[[], Mapping[str, str]] | None = None,
                            schemas: Callable[[], Mapping[tuple[str, str], TableSchema]] | None = None
                            ) -> Iterator[HoldImpact]:
    """While open, a schema change the gate refuses says its impact in the hold message."""
    from airflow_provider_cdc.schema import gate

    hook = HoldImpact(config, urls, schemas)
    gate.IMPACT_HOOKS.append(hook)
    try:
        yield hook
    finally:
        gate.IMPACT_HOOKS.remove(hook)
