"""``CdcFailureNotifier``: on a CDC task's failure, a short message that says what stopped and how to resume.

Two failures of a CDC pipeline need a person, and each has its own way out:

- **a table held** after a schema change its policy refused (or one the sink cannot follow): the run that holds
  it fails once (:class:`~airflow_provider_cdc.pipeline.TablesHeldError`, from ``commit`` or ``fused``), the
  other tables keep flowing, and the table waits for ``schema accept`` (which replays its held changes) or a
  re-snapshot of the table;
- **a lost position**: what held the stored position at the source is gone (a dropped replication slot, purged
  binlogs, an expired resume token; :class:`~airflow_provider_cdc.errors.PositionLostError`), and only a
  re-snapshot of the source recovers.

The notifier reads the failed task's exception (``context["exception"]``: the operators fail a task for good with
``AirflowFailException`` whose cause is the library's error, which carries the source, the tables and the position
as attributes) and makes a message that names the held tables with their resume commands, or the lost position
with the re-snapshot command. Any other error gives its first line. Use it as a task callback, for instance for
every task of a DAG through ``default_args={"on_failure_callback": CdcFailureNotifier(path=...)}``; a DAG-level
callback has no exception to read and gives the run's failure reason.

It logs the message and appends it to ``path`` (templated) when one is given. To deliver it elsewhere (a chat, a
pager), subclass and override :meth:`CdcFailureNotifier.send`; :func:`describe_failure` and
:func:`failure_message` are the reusable parts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from airflow.sdk import BaseNotifier

from airflow_provider_cdc.errors import CdcError, PositionLostError, TableHeld
from airflow_provider_cdc.schema.gate import COMMAND, resume_commands

FailureKind = Literal["held", "position_lost", "error"]
_DETAIL_CHARS = 400


@dataclasses.dataclass(frozen=True)
class CdcFailure:
    """What stopped a CDC task: ``kind`` ``held`` (``tables`` are held), ``position_lost`` (``position`` is gone at
    the source) or ``error`` (anything else); ``error`` is the first line of the error's message."""

    kind: FailureKind
    source_id: str | None
    error: str
    tables: tuple[str, ...] = ()
    position: Mapping[str, Any] | None = None

    def summary(self) -> str:
        """One line per held table, or one line for the lost position or the error, with what to do next."""
        source = f"source {self.source_id}" if self.source_id else "the source"
        if self.kind == "held":
            sid = self.source_id or "<source_id>"
            return "\n".join(f"{source} paused table {table} after a schema change (its changes wait in the sink); "
                             f"{resume_commands(sid, table)}" for table in self.tables)
        if self.kind == "position_lost":
            where = describe_position(self.position or {})
            return (f"{source} lost its position ({where}): the source no longer has the changes after it; "
                    f"re-snapshot it: {COMMAND} resnapshot {self.source_id or '<source_id>'}. Cause: {self.error}")
        # The library's errors name their source already; others get it in front.
        return self.error if not self.source_id or self.source_id in self.error else f"{source}: {self.error}"


def describe_position(position: Mapping[str, Any]) -> str:
    """The scalar parts of a position (``lsn=0/1A2B3C seq=42``), what a person compares; not the remembered
    schemas and tables."""
    parts = [f"{key}={value}" for key, value in position.items()
             if isinstance(value, (str, int, float)) and not isinstance(value, bool)]
    return " ".join(parts) or "no position details"


def _chain(exception: BaseException) -> Iterator[BaseException]:
    """The exception and its causes (``raise ... from``) and contexts, each once."""
    seen: set[int] = set()
    current: BaseException | None = exception
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _DETAIL_CHARS else line[:_DETAIL_CHARS - 3] + "..."


def describe_failure(exception: BaseException | str | None, *, source_id: str | None = None) -> CdcFailure | None:
    """What ``exception`` says about a CDC failure (None: there is none). ``source_id``: the failed task's source,
    for errors that do not carry it (a sink's ``TableHeld`` names the sink and table only).

    The library's error is looked for along the exception's causes, so the ``AirflowFailException`` a task fails
    with is read through to the ``TablesHeldError`` or ``PositionLostError`` behind it."""
    from airflow_provider_cdc.pipeline import TablesHeldError  # the pipeline module brings pyarrow: only when needed

    if exception is None:
        return None
    if isinstance(exception, str):
        return CdcFailure("error", source_id, _first_line(exception))
    for error in _chain(exception):
        if isinstance(error, TablesHeldError):
            return CdcFailure("held", error.source_id or source_id, _first_line(str(error)),
                              tables=tuple(sorted(error.held)))
        if isinstance(error, TableHeld) and error.table:
            return CdcFailure("held", source_id, _first_line(str(error)), tables=(error.table,))
        if isinstance(error, PositionLostError):
            return CdcFailure("position_lost", error.source_id or source_id, _first_line(str(error)),
                              position=dict(error.position or {}))
    found = next((error for error in _chain(exception) if isinstance(error, CdcError)), exception)
    return CdcFailure("error", getattr(found, "source_id", None) or source_id, _first_line(str(found)))


def failure_message(context: Mapping[str, Any]) -> str:
    """The message for a failure callback's ``context``: where (DAG, task, run) and what (:class:`CdcFailure`)."""
    task = context.get("task")
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", None) or getattr(dag_run, "dag_id", None) or "?"
    run_id = context.get("run_id") or getattr(dag_run, "run_id", None)
    where = f"DAG {dag_id}" + (f", task {task.task_id}" if task is not None else "") + (
        f", run {run_id}" if run_id else "")
    failure = describe_failure(context.get("exception"), source_id=getattr(task, "source_id", None))
    if failure is None:
        return f"{where} failed: {context.get('reason') or 'no exception was reported'}"
    return f"{where} failed: {failure.summary()}"


class CdcFailureNotifier(BaseNotifier):
    """Logs :func:`failure_message` for a failed CDC task and appends it, with the time, to ``path`` (templated;
    ``~`` expanded, folders made) when given.

    :param path: a local file that collects the messages, one block per failure (None: log only)
    """

    template_fields: Sequence[str] = ("path",)

    def __init__(self, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.path = None if path is None else str(path)

    def notify(self, context: Any) -> None:
        self.send(failure_message(context), context)

    def send(self, message: str, context: Any) -> None:
        """Deliver ``message``: log it, and append it to ``path``. Override to send it elsewhere."""
        self.log.error("%s", message)
        if not self.path:
            return
        target = Path(self.path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        with target.open("a", encoding="utf-8") as out:
            out.write(f"{stamp} {message}\n")
