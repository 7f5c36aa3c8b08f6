"""One check of ``quarantine replay`` that every sink's test runs against its real server: quarantined changes are
loaded once, past the high water, a newer change to a key loaded meanwhile is kept, ``replayed_batch_id`` is set, and
the same rows replayed again are a no-op (the ledger has the replay batch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cdc_testing import batch_of, item, quarantined

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.quarantine import replay_batch_id
from airflow_provider_cdc.quarantine_commands import ReplayPlan, plan_replay, replay
from airflow_provider_cdc.tables import Column, TableSchema

ITEMS = TableSchema("public", "items", (Column("id", "bigint", "integer", primary_key=True),
                                        Column("name", "text", "text")), dialect="postgresql")


def check_replay(sink: Any, names: Callable[[], dict[int, str]]) -> None:
    """``names()`` reads the sink table ``items`` as ``{id: name}``."""
    # Changes 2 and 4 quarantined (their row images "n2 ü", "n4 ü"); then a newer change to key 4 is loaded.
    assert pipeline.load_batch(quarantined(batch_of([("c", s, item(s, name=f"n{s}")) for s in range(1, 6)], ITEMS),
                                           2, 4), sink)["applied"]
    assert pipeline.load_batch(batch_of([("u", 6, item(4, name="newer"))], ITEMS), sink)["applied"]
    assert names() == {1: "n1", 3: "n3", 4: "newer", 5: "n5"}

    plan = plan_replay(sink, "shop")
    assert [row["seq"] for row in plan.rows] == [2, 4]
    outcome = replay(sink, plan, [])  # no rule applies now: the rows load as captured
    assert outcome.applied and outcome.replayed == 2 and not outcome.still_failing
    assert outcome.batch_id == replay_batch_id("shop", [row["quarantine_id"] for row in plan.rows])
    assert names() == {1: "n1", 2: "n2 ü", 3: "n3", 4: "newer", 5: "n5"}  # seq 4 lost against seq 6
    assert sink.has_batch(outcome.batch_id)
    assert sink.high_water("shop") == 6  # the replay moved nothing
    assert sink.quarantined("shop") == []
    replayed = sink.quarantined("shop", waiting_only=False)
    assert [(row["seq"], row["replayed_batch_id"]) for row in replayed] == [(2, outcome.batch_id),
                                                                            (4, outcome.batch_id)]
    assert replayed[0]["row"] == {"id": "2", "name": "n2 ü"} and replayed[0]["event_time"].tzinfo is not None

    twice = replay(sink, ReplayPlan("shop", replayed), [])
    assert twice.batch_id == outcome.batch_id and not twice.applied
    assert names() == {1: "n1", 2: "n2 ü", 3: "n3", 4: "newer", 5: "n5"}


def check_validate_replay(sink: Any, names: Callable[[], dict[int, str]]) -> None:
    """The same through the real validate stage (GX): a quality rule refuses changes 2 and 4, a newer change to 4
    loads, the rule is relaxed, and the replay loads 2 once while 4 keeps its newer value."""
    from airflow_provider_cdc.config.models import SuiteConfig
    from airflow_provider_cdc.quality.stage import ValidateStage
    from airflow_provider_cdc.stages import apply_stages

    strict = ValidateStage([SuiteConfig(id="names", rules=[{"type": "pattern", "column": "name", "pattern": "^ok"}])])
    batch = batch_of([("c", s, item(s, name="ok" if s % 2 else f"bad {s} ü")) for s in range(1, 6)], ITEMS)
    made, versions = apply_stages([strict], batch)
    assert made.quarantined_count == 2
    assert pipeline.load_batch(made, sink, stage_versions=versions)["applied"]
    assert pipeline.load_batch(batch_of([("u", 6, item(4, name="newer"))], ITEMS), sink)["applied"]
    assert names() == {1: "ok", 3: "ok", 4: "newer", 5: "ok"}
    waiting = sink.quarantined("shop")
    assert [(row["seq"], row["stage"], row["suite"], row["rule_id"], row["field"]) for row in waiting] == [
        (2, "validate", "names", "pattern_name", "name"), (4, "validate", "names", "pattern_name", "name")]
    assert "'bad 2 ü' does not match pattern '^ok'" in waiting[0]["reason"]

    still = replay(sink, plan_replay(sink, "shop"), [strict])  # the rule not fixed yet: nothing loads
    assert not still.applied and [row["seq"] for row in still.still_failing] == [2, 4]
    relaxed = ValidateStage([SuiteConfig(id="names", rules=[{"type": "not_null", "column": "name"}])])
    outcome = replay(sink, plan_replay(sink, "shop"), [relaxed])
    assert outcome.applied and outcome.replayed == 2 and not outcome.still_failing
    assert names() == {1: "ok", 2: "bad 2 ü", 3: "ok", 4: "newer", 5: "ok"}
    assert sink.quarantined("shop") == []
    again = replay(sink, plan_replay(sink, "shop"), [relaxed])
    assert again.selected == 0 and not again.applied
