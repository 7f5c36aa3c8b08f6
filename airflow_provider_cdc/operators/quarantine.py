"""The quarantine replay as a task: what ``python -m airflow_provider_cdc quarantine replay`` does, for a DAG that a
user triggers (from the UI, with params) once a rule or a quality suite was fixed.

The replay runs the source's waiting quarantined rows through its current stages, from the stage that refused each
row on, and loads what passes exactly once (:mod:`airflow_provider_cdc.quarantine_commands`). Unlike the command it
cannot look for a running ``cdc_<source_id>`` run (a task has no access to Airflow's metadata database); the per-row
``_cdc_position`` guard keeps any newer change either way, and pausing the CDC DAG first makes sure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.operators.intent import fail_terminal_errors


class CdcQuarantineReplayOperator(BaseOperator):
    """Replays the waiting quarantined changes of one source; returns a small summary (counts and batch ids).

    :param source_id: the source in ``cdc.yaml`` (templated)
    :param config_dir: the config directory (templated; default ``$CDC_CONFIG_DIR``, else include/config)
    :param cdc_config: the config given inline instead (:func:`~airflow_provider_cdc.config.inline.cdc_config`)
    :param table: only this table's rows, ``schema.table`` or a bare name (templated)
    :param rule: only this rule's or check's rows (templated)
    """

    template_fields: Sequence[str] = ("source_id", "config_dir", "table", "rule")
    ui_color = "#fdf2e9"

    def __init__(self, *, source_id: str, config_dir: str | None = None, table: str | None = None,
                 rule: str | None = None, cdc_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_id = source_id
        self.config_dir = config_dir
        self.cdc_config = cdc_config
        self.table = table
        self.rule = rule

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_cdc.quarantine_commands import outcome_lines, plan_for, replay
        from airflow_provider_cdc.stages import build_stages

        with fail_terminal_errors():
            hook = CdcHook(self.source_id, self.config_dir, documents=self.cdc_config)
            stages = build_stages(hook.source_config, hook.config)
            sink = hook.get_sink()
            try:
                plan = plan_for(hook, sink, table=self.table or None, rule=self.rule or None)
                for line in plan.describe():
                    self.log.info("replay: %s", line)
                outcome = replay(sink, plan, stages, run_id=context["run_id"], actor=replay_actor(context))
            finally:
                sink.close()
        for line in outcome_lines(outcome):
            self.log.info("%s", line)
        return {"source_id": outcome.source_id, "selected": outcome.selected, "replayed": outcome.replayed,
                "still_failing": len(outcome.still_failing), "left": outcome.left, "batch_id": outcome.batch_id,
                "upserted": outcome.upserted, "deleted": outcome.deleted}


def replay_actor(context: Any) -> str:
    """Who replays, for the audit trail: the user who triggered the run (UI, REST API), else the DAG."""
    dag_run = context.get("dag_run")
    user = getattr(dag_run, "triggering_user_name", None)
    return str(user) if user else f"airflow:{getattr(dag_run, 'dag_id', None) or context.get('dag').dag_id}"
