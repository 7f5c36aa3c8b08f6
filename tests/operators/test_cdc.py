"""Capture, stage, load, commit and fused operators executed directly against real PostgreSQL (15 and 18): rows,
ledger rows, the position Variable and the replication slot; and errors with intent (terminal: AirflowFailException
at once; transient: the error itself, for Airflow's retries).

A context of ``{"run_id": ...}`` is all the operators read; clearing a task is executing it again with the same
run id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    ledger_rows,
    slot_lsn,
    unique_id,
    write_config,
)

from airflow_provider_cdc import stages
from airflow_provider_cdc.dag_factory import build_dags
from airflow_provider_cdc.errors import CdcError, SinkError, SourceError
from airflow_provider_cdc.operators.cdc import (
    CdcCaptureOperator,
    CdcCommitOperator,
    CdcFusedOperator,
    CdcLoadOperator,
    CdcStageOperator,
    held_tables_of,
)
from airflow_provider_cdc.operators.intent import fail_terminal_errors
from airflow_provider_cdc.pipeline import SchemaChangeHeldWarning
from airflow_provider_cdc.positions import PositionStore


def test_template_fields():
    assert "manifest_uri" in CdcLoadOperator.template_fields
    assert "manifest_uri" in CdcCommitOperator.template_fields
    assert "manifest_uri" in CdcStageOperator.template_fields
    for operator in (CdcCaptureOperator, CdcStageOperator, CdcLoadOperator, CdcCommitOperator, CdcFusedOperator):
        assert {"source_id", "config_dir"} <= set(operator.template_fields)


def test_a_terminal_error_becomes_airflow_fail_exception_with_the_same_message():
    lost = SourceError("shop", "replication slot 'cdc_shop' was dropped")
    lost.terminal = True
    with pytest.raises(AirflowFailException, match="source 'shop': replication slot 'cdc_shop' was dropped") as raised:
        with fail_terminal_errors():
            raise lost
    assert raised.value.__cause__ is lost


@pytest.mark.parametrize("error", [SinkError("warehouse", "connection refused"), SourceError("shop", "timeout"),
                                   OSError("network is unreachable")])
def test_a_transient_error_is_left_for_airflows_retries(error):
    with pytest.raises(type(error)) as raised:
        with fail_terminal_errors():
            raise error
    assert raised.value is error


def test_init_stores_arguments_without_io():
    # Runs at DAG parse: a config dir that does not exist and a source that is nowhere must not matter yet.
    load = CdcLoadOperator(task_id="load", source_id="nowhere", config_dir="/does/not/exist",
                           manifest_uri="{{ ti.xcom_pull(task_ids='capture')['manifest_uri'] }}")
    assert (load.source_id, load.config_dir) == ("nowhere", "/does/not/exist")
    assert load.manifest_uri == "{{ ti.xcom_pull(task_ids='capture')['manifest_uri'] }}"


@dataclass
class Shop:
    source_id: str
    source_url: str
    sink_url: str
    config_dir: str

    @property
    def common(self) -> dict:
        return {"source_id": self.source_id, "config_dir": self.config_dir}

    def capture(self, run_id: str) -> dict:
        return CdcCaptureOperator(task_id="capture", **self.common).execute({"run_id": run_id})

    def load(self, manifest_uri: str, run_id: str) -> dict:
        return CdcLoadOperator(task_id="load", manifest_uri=manifest_uri, **self.common).execute({"run_id": run_id})

    def commit(self, manifest_uri: str, run_id: str, newly_held: dict | str | None = None) -> dict:
        return CdcCommitOperator(task_id="commit", manifest_uri=manifest_uri, newly_held=newly_held,
                                 **self.common).execute({"run_id": run_id})

    def run(self, run_id: str) -> tuple[dict, dict, dict]:
        captured = self.capture(run_id)
        loaded = self.load(captured["manifest_uri"], run_id)
        return captured, loaded, self.commit(captured["manifest_uri"], run_id, loaded["newly_held"])

    def position(self) -> dict | None:
        return PositionStore().get_document(self.source_id)

    def slot_lsn(self) -> str | None:
        return slot_lsn(self.source_url, f"cdc_{self.source_id}")

    def execute(self, statement: str, params: tuple = ()) -> None:
        with psycopg.connect(self.source_url, autocommit=True) as conn:
            conn.execute(statement, params)


@pytest.fixture
def shop(pg_database_factory, tmp_path: Path, monkeypatch) -> Iterator[Shop]:
    monkeypatch.setenv("CDC_STAGING_URL", f"file://{tmp_path}/staging")
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=30, orders=40)
    source_id = unique_id("ops")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"])
    yield Shop(source_id, source_url, sink_url, str(config_dir))
    if PositionStore().get_document(source_id) is not None:
        PositionStore().delete(source_id)


def test_capture_load_commit_move_the_rows(shop: Shop):
    captured, loaded, committed = shop.run("manual__snapshot")

    assert captured["source_id"] == shop.source_id
    assert captured["change_count"] == 70
    assert captured["ops"] == {"r": 70, "s": 2}  # and a schema event per table
    assert captured["manifest_uri"].startswith("file://") and captured["manifest_uri"].endswith("manifest.json")
    assert (loaded["batch_id"], loaded["applied"], loaded["upserted"]) == (captured["batch_id"], True, 70)
    assert committed["batch_id"] == captured["batch_id"] and committed["position_stored"] is True
    assert assert_same_rows(shop.source_url, shop.sink_url, "users") == 30
    assert assert_same_rows(shop.source_url, shop.sink_url, "orders") == 40
    assert shop.position()["batch_id"] == captured["batch_id"]
    assert "snapshot" not in shop.position()

    shop.execute("INSERT INTO users (id, email, name, balance) VALUES (100, 'x@example.com', 'X', 5)")
    shop.execute("UPDATE users SET balance = balance + 1 WHERE id <= 5")
    shop.execute("DELETE FROM orders WHERE id > 35")
    captured, loaded, committed = shop.run("manual__stream")

    assert captured["ops"] == {"c": 1, "u": 5, "d": 5}
    assert loaded["applied"] is True
    assert assert_same_rows(shop.source_url, shop.sink_url, "users") == 31
    assert assert_same_rows(shop.source_url, shop.sink_url, "orders") == 35
    assert shop.position()["batch_id"] == captured["batch_id"]
    # Commit acknowledged the source only after storing the position: both agree.
    assert shop.slot_lsn() == shop.position()["lsn"]
    assert [row[0] for row in assert_ledger_consistent(shop.sink_url, shop.source_id)][-1] == captured["batch_id"]


def test_cleared_capture_replays_the_same_range_and_cleared_load_is_a_no_op(shop: Shop):
    shop.run("scheduled__1")  # snapshot
    shop.execute("UPDATE users SET name = 'first' WHERE id = 1")

    first = shop.capture("scheduled__2")
    loaded = shop.load(first["manifest_uri"], "scheduled__2")
    assert loaded["applied"] is True
    shop.execute("UPDATE users SET name = 'second' WHERE id = 2")  # more changes before the tasks are cleared

    again = shop.capture("scheduled__2")  # cleared and re-run: the identical change range
    assert again == first
    reloaded = shop.load(again["manifest_uri"], "scheduled__2")
    assert reloaded["applied"] is False
    assert reloaded["batch_id"] == first["batch_id"]
    assert [row for row in ledger_rows(shop.sink_url, shop.source_id) if row[0] == first["batch_id"]] == [
        (first["batch_id"], first["seq_from"], first["seq_to"])
    ]
    committed = shop.commit(again["manifest_uri"], "scheduled__2")
    assert committed["position_stored"] is True
    with psycopg.connect(shop.sink_url) as conn:
        assert conn.execute("SELECT id, name FROM users WHERE id IN (1, 2) ORDER BY id").fetchall() == [
            (1, "first"), (2, "User 2")
        ]

    # The next run takes the change made meanwhile, once.
    captured, loaded, _ = shop.run("scheduled__3")
    assert captured["batch_id"] != first["batch_id"]
    assert captured["seq_from"] == first["seq_to"] + 1
    assert (captured["change_count"], loaded["applied"]) == (1, True)
    assert_same_rows(shop.source_url, shop.sink_url, "users")
    assert_ledger_consistent(shop.sink_url, shop.source_id)


def test_commit_without_load_raises_naming_the_batch_and_keeps_the_position(shop: Shop):
    shop.run("scheduled__1")
    before, before_slot = shop.position(), shop.slot_lsn()
    shop.execute("DELETE FROM users WHERE id = 3")

    captured = shop.capture("scheduled__2")  # its load never runs
    with pytest.raises(AirflowFailException) as raised:  # retrying the commit cannot help: fail at once
        shop.commit(captured["manifest_uri"], "scheduled__2")

    assert captured["batch_id"] in str(raised.value)
    assert shop.source_id in str(raised.value)
    assert shop.position() == before  # Variable cdc.position.<id> did not move
    assert shop.slot_lsn() == before_slot  # and the source was not acknowledged
    with psycopg.connect(shop.sink_url) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE id = 3").fetchone() == (1,)

    # Clearing the load, then the commit, finishes the run.
    assert shop.load(captured["manifest_uri"], "scheduled__2")["applied"] is True
    assert shop.commit(captured["manifest_uri"], "scheduled__2")["position_stored"] is True
    assert shop.position()["batch_id"] == captured["batch_id"]
    assert_same_rows(shop.source_url, shop.sink_url, "users")


def test_fused_operator_captures_loads_and_commits_in_one_task(shop: Shop):
    fused = CdcFusedOperator(task_id="fused", **shop.common)
    summary = fused.execute({"run_id": "manual__1"})

    assert summary["manifest_uri"] is None  # fused: nothing staged
    assert summary["load"]["applied"] is True and summary["commit"]["position_stored"] is True
    assert summary["stage_versions"] == {}  # no stage registered
    assert assert_same_rows(shop.source_url, shop.sink_url, "users") == 30

    shop.execute("UPDATE orders SET status = 'paid' WHERE id <= 10")
    summary = fused.execute({"run_id": "manual__2"})
    assert summary["ops"] == {"u": 10}
    assert assert_same_rows(shop.source_url, shop.sink_url, "orders") == 40
    assert shop.slot_lsn() == shop.position()["lsn"]


class Shout:
    name = "shout"

    def apply(self, batch):
        import dataclasses

        import pyarrow.compute as pc

        tables = {}
        for qualified, table in batch.tables.items():
            if "status" in table.column_names:
                i = table.column_names.index("status")
                table = table.set_column(i, table.field(i), pc.utf8_upper(table.column("status")))
            tables[qualified] = table
        return dataclasses.replace(batch, tables=tables)

    def versions(self) -> dict:
        return {"v": 2}


def test_stage_operator_stages_what_its_stage_makes_and_load_records_its_version(shop: Shop, monkeypatch):
    monkeypatch.setattr(stages, "STAGE_FACTORIES", (("shout", lambda source, config: Shout()),))
    captured = shop.capture("manual__1")
    stage = CdcStageOperator(task_id="shout", stage="shout", manifest_uri=captured["manifest_uri"], **shop.common)

    staged = stage.execute({"run_id": "manual__1"})

    assert staged["batch_id"] == captured["batch_id"] and staged["change_count"] == captured["change_count"]
    assert staged["stage_versions"] == {"shout": {"v": 2}}
    loaded = shop.load(staged["manifest_uri"], "manual__1")
    assert loaded["applied"] is True
    shop.commit(staged["manifest_uri"], "manual__1")
    with psycopg.connect(shop.sink_url) as conn:
        assert conn.execute("SELECT DISTINCT status FROM orders").fetchall() == [("NEW",)]
        assert conn.execute("SELECT stage_versions FROM _cdc_ledger WHERE batch_id = %s",
                            (captured["batch_id"],)).fetchone()[0] == {"shout": {"v": 2}}


def test_stage_operator_passes_the_batch_on_when_its_stage_is_gone(shop: Shop):
    captured = shop.capture("manual__1")  # no stage registered: the config changed since the DAG was parsed
    stage = CdcStageOperator(task_id="shout", stage="shout", manifest_uri=captured["manifest_uri"], **shop.common)

    assert stage.execute({"run_id": "manual__1"}) == captured


def test_a_dropped_slot_fails_capture_at_once_naming_the_recovery(shop: Shop):
    shop.run("scheduled__1")
    with psycopg.connect(shop.source_url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (f"cdc_{shop.source_id}",))

    with pytest.raises(AirflowFailException) as raised:
        shop.capture("scheduled__2")

    assert f"replication slot 'cdc_{shop.source_id}' was dropped" in str(raised.value)
    assert f"resnapshot {shop.source_id}" in str(raised.value)
    assert shop.slot_lsn() is None  # and not silently re-created


def test_an_unreachable_sink_is_a_transient_error(shop: Shop):
    write_config(Path(shop.config_dir), source_id=shop.source_id, source_url=shop.source_url,
                 sink_url="postgresql://postgres@127.0.0.1:1/nowhere", tables=["users"])

    with pytest.raises(Exception) as raised:  # capture reads the sink's ledger first
        shop.capture("scheduled__1")

    assert not isinstance(raised.value, AirflowFailException)  # retried by Airflow, with backoff
    assert isinstance(raised.value, (CdcError, OSError, psycopg.Error))


# --- schema changes -------------------------------------------------------------------------------------------


def test_load_applies_the_sources_policy_and_commit_fails_once_for_the_table_it_held(shop: Shop):
    write_config(Path(shop.config_dir), source_id=shop.source_id, source_url=shop.source_url, sink_url=shop.sink_url,
                 tables=["users", "orders"], extra="schema_changes: {mode: stop}\n")
    shop.run("scheduled__1")
    shop.execute("ALTER TABLE users ADD COLUMN nickname text")  # compatible, but mode stop holds any change
    shop.execute("UPDATE users SET nickname = 'nick' WHERE id = 1")
    shop.execute("UPDATE orders SET status = 'paid' WHERE id = 1")

    captured = shop.capture("scheduled__2")
    loaded = shop.load(captured["manifest_uri"], "scheduled__2")
    assert list(loaded["newly_held"]) == ["public.users"] and "mode stop" in loaded["newly_held"]["public.users"]
    with pytest.raises(AirflowFailException) as raised:  # as the DAG renders it: JSON text from load's XCom
        shop.commit(captured["manifest_uri"], "scheduled__2", json.dumps(loaded["newly_held"]))
    message = str(raised.value)
    assert f"schema accept {shop.source_id}.public.users" in message and "mode stop" in message
    assert shop.position()["batch_id"] == captured["batch_id"]  # committed before failing
    assert shop.slot_lsn() == shop.position()["lsn"]
    assert_same_rows(shop.source_url, shop.sink_url, "orders")

    shop.execute("UPDATE orders SET status = 'shipped' WHERE id = 2")
    with pytest.warns(SchemaChangeHeldWarning, match=r"public\.users is still held"):
        captured, loaded, committed = shop.run("scheduled__3")
    assert loaded["newly_held"] == {} and list(committed["held_tables"]) == ["public.users"]
    assert_same_rows(shop.source_url, shop.sink_url, "orders")


def test_fused_operator_fails_once_for_a_held_table_then_warns(shop: Shop):
    write_config(Path(shop.config_dir), source_id=shop.source_id, source_url=shop.source_url, sink_url=shop.sink_url,
                 tables=["users", "orders"], mode="fused", extra="schema_changes: {mode: stop}\n")
    fused = CdcFusedOperator(task_id="fused", **shop.common)
    fused.execute({"run_id": "manual__1"})
    shop.execute("ALTER TABLE orders ADD COLUMN note text")
    shop.execute("UPDATE orders SET note = 'x' WHERE id = 1")
    with pytest.raises(AirflowFailException, match=r"public\.orders"):
        fused.execute({"run_id": "manual__2"})
    shop.execute("UPDATE users SET name = 'flows' WHERE id = 1")
    with pytest.warns(SchemaChangeHeldWarning, match=r"public\.orders is still held"):
        summary = fused.execute({"run_id": "manual__3"})
    assert list(summary["held_tables"]) == ["public.orders"]
    assert_same_rows(shop.source_url, shop.sink_url, "users")


def test_the_dags_commit_task_reads_newly_held_from_the_load_tasks_xcom(tmp_path: Path):
    config_dir = write_config(tmp_path / "config", source_id="shop", source_url="postgresql://h/src",
                              sink_url="postgresql://h/dst", tables=["users"])
    dag = build_dags(config_dir)["cdc_shop"]
    commit = dag.get_task("commit")
    assert "newly_held" in commit.template_fields

    class LoadXcom:  # what ``ti.xcom_pull(task_ids='load')`` returns in a run: the load task's summary
        def __init__(self, value):
            self.value = value

        def xcom_pull(self, task_ids):
            assert task_ids == "load"
            return self.value

    template = dag.get_template_env().from_string(commit.newly_held)
    held = {"public.users": "schema change of shop.public.users refused: 'quoted' \"reason\""}
    for value, expected in [({"newly_held": held}, held), ({"empty": True, "newly_held": {}}, {}),
                            ({"empty": True}, {}), (None, {})]:
        rendered = template.render(ti=LoadXcom(value))
        assert held_tables_of(rendered) == expected, rendered
