"""Provider registration, read by Airflow through the ``apache_airflow_provider`` entry point.

The pipelines use the database providers' Connection types (``postgres``, ``mysql``, ``mongo``, and ``aws`` for
staging on S3): they are listed under ``connection-types-used``, with the hook that resolves each, for tools and
people to read. They are not under ``connection-types``, the key with which a provider registers a type of its own:
there they would take ``postgres`` over from the postgres provider.
"""

from __future__ import annotations

from typing import Any

INTEGRATION = "Change Data Capture"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-cdc",
        "name": "Change Data Capture (CDC)",
        "description": "Log-based change data capture for Airflow: PostgreSQL, MySQL/MariaDB and MongoDB change "
        "logs in micro-batches, loaded exactly once into database sinks or into Delta Lake tables on object storage "
        "(the file sink). Connections are the providers' own (postgres, mysql, mongo, and aws for staging on S3): "
        "this package adds no connection type.",
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://www.postgresql.org/docs/current/logicaldecoding.html",
                "how-to-guide": ["/docs/operators.md", "/docs/connections.md"],
                "tags": ["software"],
            }
        ],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_cdc.sensors.changes"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_cdc.operators.cdc", "airflow_provider_cdc.operators.quarantine",
                                   "airflow_provider_cdc.operators.resnapshot"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_cdc.hooks.cdc"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_cdc.triggers.changes"]}],
        "notifications": ["airflow_provider_cdc.notifiers.CdcFailureNotifier"],
        "connection-types-used": [
            {"connection-type": "postgres", "hook-class-name": "airflow.providers.postgres.hooks.postgres.PostgresHook",
             "how-to-guide": "/docs/connections.md#postgresql-postgres"},
            {"connection-type": "mysql", "hook-class-name": "airflow.providers.mysql.hooks.mysql.MySqlHook",
             "how-to-guide": "/docs/connections.md#mysql-and-mariadb-mysql"},
            {"connection-type": "mongo", "hook-class-name": "airflow.providers.mongo.hooks.mongo.MongoHook",
             "how-to-guide": "/docs/connections.md#mongodb-mongo"},
            {"connection-type": "aws",
             "hook-class-name": "airflow.providers.amazon.aws.hooks.base_aws.AwsGenericHook",
             "how-to-guide": "/docs/connections.md#amazon-web-services-aws-for-staging-on-s3"},
        ],
        "plugins": [{"name": "cdc", "plugin-class": "airflow_provider_cdc.plugins.cdc_plugin.CdcPlugin"}],
    }
