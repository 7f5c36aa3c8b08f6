"""The re-snapshot as a task: what ``python -m airflow_provider_cdc resnapshot`` does, for a DAG that a user
triggers from the UI with params (the table, and the reason, which the audit trail keeps).

The work is :func:`airflow_provider_cdc.resnapshot.resnapshot`, the command's own: the whole source (drop what
holds the old position, forget the ledger rows, truncate the sink tables, purge staged batches, store a fresh
position with the snapshot pending), or only some tables (truncate their sink tables and queue them for a new
snapshot while the others keep streaming). The next run of the pipeline's DAG then reads them anew.

Like the command, the task refuses while a run of the pipeline's DAG (``cdc_<source_id>``) is running, since that
run could commit an old position over the new one: pause the DAG and let its run finish (or mark it failed) first,
or pass ``force``. The count of running runs comes through the Task SDK, which tasks may use (they have no
metadata database of their own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.operators.intent import fail_terminal_errors
from airflow_provider_cdc.operators.quarantine import replay_actor


class CdcResnapshotOperator(BaseOperator):
    """Re-snapshots one source, or some of its tables, and records who asked and why; returns a small summary
    (the tables, whether the whole source, the steps done, the reason).

    :param source_id: the source's id (templated)
    :param reason: why, for the audit trail (templated; required: a re-snapshot discards sink rows)
    :param tables: the tables to re-snapshot, ``table`` or ``schema.table``: a list, or text with commas between
        names (templated, e.g. ``"{{ params.table }}"``); empty or None: the whole source
    :param force: go ahead even while a run of the pipeline's DAG is running (templated: ``"True"`` counts)
    :param config_dir: the YAML config's directory (templated; default ``$CDC_CONFIG_DIR``, else include/config)
    :param cdc_config: the config given inline instead (:func:`~airflow_provider_cdc.config.inline.cdc_config`)
    """

    template_fields: Sequence[str] = ("source_id", "reason", "tables", "force", "config_dir")
    ui_color = "#fadbd8"

    def __init__(self, *, source_id: str, reason: str, tables: str | Sequence[str] | None = None,
                 force: bool | str = False, config_dir: str | None = None,
                 cdc_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_id = source_id
        self.reason = reason
        self.tables = tables
        self.force = force
        self.config_dir = config_dir
        self.cdc_config = cdc_config

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_cdc.resnapshot import CommandError, plan, resnapshot

        reason = str(self.reason or "").strip()
        if not reason:
            raise AirflowFailException(f"re-snapshot of source {self.source_id!r}: give a reason (the audit trail "
                                       "keeps it with who asked)")
        tables = tables_of(self.tables)
        with fail_terminal_errors():
            hook = CdcHook(self.source_id, self.config_dir, documents=self.cdc_config)
            try:
                chosen, what = plan(hook, tables)
            except CommandError as exc:  # an unknown or ambiguous table: nothing was changed
                raise AirflowFailException(f"re-snapshot of source {self.source_id!r}: {exc}") from exc
            self._refuse_while_running(context, hook.source_config.dag_id)
            for line in what:
                self.log.info("re-snapshot of source %s will %s", self.source_id, line)
            actor = replay_actor(context)
            # One audit entry, written by the re-snapshot itself when its steps are done, with who asked and why (a
            # re-snapshot that fails half-way fails this task; triggering it again finishes it: the steps are
            # idempotent).
            try:
                summary = resnapshot(hook, tables, actor=actor, run_id=context.get("run_id"), details={
                    "reason": reason, "requested_by_dag": getattr(context.get("dag"), "dag_id", None)})
            except CommandError as exc:
                raise AirflowFailException(f"re-snapshot of source {self.source_id!r}: {exc}") from exc
        for line in summary.lines():
            self.log.info("%s", line)
        return {"source_id": summary.source_id, "tables": summary.tables, "whole_source": summary.whole_source,
                "steps": summary.steps, "reason": reason}

    def _refuse_while_running(self, context: Any, dag_id: str) -> None:
        running = context["ti"].get_dr_count(dag_id=dag_id, states=["running"])
        if not running:
            return
        message = (f"DAG {dag_id} has {running} running run{'s' if running > 1 else ''}: a run that commits after the "
                   "re-snapshot would store an old position. Pause the DAG and let the run finish (or mark it "
                   "failed) first")
        if not is_true(self.force):
            raise AirflowFailException(message + ", or trigger this one with force")
        self.log.warning("%s; going ahead because of force", message)


def tables_of(value: str | Sequence[str] | None) -> list[str] | None:
    """The tables a rendered ``tables`` names (None: the whole source): a list as it is, text split at commas."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else [str(name) for name in value]
    cleaned = [name.strip() for name in names if name and name.strip() and name.strip() != "None"]
    return cleaned or None


def is_true(value: bool | str | None) -> bool:
    """A rendered flag: templates make ``True`` into the text ``"True"``."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)
