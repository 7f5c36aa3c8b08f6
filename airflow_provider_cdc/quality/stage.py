"""The validate stage: a source's quality suites (GX Core) run over every table of a batch, after transform and
before load, in staged and fused mode alike (:mod:`airflow_provider_cdc.stages`).

- **Which suites.** The source's ``quality:`` (suite ids, in config order), or every suite when the key is omitted;
  each suite's ``tables`` scope then picks the tables it checks. The suites are compiled, and the GX context built,
  once per task (on the first batch), never at DAG parse.
- **What is judged.** The after-images of inserts, updates and snapshot reads, typed by the value contract, as the
  transform stage left them. Deletes, truncates and schema changes pass; a value the source did not resend
  (PostgreSQL unchanged TOAST) is not judged.
- **Policies.** A change failing a check under ``warn`` loads, and the failure is logged and counted. Under
  ``quarantine`` (the default) the change is taken out of the batch and joins its quarantine
  (:mod:`airflow_provider_cdc.quarantine`: suite, rule, column, reason and the row), which the sink stores in
  ``_cdc_quarantine`` in the batch's own transaction; the rest of the batch loads. Under ``fail`` the stage raises
  :class:`QualityFailed` (terminal) naming the rule, the count and sample values: nothing is loaded and the position
  does not move.
- **Metrics.** Per table: evaluated, passed, failed, warned and the quality score, with the failures per rule. They
  go, with the suites' hashes, into :meth:`versions` (so into the manifest and the ledger row:
  ``stage_versions.validate``), into the task log, and through :func:`metrics_of` to Airflow ``Stats`` and the
  lineage facets.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.quarantine import Refusal, count_by_rule, merge, quarantine_rows, refused_changes

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, SourceConfig, SuiteConfig
    from airflow_provider_cdc.quality.sink_unique import SinkRows
    from airflow_provider_cdc.quality.suites import QualitySuites
    from airflow_provider_cdc.quality.validate import TableValidation, Violation

log = logging.getLogger("airflow_provider_cdc.quality")

STAGE_NAME = "validate"
# Failures named in a QualityFailed message and in a warning line (the rest are counted).
_REPORTED = 5


class QualityFailed(CdcError):
    """Changes failed a quality rule whose policy is ``fail``: nothing of the batch was loaded."""

    terminal = True


def suites_of(source: SourceConfig, config: CdcConfig) -> list[SuiteConfig]:
    """The suites of ``source``: those its ``quality`` names, in config order, or all of them."""
    wanted = source.quality
    return [suite for suite in config.suites if wanted is None or suite.id in wanted]


class ValidateStage:
    """:class:`~airflow_provider_cdc.stages.Stage` ``validate`` of one source (see the module docstring)."""

    name = STAGE_NAME

    def __init__(self, suites: Sequence[SuiteConfig], *, sink_rows: SinkRows | None = None) -> None:
        self.configs = list(suites)
        self.sink_rows = sink_rows
        self._suites: QualitySuites | None = None
        self._metrics: dict[str, Any] = {}

    @property
    def suites(self) -> QualitySuites:
        """The compiled suites (on first use: a stage is built at every DAG parse, GX is imported in tasks)."""
        if self._suites is None:
            from airflow_provider_cdc.quality.suites import QualitySuites

            self._suites = QualitySuites.from_config(self.configs)
        return self._suites

    def versions(self) -> dict[str, Any]:
        """The suites' hashes, and the metrics of the batch :meth:`apply` judged last (per table)."""
        return {"suites": self.suites.versions(), "metrics": self._metrics}

    def apply(self, batch: ChangeBatch) -> ChangeBatch:
        suites = self.suites
        tables: dict[str, pa.Table] = {}
        refused: list[dict[str, Any]] = []
        fatal: list[str] = []
        self._metrics = {}
        for name, table in batch.tables.items():
            if not suites.for_table(name):
                tables[name] = table
                continue
            result = suites.validate(table, batch.schemas[name], self.sink_rows)
            self._metrics[name] = result.metrics
            fatal += _fatal_lines(name, result)
            _log_warnings(name, result)
            rows = result.rows_to_quarantine()
            if rows:
                refused += refused_changes(table, name, STAGE_NAME, _refusals(result, rows))
                keep = pc.invert(pa.array(_mask(table.num_rows, rows)))
                table = table.filter(keep)
            tables[name] = table
            log.info("validate: %s: %d changes judged, %d passed, %d failed (%d quarantined), quality score %.4f",
                     name, result.metrics["evaluated"], result.metrics["passed"], result.metrics["failed"],
                     len(rows), result.metrics["score"])
        if fatal:
            raise QualityFailed(
                f"batch {batch.batch_id}: quality rules whose policy is fail refused it: {'; '.join(fatal)}. Nothing "
                "was loaded and the position did not move; fix the data at the source or the rule in quality.yaml "
                "(or set its policy to quarantine or warn), then clear the task")
        if refused:
            log.warning("validate: %d changes of batch %s failed quality rules and were quarantined (%s); the sink "
                        "keeps them in _cdc_quarantine with their reason", len(refused), batch.batch_id,
                        count_by_rule(refused))
        quarantine = merge(batch.quarantine, quarantine_rows(refused) if refused else None)
        return dataclasses.replace(batch, tables=tables, quarantine=quarantine)


def _mask(size: int, rows: Sequence[int]) -> list[bool]:
    mask = [False] * size
    for row in rows:
        mask[row] = True
    return mask


def _refusals(result: TableValidation, rows: Sequence[int]) -> list[Refusal]:
    """One refusal per quarantined change (the sink keys its quarantine by change and stage), naming every
    quarantine-policy rule it failed."""
    by_row: dict[int, list[Violation]] = {}
    for violation in result.violations:
        if violation.policy == "quarantine":
            by_row.setdefault(violation.row, []).append(violation)
    out = []
    for row in rows:
        found = by_row[row]
        out.append(Refusal(row, ",".join(dict.fromkeys(v.rule_id for v in found)),
                           "; ".join(f"{v.rule_id}: {v.reason}" for v in found),
                           field=",".join(dict.fromkeys(v.column for v in found if v.column)) or None,
                           suite=",".join(dict.fromkeys(v.suite_id for v in found))))
    return out


def _fatal_lines(table: str, result: TableValidation) -> list[str]:
    lines = []
    by_rule: dict[tuple[str, str], list[Violation]] = {}
    for violation in result.violations:
        if violation.policy == "fail":
            by_rule.setdefault((violation.suite_id, violation.rule_id), []).append(violation)
    for (suite, rule), found in by_rule.items():
        samples = ", ".join(repr(v.value) for v in found[:_REPORTED])
        lines.append(f"{table}: suite {suite!r} rule {rule!r}: {len(found)} change{'s' if len(found) != 1 else ''} "
                     f"failed ({found[0].reason}; sample values: {samples})")
    for failure in result.table_failures:
        if failure.policy == "fail":
            lines.append(f"{table}: suite {failure.suite_id!r} rule {failure.rule_id!r}: {failure.reason}")
    return lines


def _log_warnings(table: str, result: TableValidation) -> None:
    by_rule: dict[tuple[str, str], list[Violation]] = {}
    for violation in result.violations:
        if violation.policy == "warn":
            by_rule.setdefault((violation.suite_id, violation.rule_id), []).append(violation)
    for (suite, rule), found in by_rule.items():
        log.warning("validate: %s: suite %r rule %r (warn): %d changes failed and were loaded anyway; e.g. %s",
                    table, suite, rule, len(found), "; ".join(v.reason for v in found[:_REPORTED]))
    for failure in result.table_failures:
        if failure.policy == "warn":
            log.warning("validate: %s: suite %r rule %r (warn): %s", table, failure.suite_id, failure.rule_id,
                        failure.reason)


def validate_stage(source: SourceConfig, config: CdcConfig) -> ValidateStage | None:
    """The stage factory (:data:`airflow_provider_cdc.stages.STAGE_FACTORIES`): None when no suite applies."""
    suites = suites_of(source, config)
    return ValidateStage(suites, sink_rows=SinkTableRows(source, config)) if suites else None


class SinkTableRows:
    """:data:`~.sink_unique.SinkRows` of one source: its sink table of a source table (the table's name in the
    source's ``target_schema``), read through the sink connector's reference reader (opened on first use)."""

    def __init__(self, source: SourceConfig, config: CdcConfig) -> None:
        from airflow_provider_cdc.transform.stage import ReferenceLookup

        self.source = source
        self.lookup = ReferenceLookup(source, config)

    def __call__(self, table: str, columns: list[str], values: list[tuple[Any, ...]]) -> dict[tuple[Any, ...],
                                                                                          dict[str, Any]]:
        name = table.partition(".")[2]
        return self.lookup(self.source.sink, f"{self.source.target_schema}.{name}", columns, values, missing_ok=True)
