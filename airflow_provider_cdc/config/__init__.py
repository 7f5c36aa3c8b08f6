"""The CDC configuration: four YAML files in one directory, loaded and checked without Airflow.

This package imports no ``airflow`` module, so ``python -m airflow_provider_cdc.config check`` and the tests run
in plain Python, and the DAG factory can turn every ``ConfigError`` problem into an import error.
"""

from __future__ import annotations

from airflow_provider_cdc.config.loader import (
    CONFIG_DIR_ENV,
    ConfigError,
    ConfigProblem,
    default_config_dir,
    load_config,
)
from airflow_provider_cdc.config.models import (
    CdcConfig,
    ConnectorConfig,
    RuleConfig,
    SourceConfig,
    SuiteConfig,
    mask_url,
)

__all__ = [
    "CONFIG_DIR_ENV",
    "CdcConfig",
    "ConfigError",
    "ConfigProblem",
    "ConnectorConfig",
    "RuleConfig",
    "SourceConfig",
    "SuiteConfig",
    "default_config_dir",
    "load_config",
    "mask_url",
]
