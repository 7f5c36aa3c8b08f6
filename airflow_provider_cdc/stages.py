"""The stages between capture and load, as one explicit, ordered list that both run modes use.

A run is capture → *stages* → load → commit. Capture, load and commit are fixed (they carry the exactly-once
protocol); the stages in between change a batch: transform (issue 10), then validate (issue 11). Staged mode runs
one task per stage, each reading the upstream stage's staged batch and staging its own; fused mode runs the same
list in one process. Because both build the list with :func:`build_stages`, the two modes cannot disagree about
which stages run, or in which order.

Each stage reports :meth:`Stage.versions` (say, the rules it applied and their hashes). The versions of every stage
a batch went through travel with the batch (in its manifest, when staged) and reach the sink's ledger row as
``stage_versions``, so the audit trail says what made each batch.

**Registering a stage** is one entry in :data:`STAGE_FACTORIES`, in the order the stages run::

    STAGE_FACTORIES = (
        ("transform", transform_stage),   # (source, config) -> Stage | None
        ("validate", validate_stage),
    )

A factory returns ``None`` when its stage has nothing to do for that source (no rules, no quality suites), and no
task is made for it. Factories run at every DAG parse: they must not connect anywhere, and should import heavy
libraries inside :meth:`Stage.apply`.

**Replay safety.** A stage may change values, add columns, or drop rows (all of a table's, even), but the batch it
returns keeps the identity of the batch it was given: source, batch id, position and ``seq`` range. A replayed
capture therefore yields the same batch id after every stage, which the sink's ledger recognises.
:func:`check_identity` enforces it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from airflow_provider_cdc.errors import CdcError

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, SourceConfig
    from airflow_provider_cdc.events import ChangeBatch


@runtime_checkable
class Stage(Protocol):
    """One step between capture and load. ``name`` is also its task id in staged mode."""

    name: str

    def apply(self, batch: ChangeBatch) -> ChangeBatch:
        """Return the batch this stage makes of ``batch`` (same identity: see :func:`check_identity`)."""

    def versions(self) -> dict[str, Any]:
        """What this stage applies, JSON-safe (e.g. rule ids and their hashes): recorded in the ledger row."""


StageFactory = Callable[["SourceConfig", "CdcConfig"], "Stage | None"]
"""``(source, config) -> Stage`` for that source, or ``None`` when the stage has nothing to do there."""

# The registration point: (name, factory) in the order the stages run. Transform (issue 10) comes first, then
# validate (issue 11). A tuple, not a list, on purpose: the order is declared here, not assembled by whoever
# imports first.
def _transform_stage(source: SourceConfig, config: CdcConfig) -> Stage | None:
    from airflow_provider_cdc.transform.stage import transform_stage

    return transform_stage(source, config)


def _validate_stage(source: SourceConfig, config: CdcConfig) -> Stage | None:
    from airflow_provider_cdc.quality.stage import validate_stage

    return validate_stage(source, config)


STAGE_FACTORIES: tuple[tuple[str, StageFactory], ...] = (
    ("transform", _transform_stage),
    ("validate", _validate_stage),
)

# Task ids the DAG already uses; a stage cannot take one of them.
RESERVED_NAMES = frozenset({"wait_for_changes", "capture", "load", "commit", "fused"})
_NAME = re.compile(r"[a-z][a-z0-9_]*")

# What identifies a batch: kept by every stage.
IDENTITY = ("source_id", "batch_id", "position_from", "position_to", "seq_from", "seq_to")


class StageError(CdcError):
    """A stage broke its contract (a programming error in the stage, so retrying cannot help)."""

    terminal = True

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        super().__init__(f"stage {stage!r}: {message}")


def build_stages(source: SourceConfig, config: CdcConfig) -> list[Stage]:
    """The stages of ``source``, in :data:`STAGE_FACTORIES` order, without those that have nothing to do."""
    stages: list[Stage] = []
    for name, factory in STAGE_FACTORIES:
        if not _NAME.fullmatch(name) or name in RESERVED_NAMES:
            raise StageError(name, f"is not a usable stage name (lowercase identifier, not one of "
                                   f"{', '.join(sorted(RESERVED_NAMES))})")
        if any(stage.name == name for stage in stages):
            raise StageError(name, "is registered twice in STAGE_FACTORIES")
        stage = factory(source, config)
        if stage is None:
            continue
        if stage.name != name:
            raise StageError(name, f"its factory built a stage named {stage.name!r}")
        stages.append(stage)
    return stages


def check_identity(stage: Stage, given: ChangeBatch, made: ChangeBatch) -> ChangeBatch:
    """``made`` if it keeps the identity of ``given``; else :class:`StageError` naming what changed."""
    changed = [field for field in IDENTITY if getattr(given, field) != getattr(made, field)]
    if changed:
        raise StageError(stage.name, f"changed the batch's {', '.join(changed)} (batch {given.batch_id}); a stage "
                                     "must keep them, or a replayed capture would not be recognised by the ledger")
    return made


def apply_stages(
    stages: Sequence[Stage], batch: ChangeBatch, stage_versions: dict[str, Any] | None = None
) -> tuple[ChangeBatch, dict[str, Any]]:
    """Run ``stages`` in order over ``batch``; returns the last batch and ``{name: versions()}`` accumulated onto
    ``stage_versions`` (what earlier stages reported, when resuming from a staged batch)."""
    versions = dict(stage_versions or {})
    for stage in stages:
        batch = check_identity(stage, batch, stage.apply(batch))
        versions[stage.name] = stage.versions()
    return batch, versions
