"""What the CDC REST API answers, without a web framework: the plugin's routers (:mod:`airflow_provider_cdc.plugins`)
only authenticate, parse and serialise, and everything they return is built here.

``models``           the pydantic request and response models (they make the published OpenAPI spec)
``errors``           what an answer can fail with (unknown source or asset, a question the graph cannot answer)
``ledger``           recent batches read from a sink's ``_cdc_ledger``
``status``           the pipeline status of each source: DAG state, last batch, position, lag, rates, quality
``lineage``          the lineage graph of the config and the questions asked of it (upstream, downstream, impact)
``health``           source and sink connectivity, memory and CPU, without a host, a user or a secret
``transformations``  the rules of the config

Airflow's metadata (DAG runs, paused flags) reaches these modules as plain values
(:class:`~airflow_provider_cdc.api.status.DagState`), so that they can be tested without an API server.
"""
