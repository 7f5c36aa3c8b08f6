"""Errors of the rule engine that stop a batch (a row's own failure is a :class:`~.engine.RowFailure` instead)."""

from __future__ import annotations

from airflow_provider_cdc.errors import CdcError


class RuleConfigError(CdcError):
    """A rule that cannot run at all: bad config, or a table it cannot be applied to (a rename of a column the
    table lacks, a drop of a key column). Terminal: fix ``transformations.yaml`` (or the secret it names) and rerun;
    the batch's position has not moved, so nothing is lost."""

    terminal = True

    def __init__(self, message: str, *, rule_id: str | None = None, table: str | None = None,
                 field: str | None = None) -> None:
        self.rule_id, self.table, self.field = rule_id, table, field
        super().__init__(message)


def problem(rule_id: str, reason: str, *, key: str | None = None, field: str | None = None,
            table: str | None = None) -> str:
    """One problem line: ``rule 'x', table public.users, key expression, field 'email': reason``."""
    where = [f"rule {rule_id!r}"]
    if table:
        where.append(f"table {table}")
    if key:
        where.append(f"key {key}")
    if field is not None:
        where.append(f"field {field!r}")
    return f"{', '.join(where)}: {reason}"


class JoinLookupError(CdcError):
    """A join rule's reference lookup failed (the reference database is down, the table is missing...). Nothing of
    the batch was loaded and its position did not move; retried unless the cause is terminal (a missing driver, an
    unknown connector)."""

    def __init__(self, message: str, *, rule_id: str, table: str, terminal: bool = False) -> None:
        self.rule_id, self.table = rule_id, table
        self.terminal = terminal
        super().__init__(message)
