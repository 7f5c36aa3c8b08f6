"""``Sink.hold_table`` in every sink (PostgreSQL, Delta, MariaDB, MongoDB), on real servers: a table held outside a
batch keeps its changes of the next batches (the other tables flow, the position moves on), ``accept_table`` replays
them exactly once, and the REST API's stop and start of single tables (:mod:`airflow_provider_cdc.api.sources`) go
through it. A Parquet change log refuses to hold a table."""

from __future__ import annotations

import types

import pytest
from cdc_testing import batch_of, item, unique_id
from contract.pairs import SinkUnderTest, delta_sink, mariadb_sink, mongodb_sink, postgres_sink

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.api import sources as api_sources
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.tables import Column, TableSchema

pytestmark = pytest.mark.timeout(300)

ITEMS = TableSchema("public", "items", (
    Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("name", "text", "text", ordinal=2),
))
OTHERS = TableSchema("public", "others", ITEMS.columns)


@pytest.fixture(params=["postgresql", "delta", "mariadb", "mongodb"])
def under_test(request, pg_database_factory, tmp_path) -> SinkUnderTest:
    if request.param == "postgresql":
        return postgres_sink(pg_database_factory("sink_holds"))
    if request.param == "mongodb":
        return mongodb_sink(request.getfixturevalue("mongo_server").url(""))
    if request.param == "mariadb":
        return mariadb_sink(request.getfixturevalue("mariadb_database_factory")("sink_holds"))
    return delta_sink(tmp_path / "lake")


@pytest.fixture
def source_id() -> str:
    return unique_id("hold")


@pytest.fixture
def schema(source_id) -> str:
    return f"t_{source_id}"


@pytest.fixture
def sink(under_test, schema):
    made = under_test.make(schema, "hard")
    yield made
    made.close()
    if under_test.drop is not None:
        under_test.drop(schema)


def names(under_test: SinkUnderTest, schema: str, table: str) -> dict[int, str]:
    return {int(row["id"]): row["name"] for row in under_test.read(schema, table, list(ITEMS.columns), True)}


def first_batch(source_id: str):
    return batch_of([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))], ITEMS, source_id=source_id,
                    extra={OTHERS: [("c", 3, item(1, name="x"))]})


def second_batch(source_id: str):
    return batch_of([("u", 4, item(1, name="a2")), ("d", 5, item(2)), ("c", 6, item(3, name="c"))], ITEMS,
                    source_id=source_id, extra={OTHERS: [("u", 7, item(1, name="x2"))]})


def test_a_held_table_keeps_its_changes_and_accept_replays_them_once(under_test, sink, source_id, schema):
    assert pipeline.load_batch(first_batch(source_id), sink, run_id="manual__1")["applied"] is True

    assert sink.hold_table(source_id, "public.items", "stopped for a test") is True
    assert sink.hold_table(source_id, "public.items", "a second reason") is False
    assert sink.held_tables(source_id) == {"public.items": "stopped for a test"}

    second = second_batch(source_id)
    result = pipeline.load_batch(second, sink, run_id="manual__2")
    assert result["applied"] is True
    # The held table kept its rows; the other one flowed, and the position moved past both.
    assert names(under_test, schema, "items") == {1: "a", 2: "b"}
    assert names(under_test, schema, "others") == {1: "x2"}
    assert sink.high_water(source_id) == 7
    chunks = sink.held_changes(source_id, "public.items")
    assert chunks and sum(chunk.rows for chunk in chunks) == 3
    assert sink.held_tables(source_id) == {"public.items": "stopped for a test"}

    accepted = sink.accept_table(source_id, "public.items", run_id="manual__3")
    assert accepted.replayed_events == 3 and accepted.applied
    assert names(under_test, schema, "items") == {1: "a2", 3: "c"}
    assert sink.held_tables(source_id) == {}
    assert sink.held_changes(source_id, "public.items") == []
    assert accepted.batch_id in [row.batch_id for row in sink.ledger_rows(source_id, 10)]

    # Exactly once: the batch again is a no-op, and nothing is left to accept.
    assert pipeline.load_batch(second, sink, run_id="manual__4")["applied"] is False
    assert names(under_test, schema, "items") == {1: "a2", 3: "c"}
    with pytest.raises(SinkError, match="not held"):
        sink.accept_table(source_id, "public.items")


def test_the_api_stops_and_starts_single_tables_through_the_sink(under_test, sink, source_id, schema):
    source = types.SimpleNamespace(id=source_id)
    config = types.SimpleNamespace(schema_policy=lambda _source_id: None)
    pipeline.load_batch(first_batch(source_id), sink, run_id="manual__1")

    (stopped,) = api_sources.stop_tables(sink, source, ["public.items"], "admin")  # type: ignore[arg-type]
    assert (stopped.held, stopped.changed) == (True, True)
    assert api_sources.stopped_by_api(sink.held_tables(source_id)["public.items"])
    # Started with nothing held: the mark goes, no replay, the table as it was.
    (started,) = api_sources.start_tables(sink, source, ["public.items"], config)  # type: ignore[arg-type]
    assert (started.held, started.changed, started.replayed_events) == (False, True, 0)
    assert sink.held_tables(source_id) == {}
    assert names(under_test, schema, "items") == {1: "a", 2: "b"}

    api_sources.stop_tables(sink, source, ["public.items"], "admin")  # type: ignore[arg-type]
    pipeline.load_batch(second_batch(source_id), sink, run_id="manual__2")
    assert names(under_test, schema, "items") == {1: "a", 2: "b"}
    (started,) = api_sources.start_tables(sink, source, ["public.items"], config)  # type: ignore[arg-type]
    assert (started.held, started.changed, started.replayed_events) == (False, True, 3)
    assert names(under_test, schema, "items") == {1: "a2", 3: "c"}

    # A table no batch has loaded yet: stopped and started again without a version to accept.
    api_sources.stop_tables(sink, source, ["public.fresh"], "admin")  # type: ignore[arg-type]
    (started,) = api_sources.start_tables(sink, source, ["public.fresh"], config)  # type: ignore[arg-type]
    assert (started.held, started.changed) == (False, True)
    assert sink.held_tables(source_id) == {}


def test_a_parquet_change_log_refuses_to_hold(tmp_path):
    from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
    from airflow_provider_cdc.connectors.delta.parquet_log import ParquetChangeLogSink

    log = ParquetChangeLogSink(str(tmp_path / "log"), sink_id="lake", options=DeltaSinkOptions(format="parquet"))
    with pytest.raises(SinkError) as caught:
        log.hold_table("shop", "public.items", "stopped")
    assert caught.value.terminal
    with pytest.raises(api_sources.ConflictError, match="cannot be stopped"):
        api_sources.stop_tables(log, types.SimpleNamespace(id="shop"), ["public.items"], "admin")  # type: ignore[arg-type]
