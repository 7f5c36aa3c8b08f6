"""The CDC page of the Airflow UI: one HTML page with its script and styles inline (no build step, no CDN), served by
the plugin's FastAPI app at ``/cdc/ui/`` and registered as an external view, so that Airflow's navigation shows it
(embedded at ``/plugin/cdc``). The page reads the REST API with the user's own Airflow session (its ``_token``
cookie) or a token given once in the URL fragment (``/cdc/ui/#token=...``, never sent to a server)."""
