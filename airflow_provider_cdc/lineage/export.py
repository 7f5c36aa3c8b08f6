"""The flow diagram of a :class:`~.graph.LineageGraph`: Graphviz DOT, Mermaid, and SVG through Graphviz's ``dot``.

The diagram reads left to right: source tables (with their columns) -> the DAG's tasks -> sink tables and the
quarantine, with rules and suites beside the columns they write and check. Column edges carry their rule ids;
masking edges are bold red, INDIRECT ones (filters, join keys) dashed.

DOT is written by hand rather than through pydot or pygraphviz: it is a small text format, and this way the DOT
needs no extra dependency and every id is quoted exactly once, here (:func:`dot_quote`). Mermaid ids may hold only
letters, digits and ``_``, so each node id is sanitised and suffixed with a short hash of the original
(:func:`mermaid_id`): ids stay stable and unique, and labels (quoted) keep the readable names. SVG needs the ``dot``
program (Debian package ``graphviz``); without it :func:`to_svg` raises :class:`GraphvizMissingError`, which says so.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from typing import Any

from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.lineage.graph import (
    APPLIES,
    CHECKS,
    COLUMN_EDGE,
    CONTAINS,
    DAG,
    DATASET,
    DEFINES,
    FEEDS,
    FILTER,
    PRECEDES,
    QUARANTINE,
    READS,
    REFERENCE,
    RULE,
    SINK,
    SUITE,
    TASK,
    VALIDATES,
    WRITES,
    LineageGraph,
)

DOT_TIMEOUT_SECONDS = 60
_MERMAID_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")


class GraphvizMissingError(CdcError):
    """SVG was asked for, but Graphviz's ``dot`` is not installed."""

    terminal = True


# --- what is drawn ----------------------------------------------------------------------------------------------------


class _View:
    """The nodes and edges a diagram shows, given which kinds of node are wanted."""

    def __init__(self, graph: LineageGraph, *, columns: bool, jobs: bool, rules: bool, suites: bool) -> None:
        self.graph = graph
        g = graph.graph
        self.columns, self.jobs, self.rules, self.suites = columns, jobs, rules, suites
        self.datasets = graph.nodes(DATASET)
        self.dataset_columns = {d: graph.columns(d) if columns else [] for d in self.datasets}
        self.dags = graph.nodes(DAG) if jobs else []
        self.tasks = {dag: [t for _, t, data in g.out_edges(dag, data=True) if data["kind"] == CONTAINS]
                      for dag in self.dags}
        self.rule_nodes = graph.nodes(RULE) if rules else []
        self.suite_nodes = graph.nodes(SUITE) if suites else []
        shown = {*self.datasets, *(c for cs in self.dataset_columns.values() for c in cs),
                 *(t for ts in self.tasks.values() for t in ts), *self.rule_nodes, *self.suite_nodes}
        wanted = {FEEDS} if not columns else {COLUMN_EDGE, FILTER, FEEDS}
        if jobs:
            wanted |= {READS, WRITES, PRECEDES}
        if rules:  # with columns, a rule shows the columns it writes (a filter, which writes none: its table)
            wanted |= {DEFINES, APPLIES} if columns else {APPLIES}
        if suites:
            wanted |= {CHECKS} if columns else {VALIDATES}
        self.edges = [e for e in graph.edges() if e["kind"] in wanted and e["source"] in shown
                      and e["target"] in shown and not (columns and self._redundant(e))]

    def _redundant(self, edge: dict[str, Any]) -> bool:
        """With columns drawn, a plain source -> sink ``feeds`` edge says nothing the column edges do not, nor does a
        map's ``applies`` edge beside the ``defines`` edges to its columns."""
        if edge["kind"] == APPLIES:
            return self.graph.graph.nodes[edge["source"]].get("rule_type") != "filter" and bool(
                self.dataset_columns.get(edge["target"]))
        if edge["kind"] != FEEDS or edge.get("via") is not None:
            return False
        sink = set(self.dataset_columns.get(edge["target"], []))
        return any(v in sink for c in self.dataset_columns.get(edge["source"], [])
                   for _, v, d in self.graph.graph.out_edges(c, data=True) if d["kind"] == COLUMN_EDGE)

    def label(self, node: str) -> str:
        data = self.graph.graph.nodes[node]
        if data["kind"] == DATASET:
            roles = "/".join(data["roles"])
            return f"{data['label']}\n{data['namespace']} ({roles})"
        if data["kind"] == TASK:
            return str(data["task_id"])
        return str(data.get("label", node))


def edge_label(edge: dict[str, Any]) -> str:
    """What an edge says in a diagram: its rule ids (``mask_email``), ``filter: active_only``, ``join: ...``."""
    kind = edge["kind"]
    if kind in (COLUMN_EDGE, FILTER):
        rules = ", ".join(edge.get("rule_ids") or ())
        if kind == FILTER:
            return f"filter: {rules}"
        return rules + (" (masked)" if edge.get("masking") else "")
    if kind == FEEDS and edge.get("via"):
        return str(edge["via"]) + (f": {edge['rule_id']}" if edge.get("rule_id") else "")
    if kind == CHECKS:
        return f"{edge.get('check')} ({edge.get('policy')})"
    return ""


# --- DOT --------------------------------------------------------------------------------------------------------------


def dot_quote(text: str) -> str:
    """``text`` as a DOT quoted string: backslashes and quotes escaped, newlines as ``\\n``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
    return f'"{escaped}"'


_DOT_SHAPES = {SINK: "cylinder", QUARANTINE: "folder", REFERENCE: "cylinder"}


def to_dot(graph: LineageGraph, *, columns: bool = True, jobs: bool = True, rules: bool = True, suites: bool = True,
           name: str = "lineage") -> str:
    """The flow diagram as Graphviz DOT (``columns``, ``jobs``, ``rules``, ``suites``: which parts to draw)."""
    view = _View(graph, columns=columns, jobs=jobs, rules=rules, suites=suites)
    g = graph.graph
    lines = [f"digraph {dot_quote(name)} {{", "  rankdir=LR;", "  compound=true;",
             '  node [fontname="Helvetica" fontsize=10];', '  edge [fontname="Helvetica" fontsize=9];']
    for i, dataset in enumerate(view.datasets):
        roles = g.nodes[dataset]["roles"]
        shape = next((_DOT_SHAPES[r] for r in roles if r in _DOT_SHAPES), "cylinder")
        node_line = f"{dot_quote(dataset)} [label={dot_quote(view.label(dataset))} shape={shape}];"
        cols = view.dataset_columns[dataset]
        if not cols:
            lines.append(f"  {node_line}")
            continue
        lines.append(f"  subgraph {dot_quote(f'cluster_dataset_{i}')} {{")
        lines.append(f"    label={dot_quote(g.nodes[dataset]['namespace'])}; style=rounded;")
        lines.append(f"    {node_line}")
        for col in cols:
            data = g.nodes[col]
            style = ' style=filled fillcolor="#fff2cc"' if data.get("key") else ""
            lines.append(f"    {dot_quote(col)} [label={dot_quote(data['column'])} shape=box{style}];")
        lines.append("  }")
    for i, dag in enumerate(view.dags):
        lines.append(f"  subgraph {dot_quote(f'cluster_dag_{i}')} {{")
        lines.append(f"    label={dot_quote(g.nodes[dag]['dag_id'])}; style=dashed;")
        for task in view.tasks[dag]:
            lines.append(f"    {dot_quote(task)} [label={dot_quote(view.label(task))} shape=component];")
        lines.append("  }")
    for rule in view.rule_nodes:
        color = ' color="#cc0000"' if g.nodes[rule].get("masking") else ""
        lines.append(f"  {dot_quote(rule)} [label={dot_quote(view.label(rule))} shape=hexagon{color}];")
    for suite in view.suite_nodes:
        lines.append(f"  {dot_quote(suite)} [label={dot_quote(view.label(suite))} shape=note];")
    for edge in view.edges:
        attrs = _dot_edge_attrs(edge)
        lines.append(f"  {dot_quote(edge['source'])} -> {dot_quote(edge['target'])}"
                     + (f" [{' '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_edge_attrs(edge: dict[str, Any]) -> list[str]:
    attrs: list[str] = []
    label = edge_label(edge)
    if label:
        attrs.append(f"label={dot_quote(label)}")
    if edge.get("masking"):
        attrs += ['color="#cc0000"', "penwidth=2"]
    if edge.get("type") == "INDIRECT" or edge["kind"] in (FILTER, DEFINES, CHECKS, APPLIES, VALIDATES):
        attrs.append("style=dashed")
    if edge["kind"] in (READS, WRITES, PRECEDES):
        attrs.append('color="#777777"')
    return attrs


def to_svg(graph: LineageGraph, **options: Any) -> str:
    """The flow diagram as SVG, rendered by Graphviz's ``dot`` (options as :func:`to_dot`)."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissingError("SVG needs Graphviz's dot program, which is not on PATH: install Graphviz "
                                   "(Debian/Ubuntu: apt-get install graphviz); to_dot() and to_mermaid() work "
                                   "without it")
    try:
        done = subprocess.run([dot, "-Tsvg"], input=to_dot(graph, **options), capture_output=True, text=True,
                              timeout=DOT_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CdcError(f"Graphviz's dot took longer than {DOT_TIMEOUT_SECONDS}s to lay the diagram out") from exc
    if done.returncode != 0:
        raise CdcError(f"Graphviz's dot refused the diagram (exit {done.returncode}): {done.stderr.strip()[:500]}")
    return done.stdout


# --- Mermaid ----------------------------------------------------------------------------------------------------------


def mermaid_id(node: str) -> str:
    """A Mermaid-safe id for ``node``: its last path part (``shop.public.users#email``) in letters, digits and
    ``_`` (at most 40, from the end), then 8 hex digits of the whole id's hash, so that ids are stable and unique."""
    digest = hashlib.sha1(node.encode("utf-8")).hexdigest()[:8]
    stem = _MERMAID_UNSAFE.sub("_", node.rpartition("/")[2])[-40:].strip("_")
    return f"n_{stem}_{digest}" if stem else f"n_{digest}"


def mermaid_text(text: str) -> str:
    """``text`` as a quoted Mermaid label (quotes and angle brackets as entities, newlines as ``<br/>``)."""
    escaped = (text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
               .replace("\n", "<br/>"))
    return f'"{escaped}"'


def to_mermaid(graph: LineageGraph, *, columns: bool = True, jobs: bool = True, rules: bool = True,
               suites: bool = True) -> str:
    """The flow diagram as a Mermaid ``flowchart LR`` (options as :func:`to_dot`)."""
    view = _View(graph, columns=columns, jobs=jobs, rules=rules, suites=suites)
    g = graph.graph
    lines = ["flowchart LR"]
    for dataset in view.datasets:
        cols = view.dataset_columns[dataset]
        if not cols:
            lines.append(f"  {mermaid_id(dataset)}[({mermaid_text(view.label(dataset))})]")
            continue
        lines.append(f"  subgraph {mermaid_id(dataset)} [{mermaid_text(view.label(dataset))}]")
        for col in cols:
            lines.append(f"    {mermaid_id(col)}[{mermaid_text(g.nodes[col]['column'])}]")
        lines.append("  end")
    for dag in view.dags:
        lines.append(f"  subgraph {mermaid_id(dag)} [{mermaid_text(g.nodes[dag]['dag_id'])}]")
        for task in view.tasks[dag]:
            lines.append(f"    {mermaid_id(task)}[[{mermaid_text(view.label(task))}]]")
        lines.append("  end")
    for rule in view.rule_nodes:
        lines.append(f"  {mermaid_id(rule)}{{{{{mermaid_text(view.label(rule))}}}}}")
    for suite in view.suite_nodes:
        lines.append(f"  {mermaid_id(suite)}[/{mermaid_text(view.label(suite))}/]")
    masked: list[int] = []
    for i, edge in enumerate(view.edges):
        arrow = "-.->" if edge.get("type") == "INDIRECT" or edge["kind"] in (FILTER, DEFINES, CHECKS, APPLIES,
                                                                                VALIDATES) else "-->"
        label = edge_label(edge)
        text = f"|{mermaid_text(label)}|" if label else ""
        lines.append(f"  {mermaid_id(edge['source'])} {arrow}{text} {mermaid_id(edge['target'])}")
        if edge.get("masking"):
            masked.append(i)
    if masked:
        lines.append(f"  linkStyle {','.join(map(str, masked))} stroke:#cc0000,stroke-width:2px")
    return "\n".join(lines) + "\n"


__all__ = ["GraphvizMissingError", "dot_quote", "edge_label", "mermaid_id", "mermaid_text", "to_dot", "to_mermaid",
           "to_svg"]
