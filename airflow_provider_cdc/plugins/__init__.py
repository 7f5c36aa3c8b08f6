"""The Airflow-facing side of the CDC REST API: an ``AirflowPlugin`` (:mod:`.cdc_plugin`) that mounts a FastAPI app
(:mod:`.app`) at ``/cdc`` in the Airflow API server. Routers only authenticate (:mod:`.auth`), parse and answer;
what they answer is built in :mod:`airflow_provider_cdc.api`, and Airflow's metadata is read in
:mod:`.airflow_state`."""
