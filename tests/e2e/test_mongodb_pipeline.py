"""End to end through Airflow with a MongoDB source into PostgreSQL: what a new user tries (``airflow dags test
cdc_<id>``: snapshot, inserts, updates with ``$set``, ``$inc`` and ``$unset``, a replace, deletes, a multi-document
transaction across both collections, a new field, and a dropped collection written again), and exactly-once under
SIGKILL at every stage boundary, inside the sink transaction and at random moments.

The source is a fresh database on the private replica set (``mongo_database_factory``); the sink a fresh database
on PostgreSQL 15 (the contract suite covers PostgreSQL 18 sinks). A collection has no declared columns, so source
and sink are compared document for document on the columns the source inferred (the stored position's
``schemas``): each document's expected row is what the value contract makes of it (:func:`expected_row`).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from bson import Decimal128
from cdc_testing import assert_ledger_consistent, dags_test, drain, staged_run, unique_id
from contract.pairs import normalise, pg_rows
from pymongo.client_session import ClientSession
from pymongo.database import Database

from airflow_provider_cdc.connectors.mongodb.connection import connect, database_of
from airflow_provider_cdc.connectors.mongodb.documents import ID_FIELD, portable
from airflow_provider_cdc.tables import BOOKKEEPING_COLUMNS, Column, TableSchema
from airflow_provider_cdc.values import parse_value

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.parametrize("pg_server", ["pg15"], indirect=True),
]

KILL_RUNNER = Path(__file__).with_name("kill_runner.py")
UTC = dt.timezone.utc
EPOCH = dt.datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


# --------------------------------------------------------------------------------------------------- helpers


@contextmanager
def source_db(url: str) -> Iterator[Database]:
    """The source database, through the connector's own client settings (dates aware in UTC)."""
    with connect(url) as client:
        yield client[database_of(url)]


@contextmanager
def transaction(db: Database, enabled: bool = True) -> Iterator[ClientSession | None]:
    """A multi-document transaction on ``db`` (None, and no transaction, when not ``enabled``)."""
    if not enabled:
        yield None
        return
    with db.client.start_session() as session, session.start_transaction():
        yield session


def when(n: int) -> dt.datetime:
    """A date BSON holds exactly (milliseconds)."""
    return EPOCH + dt.timedelta(hours=n, milliseconds=7 * n)


def user_doc(i: int, **extra: Any) -> dict[str, Any]:
    return {"_id": i, "email": f"user{i}@example.com", "name": f"User {i}", "balance": Decimal128(f"{i * 1.25:.2f}"),
            "created_at": when(i), "visits": i, "active": i % 3 != 0, "tags": ["t", str(i % 5)],
            "profile": {"city": "Lyon", "zip": f"{69000 + i}", "since": when(-i), "scores": [i, i * 2.5]}, **extra}


def order_doc(user_id: int, n: int, **extra: Any) -> dict[str, Any]:
    return {"user_id": user_id, "amount": Decimal128(f"{n * 0.5:.2f}"), "status": "new", "placed_at": when(n),
            "note": None if n % 2 else f"note {n}",
            "lines": [{"sku": f"sku-{n % 7}", "qty": 1 + n % 3, "price": Decimal128("9.99")}],
            "shipping": {"address": {"street": f"{n} rue de la Paix", "geo": [4.85, 45.76]}}, **extra}


def create_shop(url: str, users: int = 100, orders: int = 200) -> None:
    with source_db(url) as db:
        db.users.insert_many([user_doc(i) for i in range(1, users + 1)])
        db.orders.insert_many([order_doc(1 + n % users, n) for n in range(1, orders + 1)])


def write_mongo_config(directory: Path, *, source_id: str, source_url: str, sink_url: str, batch_size: int = 50000,
                       mode: str = "staged", options: dict[str, Any] | None = None) -> Path:
    """connectors.yaml and cdc.yaml for a ``type: mongodb`` source (``cdc_testing.write_config`` writes PostgreSQL
    sources only). Unqualified collection names are in the URL's database."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "connectors.yaml").write_text(textwrap.dedent(f"""\
        connectors:
          - id: warehouse
            type: postgresql
            connection_string: {sink_url}
        """))
    (directory / "cdc.yaml").write_text(textwrap.dedent(f"""\
        sources:
          - id: {source_id}
            type: mongodb
            connection_string: {json.dumps(source_url)}
            tables: [users, orders]
            snapshot: initial
            batch_size: {batch_size}
            poll_interval: 0.2
            sink: warehouse
            target_schema: public
            delete_mode: hard
            mode: {mode}
            options: {json.dumps(options or {})}
        """))
    return directory


def position(source_id: str) -> dict[str, Any]:
    from airflow_provider_cdc.positions import PositionStore

    stored = PositionStore().get_document(source_id)
    assert stored is not None, f"no position stored for {source_id}"
    return stored


def inferred_columns(source_id: str, source_url: str, table: str) -> list[Column]:
    """The columns the source inferred for ``table`` (remembered in the stored position)."""
    entry = position(source_id)["schemas"][f"{database_of(source_url)}.{table}"]
    return list(TableSchema.from_dict(entry["table"]).columns)


def expected_row(doc: dict[str, Any], columns: list[Column]) -> dict[str, Any]:
    """What the sink must hold for ``doc``: each field in the value contract's form of its column, as a Python
    value (a missing field, ``$unset`` included, is NULL)."""
    row = {}
    for column in columns:
        text = portable(doc.get(column.name), column.source_type)
        row[column.name] = None if text is None else normalise(parse_value(text, column.logical_type), column)
    return row


def sink_columns(sink_url: str, table: str) -> set[str]:
    with psycopg.connect(sink_url) as conn:
        rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
                            " AND table_name = %s", (table,)).fetchall()
    return {name for (name,) in rows} - set(BOOKKEEPING_COLUMNS)


def assert_same(source_id: str, source_url: str, sink_url: str, table: str) -> dict[str, dict[str, Any]]:
    """The sink table holds the collection's documents on every column the source inferred (a column for every
    field that holds a value), value for value, and no other column; returns the sink rows by ``_id``."""
    columns = inferred_columns(source_id, source_url, table)
    assert sink_columns(sink_url, table) == {c.name for c in columns}, f"{table}: sink columns differ"
    with source_db(source_url) as db:
        docs = list(db[table].find())
    uncovered = {name for doc in docs for name, value in doc.items() if value is not None} - {c.name for c in columns}
    assert not uncovered, f"{table}: fields the source inferred no column for: {sorted(uncovered)}"
    source = {row[ID_FIELD]: row for row in (expected_row(doc, columns) for doc in docs)}
    sink = {row[ID_FIELD]: row for row in pg_rows(sink_url, "public", table, columns)}
    if source != sink:
        missing = [source[k] for k in source.keys() - sink.keys()]
        extra = [sink[k] for k in sink.keys() - source.keys()]
        differ = [(source[k], sink[k]) for k in source.keys() & sink.keys() if source[k] != sink[k]]
        raise AssertionError(f"{table}: {len(source)} documents, {len(sink)} sink rows; missing in sink {missing[:3]}, "
                             f"extra in sink {extra[:3]}, different (source, sink) {differ[:3]}")
    return sink



@pytest.fixture
def shop(mongo_database_factory, pg_database_factory, tmp_path):
    source_url, sink_url = mongo_database_factory("e2e_src"), pg_database_factory()
    create_shop(source_url)
    return unique_id("mongo"), source_url, sink_url, tmp_path / "config"


# -------------------------------------------------------------------------------------------- airflow dags test


def every_kind_of_change(url: str) -> None:
    """Inserts, updates ($set, $inc, $unset, a dotted path), a replace, deletes, a transaction of 300 inserts and
    100 updates across both collections, a new field, and ``orders`` dropped then written again."""
    with source_db(url) as db:
        db.users.insert_one(user_doc(1001, email="new@example.com", balance=Decimal128("0.10")))
        db.users.update_many({"_id": {"$lte": 10}}, {"$inc": {"visits": 5, "balance": Decimal128("0.01")},
                                                     "$set": {"name": "Tab\tand\nnewline", "active": False}})
        db.users.update_one({"_id": 11}, {"$unset": {"email": "", "profile": ""}})
        db.users.replace_one({"_id": 12}, {"name": "replaced", "visits": 1})
        db.users.update_one({"_id": 13}, {"$set": {"profile.city": "Paris", "tags.1": "x"}})
        db.users.delete_many({"_id": {"$gte": 50, "$lte": 59}})
        first_orders = [doc["_id"] for doc in db.orders.find({}, {"_id": 1}).sort("_id", 1).limit(40)]
        with transaction(db) as session:
            db.users.insert_many([user_doc(i) for i in range(2001, 2201)], session=session)
            db.orders.insert_many([order_doc(2001 + n, 1000 + n) for n in range(100)], session=session)
            db.users.update_many({"_id": {"$gte": 2001, "$lte": 2060}}, {"$inc": {"visits": 1}}, session=session)
            db.orders.update_many({"_id": {"$in": first_orders}}, {"$set": {"status": "paid"}}, session=session)
        db.users.update_many({"_id": {"$mod": [7, 0]}}, {"$set": {"tier": 9}})
        db.users.insert_one(user_doc(1002, tier=1))
        db.orders.drop()
        db.orders.insert_many([order_doc(1, 5000 + n, channel="web") for n in range(5)])


@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_airflow_dags_test_moves_snapshot_and_every_kind_of_change(shop, mode):
    source_id, source_url, sink_url, config_dir = shop
    write_mongo_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, mode=mode)

    dags_test(source_id, config_dir)
    assert len(assert_same(source_id, source_url, sink_url, "users")) == 100
    assert len(assert_same(source_id, source_url, sink_url, "orders")) == 200
    stored = position(source_id)
    assert stored["batch_id"].startswith(f"{source_id}:") and "snapshot" not in stored

    every_kind_of_change(source_url)
    dags_test(source_id, config_dir)

    users = assert_same(source_id, source_url, sink_url, "users")
    orders = assert_same(source_id, source_url, sink_url, "orders")
    assert len(users) == 100 + 1 - 10 + 200 + 1 and len(orders) == 5
    assert users["11"]["email"] is None and users["11"]["profile"] is None  # $unset
    assert users["12"]["name"] == "replaced" and users["12"]["email"] is None  # a replace drops fields
    assert users["7"]["tier"] == 9 and users["1"]["tier"] is None and users["1002"]["tier"] == 1  # a new field
    assert users["13"]["profile"]["city"] == "Paris" and users["13"]["tags"] == ["t", "x"]
    assert str(users["1"]["balance"]) == "1.26" and users["1"]["visits"] == 6  # $inc, Decimal128 exact
    assert all(row["channel"] == "web" for row in orders.values())  # after the drop, with its own new field
    rows = assert_ledger_consistent(sink_url, source_id)
    assert len(rows) == 2, rows  # the snapshot's batch, then one batch with all the changes (one run each)
    stored = position(source_id)
    assert stored["resume_token"]["_data"] and stored["seq"] == rows[-1][2] and "snapshot" not in stored


# ----------------------------------------------------------------------------------------------- kill -9 tests

KILL_POINTS = [
    "capture:before-staging",
    "capture:after-staging",
    "load:after-first-merge",
    "load:after-ledger-insert",
    "load:before-commit",
    "load:after-commit",
    "commit:after-position",
    "commit:after-ack",
    "random",
]
CASES = 12  # each point once, then points drawn at random (seeded per case)
FLAVOURS = ["plain", "new_field", "big_transaction", "drop_collection"]

# kill_runner.py with the MongoDB source's acknowledgement as the after-ack point (its own table names PgSource's).
CHILD = f"""
import sys
sys.path.insert(0, {str(KILL_RUNNER.parent)!r})
import kill_runner
from airflow_provider_cdc.connectors.mongodb.source import MongoSource
kill_runner.KILL_POINTS["commit:after-ack"] = lambda: kill_runner.after(MongoSource, "acknowledge")
sys.argv = ["kill_runner.py", *sys.argv[1:]]
kill_runner.main()
"""


def random_change(db: Database, rng: random.Random, session: ClientSession | None, next_user: int) -> int:
    """One random change to users (and their orders); returns the next free user ``_id``."""
    kind = rng.random()
    lo = rng.randint(1, max(1, next_user - 1))
    if kind < 0.30:
        db.users.insert_one(user_doc(next_user, balance=Decimal128(f"{rng.random() * 1000:.2f}")), session=session)
        db.orders.insert_one(order_doc(next_user, rng.randint(1, 999)), session=session)
        return next_user + 1
    if kind < 0.55:
        db.users.update_many({"_id": {"$gte": lo, "$lte": lo + rng.randint(0, 5)}},
                             {"$inc": {"visits": 1, "balance": Decimal128("1.00")}, "$set": {"name": f"U{lo}+"}},
                             session=session)
        db.orders.update_many({"user_id": lo}, {"$set": {"status": "paid"}}, session=session)
    elif kind < 0.65:
        db.users.update_one({"_id": lo}, {"$unset": {rng.choice(["email", "profile", "tags"]): ""}}, session=session)
    elif kind < 0.75:
        db.users.replace_one({"_id": lo}, {"name": f"replaced {lo}", "email": f"r{lo}@example.com",
                                           "balance": Decimal128("2.50"), "visits": 0}, session=session)
    elif kind < 0.90:
        db.users.delete_many({"_id": {"$gte": lo, "$lte": lo + rng.randint(0, 3)}}, session=session)
        db.orders.delete_many({"user_id": lo}, session=session)
    else:
        db.users.update_one({"_id": lo}, {"$set": {"profile.city": f"City {lo}"}}, session=session)
    return next_user


def random_changes(url: str, rng: random.Random, transactions: int) -> None:
    """Random inserts, updates ($set, $inc, $unset), replaces and deletes; about half inside transactions."""
    with source_db(url) as db:
        top = db.users.find_one({"_id": {"$lt": 100_000}}, sort=[("_id", -1)])
        next_user = (top["_id"] if top else 0) + 1
        for _ in range(transactions):
            with transaction(db, rng.random() < 0.5) as session:
                for _ in range(rng.randint(1, 30)):
                    next_user = random_change(db, rng, session, next_user)


def flavour_changes(url: str, flavour: str, rng: random.Random, step: int) -> None:
    with source_db(url) as db:
        if flavour == "new_field" and step == 1:
            db.users.update_many({"_id": {"$mod": [3, rng.randint(0, 2)]}}, {"$set": {"tier": 9}})
            db.orders.update_many({"status": "paid"}, {"$set": {"memo": "paid", "coupon": {"code": "SPRING"}}})
        elif flavour == "new_field":
            db.users.update_many({"_id": {"$mod": [4, 0]}}, {"$inc": {"tier": 1}})
            db.orders.insert_one(order_doc(1, 77, memo="later", coupon={"code": "LATE", "pct": 5}))
        elif flavour == "big_transaction":  # larger than the batch (batch_size 1000): it stays whole
            base = 100_000 * step
            with transaction(db) as session:
                db.users.insert_many([user_doc(base + i) for i in range(1, 1501)], session=session)
                db.users.update_many({"_id": {"$gt": base, "$lte": base + 300}}, {"$inc": {"visits": 1}},
                                     session=session)
        elif flavour == "drop_collection":
            db.orders.drop()
            db.orders.insert_many([order_doc(1, n, channel="after drop") for n in range(3)])


def run_child(config_dir: Path, source_id: str, point: str, rng: random.Random) -> int:
    command = [sys.executable, "-c", CHILD, str(config_dir), source_id]
    if point != "random":
        proc = subprocess.run([*command, point, "3"], capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
        return proc.returncode
    child = subprocess.Popen([*command, "none", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(1.5, 6.0))  # imports take ~1.5 s; then somewhere inside capture, load or commit
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=60)
    assert child.returncode in (0, -signal.SIGKILL), err[-3000:]
    return child.returncode


@pytest.mark.parametrize("case", range(CASES))
def test_sigkill_then_clean_run_converges_exactly_once(case, mongo_database_factory, pg_database_factory, tmp_path):
    rng = random.Random(f"mongodb-{case}")
    point = KILL_POINTS[case] if case < len(KILL_POINTS) else rng.choice(KILL_POINTS)
    flavour = FLAVOURS[case % len(FLAVOURS)]
    source_url, sink_url = mongo_database_factory("kill_src"), pg_database_factory()
    create_shop(source_url, users=rng.randint(50, 200), orders=rng.randint(50, 300))
    source_id = unique_id("mkill")
    batch_size = 1000 if flavour == "big_transaction" else rng.choice([60, 250, 1000, 50000])
    config_dir = write_mongo_config(tmp_path / "config", source_id=source_id, source_url=source_url,
                                    sink_url=sink_url, batch_size=batch_size)

    # Killed during the snapshot ...
    first = run_child(config_dir, source_id, point, rng)
    # ... and, after more changes, during streaming.
    random_changes(source_url, rng, transactions=rng.randint(3, 15))
    flavour_changes(source_url, flavour, rng, step=1)
    second = run_child(config_dir, source_id, point, rng)
    random_changes(source_url, rng, transactions=rng.randint(1, 5))
    flavour_changes(source_url, flavour, rng, step=2)

    from airflow_provider_cdc.hooks.cdc import CdcHook

    drain(CdcHook(source_id, str(config_dir)), "clean", max_runs=60)
    assert_same(source_id, source_url, sink_url, "users")
    assert_same(source_id, source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)
    if point != "random":
        assert -signal.SIGKILL in (first, second), f"kill point {point} was never reached"


# ------------------------------------------------------------------------------------ a lost position, recovered


def test_an_oplog_rolled_past_the_position_is_recovered_by_resnapshot(pg_database_factory, tmp_path):
    """ChangeStreamHistoryLost names ``resnapshot``, and ``python -m airflow_provider_cdc resnapshot`` restores
    equality: on a replica set whose oplog (1 MB) a burst of other writes rolls over."""
    from conftest import start_private_mongod
    from contract.test_contract_mongodb_source import roll_oplog_past
    from test_resnapshot import cli

    from airflow_provider_cdc.errors import PositionLostError
    from airflow_provider_cdc.hooks.cdc import CdcHook

    server = start_private_mongod(tmp_path / "db", oplog_mb=1, extra_args=["--syncdelay", "1"])
    try:
        source_url, sink_url = server.url("resnap_shop"), pg_database_factory()
        create_shop(source_url, users=60, orders=90)
        source_id = unique_id("mresnap")
        config_dir = write_mongo_config(tmp_path / "config", source_id=source_id, source_url=source_url,
                                        sink_url=sink_url, batch_size=100)
        hook = CdcHook(source_id, str(config_dir))
        drain(hook, "before")
        assert_same(source_id, source_url, sink_url, "users")
        stored = position(source_id)
        with source_db(source_url) as db:  # changes nobody captured: only a snapshot has them once the oplog rolls
            db.users.update_many({"_id": {"$lte": 20}}, {"$set": {"name": "lost"}})
            assert db.orders.delete_many({"amount": {"$gt": Decimal128("40")}}).deleted_count == 10
            db.users.insert_one(user_doc(1000))
            roll_oplog_past(db.client, stored["cluster_time"])
        with pytest.raises(PositionLostError, match=rf"ChangeStreamHistoryLost.*resnapshot {source_id}\b"):
            staged_run(hook, "lost")

        result = cli("resnapshot", source_id, "--yes", "--config-dir", str(config_dir), config_dir=config_dir)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        assert "snapshot of 2 tables pending" in result.stdout, result.stdout
        drain(hook, "after")
        assert assert_same(source_id, source_url, sink_url, "users")["1000"]["name"] is not None
        assert_same(source_id, source_url, sink_url, "orders")
        assert_ledger_consistent(sink_url, source_id)
        with source_db(source_url) as db:  # and it streams again
            db.users.update_many({"_id": {"$gt": 30}}, {"$set": {"name": "streamed"}})
        drain(hook, "streaming")
        assert_same(source_id, source_url, sink_url, "users")
    finally:
        server.stop()
