"""deploy/helm/values.yaml for the official Airflow chart: the image, the executor, the triggerer, connections from a
Secret (every key the values read is in the example Secret), and everything the bundled config reads is set."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from deploy.deploy_files import HELM_SECRET_EXAMPLE, HELM_VALUES, REPO_ROOT, config_variables, load_yaml

VALUES = load_yaml(HELM_VALUES)
SECRET = load_yaml(HELM_SECRET_EXAMPLE)

# Top-level keys of the official chart's values (chart/values.yaml of apache/airflow) that these values set; a key
# outside the chart's schema fails `helm install` (its values.schema.json forbids unknown keys).
CHART_KEYS = {"airflowVersion", "defaultAirflowTag", "images", "executor", "workers", "triggerer", "dagProcessor",
              "env", "secret", "config"}
EXECUTORS = {"LocalExecutor", "CeleryExecutor", "KubernetesExecutor", "CeleryKubernetesExecutor",
             "LocalKubernetesExecutor"}


def env_values() -> dict[str, str]:
    return {item["name"]: item["value"] for item in VALUES["env"]}


def test_values_use_chart_keys_and_a_distributed_executor_with_the_triggerer():
    assert set(VALUES) <= CHART_KEYS, set(VALUES) - CHART_KEYS
    assert VALUES["executor"] in EXECUTORS - {"LocalExecutor"}
    assert VALUES["triggerer"] == {"enabled": True}  # the CDC sensors defer to it
    assert VALUES["dagProcessor"] == {"enabled": True}
    assert VALUES["images"]["airflow"]["repository"].endswith("/airflow-provider-cdc")
    for item in VALUES["env"]:
        assert set(item) == {"name", "value"} and isinstance(item["value"], str), item
    for item in VALUES["secret"]:
        assert set(item) == {"envName", "secretName", "secretKey"}, item


def test_connections_and_keys_come_from_the_example_secret():
    assert (SECRET["apiVersion"], SECRET["kind"], SECRET["metadata"]["name"]) == ("v1", "Secret", "cdc-connections")
    read = {(item["secretName"], item["secretKey"]) for item in VALUES["secret"]}
    assert read == {("cdc-connections", key) for key in SECRET["stringData"]}
    names = [item["envName"] for item in VALUES["secret"]] + list(env_values())
    assert len(names) == len(set(names)), "a variable is set twice"
    # No secret in the values themselves.
    assert not any(key in item["name"] for item in VALUES["env"] for key in ("PASSWORD", "SECRET", "CONN"))


def test_every_variable_the_bundled_config_reads_is_set():
    provided = set(env_values()) | {item["envName"] for item in VALUES["secret"]}
    needed = config_variables(REPO_ROOT / "include" / "config")
    assert needed <= provided, needed - provided
    assert env_values()["CDC_CONFIG_DIR"] == "/opt/airflow/include/config"


def test_staging_is_on_s3_through_a_connection_from_the_secret():
    staging = urlsplit(env_values()["CDC_STAGING_URL"])
    conn_id = staging.netloc.rpartition("@")[0]
    assert staging.scheme == "s3" and conn_id
    connection = json.loads(SECRET["stringData"][f"AIRFLOW_CONN_{conn_id.upper()}"])
    assert connection["conn_type"] == "aws"
    assert f"AIRFLOW_CONN_{conn_id.upper()}" in {item["envName"] for item in VALUES["secret"]}


def test_openlineage_goes_to_marquez():
    openlineage = VALUES["config"]["openlineage"]
    transport = json.loads(openlineage["transport"])
    assert (transport["type"], transport["endpoint"]) == ("http", "api/v1/lineage")
    assert urlsplit(transport["url"]).hostname.startswith("marquez.")
    assert openlineage["namespace"]
