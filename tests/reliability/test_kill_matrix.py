"""The seeded SIGKILL fault matrix (issue 16, item 1): a task process is killed with SIGKILL at a point drawn from
capture, transform, validate, load and commit, for PostgreSQL, MariaDB and MongoDB sources into PostgreSQL, MariaDB,
MongoDB and Delta sinks; then a clean drain, and the sink must equal the source row for row, with no batch twice in
the ledger and a log that names the batch that was replayed or skipped.

Each case is one seed, in its test id. The seed draws the (source, sink) pair (the sink cycles fastest, so every
source meets every sink), random source changes (inserts, updates, key updates, deletes, in transactions of a few
changes), a batch size, whether the source has a transformation rule and a quality suite (so that the transform and
validate stages exist), where the kill happens (during the snapshot, during streaming, or both), how often the point
passes before it kills, and how the pipeline recovers: Airflow retrying the killed run (same run id: the staged batch
is replayed) or the next run (new run id: the range is captured again). The point is one the sink has
(:func:`kill_matrix_runner.points_for`) or ``random``: the parent kills the process after a random delay.

What the log must say depends on what the kill left behind (:func:`check_logged`): a retried run says it replays the
batch it had staged and what became of it (applied, already in the ledger, stale); otherwise a batch staged but not
committed is captured again and the batch that took its range is logged as applied, a batch the sink committed
before its position was stored makes the next run say the ledger is ahead and where it resumes, and a stored
position is in the killed process's own log while the batch is never applied again.

The task processes come from a fork server (``kill_matrix_runner.py --serve``, one per test process), which imports
Airflow and the connectors once: a fresh interpreter per case costs more than the case (``CDC_KILL_MATRIX_SPAWN=1``
uses one anyway). The drain runs in the test process, with the product's log recorded. A failing case prints the
command that runs it again. The servers are the private ones of ``reliability/conftest.py``, one of each per test
process, shared by the cases (each case has its own source database and target schema). The whole matrix takes
about 2.5 minutes with ``-n 2`` on an idle 2-core machine; ``-m "not fault_matrix"`` leaves it out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cdc_testing import staged_run, unique_id
from contract.pairs import (
    SinkUnderTest,
    delta_sink,
    mariadb_sink,
    mongodb_sink,
    mysql_columns,
    mysql_rows,
    pg_rows,
    postgres_sink,
)
from contract.test_contract_mongodb_source import expected_value
from psycopg import sql

from airflow_provider_cdc.connectors.postgres.catalog import logical_type
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.tables import Column, TableSchema
from reliability.conftest import assert_sink_ledger_consistent, stored_position, write_pipeline_config
from reliability.kill_matrix_runner import points_for

RUNNER = Path(__file__).with_name("kill_matrix_runner.py")
REPO = Path(__file__).resolve().parents[2]
SOURCES = ["postgresql", "mysql", "mongodb"]
SINKS = ["postgresql", "mysql", "mongodb", "file"]
CASES = 90
TABLES = ("items", "notes")
STREAM_CHANGES = 2 * (7 + 4)  # two batches of the smallest size, each ending with a whole transaction of 4 changes
CHILD_RUNS = 12  # staged runs a task process makes at most (it stops once the source is drained)

pytestmark = [pytest.mark.fault_matrix, pytest.mark.timeout(240)]


# --- the cases ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """What one seed draws."""

    seed: int
    source: str
    sink: str
    point: str
    stages: bool
    phase: str  # the kill happens during the "snapshot", during "stream"ing, or "both"
    batch_size: int
    skip: int  # occurrences of the point that pass before the one that kills
    recovery: str  # "retry": Airflow retries the killed run (same run id); "next-run": a new run id
    kill_after: float | None = None  # random: the parent's SIGKILL after this many seconds

    @property
    def id(self) -> str:
        return f"seed{self.seed}-{self.source}-{self.sink}-{self.point}"


def draw(seed: int) -> Case:
    """Case ``seed``: source and sink cycle through all 12 pairs, and each sink's point walks through that sink's
    list (so every point of every sink is drawn, with a different source on each sink); the rest comes from the
    seed."""
    rng = random.Random(f"kill-matrix-{seed}")
    sink = SINKS[seed % len(SINKS)]
    points = [*points_for(sink, stages=True), "random"]
    turn, walk = divmod(seed // len(SINKS), len(points))
    # Each walk through the points shifts the sources by one, so that a point drawn twice meets another source.
    source = SOURCES[(seed + turn) % len(SOURCES)]
    point = points[walk]
    stages = point.startswith(("transform:", "validate:")) or rng.random() < 0.35
    batch_size = rng.choice([7, 20, 1000])
    return Case(seed=seed, source=source, sink=sink, point=point, stages=stages,
                phase=rng.choice(["snapshot", "stream", "both"]), batch_size=batch_size,
                # Passing a point needs a second batch: only with the smallest batch size (and enough changes, see
                # STREAM_CHANGES) is there one for sure.
                skip=rng.choice([0, 1]) if batch_size == 7 and point != "random" else 0,
                recovery=rng.choice(["retry", "next-run"]),
                # A task process here takes about half a second to its first capture and a second to drain a
                # case: the parent's kill lands anywhere from capture to commit of the first runs.
                kill_after=round(rng.uniform(0.3, 1.2), 3) if point == "random" else None)


MATRIX = [draw(seed) for seed in range(CASES)]

# --- sources: the same two tables in each database, and random changes to them -----------------------------------


@dataclass
class Changes:
    """The keys the test's own changes left in each table (the test is the only writer)."""

    rng: random.Random
    live: dict[str, list[int]] = field(default_factory=lambda: {table: [] for table in TABLES})
    next_id: int = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def values(self, table: str) -> dict[str, Any]:
        if table == "items":
            return {"name": f"item {self.rng.randint(0, 10**6)}", "qty": self.rng.randint(0, 500),
                    "price": Decimal(self.rng.randint(0, 99999)) / 100}
        return {"body": self.rng.choice(["a", "bé", "c c", "ünï", "long " * 20]), "n": self.rng.randint(-50, 50)}

    def transaction(self) -> list[tuple[Any, ...]]:
        """One source transaction: up to four random changes, each on a random table."""
        ops: list[tuple[Any, ...]] = []
        for _ in range(self.rng.randint(1, 4)):
            table = self.rng.choice(TABLES)
            keys = self.live[table]
            kind = self.rng.choices(["insert", "update", "rekey", "delete"], [4, 4, 1, 2])[0]
            if kind == "insert" or not keys:
                key = self.new_id()
                keys.append(key)
                ops.append(("insert", table, key, self.values(table)))
            elif kind == "update":
                ops.append(("update", table, self.rng.choice(keys), self.values(table)))
            elif kind == "rekey":
                old, new = self.rng.choice(keys), self.new_id()
                keys[keys.index(old)] = new
                ops.append(("rekey", table, old, new))
            else:
                key = self.rng.choice(keys)
                keys.remove(key)
                ops.append(("delete", table, key))
        return ops


class SourceDb:
    """One source database of the matrix: created with the two tables, changed transaction by transaction, read
    back as Python values per column (the contract suite's readers)."""

    type = ""

    def __init__(self, url: str) -> None:
        self.url = url

    def create(self, rows: dict[str, list[tuple[int, dict[str, Any]]]]) -> None:
        raise NotImplementedError

    def apply(self, ops: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def columns(self, source_id: str, table: str) -> list[Column]:
        raise NotImplementedError

    def rows(self, table: str, columns: list[Column]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def sink_rows(self, under: SinkUnderTest, schema: str, table: str, columns: list[Column]) -> list[dict[str, Any]]:
        return under.read(schema, table, columns, True)


class PgSourceDb(SourceDb):
    type = "postgresql"
    DDL = ("CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2));"
           "CREATE TABLE notes (id bigint PRIMARY KEY, body text, n int)")

    def create(self, rows: dict[str, list[tuple[int, dict[str, Any]]]]) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(self.DDL)
        self.apply([("insert", table, key, values) for table, entries in rows.items() for key, values in entries])

    def apply(self, ops: list[tuple[Any, ...]]) -> None:
        with psycopg.connect(self.url) as conn:  # one transaction
            for op, table, key, *rest in ops:
                name = sql.Identifier(table)
                if op == "insert":
                    values = rest[0]
                    conn.execute(sql.SQL("INSERT INTO {} (id, {}) VALUES (%s, {})").format(
                        name, sql.SQL(", ").join(map(sql.Identifier, values)),
                        sql.SQL(", ").join(sql.Placeholder() * len(values))), [key, *values.values()])
                elif op == "update":
                    values = rest[0]
                    conn.execute(sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
                        name, sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in values)),
                        [*values.values(), key])
                elif op == "rekey":
                    conn.execute(sql.SQL("UPDATE {} SET id = %s WHERE id = %s").format(name), [rest[0], key])
                else:
                    conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(name), [key])

    def columns(self, source_id: str, table: str) -> list[Column]:
        with psycopg.connect(self.url) as conn:
            found = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid "
                                 "= ('public.' || quote_ident(%s))::regclass AND attnum > 0 AND NOT attisdropped "
                                 "ORDER BY attnum", (table,)).fetchall()
        return [Column(name, declared, logical_type(declared)) for name, declared in found]

    def rows(self, table: str, columns: list[Column]) -> list[dict[str, Any]]:
        return pg_rows(self.url, "public", table, columns)


class MariaSourceDb(SourceDb):
    type = "mysql"
    DDL = ["CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, price decimal(10,2))",
           "CREATE TABLE notes (id bigint PRIMARY KEY, body text, n int)"]

    def _connect(self) -> Any:
        import pymysql

        from airflow_provider_cdc.connectors.mysql.connection import connect_kwargs, database_of

        return pymysql.connect(**connect_kwargs(self.url), database=database_of(self.url), charset="utf8mb4",
                               autocommit=False)

    def create(self, rows: dict[str, list[tuple[int, dict[str, Any]]]]) -> None:
        with self._connect() as conn, conn.cursor() as cur:
            for statement in self.DDL:
                cur.execute(statement)
        self.apply([("insert", table, key, values) for table, entries in rows.items() for key, values in entries])

    def apply(self, ops: list[tuple[Any, ...]]) -> None:
        with self._connect() as conn, conn.cursor() as cur:
            for op, table, key, *rest in ops:
                if op == "insert":
                    values = rest[0]
                    cur.execute(f"INSERT INTO `{table}` (id, {', '.join(values)}) VALUES "
                                f"(%s, {', '.join(['%s'] * len(values))})", [key, *values.values()])
                elif op == "update":
                    values = rest[0]
                    cur.execute(f"UPDATE `{table}` SET {', '.join(f'{c} = %s' for c in values)} WHERE id = %s",
                                [*values.values(), key])
                elif op == "rekey":
                    cur.execute(f"UPDATE `{table}` SET id = %s WHERE id = %s", [rest[0], key])
                else:
                    cur.execute(f"DELETE FROM `{table}` WHERE id = %s", [key])
            conn.commit()

    def columns(self, source_id: str, table: str) -> list[Column]:
        from airflow_provider_cdc.connectors.mysql.connection import database_of

        return mysql_columns(self.url, database_of(self.url), table)

    def rows(self, table: str, columns: list[Column]) -> list[dict[str, Any]]:
        from airflow_provider_cdc.connectors.mysql.connection import database_of

        return mysql_rows(self.url, database_of(self.url), table, columns)


class MongoSourceDb(SourceDb):
    """Documents ``{_id, name, qty, price}`` and ``{_id, body, n}``; a key update is a delete and an insert in one
    transaction (``_id`` cannot change)."""

    type = "mongodb"

    @contextlib.contextmanager
    def _db(self) -> Iterator[Any]:
        from airflow_provider_cdc.connectors.mongodb.connection import connect, database_of

        with connect(self.url) as client:
            yield client[database_of(self.url)]

    @staticmethod
    def _document(key: int, values: dict[str, Any]) -> dict[str, Any]:
        from bson import Decimal128

        return {"_id": key, **{k: Decimal128(v) if isinstance(v, Decimal) else v for k, v in values.items()}}

    def create(self, rows: dict[str, list[tuple[int, dict[str, Any]]]]) -> None:
        with self._db() as db:
            for table, entries in rows.items():
                db[table].insert_many([self._document(key, values) for key, values in entries])

    def apply(self, ops: list[tuple[Any, ...]]) -> None:
        with self._db() as db, db.client.start_session() as session, session.start_transaction():
            for op, table, key, *rest in ops:
                collection = db[table]
                if op == "insert":
                    collection.insert_one(self._document(key, rest[0]), session=session)
                elif op == "update":
                    update = self._document(key, rest[0])
                    del update["_id"]
                    collection.update_one({"_id": key}, {"$set": update}, session=session)
                elif op == "rekey":
                    document = collection.find_one({"_id": key}, session=session)
                    collection.delete_one({"_id": key}, session=session)
                    collection.insert_one({**document, "_id": rest[0]}, session=session)
                else:
                    collection.delete_one({"_id": key}, session=session)

    def columns(self, source_id: str, table: str) -> list[Column]:
        """The columns the source inferred (kept in the stored position)."""
        from airflow_provider_cdc.connectors.mongodb.connection import database_of

        position = stored_position(source_id) or {}
        entry = position["schemas"][f"{database_of(self.url)}.{table}"]
        return list(TableSchema.from_dict(entry["table"]).columns)

    def rows(self, table: str, columns: list[Column]) -> list[dict[str, Any]]:
        with self._db() as db:
            return [{c.name: expected_value(doc, c) for c in columns} for doc in db[table].find()]

    def sink_rows(self, under: SinkUnderTest, schema: str, table: str, columns: list[Column]) -> list[dict[str, Any]]:
        if under.name != "mongodb":
            return under.read(schema, table, columns, True)
        # Documents again: read as the source's are (MongoPair.sink_rows in the contract suite).
        return [{c.name: expected_value(doc, c) for c in columns} for doc in under.raw(schema, table)]


SOURCE_DBS: dict[str, type[SourceDb]] = {"postgresql": PgSourceDb, "mysql": MariaSourceDb, "mongodb": MongoSourceDb}


# --- stages: a rule and a suite that keep every row, so that source and sink still compare --------------------------

RULES = """\
rules:
  - rule_id: item_label
    name: Item label
    rule_type: map
    tables: [items]
    source_fields: [name, qty]
    target_field: label
    expression: "{{ name }} x{{ qty }}"
"""
SUITES = """\
suites:
  - id: item_checks
    tables: [items]
    rules:
      - type: not_null
        column: name
        policy: warn
      - type: range
        column: qty
        min: 0
        policy: warn
  - id: note_checks
    tables: [notes]
    rules:
      - type: range
        column: n
        min: -50
        max: 50
        policy: warn
"""


# --- the fork server ------------------------------------------------------------------------------------------------


class ForkServer:
    """``kill_matrix_runner.py --serve``: one task process per :meth:`run`, forked from an interpreter that has
    imported everything already."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with log.open("w") as errors:
            self.process = subprocess.Popen([sys.executable, str(RUNNER), "--serve"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=errors, text=True, cwd=REPO)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "READY":
            self.close()
            raise RuntimeError(f"the fork server did not start (said {line!r}); its log:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send ``request``; its answer (an earlier test that timed out may have left one unread: skipped)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {**request, "id": uuid.uuid4().hex}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the fork server died (exit code {self.process.poll()}); its log:\n{self.tail()}")
            answer = dict(json.loads(line))
            if answer.get("id") == request["id"]:
                return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Spawner:
    """:class:`ForkServer`'s interface with a fresh interpreter per task process (``CDC_KILL_MATRIX_SPAWN=1``):
    slower by seconds a process, for when a fork is suspected of hiding or causing something."""

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        argv = [sys.executable, str(RUNNER), request["config_dir"], request["source_id"], request["point"],
                request["run_prefix"], str(request["runs"]), str(request["skip"])]
        started = time.monotonic()
        with open(request["log"], "a") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        killed_by = None
        try:
            process.wait(timeout=request["kill_after"] or request["timeout"])
        except subprocess.TimeoutExpired:
            killed_by = "parent" if request["kill_after"] else "timeout"
            process.kill()
            process.wait()
        died = -process.returncode if process.returncode < 0 else None
        return {"pid": process.pid, "signal": died, "code": None if died else process.returncode,
                "killed_by": killed_by if died == signal.SIGKILL else None,
                "seconds": round(time.monotonic() - started, 3)}

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer | Spawner]:
    if os.environ.get("CDC_KILL_MATRIX_SPAWN") == "1":
        yield Spawner()
        return
    server = ForkServer(tmp_path_factory.mktemp("kill-matrix") / "fork-server.log")
    yield server
    server.close()


@pytest.fixture(scope="module")
def sink_servers(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where each sink kind writes (one database per server for the module; each case has its own target schema).
    Started on first use, like the servers themselves."""
    made: dict[str, Any] = {}

    def get(kind: str) -> Any:
        if kind not in made:
            if kind == "postgresql":
                made[kind] = request.getfixturevalue("sink_pg").database("kill_sink")
            elif kind == "mysql":
                made[kind] = request.getfixturevalue("private_mariadb").database("kill_sink")
            elif kind == "mongodb":
                made[kind] = request.getfixturevalue("private_mongod").url("")
        return made[kind]

    return {"get": get}


@pytest.fixture(scope="module")
def short_mongo_transactions(request: pytest.FixtureRequest) -> Iterator[None]:
    """A killed task leaves its MongoDB transaction open on the server, holding the source's lock document until
    mongod aborts it after ``transactionLifetimeLimitSeconds`` (60 s): the next apply meets write conflicts and
    retries until then. The matrix kills dozens of transactions, so the private mongod ends them after 3 s; the
    retry is the same, only shorter. Restored for the tests after these."""
    from airflow_provider_cdc.connectors.mongodb.connection import connect

    server = request.getfixturevalue("private_mongod")
    with connect(server.url("")) as client:
        before = client.admin.command("getParameter", 1, transactionLifetimeLimitSeconds=1)
        client.admin.command("setParameter", 1, transactionLifetimeLimitSeconds=3)
    yield
    with connect(server.url("")) as client:
        client.admin.command("setParameter", 1,
                             transactionLifetimeLimitSeconds=before["transactionLifetimeLimitSeconds"])


# --- one case -------------------------------------------------------------------------------------------------------


@dataclass
class Kill:
    """What one task process did: how it ended, the batch in flight when it died, and its log."""

    answer: dict[str, Any]
    log: str
    run_prefix: str

    @property
    def killed(self) -> bool:
        return self.answer["signal"] == signal.SIGKILL

    @property
    def line(self) -> dict[str, str] | None:
        """The fields of its ``KILLED`` line (None when the parent killed it, or nothing did)."""
        for text in self.log.splitlines():
            if text.startswith("KILLED "):
                point, *pairs = text.split()[1:]
                return {"point": point, **dict(pair.split("=", 1) for pair in pairs)}
        return None

    @property
    def run_id(self) -> str:
        """The run it died in: the run its ``KILLED`` line names, else the one after its last finished run."""
        if self.line is not None:
            return self.line["run"]
        done = sum(1 for text in self.log.splitlines() if text.startswith("RUN "))
        return f"{self.run_prefix}_{done}"


class Recorder(logging.Handler):
    """The product's log lines (``airflow_provider_cdc``) while the drain runs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextlib.contextmanager
def recorded() -> Iterator[Recorder]:
    logger = logging.getLogger("airflow_provider_cdc")
    recorder, level = Recorder(), logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.INFO)
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)


class MatrixRun:
    """One case on its servers: the source database, the sink, the config, the task processes, the drain."""

    def __init__(self, case: Case, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.case, self.tmp = case, tmp_path
        self.rng = random.Random(f"kill-matrix-changes-{case.seed}")
        self.source_id = unique_id("km")
        self.target_schema = f"t_{self.source_id}"
        self.cleanups: list[Any] = []
        self.source = self._source(request)
        self.under, sink_url, sink_options = self._sink(request)
        self.config_dir = write_pipeline_config(
            tmp_path / "config", source_id=self.source_id, source_type=case.source, source_url=self.source.url,
            sink_type=case.sink, sink_url=sink_url, tables=list(TABLES), target_schema=self.target_schema,
            batch_size=case.batch_size, sink_options=sink_options)
        if case.stages:
            (self.config_dir / "transformations.yaml").write_text(RULES)
            (self.config_dir / "quality.yaml").write_text(SUITES)
        self.hook = CdcHook(self.source_id, str(self.config_dir))
        self.changes = Changes(self.rng)
        self.kills: list[Kill] = []
        self.drain_log: list[str] = []
        self.timings: list[float] = []
        self.checked: list[str] = []  # what the log checks found, for the report

    def _source(self, request: pytest.FixtureRequest) -> SourceDb:
        kind = self.case.source
        if kind == "postgresql":
            server = request.getfixturevalue("source_pg")
            url = server.database("km_src")
            self.cleanups.append(lambda: drop_pg_database(server, url))
        elif kind == "mysql":
            server = request.getfixturevalue("private_mariadb")
            url = server.database("km_src")
            self.cleanups.append(lambda: drop_mariadb_database(url))
        else:
            request.getfixturevalue("short_mongo_transactions")
            url = request.getfixturevalue("private_mongod").database("km_src")
            self.cleanups.append(lambda: drop_mongo_database(url))
        return SOURCE_DBS[kind](url)

    def _sink(self, request: pytest.FixtureRequest) -> tuple[SinkUnderTest, str, dict[str, Any] | None]:
        kind = self.case.sink
        if kind == "file":
            root = self.tmp / "lake"
            return delta_sink(root), str(root), None
        url = request.getfixturevalue("sink_servers")["get"](kind)
        if kind == "mongodb":
            request.getfixturevalue("short_mongo_transactions")
        under = {"postgresql": postgres_sink, "mysql": mariadb_sink, "mongodb": mongodb_sink}[kind](url)
        self.cleanups.append(lambda: drop_target(kind, under, url, self.target_schema))
        return under, url, None

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()

    # --- steps ---

    def create(self) -> None:
        rows: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for table, count in (("items", self.rng.randint(12, 30)), ("notes", self.rng.randint(8, 20))):
            rows[table] = []
            for _ in range(count):
                key = self.changes.new_id()
                self.changes.live[table].append(key)
                rows[table].append((key, self.changes.values(table)))
        self.source.create(rows)

    def change(self, transactions: int, *, at_least: int = 0) -> None:
        """``transactions`` random source transactions, and more until they made ``at_least`` changes."""
        made = 0
        for n in range(10_000):
            if n >= transactions and made >= at_least:
                return
            ops = self.changes.transaction()
            self.source.apply(ops)
            made += len(ops)

    def kill(self, fork_server: ForkServer | Spawner) -> Kill:
        """One task process, killed at the case's point (or by the parent after the case's delay)."""
        prefix = f"kill{len(self.kills)}_{uuid.uuid4().hex[:6]}"
        log = self.tmp / f"{prefix}.log"
        request = {"config_dir": str(self.config_dir), "source_id": self.source_id, "run_prefix": prefix,
                   "point": "none" if self.case.point == "random" else self.case.point, "runs": CHILD_RUNS,
                   "skip": self.case.skip, "log": str(log), "kill_after": self.case.kill_after, "timeout": 180}
        answer = fork_server.run(request)
        kill = Kill(answer, log.read_text() if log.exists() else "", prefix)
        self.kills.append(kill)
        if answer["killed_by"] == "timeout":
            raise AssertionError(f"the task process did not finish in 180 s:\n{kill.log[-3000:]}")
        if self.case.point != "random":
            assert kill.killed and kill.line is not None, (
                f"kill point {self.case.point} (after {self.case.skip} passing) was never reached; the task process "
                f"ended with {answer}:\n{kill.log[-3000:]}")
        else:
            assert kill.killed or answer["code"] == 0, f"the task process failed: {answer}\n{kill.log[-3000:]}"
        return kill

    def drain(self, max_runs: int = 60) -> None:
        """Clean staged runs until the source is drained. With ``retry``, the first is the killed run again (same
        run id), as when Airflow retries its tasks."""
        last = self.kills[-1] if self.kills else None
        ids = [last.run_id] if last is not None and self.case.recovery == "retry" else []
        with recorded() as recorder:
            try:
                prefix = f"drain_{uuid.uuid4().hex[:6]}"  # run ids are remembered by the staging store
                for i in range(max_runs):
                    run_id = ids[i] if i < len(ids) else f"{prefix}_{i}"
                    started = time.monotonic()
                    summary = staged_run(self.hook, run_id)
                    self.timings.append(round(time.monotonic() - started, 2))
                    position = stored_position(self.source_id) or {"snapshot": 1}
                    if summary["change_count"] == 0 and "snapshot" not in position and i >= len(ids):
                        return
                raise AssertionError(f"source {self.source_id} did not drain in {max_runs} runs")
            finally:
                self.drain_log = recorder.lines

    # --- checks ---

    def assert_same_rows(self) -> None:
        for table in TABLES:
            columns = self.source.columns(self.source_id, table)
            key = columns[0].name
            source = {row[key]: row for row in self.source.rows(table, columns)}
            sink_list = self.source.sink_rows(self.under, self.target_schema, table, columns)
            sink = {row[key]: row for row in sink_list}
            assert len(sink) == len(sink_list), f"{table}: a key is twice in the sink"
            missing = sorted(set(source) - set(sink), key=str)
            extra = sorted(set(sink) - set(source), key=str)
            differ = sorted((k for k in set(source) & set(sink) if source[k] != sink[k]), key=str)
            assert not (missing or extra or differ), (
                f"{table}: {len(source)} source rows, {len(sink)} sink rows; missing in the sink {missing[:5]}, extra "
                f"in the sink {extra[:5]}, different {[(source[k], sink[k]) for k in differ[:3]]}")

    def assert_ledger(self) -> list[tuple[str, int, int]]:
        sink = self.hook.get_sink()
        try:
            return assert_sink_ledger_consistent(sink, self.source_id)
        finally:
            sink.close()

    def assert_logged(self, ledger: list[tuple[str, int, int]]) -> None:
        """What came after each kill (the next task process, the drain) names the batch that was in flight, and says
        what became of it; the kinds of point leave different traces (:data:`NOT_STAGED` ... :data:`STORED`)."""
        for n, kill in enumerate(self.kills):
            line = kill.line
            if line is None or line["batch"] == "None" or line["changes"] in ("0", "None"):
                continue  # the parent's kill, or nothing in flight: no batch to name
            later = "\n".join([k.log for k in self.kills[n + 1:]] + self.drain_log)
            retried = n == len(self.kills) - 1 and self.case.recovery == "retry"
            checked, problem = check_logged(line, later, kill.log, retried, ledger)
            self.checked.append(f"kill {n}: {checked}")
            assert problem is None, f"kill {n} at {line['point']} (batch {line['batch']}): {problem}"

    def report(self) -> str:
        """What a failure prints: how to run the case again, and what each process logged."""
        logs = "\n".join(f"--- task process {n} ({kill.answer}):\n{kill.log[-2500:]}"
                         for n, kill in enumerate(self.kills))
        drain = "\n".join(self.drain_log[-40:])
        return (f"\ncase {self.case}\nlog checks: {self.checked}\ndrain runs took {self.timings}; task processes took "
                f"{[kill.answer['seconds'] for kill in self.kills]}\nreproduce: {reproduce(self.case)}"
                f"\n{logs}\n--- drain (last 40 lines):\n{drain}")


# What a kill leaves behind, by point: a batch only in memory; a staged batch not committed in the sink (or, in Delta,
# some tables committed); a batch the sink committed whose position is not stored; a stored position.
NOT_STAGED = {"capture:after-prepare", "capture:before-staging"}
SINK_COMMITTED = {"load:after-commit"}
STORED = {"commit:after-position", "commit:after-audit", "commit:after-ack"}
OUTCOMES = ("applied", "is already in the ledger", "stale", "superseded")


def check_logged(line: dict[str, str], later: str, own: str, retried: bool,
                 ledger: list[tuple[str, int, int]]) -> tuple[str, str | None]:
    """What the log must say about the batch a kill left in flight, and what is missing (None: nothing). ``later``
    is what the processes after the kill logged, ``own`` what the killed one did; ``retried``: the drain ran the
    killed run again (same run id), as Airflow's retry of its tasks does."""
    batch, point = line["batch"], line["point"]
    lines = later.splitlines()
    named = [text for text in lines if batch in text]
    if point in NOT_STAGED:
        # The batch never left the process: the next capture reads from the same position as if it never was.
        return "nothing (the batch was never staged)", None
    if retried:
        if not any("already captured batch" in text and "replaying that batch" in text for text in named):
            return "replayed by the retry", "the retried run does not say it replays the batch it had staged"
        if not any(word in text for text in named for word in OUTCOMES):
            return "replayed by the retry", "the retried run does not say what became of the batch"
        return "replayed by the retry, with its outcome", None
    if point in SINK_COMMITTED:
        if f"resuming from the ledger at seq {line['seq_to']}" not in later:
            return "ledger ahead", (f"the next run does not say that the sink ledger is ahead of the stored position "
                                    f"(resuming from seq {line['seq_to']})")
        return f"ledger ahead, resumed at seq {line['seq_to']}", None
    if point in STORED:
        if f"'batch_id': '{batch}'" not in own:
            return "position stored", "the killed process did not log the position it stored for the batch"
        if any(f"batch {batch} applied" in text for text in lines):
            return "position stored", "the batch was applied again"
        return "position stored, not applied again", None
    # Staged, not committed: the next run captures the range again and applies it (same id, unless the batch read
    # a snapshot page, whose rows depend on when it was read).
    seq_from = int(line["seq_from"])
    covering = [bid for bid, low, high in ledger if low is not None and low <= seq_from <= high]
    if not covering:
        return "captured again", f"no ledger row covers seq {seq_from}, where the batch began"
    if not any(f"batch {covering[0]} applied" in text for text in lines):
        return "captured again", f"the batch that took its range, {covering[0]}, is not logged as applied"
    return f"captured again as {'the same batch' if covering[0] == batch else covering[0]}, applied", None


def reproduce(case: Case) -> str:
    """The command that runs ``case`` again (its seed decides everything but the timing of a parent's kill)."""
    return (f"CI=true .venv/bin/python -m pytest -p no:cacheprovider "
            f"'tests/reliability/test_kill_matrix.py::test_sigkill_at_a_seeded_point_converges[{case.id}]' "
            f"(CDC_KILL_MATRIX_SPAWN=1: a fresh interpreter per task process instead of a fork)")


def drop_pg_database(server: Any, url: str) -> None:
    name = str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])
    with psycopg.connect(server.url(), autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                                    (name,)).fetchall():
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    with contextlib.suppress(ValueError):
        server.created.remove(name)


def drop_mariadb_database(url: str) -> None:
    from contract.pairs import mysql_connect

    from airflow_provider_cdc.connectors.mysql.connection import database_of

    with mysql_connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{database_of(url)}`")


def drop_mongo_database(url: str) -> None:
    from airflow_provider_cdc.connectors.mongodb.connection import connect, database_of

    with connect(url) as client:
        client.drop_database(database_of(url))


def drop_target(kind: str, under: SinkUnderTest, url: str, schema: str) -> None:
    if under.drop is not None:
        under.drop(schema)
    elif kind == "postgresql":
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.parametrize("case", MATRIX, ids=[case.id for case in MATRIX])
def test_sigkill_at_a_seeded_point_converges(case: Case, fork_server, request, tmp_path):
    run = MatrixRun(case, request, tmp_path)
    try:
        run.create()
        if case.phase in ("snapshot", "both"):
            run.kill(fork_server)  # during the snapshot (and the changes made meanwhile)
        else:
            run.drain()
        # A point passed once in the stream needs two batches of it: more changes than a batch and its last
        # transaction can hold.
        run.change(run.rng.randint(4, 10), at_least=STREAM_CHANGES if case.skip else 0)
        if case.phase in ("stream", "both"):
            run.kill(fork_server)
            run.change(run.rng.randint(1, 4))
        run.drain()
        run.assert_same_rows()
        ledger = run.assert_ledger()
        run.assert_logged(ledger)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{run.report()}") from None
    finally:
        run.close()
        shutil.rmtree(tmp_path / "lake", ignore_errors=True)
    if os.environ.get("CDC_KILL_MATRIX_VERBOSE"):
        print(run.report())
