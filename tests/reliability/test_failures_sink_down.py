"""The sink is down while a batch is loaded (issue 16, item 1), for every sink: PostgreSQL, MariaDB and MongoDB
servers private to this test process are stopped; the Delta table lives on a local S3 server (moto) whose network
path is cut, since moto keeps its objects in memory and cannot be restarted.

The source is PostgreSQL. The batch is captured and staged while the sink is up; then the sink goes down and the
load fails with a transient error naming the sink (Airflow retries it), nothing is acknowledged at the source (the
position Variable and the slot's ``confirmed_flush_lsn`` stay where they were), and once the sink is back the
retried load and the commit bring the same changes, once: source and sink equal row for row, no batch twice in the
ledger.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cdc_testing import create_shop, drain, random_changes, slot_lsn, unique_id
from contract.pairs import mariadb_sink, mongodb_sink, normalise, pg_rows, postgres_sink
from test_staging_s3 import S3Server, s3_server  # noqa: F401 - the moto server fixture

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.errors import CdcError, is_terminal
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.stages import build_stages
from airflow_provider_cdc.tables import Column
from reliability.conftest import (
    CuttableProxy,
    assert_sink_ledger_consistent,
    source_columns,
    stored_position,
    write_pipeline_config,
)

pytestmark = [pytest.mark.timeout(300)]

TABLES = ("users", "orders")


@dataclass
class DownableSink:
    """A sink of one kind: its connector entry, how to take it down and bring it back, and how to read a table."""

    kind: str
    url: str
    target_schema: str
    down: Callable[[], None]
    up: Callable[[], None]
    read: Callable[[str, list[Column]], list[dict[str, Any]]]
    options: dict[str, Any] | None = None


def delta_on_s3(s3: S3Server, proxy: CuttableProxy, target_schema: str) -> DownableSink:
    from deltalake import DeltaTable

    bucket = s3.new_bucket()
    options = {**s3.delta_storage_options(), "AWS_ENDPOINT_URL": proxy.endpoint}
    root = f"s3://{bucket}/lake"

    def read(table: str, columns: list[Column]) -> list[dict[str, Any]]:
        rows = DeltaTable(f"{root}/{target_schema}/{table}", storage_options=options).to_pyarrow_table().to_pylist()
        return sorted(({c.name: normalise(r[c.name], c) for c in columns} for r in rows), key=repr)

    return DownableSink("file", root, target_schema, proxy.cut, proxy.restore, read, {"storage_options": options})


# Each server sink: (connector type, the fixture of its private server, how to name its database, its contract pair).
SERVER_SINKS = {
    "postgresql": ("postgresql", "sink_pg", lambda server: server.database("down_sink"), postgres_sink),
    "mariadb": ("mysql", "private_mariadb", lambda server: server.database("down_sink"), mariadb_sink),
    "mongodb": ("mongodb", "private_mongod", lambda server: server.url(""), mongodb_sink),
}


@pytest.fixture(params=["postgresql", "mariadb", "mongodb", "delta"])
def downable_sink(request: pytest.FixtureRequest) -> Iterator[DownableSink]:
    target_schema = unique_id("down")
    if request.param in SERVER_SINKS:
        kind, fixture, url_of, pair_sink = SERVER_SINKS[request.param]
        server = request.getfixturevalue(fixture)
        url = url_of(server)
        under = pair_sink(url)
        yield DownableSink(kind, url, target_schema, server.stop, server.start,
                           lambda table, columns: under.read(target_schema, table, columns, True))
        server.start()
        if under.drop is not None:  # MariaDB's and MongoDB's target databases are the sink's own making
            under.drop(target_schema)
    else:
        s3 = request.getfixturevalue("s3_server")
        host, _, port = s3.endpoint.rpartition("/")[2].partition(":")
        proxy = CuttableProxy(host, int(port))
        try:
            yield delta_on_s3(s3, proxy, target_schema)
        finally:
            proxy.close()


def to_milliseconds(row: dict[str, Any]) -> dict[str, Any]:
    """A row as a MongoDB sink keeps it: BSON dates hold milliseconds, so microseconds are cut (RELIABILITY.md)."""
    return {name: value.replace(microsecond=value.microsecond // 1000 * 1000) if isinstance(value, dt.datetime)
            else value for name, value in row.items()}


def assert_same(source_url: str, sink: DownableSink, table: str) -> int:
    columns = source_columns(source_url, table)
    source = pg_rows(source_url, "public", table, columns)
    source = sorted(map(to_milliseconds, source) if sink.kind == "mongodb" else source, key=repr)
    got = sorted(sink.read(table, columns), key=repr)
    missing, extra = [r for r in source if r not in got], [r for r in got if r not in source]
    assert not missing and not extra, (f"{sink.kind} {table}: {len(source)} source rows, {len(got)} sink rows; "
                                       f"missing in sink {missing[:3]}, extra in sink {extra[:3]}")
    return len(source)


def capture(hook: CdcHook, run_id: str) -> str:
    """The capture task and the source's stages (none here): the manifest the load task gets."""
    with hook.connected() as (source, sink):
        uri = pipeline.capture_stage(source, sink, hook.positions, hook.store,
                                     max_changes=hook.source_config.batch_size, run_id=run_id)["manifest_uri"]
    for stage in build_stages(hook.source_config, hook.config):
        uri = pipeline.run_stage(uri, stage, hook.store)["manifest_uri"]
    return str(uri)


def load(hook: CdcHook, uri: str, run_id: str) -> dict[str, Any]:
    """The load task: the sink is made (connected) inside it, as in the operator."""
    sink = hook.get_sink()
    try:
        return pipeline.load_stage(uri, sink, run_id=run_id, policy=hook.schema_policy)
    finally:
        sink.close()


def commit(hook: CdcHook, uri: str, loaded: dict[str, Any]) -> None:
    with hook.connected() as (source, sink):
        pipeline.commit_stage(uri, source, sink, hook.positions, hook.store, newly_held=loaded["newly_held"])


def test_sink_down_during_load_fails_clearly_acknowledges_nothing_and_recovers(downable_sink, source_pg, tmp_path):
    sink = downable_sink
    source_url = source_pg.database("down_src")
    create_shop(source_url, users=60, orders=90)
    source_id = unique_id("sinkdown")
    config_dir = write_pipeline_config(tmp_path / "config", source_id=source_id, source_type="postgresql",
                                       source_url=source_url, sink_type=sink.kind, sink_url=sink.url,
                                       tables=list(TABLES), target_schema=sink.target_schema,
                                       sink_options=sink.options)
    hook = CdcHook(source_id, str(config_dir))
    drain(hook, "snapshot")
    random_changes(source_url, random.Random(16), transactions=8, allow_truncate=False)
    stored, acknowledged = stored_position(source_id), slot_lsn(source_url, f"cdc_{source_id}")
    run_id = unique_id("down")
    uri = capture(hook, run_id)

    sink.down()
    try:
        with pytest.raises(CdcError) as caught:
            load(hook, uri, run_id)
        message = str(caught.value)
        assert "sink 'warehouse'" in message, message
        assert not is_terminal(caught.value), f"a sink that is down is transient (Airflow retries it): {message}"
        print(f"\n{sink.kind} sink down during load: {message}")
        # The commit task never runs after a failed load; were it run, it would refuse: the ledger lacks the batch.
        assert stored_position(source_id) == stored
        assert slot_lsn(source_url, f"cdc_{source_id}") == acknowledged
    finally:
        sink.up()

    loaded = load(hook, uri, run_id)  # the retried load task
    assert loaded["applied"], loaded
    commit(hook, uri, loaded)
    assert stored_position(source_id) != stored and slot_lsn(source_url, f"cdc_{source_id}") != acknowledged
    drain(hook, "after")
    for table in TABLES:
        assert_same(source_url, sink, table)
    ledger_sink = hook.get_sink()
    try:
        assert_sink_ledger_consistent(ledger_sink, source_id)
    finally:
        ledger_sink.close()

