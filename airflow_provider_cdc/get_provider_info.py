"""Provider registration, read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-cdc",
        "name": "Change Data Capture (CDC)",
        "description": "Log-based change data capture for Airflow: PostgreSQL, MySQL/MariaDB and MongoDB change "
        "logs in micro-batches, loaded exactly once into database sinks or into Delta Lake tables on object storage "
        "(the file sink). Connections are the providers' own (postgres, mysql, mongo): this package adds no "
        "connection type.",
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": "Change Data Capture",
                "external-doc-url": "https://www.postgresql.org/docs/current/logicaldecoding.html",
                "tags": ["software"],
            }
        ],
        "sensors": [
            {"integration-name": "Change Data Capture", "python-modules": ["airflow_provider_cdc.sensors.changes"]}
        ],
        "operators": [
            {
                "integration-name": "Change Data Capture",
                "python-modules": ["airflow_provider_cdc.operators.cdc", "airflow_provider_cdc.operators.quarantine"],
            }
        ],
        "hooks": [{"integration-name": "Change Data Capture", "python-modules": ["airflow_provider_cdc.hooks.cdc"]}],
        "triggers": [
            {"integration-name": "Change Data Capture", "python-modules": ["airflow_provider_cdc.triggers.changes"]}
        ],
        "plugins": [{"name": "cdc", "plugin-class": "airflow_provider_cdc.plugins.cdc_plugin.CdcPlugin"}],
    }
