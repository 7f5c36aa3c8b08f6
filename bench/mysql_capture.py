"""Benchmark 7: MariaDB capture against a bare pymysqlreplication loop, and MariaDB -> PostgreSQL end to end.

    .venv/bin/python bench/mysql_capture.py [--rows 100000] [--batch 50000] [--dsn URL] [--quick]

On a private MariaDB (``scripts/private_mariadb.py``: row binlog, full images and metadata, on a temporary data
directory, stopped and removed at the end), a table ``bench_changes (id bigint primary key, a int, b varchar(64),
c decimal(12,2), d timestamp(6))`` gets ``--rows`` inserts and then as many updates (200,000 row changes by default)
in transactions of 10,000 rows. Over that same binlog range, in the same run:

a. **reference**: a bare ``BinLogStreamReader`` loop (non-blocking, from the binlog file and offset taken before the
   workload, row events only), touching every value of every row (``values``, or ``before_values`` and
   ``after_values``);
b. **ours, capture**: ``MySqlSource.capture(position, --batch)`` from the position taken before the workload
   (snapshot ``never``) until a capture comes back empty (that last capture counts), the position moving to each
   batch's end; a and b run alternately, twice each, and the faster run of each counts;
c. **ours, end to end**: ``pipeline.run_fused`` (capture -> load -> commit, no rules) with a ``PgSink`` into a fresh
   database on the machine's PostgreSQL (``--dsn``, default 127.0.0.1:5432, trust auth), positions in memory, until
   a run captures nothing; then the sink table is checked against the source (row count and sums).

Rates divide row changes by wall time. The ratio b / a is DESIGN section 6's capture target (>= 0.5x). It prints a
Markdown table; BENCHMARKS.md's section "MariaDB capture and MariaDB -> PostgreSQL" holds a run of it.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib  # first: it gives the run a private AIRFLOW_HOME before anything imports Airflow
import psycopg
import pymysql
from psycopg import sql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.mysql.connection import connect_kwargs
from airflow_provider_cdc.connectors.mysql.source import MySqlSource
from airflow_provider_cdc.connectors.postgres.sink import PgSink

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE = "cdc_bench_mysql"
SINK_DB = "cdc_bench_mysql_sink"
TABLE = "bench_changes"
TX_ROWS = 10_000
SOURCE_ID = "bench_mysql"


def load_private_mariadb() -> Any:
    """Import scripts/private_mariadb.py (scripts/ is not a package), as tests/conftest.py does."""
    spec = importlib.util.spec_from_file_location("private_mariadb", REPO_ROOT / "scripts" / "private_mariadb.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["private_mariadb"] = module
    spec.loader.exec_module(module)
    return module


def mysql(url: str, database: str | None = None) -> pymysql.Connection:
    return pymysql.connect(**connect_kwargs(url), database=database, charset="utf8mb4", autocommit=True,
                           init_command="SET time_zone = '+00:00'")


def binlog_end(conn: pymysql.Connection) -> tuple[str, int]:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    return str(row[0]), int(row[1])


def workload(conn: pymysql.Connection, rows: int) -> float:
    """``rows`` inserts, then ``rows`` updates of every row, in transactions of TX_ROWS rows; returns seconds."""
    started = time.perf_counter()
    with conn.cursor() as cur:
        for lo in range(0, rows, TX_ROWS):
            hi = min(rows, lo + TX_ROWS)
            cur.execute(f"INSERT INTO {TABLE} SELECT seq, seq % 1000, md5(seq), (seq % 100000) / 100, "
                        f"timestamp'2024-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_{lo + 1}_to_{hi}")
        for lo in range(0, rows, TX_ROWS):
            cur.execute(f"UPDATE {TABLE} SET a = a + 1, b = md5(b), c = c + 0.01, d = d + INTERVAL 1 HOUR "
                        "WHERE id > %s AND id <= %s", (lo, lo + TX_ROWS))
    return time.perf_counter() - started


def bare_loop(url: str, start: tuple[str, int]) -> tuple[int, float]:
    """Reference: every row event from ``start`` to the binlog's end, each value touched."""
    kwargs = connect_kwargs(url)
    settings = {k: kwargs[k] for k in ("host", "port", "user", "password")}
    started = time.perf_counter()
    reader = BinLogStreamReader(
        connection_settings=settings, server_id=4242, log_file=start[0], log_pos=start[1], resume_stream=True,
        blocking=False, only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent], only_schemas=[DATABASE],
    )
    rows = 0
    touched = 0
    try:
        for event in reader:
            for row in event.rows:
                if isinstance(event, UpdateRowsEvent):
                    touched += len(row["before_values"]) + len(row["after_values"])
                else:
                    touched += len(row["values"])
                rows += 1
    finally:
        reader.close()
    assert touched > 0
    return rows, time.perf_counter() - started


def our_capture(url: str, position: dict[str, Any], batch: int) -> tuple[int, int, float]:
    """Ours: MySqlSource.capture in batches until one is empty; returns (changes, batches, seconds)."""
    source = MySqlSource(url, source_id=SOURCE_ID, tables=[(DATABASE, TABLE)], snapshot="never")
    changes = batches = 0
    started = time.perf_counter()
    try:
        source.prepare(position)
        while True:
            captured = source.capture(position, batch)
            batches += 1
            changes += captured.change_count
            position = captured.position_to
            if captured.change_count == 0:
                break
    finally:
        source.close()
    return changes, batches, time.perf_counter() - started


class MemoryPositions(benchlib.MemoryPositions):
    """benchlib's in-memory positions, with the ``delete`` of the PositionStore protocol."""

    def delete(self, source_id: str) -> None:
        self._docs.pop(source_id, None)


def end_to_end(url: str, sink_url: str, position: dict[str, Any], batch: int) -> tuple[int, int, float]:
    """Ours: run_fused (capture -> load -> commit) into PostgreSQL until a run is empty."""
    source = MySqlSource(url, source_id=SOURCE_ID, tables=[(DATABASE, TABLE)], snapshot="never")
    sink = PgSink(sink_url, sink_id="warehouse", target_schema="public", delete_mode="hard")
    positions = MemoryPositions()
    positions.set(SOURCE_ID, position, batch_id=None)
    changes = runs = 0
    started = time.perf_counter()
    try:
        while True:
            summary = pipeline.run_fused(source, sink, positions, max_changes=batch)
            runs += 1
            changes += summary["change_count"]
            if summary["change_count"] == 0:
                break
    finally:
        source.close()
        sink.close()
    return changes, runs, time.perf_counter() - started


def check_sink(conn: pymysql.Connection, sink_url: str) -> tuple[tuple, tuple]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*), sum(a), sum(c), CAST(sum(unix_timestamp(d)) AS SIGNED) FROM {TABLE}")
        row = cur.fetchone()
        assert row is not None
        source = tuple(str(v) for v in row)
    with psycopg.connect(sink_url) as pg:
        found = pg.execute(sql.SQL("SELECT count(*), sum(a), sum(c), sum(extract(epoch FROM d))::bigint FROM {}")
                           .format(sql.Identifier(TABLE))).fetchone()
        assert found is not None
        sink = tuple(str(v) for v in found)
    return source, sink


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows inserted, then updated (changes: twice)")
    parser.add_argument("--batch", type=int, default=50_000, help="max changes per capture / run")
    parser.add_argument("--dsn", default=benchlib.DEFAULT_DSN, help="PostgreSQL server for the sink database")
    parser.add_argument("--quick", action="store_true", help="10x fewer rows (a smoke run)")
    args = parser.parse_args()
    rows = args.rows // 10 if args.quick else args.rows
    for name in ("airflow_provider_cdc", "pymysqlreplication"):  # they log every batch / reader start at INFO
        logging.getLogger(name).setLevel(logging.WARNING)

    workdir = tempfile.mkdtemp(prefix="cdc-bench-mariadb-")
    server = load_private_mariadb().PrivateMariaDB(Path(workdir) / "data")
    sink_url = benchlib.db_dsn(args.dsn, SINK_DB)
    try:
        server.start()
        url = server.url(DATABASE)
        conn = mysql(url)
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            version = cur.fetchone()[0]
            cur.execute(f"CREATE DATABASE {DATABASE}")
            cur.execute(f"CREATE TABLE {DATABASE}.{TABLE} (id bigint PRIMARY KEY, a int NOT NULL, b varchar(64) NOT "
                        "NULL, c decimal(12,2), d timestamp(6) NULL)")
        conn.select_db(DATABASE)
        with benchlib.admin_connect(args.dsn) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SINK_DB)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SINK_DB)))
        info = benchlib.machine_info(args.dsn)
        with MySqlSource(url, source_id=SOURCE_ID, tables=[(DATABASE, TABLE)], snapshot="never") as source:
            position = source.initial_position(snapshot=False)
        start = binlog_end(conn)
        seconds = workload(conn, rows)
        end = binlog_end(conn)
        benchlib.log(f"workload: {2 * rows:,} row changes in {seconds:.2f}s; binlog {start} -> {end}")

        # Reference and ours alternate, twice each, and the faster run of each counts: on two shared cores a burst
        # of other work then hurts both alike rather than one of them.
        reference, captures = [], []
        for _ in range(2):
            reference.append(bare_loop(url, start))
            benchlib.log(f"bare loop: {reference[-1][0]:,} rows in {reference[-1][1]:.2f}s")
            captures.append(our_capture(url, position, args.batch))
            benchlib.log(f"capture: {captures[-1][0]:,} changes in {captures[-1][1]} captures, {captures[-1][2]:.2f}s")
        ref_rows, ref_s = min(reference, key=lambda r: r[1])
        cap_changes, cap_batches, cap_s = min(captures, key=lambda r: r[2])
        ref_other, cap_other = max(r[1] for r in reference), max(r[2] for r in captures)
        e2e_changes, e2e_runs, e2e_s = end_to_end(url, sink_url, position, args.batch)
        benchlib.log(f"end to end: {e2e_changes:,} changes in {e2e_runs} runs, {e2e_s:.2f}s")
        source_check, sink_check = check_sink(conn, sink_url)
        conn.close()

        ratio = (cap_changes / cap_s) / (ref_rows / ref_s)
        print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {info['nproc']} cores "
              f"({info.get('cpu', '?')}), load average at start {info['loadavg'][0]:.2f}; MariaDB {version} "
              f"(private, scripts/private_mariadb.py); PostgreSQL {info['pg_version']}; code: {info['code']}")
        print(f"- workload: {rows:,} inserts then {rows:,} updates of `{TABLE}` in transactions of {TX_ROWS:,} "
              f"rows ({2 * rows:,} row changes, written in {seconds:.2f}s); batch size {args.batch:,}")
        print()
        print("| measure | changes | seconds | changes/s |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| (a) bare pymysqlreplication loop, non-blocking, every value touched (reference; best of 2, other "
              f"{ref_other:.2f} s) | {ref_rows:,} | {ref_s:.2f} | {rate(ref_rows, ref_s)} |")
        print(f"| (b) ours: `MySqlSource.capture` ({cap_batches} captures, the last one empty; best of 2, other "
              f"{cap_other:.2f} s) | {cap_changes:,} | {cap_s:.2f} | {rate(cap_changes, cap_s)} |")
        print(f"| (c) ours: MariaDB -> PostgreSQL, `pipeline.run_fused` ({e2e_runs} runs, the last one empty) | "
              f"{e2e_changes:,} | {e2e_s:.2f} | {rate(e2e_changes, e2e_s)} |")
        print()
        print(f"Ratio (b) / (a): **{ratio:.2f}x** (target >= 0.5x). Sink check (count, sum(a), sum(c), "
              f"sum of epochs of d): source {source_check}, sink {sink_check}: "
              f"{'equal' if source_check == sink_check else 'DIFFERENT'}.")
        return 0 if source_check == sink_check and cap_changes == ref_rows == e2e_changes else 1
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            with benchlib.admin_connect(args.dsn) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SINK_DB)))
        except psycopg.Error as exc:
            benchlib.log(f"could not drop {SINK_DB}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
