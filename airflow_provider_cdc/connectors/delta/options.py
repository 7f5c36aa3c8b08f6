"""Options of a ``type: file`` connector (``options:`` in ``connectors.yaml``), validated by ``config check``.

A typo is an error, not a silently ignored key: the model forbids extra keys and is frozen, like every options model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DeltaSinkOptions(BaseModel):
    """How the file sink stores batches under its root URL.

    ``format: delta`` (the default) merges every batch into one Delta Lake table per source table, exactly once
    through Delta's own log. ``format: parquet`` writes an append-only change log of plain Parquet files plus a
    manifest per batch, for readers that cannot read Delta.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["delta", "parquet"] = "delta"
    # Passed as they are to the storage layer: delta-rs ``storage_options`` for ``delta`` (AWS_REGION,
    # AWS_ENDPOINT_URL, GOOGLE_SERVICE_ACCOUNT...), fsspec filesystem arguments for ``parquet``. Put secrets in an
    # Airflow Connection or ``${ENV}``, never in the file itself.
    storage_options: dict[str, str] = Field(default_factory=dict)
    # Wanted size of the Parquet files Delta writes (bytes); None: delta-rs's default.
    target_file_size: int | None = Field(default=None, gt=0)
