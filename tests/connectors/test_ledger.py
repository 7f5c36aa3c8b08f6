"""The one ledger row every sink writes: built from a batch and its apply result, read back the same way."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from airflow_provider_cdc.connectors.base import ApplyResult
from airflow_provider_cdc.connectors.ledger import LEDGER_COLUMN_NAMES, LedgerRow, latest, ledger_row
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.tables import Column, TableSchema


def batch() -> ChangeBatch:
    schema = TableSchema("public", "items", (Column("id", "bigint", "integer", primary_key=True),), dialect="x")
    table = pa.table(
        {"_cdc_op": ["c", "u", "d"], "_cdc_seq": pa.array([11, 12, 13], pa.int64()), "id": ["1", "1", "2"]})
    return ChangeBatch(
        source_id="src", batch_id="src:a-b", position_from={"lsn": "0/1", "seq": 10},
        position_to={"lsn": "0/9", "seq": 13}, seq_from=11, seq_to=13,
        tables={"public.items": table}, schemas={"public.items": schema},
    )


def test_ledger_row_carries_range_counts_versions_and_run():
    at = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    row = ledger_row(
        batch(), ApplyResult("src:a-b", True, upserted=1, deleted=1), run_id="manual__1",
        versions={"rule_versions": {"mask": 2}, "stage_versions": {"transform": {"v": 1}}}, committed_at=at,
    )
    assert row == LedgerRow(
        batch_id="src:a-b", source_id="src", position_from={"lsn": "0/1", "seq": 10},
        position_to={"lsn": "0/9", "seq": 13}, seq_from=11, seq_to=13,
        counts={"public.items": {"c": 1, "u": 1, "d": 1}}, rule_versions={"mask": 2}, schema_versions=None,
        stage_versions={"transform": {"v": 1}}, run_id="manual__1", rows_upserted=1, rows_deleted=1,
        committed_at=at,
    )
    assert tuple(row.to_record()) == LEDGER_COLUMN_NAMES


def test_an_overlapping_batch_vouches_only_for_the_range_after_the_high_water():
    assert ledger_row(batch(), ApplyResult("src:a-b", True), high_water=12).seq_from == 13


def test_a_row_round_trips_through_json_text_and_picks_the_latest():
    row = ledger_row(batch(), ApplyResult("src:a-b", True), versions={"schema_versions": {"public.items": 3}})
    record = row.to_record(json_as_text=True)
    assert isinstance(record["position_to"], str) and isinstance(record["counts"], str)
    assert LedgerRow.from_record({**record, "unknown_column": 1}) == row
    older = LedgerRow.from_record({**record, "seq_to": 5})
    assert latest([older, row]) == row and latest([]) is None
