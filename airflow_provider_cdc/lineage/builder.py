"""How :func:`~.graph.build_graph` builds a lineage graph from a config, schemas and URLs (its model: :mod:`.graph`).

Per source, in config order: its DAG and tasks as the DAG factory lays them out; per table of ``tables`` (a MongoDB
``db.*`` expanded to the collections known): the source dataset and its columns, the sink dataset, the rules scoped
to the table, the join references, the column edges, the suites' checks and the quarantine.

Column lineage comes from the rules themselves (:class:`~airflow_provider_cdc.transform.rules.ColumnLineage`), run
on an empty table of the source schema exactly as the transform stage derives its output schema, so the graph and a
batch never disagree about which columns a rule writes. Rules chain: a rule reading an earlier rule's target is
traced back to that target's own inputs (``rule_ids`` lists the chain), and a column a later rule overwrites or
drops keeps no stale edge. Suites check the columns of the *transformed* batch, so their edges end at sink columns.

**Masking.** A rule masks when its expression calls ``mask()`` or ``hash()`` (``masking_reason: function``) or
when its id or name says so (``mask``, ``redact``, ``anonymi``, ``pseudonym``: ``masking_reason: declared``). The
second is deliberate: the seed's ``mask_email`` masks with string slicing, which no analysis can tell from a plain
substring, and its author's word is the best evidence there is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import networkx as nx

from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.lineage.graph import (
    APPLIES,
    CHECKS,
    COLUMN,
    COLUMN_EDGE,
    CONTAINS,
    DAG,
    DATASET,
    DEFINES,
    FEEDS,
    FILTER,
    HAS_COLUMN,
    PRECEDES,
    QUARANTINE,
    READS,
    REFERENCE,
    ROLE_ORDER,
    RULE,
    SINK,
    SOURCE,
    SUITE,
    TASK,
    UNRESOLVED_SCHEME,
    VALIDATES,
    WRITES,
    column_id,
    dag_node,
    rule_node,
    suite_node,
    task_node,
)
from airflow_provider_cdc.lineage.naming import (
    DatasetName,
    DatasetNamingError,
    qualified_table,
    quarantine_dataset,
    sink_dataset,
    table_dataset,
)

if TYPE_CHECKING:
    from airflow_provider_cdc.config.models import CdcConfig, ConnectorConfig, SourceConfig
    from airflow_provider_cdc.quality.suites import QualitySuites
    from airflow_provider_cdc.tables import TableSchema
    from airflow_provider_cdc.transform.engine import RuleSet
    from airflow_provider_cdc.transform.functions import FunctionRegistry
    from airflow_provider_cdc.transform.rules import ColumnLineage, CompiledRule

_Origin = tuple[str, tuple["ColumnLineage", ...]]
"""Where a column's current value comes from while rules run: an origin node and the lineage steps since."""
_DECLARED_MASKING = re.compile(r"(?i)mask|redact|anonymi|pseudonym")


class GraphBuilder:
    """Builds the networkx graph of one config (see the module docstring); :meth:`build` once."""

    def __init__(self, config: CdcConfig, schemas: Mapping[tuple[str, str], TableSchema], urls: Mapping[str, str],
                 functions: FunctionRegistry | None) -> None:
        self.config = config
        self.schemas = schemas
        self.urls = urls
        self.functions = functions
        self.g = nx.MultiDiGraph(problems=[])
        self._rulesets: dict[tuple[str, ...], RuleSet] = {}

    def build(self) -> nx.MultiDiGraph:
        for source in self.config.sources:
            self._source(source)
        return self.g

    def problem(self, text: str) -> None:
        if text not in self.g.graph["problems"]:
            self.g.graph["problems"].append(text)

    # -- nodes and edges --

    def node(self, node_id: str, kind: str, **attrs: Any) -> str:
        if node_id in self.g:
            self.g.nodes[node_id].update({k: v for k, v in attrs.items() if v is not None})
        else:
            self.g.add_node(node_id, kind=kind, **attrs)
        return node_id

    def edge(self, u: str, v: str, kind: str, key: str = "", **attrs: Any) -> None:
        self.g.add_edge(u, v, key=f"{kind}|{key}", kind=kind, **attrs)

    def dataset(self, name: DatasetName | None, role: str, *, entry_id: str, connector_type: str, table: str,
                source_id: str, resolved: bool = True) -> str:
        """The dataset node of ``name`` (or, unresolved, ``cdc://<entry_id>/<table>``), with ``role`` added."""
        if name is None:
            name, resolved = DatasetName(f"{UNRESOLVED_SCHEME}://{entry_id}", table), False
        node_id = name.uri
        if node_id not in self.g:
            self.g.add_node(node_id, kind=DATASET, roles=[], source_ids=[], namespace=name.namespace, name=name.name,
                            table=table, connector=entry_id, connector_type=connector_type, resolved=resolved,
                            label=_label(name))
        data = self.g.nodes[node_id]
        if role not in data["roles"]:
            data["roles"] = sorted([*data["roles"], role], key=ROLE_ORDER.index)
        if source_id not in data["source_ids"]:
            data["source_ids"] = sorted([*data["source_ids"], source_id])
        return node_id

    def column(self, dataset: str, name: str, **attrs: Any) -> str:
        node_id = column_id(dataset, name)
        fresh = node_id not in self.g
        self.node(node_id, COLUMN, dataset=dataset, column=name, label=name, **attrs)
        if fresh:
            self.edge(dataset, node_id, HAS_COLUMN)
        return node_id

    # -- one source --

    def _url(self, entry: SourceConfig | ConnectorConfig) -> str | None:
        """The driver URL of a source or connector entry: the caller's, its connection string, or its connector's."""
        if entry.id in self.urls:
            return self.urls[entry.id]
        if entry.connection_string:
            return entry.connection_string
        connector = getattr(entry, "connector", None)
        if connector:
            try:
                return self._url(self.config.connector(connector))
            except CdcError as exc:
                self.problem(f"source {entry.id!r}: {exc}")
                return None
        self.problem(f"{entry.id!r}: its connection (conn_id {entry.conn_id!r}) was not resolved; pass its URL in "
                     f"urls to name its datasets (they are named {UNRESOLVED_SCHEME}://{entry.id}/... meanwhile)")
        return None

    def _name(self, what: str, make: Any, *args: Any) -> DatasetName | None:
        try:
            name: DatasetName = make(*args)
            return name
        except DatasetNamingError as exc:
            self.problem(f"{what}: {exc}")
            return None

    def _source(self, source: SourceConfig) -> None:
        from airflow_provider_cdc.quality.stage import suites_of
        from airflow_provider_cdc.quality.suites import QualitySuites
        from airflow_provider_cdc.transform.stage import policy_of, rules_of

        dag_id = source.dag_id
        url = self._url(source)
        sink: ConnectorConfig | None
        try:
            sink = self.config.connector(source.sink)
        except CdcError as exc:
            self.problem(f"source {source.id!r}: {exc}")
            sink = None
        sink_url = self._url(sink) if sink is not None else None
        rule_configs = rules_of(source, self.config)
        ruleset = self._ruleset(rule_configs)
        policies = {rule.rule_id: policy_of(rule) for rule in rule_configs}
        suites = QualitySuites.from_config(suites_of(source, self.config))
        tasks = self._jobs(source, has_rules=bool(rule_configs), has_suites=bool(suites.suites))
        for entry in self._tables(source):
            qualified = self._qualify(source, url, entry)
            schema = self.schemas.get((source.id, qualified)) or self.schemas.get((source.id, entry))
            source_ds = self.dataset(
                self._name(f"source {source.id!r}, table {entry}", table_dataset, source.type, url, entry)
                if url is not None else None,
                SOURCE, entry_id=source.connector or source.id, connector_type=source.type, table=qualified,
                source_id=source.id)
            self.edge(source_ds, tasks["read"], READS, source.id)
            if schema is not None:
                for col in schema.columns:
                    self.column(source_ds, col.name, key=col.primary_key, logical_type=col.logical_type)
            if sink is None:
                continue
            sink_table = f"{source.target_schema}.{qualified.partition('.')[2] or qualified}"
            sink_ds = self.dataset(
                self._name(f"source {source.id!r}, sink {sink.id!r}", sink_dataset, sink.type, sink_url,
                           source.target_schema, qualified) if sink_url is not None else None,
                SINK, entry_id=sink.id, connector_type=sink.type, table=sink_table, source_id=source.id)
            self.edge(source_ds, sink_ds, FEEDS, source.id, source_id=source.id, dag_id=dag_id, via=None)
            self.edge(tasks["write"], sink_ds, WRITES, source.id)
            rules = ruleset.for_table(qualified)
            for rule in rules:
                self._rule(rule, policies.get(rule.rule_id, "quarantine"))
                self.edge(rule_node(rule.rule_id), sink_ds, APPLIES, source.id, source_id=source.id)
            references = self._references(source, url, rules, sink_ds, tasks, dag_id)
            if schema is not None:
                self._columns(source, qualified, schema, ruleset, rules, source_ds, sink_ds, references)
            checks_quarantine = self._suites(source, qualified, suites, sink_ds)
            if any(policies.get(rule.rule_id) != "fail" for rule in rules) or checks_quarantine:
                ledger = source.ledger_schema or source.target_schema
                quarantine = self.dataset(
                    self._name(f"source {source.id!r}, sink {sink.id!r}", quarantine_dataset, sink.type, sink_url,
                               ledger) if sink_url is not None else None,
                    QUARANTINE, entry_id=sink.id, connector_type=sink.type, table=f"{ledger}._cdc_quarantine",
                    source_id=source.id)
                self.g.nodes[sink_ds]["quarantine"] = quarantine
                self.edge(source_ds, quarantine, FEEDS, source.id, source_id=source.id, dag_id=dag_id,
                          via="quarantine")
                self.edge(tasks["write"], quarantine, WRITES, source.id)

    def _tables(self, source: SourceConfig) -> list[str]:
        """The source's ``tables``, a MongoDB ``db.*`` entry expanded to the collections ``schemas`` knows of it (kept
        as it is while none is known)."""
        out: list[str] = []
        for entry in source.tables:
            if entry.endswith(".*"):
                prefix = entry[:-1]
                known = sorted(t for s, t in self.schemas if s == source.id and t.startswith(prefix))
                out += [t for t in known if t not in out] or [entry]
            elif entry not in out:
                out.append(entry)
        return out

    def _qualify(self, source: SourceConfig, url: str | None, entry: str) -> str:
        if url is None:
            return entry if "." in entry else f"public.{entry}" if source.type == "postgresql" else entry
        try:
            return qualified_table(source.type, url, entry)
        except DatasetNamingError as exc:
            self.problem(f"source {source.id!r}, table {entry}: {exc}")
            return entry

    def _ruleset(self, rule_configs: list[Any]) -> RuleSet:
        from airflow_provider_cdc.transform.engine import RuleSet
        from airflow_provider_cdc.transform.functions import FunctionError, FunctionRegistry

        key = tuple(rule.rule_id for rule in rule_configs)
        if key not in self._rulesets:
            functions = self.functions
            if functions is None:
                try:
                    functions = FunctionRegistry.default(self.config.functions.modules)
                except FunctionError as exc:
                    self.problem(f"custom functions: {exc}")
                    functions = FunctionRegistry()
            # An empty table hashes nothing, so hash() rules need no real salt here.
            self._rulesets[key] = RuleSet.from_config(rule_configs, functions=functions,
                                                      secret=lambda name: "lineage")
        return self._rulesets[key]

    def _jobs(self, source: SourceConfig, *, has_rules: bool, has_suites: bool) -> dict[str, str]:
        """The DAG and its tasks as the DAG factory lays them out; ``read``/``write``/``transform``: the tasks that
        read the source tables, write the sinks and read join references."""
        dag_id = source.dag_id
        dag = self.node(dag_node(dag_id), DAG, dag_id=dag_id, source_id=source.id, mode=source.mode,
                        schedule=source.schedule, label=dag_id)
        if source.mode == "fused":
            names = ["wait_for_changes", "fused"]
        else:
            names = ["wait_for_changes", "capture", *(["transform"] if has_rules else []),
                     *(["validate"] if has_suites else []), "load", "commit"]
        previous: str | None = None
        for name in names:
            task = self.node(task_node(dag_id, name), TASK, dag_id=dag_id, task_id=name, label=f"{dag_id}.{name}")
            self.edge(dag, task, CONTAINS)
            if previous is not None:
                self.edge(previous, task, PRECEDES)
            previous = task
        if source.mode == "fused":
            fused = task_node(dag_id, "fused")
            return {"read": fused, "write": fused, "transform": fused}
        return {"read": task_node(dag_id, "capture"), "write": task_node(dag_id, "load"),
                "transform": task_node(dag_id, "transform")}

    def _rule(self, rule: CompiledRule, policy: str) -> str:
        masking, reason = masking_of(rule)
        return self.node(rule_node(rule.rule_id), RULE, rule_id=rule.rule_id, rule_type=rule.rule_type,
                         name=rule.config.name or rule.rule_id, masking=masking, masking_reason=reason, policy=policy,
                         tables=list(rule.tables) if rule.tables is not None else None, version=rule.version,
                         label=f"{rule.rule_id} ({rule.rule_type})")

    def _references(self, source: SourceConfig, url: str | None, rules: list[CompiledRule], sink_ds: str,
                    tasks: dict[str, str], dag_id: str) -> dict[str, str]:
        """The reference datasets of the join rules among ``rules``: lineage's ``connector:table`` -> node id."""
        from airflow_provider_cdc.transform.joinspec import SOURCE_DATASET

        out: dict[str, str] = {}
        for rule in rules:
            spec = rule.join
            if spec is None:
                continue
            entry: SourceConfig | ConnectorConfig | None = source
            entry_url = url
            if spec.connector is not None:
                try:
                    entry = self.config.connector(spec.connector)
                    entry_url = self._url(entry)
                except CdcError as exc:
                    self.problem(f"rule {rule.rule_id!r}: {exc}")
                    entry, entry_url = None, None
            entry_id = spec.connector or source.id
            entry_type = entry.type if entry is not None else "unknown"
            qualified = spec.table if "." in spec.table or entry_url is None else self._qualify_ref(
                rule, entry_type, entry_url, spec.table)
            name = self._name(f"rule {rule.rule_id!r}, reference table {spec.table}", table_dataset, entry_type,
                              entry_url, spec.table) if entry_url is not None else None
            ref = self.dataset(name, REFERENCE, entry_id=entry_id, connector_type=entry_type, table=qualified,
                               source_id=source.id)
            out[f"{spec.connector or SOURCE_DATASET}:{spec.table}"] = ref
            self.edge(ref, sink_ds, FEEDS, f"{source.id}|{rule.rule_id}", source_id=source.id, dag_id=dag_id,
                      via="join", rule_id=rule.rule_id)
            self.edge(ref, tasks["transform"], READS, source.id)
            for column in spec.fields:
                self.column(ref, column, key=column in spec.key_columns)
            for column in spec.key_columns:
                self.column(ref, column, key=True)
        return out

    def _qualify_ref(self, rule: CompiledRule, connector_type: str, url: str, table: str) -> str:
        try:
            return qualified_table(connector_type, url, table)
        except DatasetNamingError as exc:
            self.problem(f"rule {rule.rule_id!r}, reference table {table}: {exc}")
            return table

    def _columns(self, source: SourceConfig, qualified: str, schema: TableSchema, ruleset: RuleSet,
                 rules: list[CompiledRule], source_ds: str, sink_ds: str, references: Mapping[str, str]) -> None:
        """Sink columns and column-level edges of one table (see the module docstring on chains)."""
        from airflow_provider_cdc.transform.rules import FILTER_TARGET

        output, lineage = self._run_rules(source, qualified, schema, ruleset, rules)
        for col in output.columns:
            self.column(sink_ds, col.name, key=col.primary_key, logical_type=col.logical_type, derived=col.derived)
        # column name -> where its current value comes from: (origin node, the lineage steps since)
        current: dict[str, list[_Origin]] = {
            c.name: [(column_id(source_ds, c.name), ())] for c in schema.columns}
        for rule in rules:
            edges = [e for e in lineage if e.rule_id == rule.rule_id]
            written: dict[str, list[_Origin]] = {}
            for e in edges:
                if e.dataset is not None:
                    ref = references.get(e.dataset)
                    if ref is None:
                        continue
                    origins: list[_Origin] = [(column_id(ref, e.source), ())]
                else:
                    origins = current.get(e.source, [])
                    if not origins:
                        self.problem(f"source {source.id!r}, table {qualified}, rule {rule.rule_id!r}: reads "
                                     f"{e.source!r}, which the table does not have")
                        continue
                if e.target == FILTER_TARGET:
                    for origin, steps in origins:
                        self.edge(origin, sink_ds, FILTER, f"{source.id}|{rule.rule_id}", source_id=source.id,
                                  rule_id=rule.rule_id, rule_ids=[*(s.rule_id for s in steps), rule.rule_id],
                                  rule_type=rule.rule_type, type="INDIRECT", subtype="FILTER", masking=False)
                    continue
                step = _with_masking(e, masking_of(rule)[0])
                written.setdefault(e.target, []).extend((origin, (*steps, step)) for origin, steps in origins)
            if rule.rename_from and rule.target_field:
                current.pop(rule.rename_from, None)
            current.update(written)
            for name in rule.drop_fields:
                current.pop(name, None)
        for col in output.columns:
            target = column_id(sink_ds, col.name)
            for origin, steps in current.get(col.name, []):
                self._column_edge(source, origin, target, steps)

    def _column_edge(self, source: SourceConfig, origin: str, target: str, steps: tuple[ColumnLineage, ...]) -> None:
        if origin not in self.g:  # a reference column the join names
            return
        if not steps:
            self.edge(origin, target, COLUMN_EDGE, source.id, source_id=source.id, rule_id=None, rule_ids=[],
                      rule_type=None, type="DIRECT", subtype="IDENTITY", masking=False)
            return
        rule_ids = list(dict.fromkeys(s.rule_id for s in steps))
        subtypes = [s.subtype for s in steps if s.subtype != "IDENTITY"]
        last = steps[-1]
        self.edge(origin, target, COLUMN_EDGE, f"{source.id}|{','.join(rule_ids)}", source_id=source.id,
                  rule_id=last.rule_id, rule_ids=rule_ids, rule_type=last.rule_type,
                  type="INDIRECT" if any(s.type == "INDIRECT" for s in steps) else "DIRECT",
                  subtype=subtypes[-1] if subtypes else "IDENTITY", masking=any(s.masking for s in steps))
        self.edge(rule_node(last.rule_id), target, DEFINES, source.id, source_id=source.id)

    def _run_rules(self, source: SourceConfig, qualified: str, schema: TableSchema, ruleset: RuleSet,
                   rules: list[CompiledRule]) -> tuple[TableSchema, list[ColumnLineage]]:
        """The output schema and column lineage of ``rules`` over ``schema``: the rules applied to an empty table (as
        :meth:`TransformStage.output_schema` does), or, when they cannot run, walked statically (as
        :meth:`RuleSet.check` does)."""
        from airflow_provider_cdc.events import batch_schema

        if not rules:
            return schema, []
        try:
            result = ruleset.apply(batch_schema(schema, False).empty_table(), schema)
            return result.schema, result.lineage
        except CdcError as exc:
            self.problem(f"source {source.id!r}, table {qualified}: the rules cannot run ({exc}); lineage follows "
                         "their config")
        columns = {c.name: c for c in schema.columns}
        lineage: list[ColumnLineage] = []
        for rule in rules:
            lineage += rule.lineage(columns)
            columns = rule.after(columns, None)
        return dataclasses.replace(schema, columns=tuple(columns.values())), lineage

    def _suites(self, source: SourceConfig, qualified: str, suites: QualitySuites, sink_ds: str) -> bool:
        """Suite nodes and their edges for one table; whether any check quarantines rows."""
        quarantines = False
        for suite in suites.for_table(qualified):
            node = self.node(suite_node(suite.suite_id), SUITE, suite_id=suite.suite_id, version=suite.version,
                             label=suite.suite_id)
            self.edge(node, sink_ds, VALIDATES, source.id, source_id=source.id)
            known = {self.g.nodes[c]["column"] for c in _columns_of(self.g, sink_ds)}
            for check in suite.checks:
                quarantines = quarantines or check.policy == "quarantine"
                for name in check.columns:
                    if name in known:
                        self.edge(node, column_id(sink_ds, name), CHECKS, f"{source.id}|{check.rule_id}",
                                  source_id=source.id, check=check.rule_id, policy=check.policy,
                                  expectation=check.expectation)
                    elif known:
                        self.problem(f"suite {suite.suite_id!r}, check {check.rule_id!r}: {qualified} reaches the "
                                     f"sink without a column {name!r}")
        return quarantines


def masking_of(rule: CompiledRule) -> tuple[bool, str | None]:
    """Whether a rule masks values, and why: ``function`` (its expression calls ``mask()`` or ``hash()``) or
    ``declared`` (its id or name says mask, redact, anonymise or pseudonymise); only maps with an expression mask."""
    if rule.rule_type != "map" or rule.rename_from is not None:
        return False, None
    if rule.masking:
        return True, "function"
    if _DECLARED_MASKING.search(rule.rule_id) or _DECLARED_MASKING.search(rule.config.name or ""):
        return True, "declared"
    return False, None


def _label(name: DatasetName) -> str:
    """A dataset's short label: its name, or the last two parts of a path (``public/users``)."""
    if "/" in name.name:
        return "/".join(name.name.rstrip("/").split("/")[-2:])
    return name.name


def _with_masking(edge: ColumnLineage, masking: bool) -> ColumnLineage:
    return edge if edge.masking == masking else dataclasses.replace(edge, masking=masking)


def _columns_of(g: nx.MultiDiGraph, dataset: str) -> Iterable[str]:
    return (v for _, v, data in g.out_edges(dataset, data=True) if data["kind"] == HAS_COLUMN)
