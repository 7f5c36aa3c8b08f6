"""``quarantine replay`` into DeltaSink (:func:`quarantine_replay_check.check_replay`), and its order of writes: a
replay that stopped after its ledger row, before the rows were marked, is finished by running it again."""

from __future__ import annotations

from quarantine_replay_check import check_replay, check_validate_replay

from airflow_provider_cdc.connectors.delta.sink import DeltaSink
from airflow_provider_cdc.quarantine_commands import plan_replay, replay

from .helpers import rows


def test_quarantined_changes_are_replayed_once(tmp_path):
    sink = DeltaSink(str(tmp_path / "lake"), sink_id="lake")
    check_replay(sink, lambda: dict(rows(sink.table_uri("items"), ("id", "name"))))


def test_changes_a_quality_rule_refused_are_replayed_once(tmp_path):
    sink = DeltaSink(str(tmp_path / "lake"), sink_id="lake")
    check_validate_replay(sink, lambda: dict(rows(sink.table_uri("items"), ("id", "name"))))


def test_a_replay_stopped_before_marking_its_rows_is_finished_by_the_next(tmp_path, monkeypatch):
    sink = DeltaSink(str(tmp_path / "lake"), sink_id="lake")

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(sink._quarantine, "mark_replayed", crash)
    try:
        check_replay(sink, lambda: dict(rows(sink.table_uri("items"), ("id", "name"))))
    except RuntimeError:
        pass
    monkeypatch.undo()
    plan = plan_replay(sink, "shop")
    assert [row["seq"] for row in plan.rows] == [2, 4]  # still waiting: the mark is the last write
    outcome = replay(sink, plan, [])
    assert not outcome.applied and sink.has_batch(outcome.batch_id or "")
    assert sink.quarantined("shop") == []
    assert dict(rows(sink.table_uri("items"), ("id", "name")))[2] == "n2 ü"
