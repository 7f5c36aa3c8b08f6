#!/usr/bin/env python3
"""The CDC demo: a busy shop database, a warehouse, and Airflow moving changes from one to the other.

Starts, on this machine and without Docker:

- an embedded PostgreSQL 18 (``.state/demo/pg``, port 55432 if free) with the databases ``shop`` (source),
  ``warehouse`` (sink) and ``airflow`` (Airflow's metadata);
- ``scripts/change_generator.py`` writing random inserts, updates and deletes into ``shop``;
- ``airflow standalone`` (``.state/demo/airflow``) with this repository's DAG bundle and ``include/config``,
  which runs two DAGs: ``cdc_shop`` merges into the warehouse database, and ``cdc_shop_lake`` into Delta Lake
  tables under ``.state/demo/lake`` (a ``type: file`` sink, readable with DuckDB or polars).

It prints the Airflow URL and login, then every 30 s the row counts of the source, the warehouse and the lake.
Ctrl-C (or SIGTERM) stops everything it started.

``--check SECONDS`` runs the same thing as a smoke test: the generator runs for a while and stops, and the
demo exits 0 as soon as the warehouse's and the lake's users and orders equal the source's, or 1 when SECONDS have
passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path

import psycopg
from psycopg import sql

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = REPO_ROOT / ".state" / "demo"
PG_DATADIR = STATE_DIR / "pg"
AIRFLOW_HOME = STATE_DIR / "airflow"
STANDALONE_LOG = STATE_DIR / "airflow-standalone.log"
LAKE_DIR = STATE_DIR / "lake"
PREFERRED_PG_PORT = 55432
PREFERRED_API_PORT = 8080
TABLES = ("users", "orders")
ADMIN_USER = "admin"

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from embedded_pg import EmbeddedPostgres, free_port, port_is_free  # noqa: E402


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


def start_generator(source_url: str, rate: float) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "change_generator.py"), source_url, "--rate", str(rate)]
    # Own session: a terminal Ctrl-C reaches only us, and we stop the children in order.
    return subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL)


def airflow_env(pg: EmbeddedPostgres, api_port: int) -> dict[str, str]:
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
            # Airflow's metadata on the demo's PostgreSQL: SQLite would serialise four components on one file lock.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url("airflow").replace("postgresql://", "postgresql+psycopg2://"),
            "AIRFLOW__API__PORT": str(api_port),
            # Task processes reach the API server here; the default assumes port 8080.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{api_port}/execution/",
            "CDC_CONFIG_DIR": str(REPO_ROOT / "include" / "config"),
            "CDC_DEMO_SOURCE_URL": pg.url("shop"),
            "CDC_DEMO_WAREHOUSE_URL": pg.url("warehouse"),
            "CDC_DEMO_LAKE_URL": LAKE_DIR.as_uri(),
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


def read_admin_password(timeout: float = 30) -> str | None:
    """Airflow standalone with the simple auth manager writes the generated password to this file."""
    path = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError):
            passwords = json.loads(path.read_text())
            if ADMIN_USER in passwords:
                return passwords[ADMIN_USER]
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


def lake_state(table: str, columns: list[str]) -> tuple[int, list[tuple]] | None:
    """(row count, rows as Python values in id order) of the lake's Delta table, or None before it exists."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        rows = DeltaTable(str(LAKE_DIR / "public" / table)).to_pyarrow_table(columns=columns).to_pylist()
    except TableNotFoundError:
        return None
    return len(rows), sorted((tuple(r[c] for c in columns) for r in rows), key=lambda r: r[0])


def compare(pg: EmbeddedPostgres) -> tuple[bool, str]:
    """Whether the warehouse and the lake equal the source in both tables, and a one-line summary of the counts."""
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
    return equal, " | ".join(parts)


# --- main ----------------------------------------------------------------------------------------------------------


def run(check: float | None, rate: float, api_timeout: float) -> int:
    pg: EmbeddedPostgres | None = None
    generator: subprocess.Popen | None = None
    airflow: subprocess.Popen | None = None
    status = 0
    try:
        pg = start_postgres()
        for dbname in ("shop", "warehouse", "airflow"):
            pg.create_database(dbname)
        log(f"source   {pg.url('shop')}")
        log(f"warehouse {pg.url('warehouse')}")

        generator = start_generator(pg.url("shop"), rate)
        log(f"change generator running at about {rate:g} changes/s (pid {generator.pid})")

        api_port = choose_api_port()
        env = airflow_env(pg, api_port)
        airflow = start_airflow(env)
        log(f"airflow standalone starting (AIRFLOW_HOME={AIRFLOW_HOME}, output in {STANDALONE_LOG})")
        wait_for_api(airflow, api_port, api_timeout)
        password = read_admin_password()
        log("")
        log(f"Airflow UI:  http://localhost:{api_port}")
        if password:
            log(f"login:       user {ADMIN_USER}, password {password}")
        else:
            log(f"login:       user {ADMIN_USER}; the password is in "
                f"{AIRFLOW_HOME}/simple_auth_manager_passwords.json.generated")
        log("DAGs:        cdc_shop (into the warehouse) and cdc_shop_lake (into Delta tables under "
            f"{LAKE_DIR}); both unpaused: they snapshot users and orders, then follow the changes")
        log("Ctrl-C stops everything.")
        log("")

        if check is None:
            while True:
                time.sleep(30)
                if airflow.poll() is not None:
                    log(f"airflow standalone exited with {airflow.returncode}; see {STANDALONE_LOG}")
                    return 1
                log(compare(pg)[1])

        started = time.monotonic()
        churn = min(30.0, check / 4)
        deadline = started + check
        last_report = 0.0
        while time.monotonic() < deadline:
            if generator is not None and time.monotonic() - started >= churn:
                stop_process_group(generator, "change generator", signal.SIGINT, 15)
                generator = None
                log("change generator stopped; waiting for the warehouse and the lake to match the source")
            if airflow.poll() is not None:
                log(f"airflow standalone exited with {airflow.returncode}; see {STANDALONE_LOG}")
                return 1
            equal, summary = compare(pg)
            if equal and generator is None:
                log(f"check passed: the warehouse and the lake match the source ({summary})")
                return 0
            if time.monotonic() - last_report >= 30:
                log(summary)
                last_report = time.monotonic()
            time.sleep(3)
        log(f"check FAILED: no match within {check:.0f}s ({compare(pg)[1]})")
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
        if generator is not None:
            stop_process_group(generator, "change generator", signal.SIGINT, 15)
        if pg is None and PG_DATADIR.exists():
            # Interrupted while starting: the server may be up without our handle.
            with suppress(Exception):
                pg = EmbeddedPostgres(PG_DATADIR)
        if pg is not None and pg.is_running():
            log("stopping PostgreSQL")
            pg.stop()
        log("stopped")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", type=float, metavar="SECONDS", default=None,
        help="headless smoke test: exit 0 once the warehouse matches the source, 1 after SECONDS",
    )
    parser.add_argument("--rate", type=float, default=5.0, help="changes per second of the generator (default 5)")
    parser.add_argument("--api-timeout", type=float, default=300.0, help="seconds to wait for the Airflow API server")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    return run(args.check, args.rate, args.api_timeout)


if __name__ == "__main__":
    sys.exit(main())
