"""``Sink.ledger_rows`` in every sink (PostgreSQL, Delta, the Parquet change log, MariaDB, MongoDB), on real servers:
the latest rows of one source, newest first, at most ``limit``; and the REST API's reader
(:mod:`airflow_provider_cdc.api.ledger`) over each of them."""

from __future__ import annotations

import pytest
from cdc_testing import batch_of, item, unique_id
from contract.pairs import SinkUnderTest, delta_sink, mariadb_sink, mongodb_sink, postgres_sink

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.api.ledger import LedgerUnreadable, hook_rows, sink_rows
from airflow_provider_cdc.connectors.ledger import LedgerRow, latest
from airflow_provider_cdc.tables import Column, TableSchema

pytestmark = pytest.mark.timeout(300)

ITEMS = TableSchema("public", "items", (
    Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("name", "text", "text", ordinal=2),
))


def parquet_log_sink(root) -> SinkUnderTest:
    from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
    from airflow_provider_cdc.connectors.delta.parquet_log import ParquetChangeLogSink

    def unused(*args):
        raise AssertionError("not read here")

    return SinkUnderTest(
        "parquet",
        lambda schema, delete_mode: ParquetChangeLogSink(str(root), sink_id="lake", target_schema=schema,
                                                         delete_mode=delete_mode,
                                                         options=DeltaSinkOptions(format="parquet")),
        unused, unused, str(root),
    )


@pytest.fixture(params=["postgresql", "delta", "parquet", "mariadb", "mongodb"])
def under_test(request, pg_database_factory, tmp_path) -> SinkUnderTest:
    if request.param == "postgresql":
        return postgres_sink(pg_database_factory("ledger_rows"))
    if request.param == "mongodb":
        return mongodb_sink(request.getfixturevalue("mongo_server").url(""))
    if request.param == "mariadb":
        return mariadb_sink(request.getfixturevalue("mariadb_database_factory")("ledger_rows"))
    if request.param == "parquet":
        return parquet_log_sink(tmp_path / "log")
    return delta_sink(tmp_path / "lake")


@pytest.fixture
def source_id() -> str:
    return unique_id("ledger")


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


def load_three(sink, source_id: str) -> list[str]:
    """Three batches of ``source_id`` (and one of another source); their batch ids, oldest first."""
    batches = [
        batch_of([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))], ITEMS, source_id=source_id),
        batch_of([("u", 3, item(1, name="a2")), ("d", 4, item(2))], ITEMS, source_id=source_id),
        batch_of([("c", 5, item(3, name="c"))], ITEMS, source_id=source_id),
    ]
    for made in batches:
        assert pipeline.load_batch(made, sink, run_id="manual__1")["applied"] is True
    other = batch_of([("c", 1, item(9, name="z"))], ITEMS, source_id=f"{source_id}_other")
    pipeline.load_batch(other, sink, run_id="manual__1")
    return [made.batch_id for made in batches]


def test_no_ledger_yet_gives_no_rows(sink, source_id):
    assert sink.ledger_rows(source_id, 10) == []


def test_latest_rows_newest_first_with_limit(sink, source_id):
    ids = load_three(sink, source_id)

    rows = sink.ledger_rows(source_id, 10)
    assert [row.batch_id for row in rows] == ids[::-1]
    assert all(isinstance(row, LedgerRow) and row.source_id == source_id for row in rows)
    newest = rows[0]
    assert (newest.seq_from, newest.seq_to) == (5, 5)
    assert newest.counts == {"public.items": {"c": 1}}
    assert rows[1].counts == {"public.items": {"u": 1, "d": 1}}
    assert newest.run_id == "manual__1" and newest.committed_at is not None
    assert newest.committed_at.utcoffset() is not None
    assert latest(rows) == newest
    assert newest.position_to == sink.last_committed(source_id)

    assert [row.batch_id for row in sink.ledger_rows(source_id, 2)] == ids[:0:-1]
    assert sink.ledger_rows(source_id, 0) == []
    assert sink.ledger_rows("no_such_source", 10) == []
    assert sink_rows(sink, source_id=source_id, limit=1) == rows[:1]


def test_an_unreachable_sink_is_a_problem_without_its_host():
    from types import SimpleNamespace

    from airflow_provider_cdc.connectors.postgres.sink import PgSink

    def get_sink() -> PgSink:  # as CdcHook.get_sink() opens it: PgSink connects at once
        return PgSink("postgresql://cdc:secret@127.0.0.1:1/warehouse?connect_timeout=5", sink_id="warehouse",
                      target_schema="public", ledger_schema="public")

    hook = SimpleNamespace(get_sink=get_sink, sink_config=SimpleNamespace(id="warehouse"))
    with pytest.raises(LedgerUnreadable) as caught:
        hook_rows(hook, source_id="shop", limit=5)
    assert "127.0.0.1" not in str(caught.value) and "secret" not in str(caught.value)
    assert caught.value.sink_id == "warehouse" and "did not answer" in str(caught.value)
