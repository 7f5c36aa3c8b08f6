#!/usr/bin/env python3
"""Keep a small shop database busy, so CDC has something to capture.

Creates ``users`` and ``orders`` (if absent), seeds them when empty, then runs random single-row
INSERT / UPDATE / DELETE transactions at about ``--rate`` per second until SIGINT or SIGTERM,
printing a count line every 10 seconds.

    python scripts/change_generator.py postgresql://postgres@127.0.0.1:55432/shop --rate 5
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from collections import Counter

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


def ensure_schema(conn: psycopg.Connection, seed_users: int, seed_orders: int) -> None:
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


def _random_id(conn: psycopg.Connection, table: str) -> int | None:
    # A random existing id: the first at or after a random point between min and max.
    row = conn.execute(
        f"SELECT id FROM {table} WHERE id >= (SELECT min(id) + floor(random() * (max(id) - min(id) + 1))"
        f" FROM {table}) ORDER BY id LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def apply_one(conn: psycopg.Connection, table: str, operation: str) -> bool:
    """One random change in its own transaction; False when there was nothing to update/delete."""
    if operation == "insert":
        if table == "users":
            conn.execute("INSERT INTO users (email, name, status) VALUES (%s, %s, %s)", _random_user())
        else:
            user_id = _random_id(conn, "users") or 1
            conn.execute(
                "INSERT INTO orders (user_id, amount, status) VALUES (%s, %s, 'new')",
                (user_id, round(random.uniform(1, 500), 2)),
            )
        return True
    row_id = _random_id(conn, table)
    if row_id is None:
        return False
    if operation == "delete":
        conn.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))
    elif table == "users":
        conn.execute(
            "UPDATE users SET status = %s, name = %s, updated_at = now() WHERE id = %s",
            (random.choice(USER_STATUSES), _random_user()[1], row_id),
        )
    else:
        conn.execute(
            "UPDATE orders SET status = %s, amount = %s WHERE id = %s",
            (random.choice(ORDER_STATUSES), round(random.uniform(1, 500), 2), row_id),
        )
    return True


def run(url: str, rate: float, seed_users: int, seed_orders: int, duration: float | None) -> int:
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
    conn: psycopg.Connection | None = None
    done = 0
    next_at = started
    try:
        while not stopping:
            if duration is not None and time.monotonic() - started >= duration:
                break
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
                    ensure_schema(conn, seed_users, seed_orders)
                    print(f"change_generator: connected, about {rate:g} changes/s", flush=True)
                table, operation = random.choices(choices, weights)[0]
                if apply_one(conn, table, operation):
                    counts[operation] += 1
                    done += 1
            except psycopg.OperationalError as exc:
                print(f"change_generator: database unavailable ({exc}); retrying", file=sys.stderr, flush=True)
                if conn is not None:
                    conn.close()
                conn = None
                sleep_until(time.monotonic() + 2)
                continue
            now = time.monotonic()
            if now >= report_at:
                elapsed = now - started
                print(
                    f"change_generator: {done} changes in {elapsed:.0f}s ({done / elapsed:.1f}/s):"
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
        f"change_generator: stopped after {done} changes"
        f" ({counts['insert']} inserts, {counts['update']} updates, {counts['delete']} deletes)",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="PostgreSQL URL of the shop database")
    parser.add_argument("--rate", type=float, default=5.0, help="changes per second (default 5)")
    parser.add_argument("--seed-users", type=int, default=1000, help="users to create when the table is empty")
    parser.add_argument("--seed-orders", type=int, default=3000, help="orders to create when the table is empty")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    return run(args.url, args.rate, args.seed_users, args.seed_orders, args.duration)


if __name__ == "__main__":
    sys.exit(main())
