"""What the CDC operators return (their XCom), and typed views of it for the tasks that come after.

Each operator returns a small JSON-safe dict, never data (batches live on staging storage):

==============================  ==================================================================================
operator                        its XCom, read back with
==============================  ==================================================================================
capture, a stage (transform,    ``manifest_uri`` of the staged batch, ``source_id``, ``batch_id``, ``change_count``,
validate)                       ``ops`` (changes per op code), ``seq_from``/``seq_to``: :meth:`StagedBatch.of`
load                            what the sink did: ``batch_id``, ``applied`` (False: a replay the ledger absorbed),
                                ``upserted``, ``deleted``, per-table counts, ``held_tables``/``newly_held``:
                                :meth:`LoadResult.of`
commit                          ``batch_id``, ``position_stored``, ``seq``, ``held_tables``: :meth:`CommitResult.of`
fused (one or a loop of         the batch's fields, ``captured``, ``load`` and ``commit`` (as above), ``batches`` and
batches)                        ``batch_ids`` for a loop: :meth:`FusedResult.of`
==============================  ==================================================================================

In a TaskFlow function::

    @task
    def report(load: dict) -> str:
        result = LoadResult.of(load)
        return f"{result.batch_id}: {result.upserted} upserted, {result.deleted} deleted"

    report(load.output)

The operators that take an upstream manifest (a stage, load, commit) take the upstream task's ``.output`` as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def _int(value: Any) -> int:
    return int(value or 0)


def _held(value: Any) -> dict[str, str]:
    return {str(table): str(reason) for table, reason in (value or {}).items()} if isinstance(value, Mapping) else {}


@dataclasses.dataclass(frozen=True)
class StagedBatch:
    """A staged batch: what capture and each stage return."""

    manifest_uri: str | None
    source_id: str
    batch_id: str
    change_count: int
    ops: dict[str, int]
    seq_from: int
    seq_to: int

    @property
    def empty(self) -> bool:
        return self.change_count == 0

    @classmethod
    def of(cls, xcom: Mapping[str, Any]) -> StagedBatch:
        return cls(manifest_uri=xcom.get("manifest_uri"), source_id=str(xcom["source_id"]),
                   batch_id=str(xcom["batch_id"]), change_count=_int(xcom.get("change_count")),
                   ops={str(op): _int(n) for op, n in (xcom.get("ops") or {}).items()},
                   seq_from=_int(xcom.get("seq_from")), seq_to=_int(xcom.get("seq_to")))


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What the sink did with one batch (``applied`` False: the ledger had it, a replay, nothing done twice)."""

    batch_id: str
    applied: bool
    empty: bool = False
    upserted: int = 0
    deleted: int = 0
    truncated_tables: int = 0
    skipped_replayed: int = 0
    quarantined: int = 0
    tables: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    held_tables: dict[str, str] = dataclasses.field(default_factory=dict)
    newly_held: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, xcom: Mapping[str, Any]) -> LoadResult:
        return cls(batch_id=str(xcom["batch_id"]), applied=bool(xcom.get("applied")), empty=bool(xcom.get("empty")),
                   upserted=_int(xcom.get("upserted")), deleted=_int(xcom.get("deleted")),
                   truncated_tables=_int(xcom.get("truncated_tables")),
                   skipped_replayed=_int(xcom.get("skipped_replayed")), quarantined=_int(xcom.get("quarantined")),
                   tables={str(t): {str(k): _int(v) for k, v in counts.items()}
                           for t, counts in (xcom.get("tables") or {}).items()},
                   held_tables=_held(xcom.get("held_tables")), newly_held=_held(xcom.get("newly_held")))


@dataclasses.dataclass(frozen=True)
class CommitResult:
    """The position stored after a batch (``position_stored`` False: a replay found it stored already)."""

    batch_id: str
    position_stored: bool
    seq: int | None
    held_tables: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, xcom: Mapping[str, Any]) -> CommitResult:
        seq = xcom.get("seq")
        return cls(batch_id=str(xcom["batch_id"]), position_stored=bool(xcom.get("position_stored")),
                   seq=None if seq is None else int(seq), held_tables=_held(xcom.get("held_tables")))


@dataclasses.dataclass(frozen=True)
class FusedResult:
    """A fused task's batch (or, for a loop, its last batch with the loop's totals)."""

    batch: StagedBatch
    captured: int
    load: LoadResult
    commit: CommitResult
    batch_ids: list[str]

    @classmethod
    def of(cls, xcom: Mapping[str, Any]) -> FusedResult:
        batch = StagedBatch.of(xcom)
        return cls(batch=batch, captured=_int(xcom.get("captured")), load=LoadResult.of(xcom["load"]),
                   commit=CommitResult.of(xcom["commit"]),
                   batch_ids=[str(b) for b in xcom.get("batch_ids") or [batch.batch_id]])
