"""Dependencies the CDC routers share: the config, read at each request (so that an edited YAML is served without
restarting the API server), and its failure as a 503 naming every problem."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from airflow_provider_cdc.api.errors import UnavailableError
from airflow_provider_cdc.config import CdcConfig, ConfigError, load_config


def get_config() -> CdcConfig:
    try:
        return load_config()
    except ConfigError as exc:
        raise UnavailableError(str(exc)) from exc


ConfigDep = Annotated[CdcConfig, Depends(get_config)]
