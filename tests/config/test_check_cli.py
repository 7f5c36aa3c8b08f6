from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-pw"

CONNECTORS = """
    connectors:
      - id: postgres_main
        type: postgresql
        conn_id: postgres_main
      - id: warehouse
        type: postgresql
        connection_string: ${WAREHOUSE_URL}
"""
SOURCES = """
    sources:
      - id: postgres_main
        type: postgresql
        connector: postgres_main
        tables: [users, orders]
        sink: warehouse
      - id: shop
        type: postgresql
        conn_id: pg_shop
        tables: [shop.orders]
        sink: warehouse
        target_schema: shop
        schedule: "*/10 * * * *"
        options: {slot_name: shop_slot}
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, from another directory; PYTHONPATH makes the checkout importable."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CDC_CONFIG_DIR", "WAREHOUSE_URL")}
    environ.update(env, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_cdc.config", *args],
        cwd=cwd, env=environ, capture_output=True, text=True, timeout=60, check=False,
    )


def test_check_valid_config_prints_summary(tmp_path: Path) -> None:
    config = write(tmp_path / "cfg", {
        "connectors.yaml": CONNECTORS,
        "cdc.yaml": SOURCES,
        "transformations.yaml": "rules:\n  - {rule_id: mask_email, rule_type: map, source_fields: [email], "
                                "target_field: masked, expression: '{{ mask(email) }}'}\n",
    })
    result = run("check", "--offline", str(config), cwd=tmp_path, WAREHOUSE_URL=f"postgresql://u:{SECRET}@wh/dwh")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        f"config OK: {config}",
        "connectors: 2",
        "sources: 2",
        "  cdc_postgres_main: postgresql, 2 tables -> warehouse, schedule @continuous",
        "    schema changes: mode evolve, compatibility BACKWARD",
        "  cdc_shop: postgresql, 1 table -> warehouse, schedule */10 * * * *",
        "    schema changes: mode evolve, compatibility BACKWARD",
        "sinks: 1",
        "  warehouse: postgresql, one transaction per batch, merge by key, soft delete",
        "rules: 1",
        "suites: 0",
    ]


def test_check_prints_each_sources_schema_policy(tmp_path: Path) -> None:
    sources = SOURCES.replace("        sink: warehouse\n      - id: shop", """        sink: warehouse
        schema_changes:
          mode: lenient
          table_compatibility: {orders: NONE, public.users: full_transitive}
      - id: shop""") + "    schema_changes: {mode: stop, compatibility: FORWARD}\n"
    config = write(tmp_path / "cfg", {"connectors.yaml": CONNECTORS, "cdc.yaml": sources})
    result = run("check", "--offline", str(config), cwd=tmp_path, WAREHOUSE_URL="postgresql://u@wh/dwh")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[3:7] == [
        "  cdc_postgres_main: postgresql, 2 tables -> warehouse, schedule @continuous",
        "    schema changes: mode lenient, compatibility FORWARD, per table: public.orders NONE, "
        "public.users FULL_TRANSITIVE",
        "  cdc_shop: postgresql, 1 table -> warehouse, schedule */10 * * * *",
        "    schema changes: mode stop, compatibility FORWARD",
    ]


def test_check_reports_a_bad_schema_policy_with_file_and_key(tmp_path: Path) -> None:
    sources = SOURCES.replace("        sink: warehouse\n      - id: shop",
                              "        sink: warehouse\n        schema_changes: {mode: evolved}\n      - id: shop")
    config = write(tmp_path / "cfg", {"connectors.yaml": CONNECTORS, "cdc.yaml": sources})
    result = run("check", "--offline", str(config), cwd=tmp_path, WAREHOUSE_URL="postgresql://u@wh/dwh")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        "cdc.yaml: sources[0].schema_changes.mode: should be 'evolve', 'lenient', 'ignore' or 'stop' (got 'evolved')",
        f"1 problem in {config}",
    ]


def test_check_reports_every_problem_on_stderr(tmp_path: Path) -> None:
    config = write(tmp_path / "cfg", {
        "connectors.yaml": CONNECTORS.replace("connection_string: ${WAREHOUSE_URL}",
                                              f"connection_string: postgresql://u:{SECRET}@wh/dwh\n        user: u"),
        "cdc.yaml": SOURCES.replace("sink: warehouse\n      - id: shop", "sink: wharehouse\n      - id: shop")
        .replace("tables: [shop.orders]", "tables: []").replace("slot_name: shop_slot", "slot_nme: shop_slot"),
    })
    result = run("check", str(config), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        "connectors.yaml: connectors[1].user: unknown key (allowed: id, type, conn_id, connection_string, options)",
        "cdc.yaml: sources[0].sink: unknown connector 'wharehouse'; did you mean 'warehouse'?",
        "cdc.yaml: sources[1].tables: should not be empty",
        "cdc.yaml: sources[1].options.slot_nme: unknown key; did you mean 'slot_name'?",
        f"4 problems in {config}",
    ]
    assert SECRET not in result.stderr


def test_check_reports_unset_variable_and_yaml_error(tmp_path: Path) -> None:
    config = write(tmp_path / "cfg", {"connectors.yaml": CONNECTORS, "cdc.yaml": "sources:\n  - id: [x\n"})
    result = run("check", str(config), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "connectors.yaml: connectors[1].connection_string: environment variable WAREHOUSE_URL not set "
        "(or write ${VAR:-default})"
    )
    assert lines[1].startswith("cdc.yaml: line 3: invalid YAML: ")


def test_check_defaults_to_cdc_config_dir_then_include_config(tmp_path: Path) -> None:
    write(tmp_path / "env_dir", {"cdc.yaml": "sources: []\n"})
    from_env = run("check", cwd=tmp_path, CDC_CONFIG_DIR=str(tmp_path / "env_dir"))
    assert from_env.returncode == 0
    assert f"config OK: {tmp_path / 'env_dir'}" in from_env.stdout

    missing = run("check", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith("cdc.yaml: config directory include/config does not exist")


def test_usage_error_exits_2(tmp_path: Path) -> None:
    result = run(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: python -m airflow_provider_cdc.config" in result.stderr


def test_config_package_imports_no_airflow(tmp_path: Path) -> None:
    """Neither the config package nor the connector factories it consults import Airflow: the check runs anywhere."""
    config = write(tmp_path / "cfg", {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES})
    code = (
        "import sys, airflow_provider_cdc.config, airflow_provider_cdc.config.__main__\n"
        f"airflow_provider_cdc.config.load_config({str(config)!r})\n"
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    )
    environ = dict(os.environ, PYTHONPATH=str(REPO_ROOT), WAREHOUSE_URL="postgresql://u@wh/dwh")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environ, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[]"
