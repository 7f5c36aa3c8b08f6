"""The ``options:`` of a PostgreSQL source in ``cdc.yaml``: its replication slot and publication, and how a large
table's snapshot is split into key ranges.

Validated by ``config check`` with file, key and reason like every other key (``extra="forbid"``: a typo is an
error, not a silently ignored setting).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_NAME_LENGTH = 63  # PostgreSQL's NAMEDATALEN - 1: longer slot names are refused by the server
SLOT_PREFIX = "cdc_"


class PgSourceOptions(BaseModel):
    """``slot_name`` defaults to ``cdc_<source id>`` (lowercased: PostgreSQL folds names), ``publication_name`` to
    ``cdc_<source id>_pub``; both are created when absent unless ``create_slot`` / ``create_publication`` is false."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slot_name: str | None = Field(None, pattern=r"^[a-z0-9_]{1,63}$")
    publication_name: str | None = Field(None, min_length=1)
    create_slot: bool = True
    create_publication: bool = True
    # Key ranges of a large table's initial snapshot: above 1, the DAG gets a snapshot_ranges task and a mapped
    # snapshot_range task (one per range, spread over the executor's workers) that read the ranges in parallel; the
    # capture then emits their chunks in WAL order (snapshot_ranges.py). 1: the capture reads every table itself.
    snapshot_ranges: int = Field(1, ge=1, le=256)
    # Tables with fewer rows (the planner's estimate) are read by the capture alone, whatever snapshot_ranges says.
    snapshot_range_min_rows: int = Field(100_000, ge=1)

    def effective_slot_name(self, source_id: str) -> str:
        """The replication slot: ``slot_name``, else ``cdc_<source_id>`` lowercased."""
        return self.slot_name or f"{SLOT_PREFIX}{source_id}".lower()

    def effective_publication_name(self, source_id: str) -> str:
        return self.publication_name or f"{SLOT_PREFIX}{source_id}_pub"
