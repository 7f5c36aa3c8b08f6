"""Operators of a parallel initial snapshot: one lists the key ranges still to read, the other (mapped over that
list with ``expand``) reads one range into staged chunks. Thin wiring over
:mod:`airflow_provider_cdc.parallel_snapshot`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_provider_cdc import parallel_snapshot
from airflow_provider_cdc.operators.cdc import _CdcOperator
from airflow_provider_cdc.operators.intent import fail_terminal_errors


class CdcSnapshotRangesOperator(_CdcOperator):
    """Returns the indexes of the key ranges the pending snapshot still has to stage (``[]``: none; the mapped
    range task is then skipped)."""

    def execute(self, context: Any) -> list[int]:
        with fail_terminal_errors(), self.connected() as (hook, source, sink):
            return parallel_snapshot.ranges_to_stage(source, sink, hook.positions)


class CdcSnapshotRangeOperator(_CdcOperator):
    """Reads one key range of the pending snapshot into staged chunks; a retry resumes after the last chunk.

    :param range_index: which range (mapped: ``.partial(...).expand(range_index=ranges.output)``)
    """

    template_fields: Sequence[str] = (*_CdcOperator.template_fields, "range_index")

    def __init__(self, *, range_index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.range_index = range_index

    def execute(self, context: Any) -> dict[str, Any]:
        with fail_terminal_errors(), self.connected() as (hook, source, sink):
            return parallel_snapshot.stage_range(source, sink, hook.positions, int(self.range_index),
                                                 hook.source_config.batch_size)
