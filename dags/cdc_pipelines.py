"""The bundle's CDC DAGs: one ``cdc_<source_id>`` per source in ``$CDC_CONFIG_DIR/cdc.yaml``
(default: ``include/config`` beside this folder). A config problem shows here as an import error with every reason.
"""

from __future__ import annotations

from pathlib import Path

from airflow_provider_cdc.dag_factory import build_dags, default_config_dir

globals().update(build_dags(default_config_dir(Path(__file__).resolve().parent.parent)))
