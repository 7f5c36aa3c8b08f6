"""Compatibility of a new schema version with the ones before it, with Confluent Schema Registry's levels.

The verdict of each reader/writer pair comes from the Apache Avro library's own checker
(``avro.compatibility.ReaderWriterCompatibilityChecker``), which implements the same rules as Confluent's:

=====================  =======================================================================================
level                  the new schema must...
=====================  =======================================================================================
BACKWARD               read data written with the latest version (new = reader, latest = writer)
BACKWARD_TRANSITIVE    read data written with every earlier version
FORWARD                be readable by the latest version (latest = reader, new = writer)
FORWARD_TRANSITIVE     be readable by every earlier version
FULL                   both BACKWARD and FORWARD against the latest version
FULL_TRANSITIVE        both, against every earlier version
NONE                   nothing: every change is compatible
=====================  =======================================================================================

So, under BACKWARD (the default, as in Confluent): adding a nullable column or one with a default, dropping a
column, renaming one (the new field has the old name as an alias) and widening int to long are compatible; adding a
NOT NULL column without a default, narrowing long to int and changing a string to an int are not.

A result names each incompatible field (by its source column), the version it clashes with, and Avro's reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityResult, SchemaCompatibilityType
from avro.schema import RecordSchema

from airflow_provider_cdc.schema.avro import column_of, parse

CompatibilityLevel = Literal[
    "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE",
]
LEVELS: tuple[str, ...] = get_args(CompatibilityLevel)
DEFAULT_LEVEL: CompatibilityLevel = "BACKWARD"


@dataclasses.dataclass(frozen=True)
class Incompatibility:
    """One reason a schema is not compatible: the column, the version it clashes with, which way it fails."""

    column: str | None
    against_version: int | None
    direction: Literal["backward", "forward"]
    kind: str
    reason: str

    def describe(self) -> str:
        where = f"column {self.column!r}" if self.column else "the record"
        against = f" version {self.against_version}" if self.against_version is not None else " the latest version"
        if self.direction == "backward":
            how = f"the new schema cannot read data written with{against}"
        else:
            how = f"data written with the new schema cannot be read by{against}"
        return f"{where}: {how} ({self.reason})"


@dataclasses.dataclass(frozen=True)
class CompatibilityResult:
    level: str
    compatible: bool
    problems: tuple[Incompatibility, ...] = ()

    def describe(self) -> str:
        if self.compatible:
            return f"compatible ({self.level})"
        return f"not {self.level} compatible: " + "; ".join(problem.describe() for problem in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "compatible": self.compatible,
                "problems": [dataclasses.asdict(problem) | {"message": problem.describe()}
                             for problem in self.problems]}


def _pair(reader: Mapping[str, Any], writer: Mapping[str, Any], direction: Literal["backward", "forward"],
          against: int | None) -> list[Incompatibility]:
    reader_schema, writer_schema = parse(reader), parse(writer)
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader_schema, writer_schema)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    problems = []
    attributed: set[str] = set()
    if isinstance(reader_schema, RecordSchema) and isinstance(writer_schema, RecordSchema):
        # The checker reports sets of messages and locations without pairing them, and a field whose writer type
        # is a union (a nullable column) fails at the root, with no location below it. So each reader field is
        # checked on its own (a record of that one field, by Avro's own record rule) to name its column and keep
        # its reasons apart from another field's.
        for field in reader.get("fields", []):
            alone = parse({**reader, "fields": [field]})
            assert isinstance(alone, RecordSchema)
            found = ReaderWriterCompatibilityChecker().check_reader_writer_record_fields(alone, writer_schema, ["/"])
            if found.compatibility is SchemaCompatibilityType.compatible:
                continue
            problems.append(_problem(column_of(field), found, direction, against))
            attributed |= found.messages
    rest = result.messages - attributed
    if rest or not problems:  # about the record itself (its name), or nothing a field explains
        record = SchemaCompatibilityResult(result.compatibility, result.incompatibilities, rest or result.messages)
        problems.insert(0, _problem(None, record, direction, against))
    return problems


def _problem(column: str | None, found: SchemaCompatibilityResult, direction: Literal["backward", "forward"],
             against: int | None) -> Incompatibility:
    messages = sorted(found.messages) or ["incompatible"]
    kinds = sorted({kind.value for kind in found.incompatibilities}) or ["incompatible"]
    return Incompatibility(column, against, direction, ",".join(kinds), "; ".join(_explain(kinds, messages)))


def _explain(kinds: Sequence[str], messages: Sequence[str]) -> list[str]:
    out = []
    for message in messages:
        if "reader_field_missing_default_value" in kinds and " " not in message:
            out.append(f"field {message} has no default value")
        elif message.endswith("writer type: null"):
            out.append(f"{message}, i.e. NULL values for a NOT NULL column")
        else:
            out.append(message)
    return out


def check(
    new: Mapping[str, Any],
    previous: Sequence[tuple[int, Mapping[str, Any]]],
    level: str = DEFAULT_LEVEL,
) -> CompatibilityResult:
    """Whether ``new`` is compatible at ``level`` with ``previous`` (``(version, schema)`` pairs, oldest first)."""
    if level not in LEVELS:
        raise ValueError(f"unknown compatibility level {level!r}; one of {', '.join(LEVELS)}")
    if level == "NONE" or not previous:
        return CompatibilityResult(level, True)
    against = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    problems: list[Incompatibility] = []
    for version, old in against:
        if level.startswith(("BACKWARD", "FULL")):
            problems += _pair(new, old, "backward", version)
        if level.startswith(("FORWARD", "FULL")):
            problems += _pair(old, new, "forward", version)
    return CompatibilityResult(level, not problems, tuple(problems))
