"""The columnar decoder yields exactly what the per-message decoder yields, on real pgoutput streams."""

from __future__ import annotations

import logging
import random

import psycopg
import pytest
from cdc_testing import create_shop, random_changes

from airflow_provider_cdc.connectors.postgres.source import PgSource


def capture_both(
    url: str, position: dict, max_changes: int = 100000, tables=(("public", "users"), ("public", "orders"))
):
    batches = []
    for use_columnar in (True, False):
        with PgSource(url, source_id="col", tables=list(tables), slot_name="cdc_col",
                      publication_name="cdc_col_pub") as source:
            source.columnar = use_columnar
            batches.append(source.capture(position, max_changes))
    return batches


def assert_identical(fast, slow) -> None:
    assert fast.batch_id == slow.batch_id
    assert fast.position_to == slow.position_to and (fast.seq_from, fast.seq_to) == (slow.seq_from, slow.seq_to)
    assert fast.schema_changes == slow.schema_changes
    assert fast.schemas == slow.schemas
    assert sorted(fast.tables) == sorted(slow.tables)
    for name in fast.tables:
        assert fast.tables[name].schema == slow.tables[name].schema, name
        assert fast.tables[name].to_pylist() == slow.tables[name].to_pylist(), name


@pytest.fixture
def shop_slot(pg_database):
    create_shop(pg_database, users=200, orders=200)
    with PgSource(pg_database, source_id="col", tables=[("public", "users"), ("public", "orders")],
                  slot_name="cdc_col", publication_name="cdc_col_pub") as source:
        source.prepare()
        position = {"lsn": source.slot_state()["confirmed_flush_lsn"], "seq": 10, "schemas": {}}
    return pg_database, position


@pytest.mark.parametrize("identity", ["default", "full"])
def test_random_workload_decodes_identically(shop_slot, identity):
    url, position = shop_slot
    if identity == "full":
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE users REPLICA IDENTITY FULL")
            conn.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
    random_changes(url, random.Random(identity), transactions=40)
    with psycopg.connect(url, autocommit=True) as conn:
        big = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 3000) g)"
        conn.execute(f"UPDATE users SET bio = {big} WHERE id IN (3, 4)")
        conn.execute("UPDATE users SET name = 'toast kept', email = '' WHERE id IN (3, 4)")
        conn.execute("UPDATE users SET name = E'tab\\tquote\"comma,back\\\\slash é 漢字' WHERE id = 5")
    fast, slow = capture_both(url, position)
    assert fast.change_count > 200 and fast.op_totals().get("u")
    assert_identical(fast, slow)
    # The same from a position inside the stream (earlier transactions skipped), and in small batches.
    middle = capture_both(url, position, max_changes=50)[1].position_to
    assert_identical(*capture_both(url, middle, max_changes=50))


def test_truncates_and_first_seen_schemas_decode_identically(shop_slot):
    url, position = shop_slot
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (user_id, amount, status) VALUES (1, 1, 'x')")
        conn.execute("TRUNCATE users, orders")
        conn.execute("INSERT INTO users (id, email) VALUES (1, 'a@b')")
        conn.execute("TRUNCATE orders")
    fast, slow = capture_both(url, position)
    assert [e.op for e in slow.events()] == ["s", "c", "s", "t", "t", "c", "t"]
    assert_identical(fast, slow)


def test_rare_shapes_fall_back_to_the_message_decoder(shop_slot, caplog):
    caplog.set_level(logging.INFO, logger="airflow_provider_cdc")
    url, position = shop_slot
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE users SET id = 9999 WHERE id = 1")  # key change: d + c
    fast, slow = capture_both(url, position)
    assert [e.op for e in slow.events()] == ["s", "d", "c"]
    assert_identical(fast, slow)
    assert "decoding this batch message by message: update of a key" in caplog.text
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id) VALUES (10001)")
        conn.execute("ALTER TABLE users ADD COLUMN color text")  # the relation changes within the batch
        conn.execute("INSERT INTO users (id, color) VALUES (10000, 'red')")
    fast, slow = capture_both(url, slow.position_to)
    assert [e.op for e in slow.events()] == ["c", "s", "c"]
    assert_identical(fast, slow)
    assert "decoding this batch message by message: relation changed within the batch" in caplog.text
