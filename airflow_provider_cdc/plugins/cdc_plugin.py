"""The ``cdc`` Airflow plugin: the CDC REST API mounted at ``/cdc`` in the Airflow API server.

Airflow finds it through the ``airflow.plugins`` entry point of this package (setup.cfg) and lists it in
``get_provider_info()["plugins"]``. The API server (``airflow api-server``, ``airflow standalone``) then serves
``/cdc/health``, ``/cdc/api/v1/...`` and the spec at ``/cdc/openapi.json``, and the UI's navigation shows the CDC
page (``/cdc/ui/``, embedded at ``/plugin/cdc``) as an external view.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_cdc.plugins.app import URL_PREFIX, create_app


class CdcPlugin(AirflowPlugin):
    name = "cdc"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "CDC REST API"}]
    external_views = [{"name": "CDC pipelines", "href": f"{URL_PREFIX}/ui/", "url_route": "cdc", "destination": "nav",
                       "category": "browse"}]
