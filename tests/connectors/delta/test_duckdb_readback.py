"""A Delta table the sink filled, read back by DuckDB (its ``delta`` extension) as a user would."""

from __future__ import annotations

import datetime as dt
import decimal

import duckdb
import pytest
from deltalake import DeltaTable

from airflow_provider_cdc.connectors.delta.sink import DeltaSink

from .helpers import delta_extension, item, make_batch


def rows_of(table) -> list[tuple]:
    """Rows through Arrow (DuckDB's own Python conversion of timestamptz needs pytz)."""
    return [tuple(record.values()) for record in table.to_pylist()]


def query(sql: str, *params: object) -> list[tuple]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        extension = delta_extension()
        if extension is None:
            pytest.fail("duckdb-ext-delta is not installed (pip install 'airflow-provider-cdc[test]')")
        con.execute(f"LOAD '{extension}'")
        return rows_of(con.execute(sql, list(params)).fetch_arrow_table())
    finally:
        con.close()


def test_duckdb_reads_the_delta_table_equal_to_the_expected_rows(tmp_path):
    sink = DeltaSink(f"file://{tmp_path}/lake", sink_id="lake")
    sink.apply(make_batch([
        ("c", 1, item(1, name="a", amount="1.50", seen_at="2024-05-01T12:00:00.25Z", payload="00ff")),
        ("c", 2, item(2, name="b", amount="-0.01")),
        ("c", 3, item(3, name="c")),
    ]))
    sink.apply(make_batch([("u", 4, item(2, name="b2", amount="99.99")), ("d", 5, item(3))]))
    uri = sink.table_uri("items")
    expected = [
        (1, "a", decimal.Decimal("1.50"), dt.datetime(2024, 5, 1, 12, 0, 0, 250000, dt.timezone.utc), b"\x00\xff",
         "c", 1),
        (2, "b2", decimal.Decimal("99.99"), None, None, "u", 4),
    ]
    columns = "id, name, amount, seen_at, payload, _cdc_op, _cdc_position"
    got = query(f"SELECT {columns} FROM delta_scan(?) ORDER BY id", uri)
    assert got == expected
    # The same through plain Parquet over the table's current files (what a reader without Delta does: valid here
    # because delta-rs writes no deletion vectors).
    files = DeltaTable(uri).file_uris()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        plain = rows_of(con.execute(f"SELECT {columns} FROM read_parquet(?) ORDER BY id", [files]).fetch_arrow_table())
    finally:
        con.close()
    assert plain == expected
