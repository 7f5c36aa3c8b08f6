#!/usr/bin/env python3
"""Keep a small shop database busy, so CDC has something to capture.

Creates ``users`` and ``orders`` (if absent), seeds them when empty, then runs random single-row
INSERT / UPDATE / DELETE transactions at about ``--rate`` per second until SIGINT or SIGTERM,
printing a count line every 10 seconds.

The database is PostgreSQL (``postgresql://``), MySQL/MariaDB (``mysql://``, the same tables in MySQL types) or
MongoDB (``mongodb://``, the same shop as collections of documents: :class:`MongoDialect`). Which change comes next
is chosen the same way for all; only the dialect differs (:class:`PostgresDialect`, :class:`MySqlDialect`).

    python scripts/change_generator.py postgresql://postgres@127.0.0.1:55432/shop --rate 5
    python scripts/change_generator.py mysql://root@127.0.0.1:53306/shop --rate 5
    python scripts/change_generator.py "mongodb://127.0.0.1:57017/shop?replicaSet=rs0&directConnection=true"
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from typing import Any, Protocol

import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY,
    email text,
    name text,
    status text,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz
);
CREATE TABLE IF NOT EXISTS orders (
    id bigserial PRIMARY KEY,
    user_id bigint,
    amount numeric(12,2),
    status text,
    created_at timestamptz DEFAULT now()
);
-- Before-images of updates and deletes carry every column.
ALTER TABLE users REPLICA IDENTITY FULL;
ALTER TABLE orders REPLICA IDENTITY FULL;
"""

# The same tables in MySQL types. TIMESTAMP, not DATETIME: like timestamptz it is an instant (stored in UTC), so the
# sink gets timestamptz columns as from the PostgreSQL shop. NULL and the defaults are spelled out because a TIMESTAMP
# column may otherwise be NOT NULL and updated on every write (explicit_defaults_for_timestamp=OFF).
MYSQL_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS users (
    id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    email text,
    name text,
    status text,
    created_at timestamp(6) NULL DEFAULT current_timestamp(6),
    updated_at timestamp(6) NULL DEFAULT NULL
)""",
    """CREATE TABLE IF NOT EXISTS orders (
    id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id bigint,
    amount decimal(12,2),
    status text,
    created_at timestamp(6) NULL DEFAULT current_timestamp(6)
)""",
]

FIRST_NAMES = ["ada", "alan", "grace", "edsger", "barbara", "donald", "frances", "ken", "margaret", "linus"]
USER_STATUSES = ["active", "inactive"]
ORDER_STATUSES = ["new", "paid", "shipped", "delivered", "cancelled"]

# (table, operation) -> weight; inserts outweigh deletes so the tables grow slowly.
OPERATIONS = {
    ("users", "insert"): 15,
    ("users", "update"): 20,
    ("users", "delete"): 5,
    ("orders", "insert"): 25,
    ("orders", "update"): 25,
    ("orders", "delete"): 10,
}


class Stop(Exception):
    pass


def _random_user() -> tuple[str, str, str]:
    name = f"{random.choice(FIRST_NAMES)} {random.randint(1, 99999)}"
    email = f"{name.replace(' ', '.')}@example.com"
    return email, name.title(), random.choice(USER_STATUSES)


class Connection(Protocol):
    """What the changes need of a connection: psycopg's ``conn.execute(...)`` (pymysql is wrapped to match)."""

    @property
    def closed(self) -> bool: ...

    def execute(self, query: str, params: Sequence[Any] | None = None) -> Any: ...

    def close(self) -> None: ...


class PostgresDialect:
    """PostgreSQL: the tables with REPLICA IDENTITY FULL, and a seed from generate_series."""

    log_name = "change_generator"
    # The current time as the timestamp columns store it.
    now = "now()"
    # A random existing id: the first at or after a random point between min and max.
    random_id_sql = (
        "SELECT id FROM {table} WHERE id >= (SELECT min(id) + floor(random() * (max(id) - min(id) + 1))"
        " FROM {table}) ORDER BY id LIMIT 1"
    )
    unavailable: tuple[type[Exception], ...] = (psycopg.OperationalError,)

    def connect(self, url: str) -> Connection:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)

    def ensure_schema(self, conn: Connection, seed_users: int, seed_orders: int) -> None:
        assert isinstance(conn, psycopg.Connection)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('cdc_change_generator_schema'))")
            conn.execute(SCHEMA)
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM users)").fetchone()[0]:
                conn.execute(
                    "INSERT INTO users (email, name, status)"
                    " SELECT 'user' || g || '@example.com', 'User ' || g,"
                    "        (ARRAY['active','inactive'])[1 + (g %% 5 = 0)::int]"
                    " FROM generate_series(1, %s) AS g",
                    (seed_users,),
                )
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM orders)").fetchone()[0]:
                conn.execute(
                    "INSERT INTO orders (user_id, amount, status)"
                    " SELECT 1 + floor(random() * %s)::bigint, round((random() * 500)::numeric, 2),"
                    "        (ARRAY['new','paid','shipped','delivered','cancelled'])[1 + floor(random() * 5)::int]"
                    " FROM generate_series(1, %s)",
                    (max(seed_users, 1), seed_orders),
                )


class _MySqlConnection:
    """A pymysql connection with psycopg's ``execute(query, params)`` returning the cursor, so that one
    ``apply_one`` writes the changes for both databases. Autocommit: each statement is its own transaction."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @property
    def closed(self) -> bool:
        return not self._conn.open

    def execute(self, query: str, params: Sequence[Any] | None = None) -> Any:
        cursor = self._conn.cursor()
        cursor.execute(query, params)
        return cursor

    def executemany(self, query: str, rows: list[tuple[Any, ...]]) -> None:
        # pymysql sends an INSERT ... VALUES with many rows per statement.
        self._conn.cursor().executemany(query, rows)

    def close(self) -> None:
        import pymysql

        with suppress(pymysql.err.Error):  # already closed, or the server went away
            self._conn.close()


class MySqlDialect:
    """MySQL and MariaDB: the tables of :data:`MYSQL_SCHEMA`, and a seed sent from here (no generate_series).

    The session is the connector's (UTC, utf8mb4, strict SQL mode). The database must exist.
    """

    log_name = "change_generator[mysql]"  # told apart from a PostgreSQL generator running beside it (make demo)
    now = "now(6)"  # now() has no fractional seconds in MySQL
    # The random point is computed once, in a derived table: a subquery with rand() in WHERE would be evaluated
    # again for every row.
    random_id_sql = (
        "SELECT t.id FROM {table} AS t JOIN (SELECT min(id) + floor(rand() * (max(id) - min(id) + 1)) AS point"
        " FROM {table}) AS r ON t.id >= r.point ORDER BY t.id LIMIT 1"
    )

    def __init__(self) -> None:
        import pymysql  # only this dialect needs the driver

        self.unavailable: tuple[type[Exception], ...] = (pymysql.err.OperationalError, pymysql.err.InterfaceError)

    def connect(self, url: str) -> Connection:
        from airflow_provider_cdc.connectors.mysql.connection import connect

        return _MySqlConnection(connect(url, autocommit=True))

    def ensure_schema(self, conn: Connection, seed_users: int, seed_orders: int) -> None:
        assert isinstance(conn, _MySqlConnection)
        # Two generators starting together: the second waits, then finds the tables seeded.
        conn.execute("SELECT GET_LOCK('cdc_change_generator_schema', 60)")
        try:
            for statement in MYSQL_SCHEMA:
                conn.execute(statement)
            conn.execute("START TRANSACTION")
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM users)").fetchone()[0]:
                conn.executemany(
                    "INSERT INTO users (email, name, status) VALUES (%s, %s, %s)",
                    [(f"user{g}@example.com", f"User {g}", "inactive" if g % 5 == 0 else "active")
                     for g in range(1, seed_users + 1)],
                )
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM orders)").fetchone()[0]:
                conn.executemany(
                    "INSERT INTO orders (user_id, amount, status) VALUES (%s, %s, %s)",
                    [(random.randint(1, max(seed_users, 1)), round(random.uniform(0, 500), 2),
                      random.choice(ORDER_STATUSES)) for _ in range(seed_orders)],
                )
            conn.execute("COMMIT")
        finally:
            conn.execute("SELECT RELEASE_LOCK('cdc_change_generator_schema')")


class _MongoConnection:
    """A pymongo client and its database, with the ``closed`` / ``close`` the run loop asks of a connection."""

    def __init__(self, url: str) -> None:
        import pymongo

        self.client: Any = pymongo.MongoClient(url, tz_aware=True, serverSelectionTimeoutMS=5000)
        self.db = self.client.get_default_database()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.client.close()


class MongoDialect:
    """MongoDB: ``users`` (integer ``_id``) and ``orders`` (ObjectId ``_id``) as documents with nested fields and
    arrays, Decimal128 amounts and dates; updates use ``$set``, ``$inc``, ``$push`` and ``$unset``, and one change in
    ten is a multi-document transaction (an order with its user's update). Needs a replica set."""

    log_name = "change_generator[mongodb]"

    def __init__(self) -> None:
        from pymongo.errors import ConnectionFailure

        self.unavailable: tuple[type[Exception], ...] = (ConnectionFailure,)

    def connect(self, url: str) -> _MongoConnection:
        return _MongoConnection(url)

    @staticmethod
    def _user(user_id: int) -> dict[str, Any]:
        email, name, status = _random_user()
        city = random.choice(["Paris", "Lagos", "Lima", "Osaka"])
        return {"_id": user_id, "email": email, "name": name, "status": status, "created_at": _utcnow(),
                "tags": random.sample(FIRST_NAMES, 2), "address": {"city": city, "zip": random.randint(1, 99999)}}

    @staticmethod
    def _order(user_id: int) -> dict[str, Any]:
        from bson import Decimal128

        return {"user_id": user_id, "amount": Decimal128(f"{random.uniform(1, 500):.2f}"), "status": "new",
                "created_at": _utcnow(),
                "items": [{"sku": f"SKU-{random.randint(1, 50)}", "qty": random.randint(1, 4)}
                          for _ in range(random.randint(1, 3))]}

    def ensure_schema(self, conn: Any, seed_users: int, seed_orders: int) -> None:
        db = conn.db
        if db.users.estimated_document_count() == 0:
            db.users.insert_many([self._user(i) for i in range(1, seed_users + 1)])
        if db.orders.estimated_document_count() == 0:
            db.orders.insert_many([self._order(random.randint(1, max(seed_users, 1))) for _ in range(seed_orders)])

    def apply_one(self, conn: Any, table: str, operation: str) -> bool:
        from bson import Decimal128

        db = conn.db
        if operation == "insert" and table == "users":
            last = db.users.find_one(sort=[("_id", -1)], projection={"_id": 1})
            db.users.insert_one(self._user((last or {"_id": 0})["_id"] + 1))
            return True
        picked = list(db[table].aggregate([{"$sample": {"size": 1}}, {"$project": {"_id": 1, "user_id": 1}}]))
        if operation == "insert":
            user_id = picked[0].get("user_id", 1) if picked else 1
            if random.random() < 0.1:  # an order and its user's update in one transaction
                with conn.client.start_session() as session, session.start_transaction():
                    db.orders.insert_one(self._order(user_id), session=session)
                    db.users.update_one({"_id": user_id}, {"$inc": {"order_count": 1}}, session=session)
            else:
                db.orders.insert_one(self._order(user_id))
            return True
        if not picked:
            return False
        key = {"_id": picked[0]["_id"]}
        if operation == "delete":
            db[table].delete_one(key)
        elif table == "users":
            change = random.random()
            if change < 0.15:
                db.users.update_one(key, {"$unset": {"address": ""}})
            elif change < 0.3:
                db.users.update_one(key, {"$push": {"tags": random.choice(FIRST_NAMES)}})
            else:
                db.users.update_one(key, {"$set": {"status": random.choice(USER_STATUSES),
                                                   "name": _random_user()[1], "updated_at": _utcnow()}})
        else:
            db.orders.update_one(key, {"$set": {"status": random.choice(ORDER_STATUSES),
                                                "amount": Decimal128(f"{random.uniform(1, 500):.2f}")}})
        return True


def _utcnow() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


Dialect = PostgresDialect | MySqlDialect | MongoDialect

_SCHEMES: dict[str, type[PostgresDialect] | type[MySqlDialect] | type[MongoDialect]] = {
    "postgresql": PostgresDialect,
    "postgres": PostgresDialect,
    "mysql": MySqlDialect,
    "mariadb": MySqlDialect,
    "mongodb": MongoDialect,
}


def dialect_for(url: str) -> Dialect:
    """The dialect of a ``postgresql://`` or ``mysql://`` URL; ValueError for anything else."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise ValueError(f"unsupported database URL scheme {scheme or url!r}: use postgresql://, mysql:// or "
                         "mongodb://")
    return _SCHEMES[scheme]()


def _random_id(conn: Connection, dialect: PostgresDialect | MySqlDialect, table: str) -> int | None:
    row = conn.execute(dialect.random_id_sql.format(table=table)).fetchone()
    return row[0] if row else None


def apply_one(conn: Connection, dialect: Dialect, table: str, operation: str) -> bool:
    """One random change in its own transaction; False when there was nothing to update/delete."""
    if isinstance(dialect, MongoDialect):
        return dialect.apply_one(conn, table, operation)
    if operation == "insert":
        if table == "users":
            conn.execute("INSERT INTO users (email, name, status) VALUES (%s, %s, %s)", _random_user())
        else:
            user_id = _random_id(conn, dialect, "users") or 1
            conn.execute(
                "INSERT INTO orders (user_id, amount, status) VALUES (%s, %s, 'new')",
                (user_id, round(random.uniform(1, 500), 2)),
            )
        return True
    row_id = _random_id(conn, dialect, table)
    if row_id is None:
        return False
    if operation == "delete":
        conn.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))
    elif table == "users":
        conn.execute(
            f"UPDATE users SET status = %s, name = %s, updated_at = {dialect.now} WHERE id = %s",
            (random.choice(USER_STATUSES), _random_user()[1], row_id),
        )
    else:
        conn.execute(
            "UPDATE orders SET status = %s, amount = %s WHERE id = %s",
            (random.choice(ORDER_STATUSES), round(random.uniform(1, 500), 2), row_id),
        )
    return True


def run(url: str, rate: float, seed_users: int, seed_orders: int, duration: float | None) -> int:
    dialect = dialect_for(url)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def sleep_until(deadline: float) -> None:
        while not stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))
        raise Stop

    choices, weights = zip(*OPERATIONS.items())
    counts: Counter[str] = Counter()
    started = time.monotonic()
    report_at = started + 10
    conn: Connection | None = None
    done = 0
    next_at = started
    try:
        while not stopping:
            if duration is not None and time.monotonic() - started >= duration:
                break
            try:
                if conn is None or conn.closed:
                    conn = dialect.connect(url)
                    dialect.ensure_schema(conn, seed_users, seed_orders)
                    print(f"{dialect.log_name}: connected, about {rate:g} changes/s", flush=True)
                table, operation = random.choices(choices, weights)[0]
                if apply_one(conn, dialect, table, operation):
                    counts[operation] += 1
                    done += 1
            except dialect.unavailable as exc:
                print(f"{dialect.log_name}: database unavailable ({exc}); retrying", file=sys.stderr, flush=True)
                if conn is not None:
                    conn.close()
                conn = None
                sleep_until(time.monotonic() + 2)
                continue
            now = time.monotonic()
            if now >= report_at:
                elapsed = now - started
                print(
                    f"{dialect.log_name}: {done} changes in {elapsed:.0f}s ({done / elapsed:.1f}/s):"
                    f" {counts['insert']} inserts, {counts['update']} updates, {counts['delete']} deletes",
                    flush=True,
                )
                report_at += 10
            # Pace at `rate` attempts per second; after a stall, resume the pace instead of bursting.
            next_at = max(next_at + 1 / rate, now - 1)
            sleep_until(next_at)
    except Stop:
        pass
    finally:
        if conn is not None:
            conn.close()
    print(
        f"{dialect.log_name}: stopped after {done} changes"
        f" ({counts['insert']} inserts, {counts['update']} updates, {counts['delete']} deletes)",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="URL of the shop database: postgresql://..., mysql://... (MariaDB too) or "
                                    "mongodb://... (a replica set)")
    parser.add_argument("--rate", type=float, default=5.0, help="changes per second (default 5)")
    parser.add_argument("--seed-users", type=int, default=1000, help="users to create when the table is empty")
    parser.add_argument("--seed-orders", type=int, default=3000, help="orders to create when the table is empty")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    try:
        dialect_for(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    return run(args.url, args.rate, args.seed_users, args.seed_orders, args.duration)


if __name__ == "__main__":
    sys.exit(main())
