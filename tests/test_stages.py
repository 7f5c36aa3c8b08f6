"""The stage list: one ordered list of stages between capture and load, used by staged mode (a task per stage) and
fused mode (one process) alike, with the stage versions reaching the sink's ledger row.

The stages here are real ones defined in the test (uppercasing a text column, dropping a table's rows), injected
through the registration point ``stages.STAGE_FACTORIES`` as the transform and validate stages will be.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from cdc_testing import assert_ledger_consistent, create_shop, table_rows, unique_id

from airflow_provider_cdc import stages
from airflow_provider_cdc.config import CdcConfig, SourceConfig
from airflow_provider_cdc.errors import is_terminal
from airflow_provider_cdc.events import ChangeBatch, TableChangesBuilder
from airflow_provider_cdc.stages import StageError, apply_stages, build_stages
from airflow_provider_cdc.tables import Column, TableSchema

# --- stages defined by the test ------------------------------------------------------------------------------


class UpperNames:
    """Uppercases the ``name`` column of every table that has one (a value-changing stage)."""

    name = "upper"

    def apply(self, batch: ChangeBatch) -> ChangeBatch:
        tables = {}
        for qualified, table in batch.tables.items():
            if "name" in table.column_names:
                index = table.column_names.index("name")
                table = table.set_column(index, table.field(index), pc.utf8_upper(table.column("name")))
            tables[qualified] = table
        return dataclasses.replace(batch, tables=tables)

    def versions(self) -> dict:
        return {"v": 1}


class DropTable:
    """Drops every change of one table (a filtering stage that empties a table)."""

    name = "drop"

    def __init__(self, table: str) -> None:
        self.table = table

    def apply(self, batch: ChangeBatch) -> ChangeBatch:
        tables = {q: (t.slice(0, 0) if q == self.table else t) for q, t in batch.tables.items()}
        return dataclasses.replace(batch, tables=tables)

    def versions(self) -> dict:
        return {"table": self.table}


class Renumbering:
    """Breaks the contract: makes a new batch id from what is left."""

    name = "renumber"

    def apply(self, batch: ChangeBatch) -> ChangeBatch:
        return dataclasses.replace(batch, batch_id=batch.batch_id + "-filtered", seq_to=batch.seq_to - 1)

    def versions(self) -> dict:
        return {}


def upper_factory(source, config):
    return UpperNames()


KEY = Column("id", "bigint", "integer", primary_key=True)
USERS = TableSchema("public", "users", (KEY, Column("name", "text")))
ORDERS = TableSchema("public", "orders", (KEY, Column("status", "text")))


def make_batch() -> ChangeBatch:
    users, orders = TableChangesBuilder(USERS), TableChangesBuilder(ORDERS)
    users.append("c", 11, 0, "1", "0/10", ["1", "ada"])
    users.append("u", 12, 0, "1", "0/10", ["2", None])
    orders.append("c", 13, 0, "2", "0/20", ["7", "new"])
    return ChangeBatch(
        source_id="shop", batch_id="shop:0/10-0/20", position_from={"lsn": "0/1", "seq": 10},
        position_to={"lsn": "0/20", "seq": 13}, seq_from=11, seq_to=13,
        tables={"public.users": users.finish(), "public.orders": orders.finish()},
        schemas={"public.users": USERS, "public.orders": ORDERS},
    )


# --- build_stages: the registration point --------------------------------------------------------------------


def test_transform_and_validate_are_registered_and_skipped_without_rules_or_suites():
    assert [name for name, _ in stages.STAGE_FACTORIES] == ["transform", "validate"]
    assert isinstance(stages.STAGE_FACTORIES, tuple)  # declared in order, not appended to by importers
    source = SourceConfig(id="s", type="postgresql", connection_string="postgresql://h/db", tables=["t"], sink="w")
    assert build_stages(source, CdcConfig(directory=Path("."), sources=[source])) == []


def test_build_stages_keeps_the_registered_order_and_skips_stages_with_nothing_to_do(monkeypatch):
    monkeypatch.setattr(stages, "STAGE_FACTORIES", (
        ("upper", upper_factory),
        ("idle", lambda source, config: None),
        ("drop", lambda source, config: DropTable("public.orders")),
    ))

    built = build_stages(None, None)

    assert [stage.name for stage in built] == ["upper", "drop"]
    assert all(isinstance(stage, stages.Stage) for stage in built)


@pytest.mark.parametrize("name", ["load", "capture", "fused", "Upper", "two words", ""])
def test_a_stage_cannot_take_a_task_id_of_the_dag_or_a_bad_name(monkeypatch, name):
    monkeypatch.setattr(stages, "STAGE_FACTORIES", ((name, upper_factory),))
    with pytest.raises(StageError, match="not a usable stage name"):
        build_stages(None, None)


def test_a_factory_must_build_the_stage_it_is_registered_as(monkeypatch):
    monkeypatch.setattr(stages, "STAGE_FACTORIES", (("transform", upper_factory),))
    with pytest.raises(StageError, match="'transform': its factory built a stage named 'upper'"):
        build_stages(None, None)


# --- apply_stages: versions and replay safety ------------------------------------------------------------------


def test_stages_run_in_order_and_accumulate_their_versions():
    batch = make_batch()

    made, versions = apply_stages([UpperNames(), DropTable("public.orders")], batch, {"earlier": {"v": 0}})

    assert made.tables["public.users"].column("name").to_pylist() == ["ADA", None]
    assert made.tables["public.orders"].num_rows == 0
    assert list(versions) == ["earlier", "upper", "drop"]
    assert versions == {"earlier": {"v": 0}, "upper": {"v": 1}, "drop": {"table": "public.orders"}}
    assert batch.tables["public.users"].column("name").to_pylist() == ["ada", None]  # the input is untouched


def test_a_stage_that_empties_tables_keeps_the_batch_identity():
    batch = make_batch()

    made, _ = apply_stages([DropTable("public.orders"), DropTable("public.users")], batch)

    assert made.change_count == 0
    for field in stages.IDENTITY:  # a replayed capture is still recognised after every stage
        assert getattr(made, field) == getattr(batch, field)


def test_a_stage_that_changes_the_batch_identity_fails_terminally():
    with pytest.raises(StageError) as raised:
        apply_stages([UpperNames(), Renumbering()], make_batch())

    assert "stage 'renumber': changed the batch's batch_id, seq_to (batch shop:0/10-0/20)" in str(raised.value)
    assert is_terminal(raised.value)


# --- staged (through dag.test()) and fused give the same rows and the same ledger --------------------------------


def write_two_modes(directory: Path, *, source_url: str, staged_sink: str, fused_sink: str, ids: dict) -> Path:
    """One source database captured twice: by a staged DAG into one sink, by a fused DAG into another."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "connectors.yaml").write_text(textwrap.dedent(f"""\
        connectors:
          - id: source_db
            type: postgresql
            connection_string: {source_url}
          - id: staged_sink
            type: postgresql
            connection_string: {staged_sink}
          - id: fused_sink
            type: postgresql
            connection_string: {fused_sink}
        """))
    (directory / "cdc.yaml").write_text(textwrap.dedent(f"""\
        sources:
          - id: {ids["staged"]}
            type: postgresql
            connector: source_db
            tables: [users, orders]
            poll_interval: 0.2
            heartbeat_interval: 0
            sink: staged_sink
            mode: staged
          - id: {ids["fused"]}
            type: postgresql
            connector: source_db
            tables: [users, orders]
            poll_interval: 0.2
            heartbeat_interval: 0
            sink: fused_sink
            mode: fused
        """))
    return directory


def ledger_stage_versions(sink_url: str, source_id: str) -> list:
    with psycopg.connect(sink_url) as conn:
        rows = conn.execute("SELECT stage_versions FROM _cdc_ledger WHERE source_id = %s ORDER BY seq_to",
                            (source_id,)).fetchall()
    return [json.loads(v) if isinstance(v, str) else v for (v,) in rows]


def test_staged_and_fused_runs_of_one_stage_list_give_the_same_rows_and_ledger(pg_database_factory, tmp_path,
                                                                               monkeypatch):
    from airflow.utils.state import DagRunState

    from airflow_provider_cdc.dag_factory import build_dags

    monkeypatch.setattr(stages, "STAGE_FACTORIES", (("upper", upper_factory),))
    monkeypatch.setenv("CDC_STAGING_URL", f"file://{tmp_path}/staging")
    source_url, staged_sink, fused_sink = pg_database_factory(), pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=40, orders=30)
    ids = {"staged": unique_id("staged"), "fused": unique_id("fused")}
    config_dir = write_two_modes(tmp_path / "config", source_url=source_url, staged_sink=staged_sink,
                                 fused_sink=fused_sink, ids=ids)
    monkeypatch.setenv("CDC_CONFIG_DIR", str(config_dir))

    def run_both() -> None:
        dags = build_dags(config_dir)
        assert "upper" in dags[f"cdc_{ids['staged']}"].task_ids  # staged: a task for the stage
        assert set(dags[f"cdc_{ids['fused']}"].task_ids) == {"wait_for_changes", "fused"}
        for mode in ("staged", "fused"):
            run = dags[f"cdc_{ids[mode]}"].test()
            assert run.state == DagRunState.SUCCESS, f"{mode} run ended {run.state}"

    run_both()  # the snapshot
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, name, balance) VALUES (500, 'n@example.com', 'new one', 1)")
        conn.execute("UPDATE users SET name = 'renamed ' || id WHERE id <= 5")
        conn.execute("DELETE FROM users WHERE id BETWEEN 30 AND 34")
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 3")
    run_both()  # the stream

    source = table_rows(source_url, "users")
    expected = sorted((row[0], row[1], row[2].upper() if row[2] else row[2], *row[3:]) for row in source)
    columns = ["id", "email", "name", "balance", "created_at", "bio"]
    for sink in (staged_sink, fused_sink):
        assert sorted(table_rows(sink, "users", columns=columns)) == expected
        assert table_rows(sink, "orders") == table_rows(source_url, "orders")  # no name column: untouched
    assert table_rows(staged_sink, "users") == table_rows(fused_sink, "users")

    staged_versions = ledger_stage_versions(staged_sink, ids["staged"])
    fused_versions = ledger_stage_versions(fused_sink, ids["fused"])
    assert len(staged_versions) == len(fused_versions) == 2  # snapshot batch, stream batch
    assert staged_versions == fused_versions == [{"upper": {"v": 1}}] * 2
    assert_ledger_consistent(staged_sink, ids["staged"])
    assert_ledger_consistent(fused_sink, ids["fused"])


def test_arrow_tables_of_a_stage_keep_their_schema():
    """The uppercase stage keeps each column's field (the staged Parquet file and the sink see the same types)."""
    made, _ = apply_stages([UpperNames()], make_batch())
    assert made.tables["public.users"].schema == make_batch().tables["public.users"].schema
    assert made.tables["public.users"].schema.field("name").type == pa.string()
