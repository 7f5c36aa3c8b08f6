"""The error answers of the CDC API's writes, for the OpenAPI spec (the handlers are in :mod:`.app`)."""

from __future__ import annotations

from typing import Any

WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "the user may not change the CDC DAGs"},
    404: {"description": "an unknown source, subject or suite; the message names those that exist"},
    409: {"description": "refused by the current state (a rule id the YAML defines, a table that is not held, a "
                         "running DAG run)"},
    422: {"description": "the request, or what it asks, is not valid; one message per field"},
    503: {"description": "the config is invalid, or the sink does not answer"},
}
