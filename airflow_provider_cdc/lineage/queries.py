"""Questions asked of a :class:`~.graph.LineageGraph`: what feeds this, what does this feed, what breaks if it changes.

Every query takes a node id or a short name (:meth:`LineageGraph.resolve`: ``users``, ``users.email``) and answers
with plain dicts and lists of strings, ready for JSON (the REST API) and for messages (the schema gate).

**Levels.** A dataset is answered at table level (``feeds`` edges: source -> sink, reference -> sink, source ->
quarantine); a column at column level (``column`` edges, and ``filter`` edges that end at the sink dataset whose
rows a filter selects). Upstream of a column includes the filter inputs of its dataset: they decide which of its
values exist (OpenLineage's INDIRECT/FILTER). ``max_depth`` counts those edges (None: no limit); a dataset two
pipelines apart is depth 2.

**Impact** (:func:`impact`) of a change to a dataset or column lists what it reaches downstream: datasets, columns,
the rules and quality suites on the way, the DAGs (and their tasks) that read or write them, the **critical path**
(the longest chain downstream: what a change travels through before it is fully felt), and a **severity**:

- ``high``: a key column is affected (sinks merge and delete by key: a changed key misplaces or loses rows), or a
  sink column fed only through masking rules is (a change there can break the masking and expose the raw value);
- ``medium``: other sink columns or sink tables are affected (data consumers see the change);
- ``low``: nothing reaches a sink (only a quarantine, or nothing at all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from airflow_provider_cdc.lineage.graph import (
    APPLIES,
    CHECKS,
    COLUMN,
    COLUMN_EDGE,
    DATASET,
    FEEDS,
    FILTER,
    QUARANTINE,
    READS,
    SINK,
    TASK,
    VALIDATES,
    WRITES,
    LineageGraph,
    rule_node,
)

SEVERITIES = ("low", "medium", "high")

Step = Callable[[LineageGraph, str], Iterator[tuple[str, dict[str, Any]]]]


def upstream(graph: LineageGraph, node: str, max_depth: int | None = None) -> dict[str, Any]:
    """What feeds ``node`` (a dataset or a column), up to ``max_depth`` edges away."""
    return _query(graph, node, "upstream", max_depth)


def downstream(graph: LineageGraph, node: str, max_depth: int | None = None) -> dict[str, Any]:
    """What ``node`` (a dataset or a column) feeds, up to ``max_depth`` edges away."""
    return _query(graph, node, "downstream", max_depth)


def impact(graph: LineageGraph, node: str) -> dict[str, Any]:
    """What a change to ``node`` (a dataset or a column) affects, the critical path and a severity (see the module
    docstring)."""
    start = graph.resolve(node)
    kind = graph.kind(start)
    g = graph.graph
    columns: set[str] = set()
    datasets: set[str] = set()
    rules: set[str] = set()
    suites: set[str] = set()
    if kind == DATASET:
        home = start
        reached, edges = _walk(graph, start, _table_down, None)
        datasets |= set(reached)
        for col in graph.columns(start):
            columns.add(col)
            found, col_edges = _walk(graph, col, _column_down, None)
            edges += col_edges
            columns |= {n for n in found if g.nodes[n]["kind"] == COLUMN}
        for dataset in datasets:  # rules shaping, suites judging the sink tables it feeds
            rules |= {g.nodes[u]["rule_id"] for u, _, d in g.in_edges(dataset, data=True) if d["kind"] == APPLIES}
            suites |= {g.nodes[u]["suite_id"] for u, _, d in g.in_edges(dataset, data=True) if d["kind"] == VALIDATES}
        path = _longest(graph, start, _table_down)
    elif kind == COLUMN:
        home = graph.dataset_of(start)
        columns.add(start)
        found, edges = _walk(graph, start, _column_down, None)
        for n in found:
            if g.nodes[n]["kind"] == COLUMN:
                columns.add(n)
            else:
                datasets.add(n)  # the dataset a filter selects rows of
        path = _longest(graph, start, _column_down)
    else:
        raise ValueError(f"impact takes a dataset or a column; {start} is a {kind}")
    for edge in edges:
        rules.update(edge.get("rule_ids") or ())
    datasets |= {graph.dataset_of(c) for c in columns}
    for col in columns:
        suites |= {g.nodes[u]["suite_id"] for u, _, d in g.in_edges(col, data=True) if d["kind"] == CHECKS}
    datasets |= _quarantines(graph, datasets, rules, suites, columns)
    datasets.discard(home)
    dags, tasks = _jobs(graph, {home, *datasets})
    severity, reasons = _severity(graph, columns, datasets)
    return {
        "node": start,
        "kind": kind,
        "datasets": sorted(datasets),
        "columns": sorted(c for c in columns if c != start),
        "rules": sorted(rules),
        "suites": sorted(suites),
        "dags": sorted(dags),
        "tasks": sorted(tasks),
        "critical_path": path,
        "severity": severity,
        "reasons": reasons,
    }


# --- traversal --------------------------------------------------------------------------------------------------------


def _out(graph: LineageGraph, node: str, kinds: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for _, v, data in graph.graph.out_edges(node, data=True):
        if data["kind"] in kinds:
            yield v, {"source": node, "target": v, **data}


def _in(graph: LineageGraph, node: str, kinds: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for u, _, data in graph.graph.in_edges(node, data=True):
        if data["kind"] in kinds:
            yield u, {"source": u, "target": node, **data}


def _table_down(graph: LineageGraph, node: str) -> Iterator[tuple[str, dict[str, Any]]]:
    return _out(graph, node, (FEEDS,))


def _table_up(graph: LineageGraph, node: str) -> Iterator[tuple[str, dict[str, Any]]]:
    return _in(graph, node, (FEEDS,))


def _column_down(graph: LineageGraph, node: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if graph.kind(node) != COLUMN:  # a filter's dataset ends the walk: its rows, not a column, are affected
        return iter(())
    return _out(graph, node, (COLUMN_EDGE, FILTER))


def _column_up(graph: LineageGraph, node: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from _in(graph, node, (COLUMN_EDGE,))
    yield from _in(graph, graph.dataset_of(node), (FILTER,))


def _walk(graph: LineageGraph, start: str, step: Step,
          max_depth: int | None) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Breadth first from ``start``: node -> depth (``start`` left out), and the edges walked."""
    depths: dict[str, int] = {start: 0}
    edges: list[dict[str, Any]] = []
    frontier = [start]
    depth = 0
    while frontier and (max_depth is None or depth < max_depth):
        depth += 1
        following: list[str] = []
        for node in frontier:
            for neighbour, edge in step(graph, node):
                edges.append(edge)
                if neighbour not in depths:
                    depths[neighbour] = depth
                    following.append(neighbour)
        frontier = sorted(following)
    del depths[start]
    return depths, edges


def _longest(graph: LineageGraph, start: str, step: Step) -> list[str]:
    """The longest simple path from ``start`` along ``step`` (ties: the first in sorted order), as node ids."""
    memo: dict[str, list[str]] = {}

    def visit(node: str, on_path: frozenset[str]) -> list[str]:
        if node in memo and not (set(memo[node]) & on_path):
            return memo[node]
        longest = [node]
        for neighbour in sorted({v for v, _ in step(graph, node)}):
            if neighbour in on_path:
                continue  # a cycle (a pipeline writing into its own source): never walk it twice
            tail = visit(neighbour, on_path | {neighbour})
            if len(tail) + 1 > len(longest):
                longest = [node, *tail]
        memo[node] = longest
        return longest

    return visit(start, frozenset({start}))


def _query(graph: LineageGraph, node: str, direction: str, max_depth: int | None) -> dict[str, Any]:
    if max_depth is not None and max_depth < 0:
        raise ValueError(f"max_depth must be 0 or more (got {max_depth})")
    start = graph.resolve(node)
    kind = graph.kind(start)
    if kind == DATASET:
        level, step = "table", _table_down if direction == "downstream" else _table_up
    elif kind == COLUMN:
        level, step = "column", _column_down if direction == "downstream" else _column_up
    else:
        raise ValueError(f"{direction} takes a dataset or a column; {start} is a {kind}")
    depths, edges = _walk(graph, start, step, max_depth)
    nodes = [{"id": n, "kind": graph.kind(n), "depth": d, "label": graph.graph.nodes[n].get("label", n),
              **({"dataset": graph.dataset_of(n)} if graph.kind(n) == COLUMN else {})}
             for n, d in sorted(depths.items(), key=lambda item: (item[1], item[0]))]
    datasets = {n["dataset"] if n["kind"] == COLUMN else n["id"] for n in nodes}
    return {
        "node": start,
        "kind": kind,
        "level": level,
        "direction": direction,
        "max_depth": max_depth,
        "nodes": nodes,
        "datasets": sorted(datasets),
        "edges": [_edge_view(e) for e in edges],
    }


def _edge_view(edge: dict[str, Any]) -> dict[str, Any]:
    keys = ("source", "target", "kind", "rule_id", "rule_ids", "type", "subtype", "masking", "source_id", "via")
    return {k: edge[k] for k in keys if k in edge}


# --- impact parts -----------------------------------------------------------------------------------------------------


def _quarantines(graph: LineageGraph, datasets: set[str], rules: set[str], suites: set[str],
                 columns: set[str]) -> set[str]:
    """The quarantines an affected rule or check can send rows to: a rule whose policy is not ``fail``, a check under
    ``quarantine`` reading an affected column."""
    g = graph.graph
    out: set[str] = set()
    quarantining_rules = {r for r in rules if rule_node(r) in g and g.nodes[rule_node(r)].get("policy") != "fail"}
    for dataset in datasets:
        quarantine = g.nodes[dataset].get("quarantine")
        if quarantine is None:
            continue
        applied = {g.nodes[u]["rule_id"] for u, _, d in g.in_edges(dataset, data=True) if d["kind"] == APPLIES}
        checked = any(d["kind"] == CHECKS and d.get("policy") == "quarantine" and g.nodes[u]["suite_id"] in suites
                      for col in graph.columns(dataset) if col in columns
                      for u, _, d in g.in_edges(col, data=True))
        if applied & quarantining_rules or checked:
            out.add(quarantine)
    return out


def _jobs(graph: LineageGraph, datasets: set[str]) -> tuple[set[str], set[str]]:
    """The ids of the DAGs that read one of ``datasets``, and the tasks (``dag_id.task_id``, OpenLineage's job names)
    of those DAGs that read or write them."""
    g = graph.graph
    dags: set[str] = set()
    tasks: set[str] = set()
    for dataset in datasets:
        for _, task, data in g.out_edges(dataset, data=True):
            if data["kind"] == READS and g.nodes[task]["kind"] == TASK:
                dags.add(g.nodes[task]["dag_id"])
                tasks.add(g.nodes[task]["label"])
    for dataset in datasets:
        for task, _, data in g.in_edges(dataset, data=True):
            if data["kind"] == WRITES and g.nodes[task]["dag_id"] in dags:
                tasks.add(g.nodes[task]["label"])
    return dags, tasks


def _severity(graph: LineageGraph, columns: set[str], datasets: set[str]) -> tuple[str, list[str]]:
    g = graph.graph
    reasons: list[str] = []
    keys = sorted(c for c in columns if g.nodes[c].get("key"))
    if keys:
        reasons.append(f"key columns affected: {', '.join(keys)}")
    for col in sorted(columns):
        if SINK not in g.nodes[graph.dataset_of(col)]["roles"]:
            continue
        feeding = [d for _, _, d in g.in_edges(col, data=True) if d["kind"] == COLUMN_EDGE]
        if feeding and all(d.get("masking") for d in feeding):
            masks = sorted({r for d in feeding for r in d.get("rule_ids") or ()
                            if g.nodes.get(rule_node(r), {}).get("masking")})
            reasons.append(f"{col} is fed only through masking ({', '.join(masks)}): a change can expose raw values")
    if reasons:
        return "high", reasons
    sinks = sorted(d for d in datasets if SINK in g.nodes[d]["roles"])
    if sinks:
        return "medium", [f"sink tables affected: {', '.join(sinks)}"]
    only = sorted(d for d in datasets if QUARANTINE in g.nodes[d]["roles"])
    return "low", [f"only quarantines affected: {', '.join(only)}"] if only else ["nothing downstream"]
