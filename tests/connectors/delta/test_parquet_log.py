"""The append-only Parquet change log (``format: parquet``): deterministic files, the manifest last."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os

import pyarrow.parquet as pq
import pytest

from airflow_provider_cdc.connectors.base import Sink
from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
from airflow_provider_cdc.connectors.delta.parquet_log import ParquetChangeLogSink
from airflow_provider_cdc.errors import SinkError

from .helpers import SOURCE, TS_MS, item, make_batch

PARQUET = DeltaSinkOptions(format="parquet")


@pytest.fixture
def sink(tmp_path) -> ParquetChangeLogSink:
    return ParquetChangeLogSink(f"file://{tmp_path}/log", sink_id="log", options=PARQUET)


def test_change_log_capabilities_and_protocol(sink):
    assert isinstance(sink, Sink)
    assert not sink.capabilities.merge_by_key and not sink.capabilities.soft_delete
    with pytest.raises(SinkError, match="soft"):
        ParquetChangeLogSink("/tmp/x", sink_id="log", delete_mode="soft", options=PARQUET)


def test_every_event_is_written_typed_then_the_manifest(sink, monkeypatch):
    order = []
    real = ParquetChangeLogSink._write_atomically

    def record(self, path, write):
        order.append(os.path.relpath(path, self.base))
        real(self, path, write)

    monkeypatch.setattr(ParquetChangeLogSink, "_write_atomically", record)
    batch = make_batch([("c", 1, item(1, name="a", amount="1.50")), ("u", 2, item(1, name="b", amount="2.00")),
                        ("d", 3, item(1))])
    result = sink.apply(batch, run_id="r1")
    assert (result.applied, result.upserted, result.deleted) == (True, 2, 1)
    data = f"public/items/{1:020d}-{3:020d}.parquet"
    manifest = f"_cdc_manifests/{SOURCE}/{3:020d}.json"
    assert order == [data, manifest]  # the manifest is written last
    table = pq.read_table(os.path.join(sink.base, data))
    assert table.to_pylist()[0]["amount"] == decimal.Decimal("1.50")
    assert [(r["_cdc_op"], r["_cdc_position"], r["name"]) for r in table.to_pylist()] == [
        ("c", 1, "a"), ("u", 2, "b"), ("d", 3, None)]
    assert table.to_pylist()[0]["_cdc_ts"] == dt.datetime.fromtimestamp((TS_MS + 1000) / 1000, dt.timezone.utc)
    document = json.loads(open(os.path.join(sink.base, manifest)).read())
    assert document["files"] == [data] and document["ledger"]["batch_id"] == "shop:1-3"
    assert document["ledger"]["run_id"] == "r1"
    assert sink.has_batch("shop:1-3") and sink.high_water(SOURCE) == 3 and sink.last_committed(SOURCE) == {
        "lsn": "0/3"}


def test_a_replay_rewrites_the_same_file_and_an_applied_batch_is_a_no_op(sink):
    batch = make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))])
    sink.apply(batch)
    data = os.path.join(sink.base, "public", "items", f"{1:020d}-{2:020d}.parquet")
    manifest = os.path.join(sink.base, "_cdc_manifests", SOURCE, f"{2:020d}.json")
    first = pq.read_table(data)
    assert sink.apply(batch).applied is False
    # A crash before the manifest: the files are there, the batch is not committed; the replay rewrites them.
    os.remove(manifest)
    fresh = ParquetChangeLogSink(f"file://{sink.base}", sink_id="log", options=PARQUET)
    assert not fresh.has_batch(batch.batch_id)
    assert fresh.apply(batch).applied
    assert os.listdir(os.path.dirname(data)) == [os.path.basename(data)]
    assert pq.read_table(data).equals(first) and os.path.exists(manifest)
    # The next batch starts after the high water; an overlapping one writes only what is new.
    result = fresh.apply(make_batch([("u", 2, item(2, name="old")), ("c", 3, item(3, name="c"))], batch_id="x:o"))
    assert (result.skipped_replayed, result.upserted) == (1, 1)


def test_a_value_with_no_typed_form_writes_nothing(sink):
    with pytest.raises(SinkError, match="seen_at") as info:
        sink.apply(make_batch([("c", 1, item(1, seen_at="infinity"))]))
    assert info.value.terminal and not os.path.exists(os.path.join(sink.base, "public"))


def test_forget_source_and_reset_table(sink):
    sink.apply(make_batch([("c", 1, item(1, name="a"))]))
    assert sink.forget_source(SOURCE) == 1 and sink.high_water(SOURCE) == 0
    assert sink.reset_table("items") and not sink.reset_table("items")
