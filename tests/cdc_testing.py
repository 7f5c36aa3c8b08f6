"""Helpers shared by the tests: config directories, source tables, and row-for-row comparison."""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from airflow_provider_cdc.events import ChangeBatch, TableChangesBuilder
from airflow_provider_cdc.tables import SchemaChange, TableSchema

BOOKKEEPING = ("_cdc_op", "_cdc_position", "_cdc_ts", "_cdc_deleted_at")

# For a module whose subject is not PostgreSQL's behaviour (Airflow orchestration, the schema gate, rules, quality
# checks): run it on the machine's PostgreSQL 15 only (``pytestmark = ON_PG15_ONLY``). The connector, edge-case and
# kill tests still run on 15 and 18; this keeps the suite within its time budget without dropping a case.
ON_PG15_ONLY = pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)


def dags_test(source_id: str, config_dir: Path, *, ok: bool = True, dag_id: str | None = None,
              env: dict[str, str] | None = None, timeout: int = 400) -> str:
    """What a user types: ``airflow dags test cdc_<id>`` (or ``dag_id``) in a subprocess, with ``CDC_CONFIG_DIR``;
    its output. With ``ok`` the run must succeed."""
    import subprocess
    import sys

    environ = {**os.environ, "CDC_CONFIG_DIR": str(config_dir), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", dag_id or f"cdc_{source_id}"],
                          env=environ, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if ok:
        assert proc.returncode == 0 and "state=success" in out, out[-4000:]
    return out


def unique_id(prefix: str = "src") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def write_config(
    directory: Path,
    *,
    source_id: str,
    source_url: str,
    sink_url: str,
    tables: list[str],
    batch_size: int = 50000,
    mode: str = "staged",
    delete_mode: str = "hard",
    snapshot: str = "initial",
    extra: str = "",
    heartbeat_interval: float = 0,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "connectors.yaml").write_text(textwrap.dedent(f"""\
        connectors:
          - id: source_db
            type: postgresql
            connection_string: {source_url}
          - id: warehouse
            type: postgresql
            connection_string: {sink_url}
        """))
    (directory / "cdc.yaml").write_text(textwrap.dedent(f"""\
        sources:
          - id: {source_id}
            type: postgresql
            connector: source_db
            tables: [{", ".join(tables)}]
            snapshot: {snapshot}
            batch_size: {batch_size}
            poll_interval: 0.2
            heartbeat_interval: {heartbeat_interval}
            sink: warehouse
            target_schema: public
            delete_mode: {delete_mode}
            mode: {mode}
        """) + textwrap.indent(textwrap.dedent(extra), "    "))
    return directory


SHOP_DDL = """
CREATE TABLE users (
    id bigint PRIMARY KEY,
    email text,
    name text,
    balance numeric(12,2),
    created_at timestamptz DEFAULT now(),
    bio text
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    user_id bigint,
    amount numeric(12,2),
    status text,
    placed_at timestamptz DEFAULT now()
);
"""


def create_shop(url: str, users: int = 100, orders: int = 200) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SHOP_DDL)
        conn.execute(
            "INSERT INTO users (id, email, name, balance) SELECT g, 'user' || g || '@example.com', 'User ' || g, "
            "g * 1.25 FROM generate_series(1, %s) g",
            (users,),
        )
        conn.execute(
            "INSERT INTO orders (user_id, amount, status) SELECT 1 + g %% %s, g * 0.5, 'new' "
            "FROM generate_series(1, %s) g",
            (users, orders),
        )


def table_rows(url: str, table: str, *, columns: list[str] | None = None, where: str = "") -> list[tuple]:
    """Every row as text, ordered by the first column (the key in our test tables)."""
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        if columns is None:
            cur = conn.execute(f"SELECT * FROM {table} LIMIT 0")
            columns = [d.name for d in cur.description if d.name not in BOOKKEEPING]
        # Quoted: source columns may be named "Mixed Case", "before.x" or _op.
        cols = ", ".join(sql.Identifier(c).as_string(conn) + "::text" for c in columns)
        return conn.execute(f"SELECT {cols} FROM {table} {where} ORDER BY 1").fetchall()


def assert_same_rows(source_url: str, sink_url: str, table: str, *, sink_where: str = "",
                     sink_table: str | None = None) -> int:
    """Source and sink hold the same rows on the source's current columns (``sink_table`` when the sink's name
    differs, e.g. ``s2.items`` lands as ``items``; ``ONLY parent`` compares an inheritance parent's own rows)."""
    source = table_rows(source_url, table)
    with psycopg.connect(source_url) as conn:
        columns = [d.name for d in conn.execute(f"SELECT * FROM {table} LIMIT 0").description]
    sink = table_rows(sink_url, sink_table or table, columns=columns, where=sink_where)
    missing = set(source) - set(sink)
    extra = set(sink) - set(source)
    assert not missing and not extra and len(source) == len(sink), (
        f"{table}: {len(source)} source rows, {len(sink)} sink rows; missing in sink {sorted(missing, key=repr)[:5]}, "
        f"extra in sink {sorted(extra, key=repr)[:5]}"
    )
    return len(source)


def ledger_rows(sink_url: str, source_id: str) -> list[tuple]:
    with psycopg.connect(sink_url) as conn:
        return conn.execute(
            "SELECT batch_id, seq_from, seq_to FROM _cdc_ledger WHERE source_id = %s ORDER BY seq_to", (source_id,)
        ).fetchall()


def assert_ledger_consistent(sink_url: str, source_id: str) -> list[tuple]:
    """No batch twice and no two stream batches covering the same seq range.

    A ``schema accept`` replays held changes as a batch ``<source>:accept:<table>:<from>-<to>``: its range lies inside
    ranges stream batches covered (they held those changes), and accepts of one table never overlap each other. A
    ``quarantine replay`` batch (``<source>:quarantine:<hash>``) likewise replays changes stream batches covered."""
    rows = ledger_rows(sink_url, source_id)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate ledger batch ids: {ids}"
    stream = [r for r in rows if ":accept:" not in r[0] and ":quarantine:" not in r[0]]
    for bid, _, seq_to in rows:
        if ":quarantine:" in bid:
            assert stream and seq_to <= max(r[2] for r in stream), f"{bid} replays changes no stream batch covered"
    for (_, _, prev_to), (bid, seq_from, _) in zip(stream, stream[1:]):
        assert seq_from > prev_to or seq_from is None, (
            f"batch {bid} overlaps the previous one (from {seq_from} <= {prev_to})"
        )
    accepts: dict[str, list[tuple]] = {}
    for bid, seq_from, seq_to in rows:
        if ":accept:" in bid:
            accepts.setdefault(bid.split(":accept:")[1].rpartition(":")[0], []).append((seq_from, seq_to, bid))
            assert stream and seq_to <= max(r[2] for r in stream), f"{bid} replays changes no stream batch held"
    for ranges in accepts.values():
        ranges.sort()
        for (_, prev_to, _), (seq_from, _, bid) in zip(ranges, ranges[1:]):
            assert seq_from > prev_to, f"accept batch {bid} overlaps an earlier accept of the same table"
    return rows


def slot_lsn(source_url: str, slot: str) -> str | None:
    with psycopg.connect(source_url) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    return row[0] if row else None


def random_changes(url: str, rng, transactions: int = 20, *, allow_truncate: bool = True) -> dict[str, int]:
    """Random inserts, updates, deletes (and rarely a truncate) on the shop tables, in several transactions."""
    done = {"c": 0, "u": 0, "d": 0, "t": 0}
    with psycopg.connect(url) as conn:
        next_user = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM users").fetchone()[0]
        for _ in range(transactions):
            for _ in range(rng.randint(1, 30)):
                kind = rng.random()
                if kind < 0.35:
                    conn.execute(
                        "INSERT INTO users (id, email, name, balance) VALUES (%s, %s, %s, %s)",
                        (next_user, f"u{next_user}@example.com", f"User {next_user}", round(rng.random() * 1000, 2)),
                    )
                    conn.execute("INSERT INTO orders (user_id, amount, status) VALUES (%s, %s, 'new')",
                                 (next_user, round(rng.random() * 100, 2)))
                    next_user += 1
                    done["c"] += 2
                elif kind < 0.75:
                    lo = rng.randint(1, max(1, next_user - 1))
                    cur = conn.execute("UPDATE users SET balance = balance + 1, name = name || '+' "
                                       "WHERE id BETWEEN %s AND %s", (lo, lo + rng.randint(0, 5)))
                    done["u"] += cur.rowcount
                    cur = conn.execute("UPDATE orders SET status = 'paid' WHERE user_id = %s", (lo,))
                    done["u"] += cur.rowcount
                elif kind < 0.97 or not allow_truncate:
                    lo = rng.randint(1, max(1, next_user - 1))
                    cur = conn.execute("DELETE FROM users WHERE id BETWEEN %s AND %s", (lo, lo + rng.randint(0, 3)))
                    done["d"] += cur.rowcount
                    cur = conn.execute("DELETE FROM orders WHERE user_id = %s", (lo,))
                    done["d"] += cur.rowcount
                else:
                    conn.execute("TRUNCATE orders")
                    done["t"] += 1
            conn.commit()
    return done


def staged_run(hook, run_id: str, *, load: bool = True, commit: bool = True) -> dict:
    """One staged run in this process, as the DAG's tasks would do it: capture, the source's stages (transform,
    validate), then load, then commit."""
    from airflow_provider_cdc import pipeline
    from airflow_provider_cdc.stages import build_stages

    source, sink = hook.get_source(), hook.get_sink()
    try:
        summary = pipeline.capture_stage(source, sink, hook.positions, hook.store,
                                         max_changes=hook.source_config.batch_size, run_id=run_id)
        uri = summary["manifest_uri"]
        for stage in build_stages(hook.source_config, hook.config):
            uri = pipeline.run_stage(uri, stage, hook.store)["manifest_uri"]
        loaded = pipeline.load_stage(uri, sink, run_id=run_id, policy=hook.schema_policy) if load else None
        if commit:
            pipeline.commit_stage(uri, source, sink, hook.positions, hook.store,
                                  newly_held=loaded["newly_held"] if loaded else None)
        return summary
    finally:
        source.close()
        sink.close()


def stage_snapshot_range(hook, index: int) -> dict:
    """What one mapped ``snapshot_range`` task does: stage range ``index`` of the source's ranged snapshot plan."""
    from airflow_provider_cdc import parallel_snapshot

    source, sink = hook.get_source(), hook.get_sink()
    try:
        return parallel_snapshot.stage_range(source, sink, hook.positions, index, hook.source_config.batch_size)
    finally:
        source.close()
        sink.close()


def drain(hook, prefix: str, max_runs: int = 50) -> int:
    """Staged runs until one captures nothing and no snapshot is pending; returns how many ran."""
    for i in range(max_runs):
        summary = staged_run(hook, f"{prefix}_{i}")
        if summary["change_count"] == 0 and "snapshot" not in (hook.positions.get(hook.source_id) or {"snapshot": 1}):
            return i + 1
    raise AssertionError(f"source {hook.source_id} did not drain in {max_runs} runs")


# --- batches built by hand, for sink tests ------------------------------------------------------------------------

TS_MS = 1_714_550_400_000  # 2024-05-01 08:00:00 UTC
Event = tuple  # (op, seq, row: dict), (op, seq, row, unchanged) or (op, seq, row, unchanged, before: dict)


def batch_of(
    events: Sequence[Event],
    schema: TableSchema,
    *,
    batch_id: str | None = None,
    source_id: str = "shop",
    extra: dict[TableSchema, Sequence[Event]] | None = None,
    schema_changes: Sequence[SchemaChange] = (),
) -> ChangeBatch:
    """A batch of ``events`` on ``schema`` (plus ``extra`` tables); rows are dicts of portable text, missing = NULL."""
    tables, schemas, seqs = {}, {}, []
    for table_schema, table_events in {schema: events, **(extra or {})}.items():
        builder = TableChangesBuilder(table_schema)
        for op, seq, row, *rest in table_events:
            unchanged = rest[0] if rest else None
            before = rest[1] if len(rest) > 1 else None
            builder.append(op, seq, TS_MS + seq * 1000, f"tx{seq}", f"0/{seq:X}",
                           [row.get(name) for name in table_schema.column_names], unchanged=unchanged,
                           before=None if before is None else [before.get(n) for n in table_schema.column_names])
            seqs.append(seq)
        tables[table_schema.qualified_name] = builder.finish()
        schemas[table_schema.qualified_name] = table_schema
    seqs += [change.seq for change in schema_changes]
    first, last = min(seqs), max(seqs)
    return ChangeBatch(
        source_id=source_id,
        batch_id=batch_id or f"{source_id}:{first}-{last}",
        position_from={"lsn": f"0/{first - 1:X}"},
        position_to={"lsn": f"0/{last:X}"},
        seq_from=first,
        seq_to=last,
        tables=tables,
        schemas=schemas,
        schema_changes=list(schema_changes),
    )


def item(id_: int, **values: Any) -> dict[str, Any]:
    return {"id": str(id_), **values}


def quarantined(batch: ChangeBatch, *seqs: int, stage: str = "transform", table: str = "public.items",
                **row: Any) -> ChangeBatch:
    """``batch`` with the changes ``seqs`` of ``table`` taken out into its quarantine, as a stage does (rule
    ``total``, a row image ``{"id", "name", **row}``)."""
    import dataclasses

    from airflow_provider_cdc.quarantine import quarantine_rows

    rows = [{"source_table": table, "stage": stage, "rule_id": "total", "field": "total",
             "reason": f"division by zero in row {seq}", "row": {"id": str(seq), "name": f"n{seq} ü", **row},
             "op": "c", "seq": seq, "ts_ms": TS_MS + seq} for seq in seqs]
    changes = batch.tables[table]
    keep = [s not in seqs for s in changes.column("_cdc_seq").to_pylist()]
    return dataclasses.replace(batch, tables={**batch.tables, table: changes.filter(keep)},
                               quarantine=quarantine_rows(rows))


# --- one PostgreSQL table through a stage list, fused, for the stages' edge-case tests ---------------------------


class StageRun:
    """A PostgreSQL source table, a PostgreSQL sink, and ``self.stages`` between them (fused runs, positions in
    memory): the stages' edge-case tests give it their transform or validate stage."""

    def __init__(self, pg_database_factory, ddl: str, table: str, prefix: str) -> None:
        from contract.test_contract import MemoryPositions

        from airflow_provider_cdc.config import SourceConfig
        from airflow_provider_cdc.connectors.postgres.sink import PgSink
        from airflow_provider_cdc.connectors.registry import make_source

        self.source_url, self.sink_url = pg_database_factory(f"{prefix}_src"), pg_database_factory(f"{prefix}_sink")
        self.sql(ddl)
        self.source_id = unique_id(prefix)
        config = SourceConfig(id=self.source_id, type="postgresql", connection_string=self.source_url,
                              tables=[table], sink="warehouse")
        self.source = make_source(config, self.source_url)
        self.sink = PgSink(self.sink_url, sink_id="warehouse")
        self.positions = MemoryPositions()
        self.stages: list[Any] = []

    def sql(self, statement: str) -> None:
        with psycopg.connect(self.source_url, autocommit=True) as conn:
            conn.execute(statement)

    def run(self) -> None:
        from airflow_provider_cdc import pipeline

        for _ in range(10):
            summary = pipeline.run_fused(self.source, self.sink, self.positions, max_changes=10_000,
                                         stages=self.stages)
            if summary["change_count"] == 0 and "snapshot" not in (self.positions.get(self.source_id) or {}):
                return
        raise AssertionError("did not drain")

    def rows(self, query: str) -> list[tuple]:
        with psycopg.connect(self.sink_url) as conn:
            return conn.execute(query).fetchall()

    def close(self) -> None:
        self.source.close()
        self.sink.close()


def stage_runs(build):
    """The body of a ``make_run`` fixture: yields a maker that builds runs with ``build(*args)``, closes them after."""
    made: list[StageRun] = []

    def make(*args: Any) -> Any:
        run = build(*args)
        made.append(run)
        return run

    yield make
    for run in made:
        run.close()
