"""docker-compose.yaml, checked without a Docker engine: the services, their environment, ports, health checks and
start order, the mounted config, lineage to Marquez, the celery profile; then ``docker compose config`` itself."""

from __future__ import annotations

import configparser
import json
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import require_server

from deploy.deploy_files import (
    CELERY_ENV_FILE,
    COMPOSE_FILE,
    REPO_ROOT,
    compose_command,
    compose_services,
    config_variables,
    interpolate,
    read_env_file,
)

SERVICES = compose_services()
AIRFLOW = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
           "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}
CELERY_PROFILE = {"redis", "airflow-worker", "object-store", "object-store-init"}
ONE_SHOT = {"airflow-init", "mongodb-init", "object-store-init"}  # run once; others wait for their success
DEFAULT_STACK = {
    "postgres", "source-postgres", "mysql", "mongodb", "mongodb-init", "marquez-db", "marquez-api", "marquez-web",
    *AIRFLOW, "airflow-init", "shop-changes-postgres", "shop-changes-mysql", "shop-changes-mongodb",
}


def env_of(service: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The service's environment as Compose resolves it with ``env`` set (defaults otherwise)."""
    return {key: interpolate(str(value), env) for key, value in SERVICES[service].get("environment", {}).items()}


def profiles_of(service: str) -> set[str]:
    return set(SERVICES[service].get("profiles", []))


def test_the_default_stack_and_the_celery_profile():
    assert {name for name in SERVICES if not profiles_of(name)} == DEFAULT_STACK
    assert {name for name in SERVICES if profiles_of(name)} == CELERY_PROFILE
    assert all(profiles_of(name) == {"celery"} for name in CELERY_PROFILE)


@pytest.mark.parametrize("service", [*AIRFLOW, "airflow-worker"])
def test_airflow_components_run_the_provider_image(service):
    spec = SERVICES[service]
    assert spec["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    assert interpolate(spec["image"]) == "airflow-provider-cdc:0.1.0-airflow3.3.2-python3.11"
    assert spec["command"] == AIRFLOW.get(service, "celery worker")
    env = env_of(service)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"  # the default; celery.env switches it
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://airflow:airflow@postgres/airflow"
    assert urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname == "airflow-apiserver"
    # Task processes on any container verify the API server's tokens: one secret for all.
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] and env["AIRFLOW__API__SECRET_KEY"]
    assert env["CDC_STAGING_URL"] == "file:///opt/airflow/cdc_staging"
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in spec["volumes"]}
    assert mounts["/opt/airflow/cdc_staging"] == "cdc-staging"  # one volume shared by every container


def test_include_config_is_mounted_and_every_variable_it_reads_is_set():
    config_dir = REPO_ROOT / "include" / "config"
    needed = config_variables(config_dir)
    assert {"CDC_DEMO_SOURCE_URL", "CDC_DEMO_MONGODB_URL"} <= needed
    for service in [*AIRFLOW, "airflow-worker"]:
        volumes = SERVICES[service]["volumes"]
        assert "./include/config:/opt/airflow/include/config:ro" in volumes
        env = env_of(service)
        assert env["CDC_CONFIG_DIR"] == "/opt/airflow/include/config"
        assert needed <= set(env), needed - set(env)


def test_every_service_is_health_checked_and_waited_for():
    for name, spec in SERVICES.items():
        if name in ONE_SHOT or name.startswith("shop-changes-"):
            assert "healthcheck" not in spec, name
            continue
        test = spec["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    for name, spec in SERVICES.items():
        for target, wait in spec.get("depends_on", {}).items():
            assert target in SERVICES, (name, target)
            # A profile service is only depended on by services of the same profile (else `up` would fail).
            assert profiles_of(target) <= profiles_of(name), (name, target)
            if target in ONE_SHOT:
                assert wait == {"condition": "service_completed_successfully"}, (name, target)
            else:
                assert wait == {"condition": "service_healthy"}, (name, target)
                assert "healthcheck" in SERVICES[target], (name, target)


def test_airflow_waits_for_its_databases_the_sources_and_marquez():
    for service in AIRFLOW:
        waits = set(SERVICES[service]["depends_on"])
        assert {"postgres", "source-postgres", "mysql", "mongodb-init", "marquez-api", "airflow-init"} <= waits
    assert {"redis", "object-store-init"} <= set(SERVICES["airflow-worker"]["depends_on"])
    assert SERVICES["airflow-apiserver"]["healthcheck"]["test"][-1] == "http://localhost:8080/api/v2/version"
    assert "DagProcessorJob" in SERVICES["airflow-dag-processor"]["healthcheck"]["test"][1]
    assert "TriggererJob" in SERVICES["airflow-triggerer"]["healthcheck"]["test"][1]
    assert env_of("airflow-scheduler")["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    init_env = env_of("airflow-init")
    assert init_env["_AIRFLOW_DB_MIGRATE"] == "true" and init_env["_AIRFLOW_WWW_USER_CREATE"] == "true"


def test_postgresql_source_decodes_logically():
    spec = SERVICES["source-postgres"]
    assert "wal_level=logical" in spec["command"]
    env = env_of("airflow-scheduler")
    for variable in ("CDC_DEMO_SOURCE_URL", "CDC_DEMO_WAREHOUSE_URL"):
        url = urlsplit(env[variable])
        assert (url.hostname, url.port) == ("source-postgres", 5432)
    init = "./deploy/postgres/init-warehouse.sql:/docker-entrypoint-initdb.d/init-warehouse.sql:ro"
    assert init in spec["volumes"]
    assert "CREATE DATABASE warehouse" in (REPO_ROOT / "deploy/postgres/init-warehouse.sql").read_text()


def test_mysql_8_writes_a_row_binlog_with_gtids():
    spec = SERVICES["mysql"]
    assert spec["image"].startswith("mysql:8.")
    mount = next(v for v in spec["volumes"] if v.endswith(":/etc/mysql/conf.d/cdc.cnf:ro"))
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / mount.split(":")[0])
    settings = dict(parser["mysqld"])
    assert settings["binlog_format"] == "ROW" and settings["binlog_row_image"] == "FULL"
    assert settings["binlog_row_metadata"] == "FULL"
    assert settings["gtid_mode"] == "ON" and settings["enforce_gtid_consistency"] == "ON"
    assert int(settings["server-id"]) > 0 and settings["log-bin"]
    grants = (REPO_ROOT / "deploy/mysql/init-cdc-user.sql").read_text()
    assert "REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'cdc'" in grants
    assert urlsplit(env_of("airflow-scheduler")["CDC_DEMO_MARIADB_URL"]).hostname == "mysql"


def test_mongodb_is_a_replica_set_initiated_once():
    assert SERVICES["mongodb"]["command"][-3:] == ["--replSet", "rs0", "--bind_ip_all"]
    init = SERVICES["mongodb-init"]
    script = init["command"][-1]
    assert script == "/deploy/mongodb/init-replica-set.js" and "./deploy/mongodb:/deploy/mongodb:ro" in init["volumes"]
    text = (REPO_ROOT / "deploy/mongodb/init-replica-set.js").read_text()
    assert 'rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongodb:27017" }] })' in text
    assert "NotYetInitialized" in text  # a restart finds the set initiated and leaves it
    assert "replicaSet=rs0" in env_of("airflow-scheduler")["CDC_DEMO_MONGODB_URL"]


def test_openlineage_goes_to_the_marquez_api():
    transport = json.loads(env_of("airflow-scheduler")["AIRFLOW__OPENLINEAGE__TRANSPORT"])
    url = urlsplit(transport["url"])
    assert (transport["type"], transport["endpoint"]) == ("http", "api/v1/lineage")
    marquez = SERVICES[url.hostname]
    assert marquez["image"].startswith("marquezproject/marquez:")
    assert int(env_of(url.hostname)["MARQUEZ_PORT"]) == url.port
    assert f"{url.port}:{url.port}" in marquez["ports"]
    web = env_of("marquez-web")
    assert (web["MARQUEZ_HOST"], int(web["MARQUEZ_PORT"])) == (url.hostname, url.port)
    assert SERVICES["marquez-web"]["image"].startswith("marquezproject/marquez-web:")
    assert env_of(url.hostname)["POSTGRES_HOST"] == "marquez-db"
    config = env_of(url.hostname)["MARQUEZ_CONFIG"]
    assert f"./deploy/marquez/marquez.yml:{config}:ro" in marquez["volumes"]


def test_published_ports():
    published: dict[str, str] = {}
    for name, spec in SERVICES.items():
        for mapping in spec.get("ports", []):
            host = str(mapping).split(":")[0]
            assert host not in published, f"{name} and {published.get(host)} publish port {host}"
            published[host] = name
    assert published["8080"] == "airflow-apiserver"
    assert published["3000"] == "marquez-web"
    assert published["5000"] == "marquez-api"
    assert published["9000"] == "object-store"


def test_the_celery_env_file_switches_executor_staging_and_lake_to_the_object_store():
    settings = read_env_file(CELERY_ENV_FILE)
    assert settings["COMPOSE_PROFILES"] == "celery"
    env = env_of("airflow-worker", settings)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    staging = urlsplit(env["CDC_STAGING_URL"])
    conn_id, _, bucket = staging.netloc.rpartition("@")
    assert staging.scheme == "s3" and conn_id == "cdc_s3"
    connection = json.loads(env[f"AIRFLOW_CONN_{conn_id.upper()}"])
    store = urlsplit(connection["extra"]["endpoint_url"])
    assert connection["conn_type"] == "aws" and store.hostname == "object-store"
    assert env["AWS_ENDPOINT_URL"] == connection["extra"]["endpoint_url"]  # delta-rs: the same store
    lake = urlsplit(env["CDC_DEMO_LAKE_URL"])
    assert lake.scheme == "s3"
    # object-store-init makes both buckets, with the keys the store was started with.
    assert SERVICES["object-store-init"]["command"] == [bucket, lake.hostname]
    store_env = env_of("object-store", settings)
    assert (connection["login"], connection["password"]) == (store_env["MINIO_ROOT_USER"],
                                                              store_env["MINIO_ROOT_PASSWORD"])
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (connection["login"], connection["password"])


def test_log_level_of_the_original_spec_is_airflows_logging_level():
    assert env_of("airflow-scheduler")["AIRFLOW__LOGGING__LOGGING_LEVEL"] == "INFO"
    assert env_of("airflow-scheduler", {"LOG_LEVEL": "DEBUG"})["AIRFLOW__LOGGING__LOGGING_LEVEL"] == "DEBUG"


def _compose_config(command: list[str], *extra: str) -> dict[str, Any]:
    result = subprocess.run([*command, "-f", str(COMPOSE_FILE), *extra, "config", "--format", "json"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_docker_compose_config_accepts_both_stacks():
    """The Compose client's own validation and interpolation, as ``docker compose up`` would do them."""
    command = compose_command()
    if command is None:
        require_server("docker-compose", "no Docker Compose v2 client (pip install -e '.[test]' brings one)")
    default = _compose_config(command)
    assert set(default["services"]) == DEFAULT_STACK
    scheduler = default["services"]["airflow-scheduler"]
    assert scheduler["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    mount = next(v for v in scheduler["volumes"] if v["target"] == "/opt/airflow/include/config")
    assert (mount["type"], mount["source"], mount["read_only"]) == ("bind", str(REPO_ROOT / "include/config"), True)

    celery = _compose_config(command, "--env-file", str(CELERY_ENV_FILE))
    assert set(celery["services"]) == DEFAULT_STACK | CELERY_PROFILE
    worker = celery["services"]["airflow-worker"]["environment"]
    assert worker["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert worker["CDC_STAGING_URL"] == "s3://cdc_s3@cdc-staging/staging"
