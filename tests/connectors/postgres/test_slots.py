"""``config check`` warns about replication slots of sources that are no longer in cdc.yaml (real servers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
from cdc_testing import unique_id, write_config

from airflow_provider_cdc.config import load_config
from airflow_provider_cdc.connectors.postgres.slots import find_leftover_slots

REPO_ROOT = Path(__file__).resolve().parents[3]


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CDC_CONFIG_DIR"}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "airflow_provider_cdc", "config", "check", *args], cwd=cwd,
                          env=environ, capture_output=True, text=True, timeout=120, check=False)


def create_slot(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def test_leftover_slot_is_reported_with_its_wal_and_drop_sql(pg_database_factory, tmp_path: Path) -> None:
    source_url, sink_url, other_url = pg_database_factory(), pg_database_factory(), pg_database_factory()
    kept, gone, elsewhere = unique_id("kept"), unique_id("gone"), unique_id("elsewhere")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY)")
        conn.execute(f"CREATE PUBLICATION cdc_{gone}_pub FOR TABLE users")
    create_slot(source_url, f"cdc_{kept}")  # the configured source's own slot: not reported
    create_slot(source_url, f"cdc_{gone}")  # a source removed from cdc.yaml: reported
    create_slot(source_url, f"other_{gone}")  # not named like ours: not ours to judge
    create_slot(other_url, f"cdc_{elsewhere}")  # another database: not read by any configured source
    with psycopg.connect(source_url, autocommit=True) as conn:  # some WAL for the leftover slot to retain
        conn.execute("INSERT INTO users SELECT generate_series(1, 20000)")
    config_dir = write_config(tmp_path / "cfg", source_id=kept, source_url=source_url, sink_url=sink_url,
                              tables=["users"])

    result = check(str(config_dir), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"config OK: {config_dir}\n")
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stdout
    (warning,) = warnings
    dbname = source_url.rsplit("/", 1)[1]
    assert f"replication slot cdc_{gone} in database {dbname} on " in warning
    assert "belongs to no source in cdc.yaml" in warning
    assert " of WAL" in warning and ("kB" in warning or "MB" in warning or "bytes" in warning)
    assert warning.endswith(
        f"drop it there: SELECT pg_drop_replication_slot('cdc_{gone}'); DROP PUBLICATION IF EXISTS \"cdc_{gone}_pub\";"
    )
    assert f"cdc_{kept}" not in warning and elsewhere not in result.stdout and f"other_{gone}" not in result.stdout

    # The printed SQL works, and afterwards nothing is reported.
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(warning.split("drop it there: ", 1)[1])
    assert find_leftover_slots(load_config(config_dir)).lines() == []

    offline = check(str(config_dir), "--offline", cwd=tmp_path)
    assert offline.returncode == 0 and "warning" not in offline.stdout


def test_unreachable_source_is_reported_and_skipped(pg_database_factory, tmp_path: Path) -> None:
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    gone = unique_id("gone")
    create_slot(source_url, f"cdc_{gone}")
    config_dir = write_config(tmp_path / "cfg", source_id=unique_id("live"), source_url=source_url,
                              sink_url=sink_url, tables=["users"])
    # A second source whose database cannot be reached (nothing listens on port 1): a warning, not a crash.
    with (config_dir / "cdc.yaml").open("a") as fh:
        fh.write("  - id: down\n    type: postgresql\n"
                 "    connection_string: postgresql://someone:hunter2@127.0.0.1:1/nowhere\n"
                 "    tables: [users]\n    sink: warehouse\n    target_schema: down\n")

    result = check(str(config_dir), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"warning: replication slot cdc_{gone} ") for line in lines), result.stdout
    down = [line for line in lines if line.startswith("warning: source down:")]
    assert len(down) == 1 and "cannot reach its database" in down[0] and down[0].endswith("; skipped")
    assert "hunter2" not in result.stdout + result.stderr
