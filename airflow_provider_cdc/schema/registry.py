"""The schema registry: every version of every captured table, one subject per source table.

A subject is ``<source_id>.<schema>.<table>``. Each version is an Avro record schema (:mod:`.avro`) of the source
table as the source declared it, with a version number (1, 2, ... per subject), an id (content-addressed, as in a
Confluent registry: the same schema under two subjects has the same id), Avro's fingerprint, the time, and the
position (``seq`` and the source's own position text) at which it took effect.

Where versions live: in the **sink**, beside the ledger, written in the same transaction as the batch that brought
them (:mod:`airflow_provider_cdc.connectors.postgres.registry`, :mod:`airflow_provider_cdc.connectors.delta.registry`).
The registry can then never disagree with what the sink applied: a crash before the commit leaves neither the data
nor the version, and a replay registers the identical schema again, which returns the existing version. A registry in
Airflow Variables or a separate service would need a second commit, and a crash between the two would leave it
ahead of or behind the sink.

This module is the pure part: :class:`SchemaVersion` and :class:`Registry`, a view over the versions a sink read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from airflow_provider_cdc.schema.avro import AvroDoc, avro_schema, fingerprint, schema_key
from airflow_provider_cdc.tables import TableSchema

VersionStatus = Literal["applied", "held", "accepted", "ignored"]
"""``applied``: the sink follows it (compatible, or the first version); ``held``: refused, its table is held;
``accepted``: refused, then accepted with ``schema accept``; ``ignored``: the policy kept the sink's columns."""

FOLLOWED = frozenset({"applied", "accepted", "ignored"})


def subject_of(source_id: str, table: str) -> str:
    """The subject of source table ``table`` (``schema.table``)."""
    return f"{source_id}.{table}"


def split_subject(subject: str) -> tuple[str, str]:
    """``(source_id, "schema.table")`` of a subject. Source ids have no dots, so the first dot separates them."""
    source_id, dot, table = subject.partition(".")
    if not dot or "." not in table:
        raise ValueError(f"{subject!r} is not a subject; write <source_id>.<schema>.<table>")
    return source_id, table


@dataclasses.dataclass(frozen=True)
class SchemaVersion:
    """One registered version of a subject.

    ``table`` is the source table this version describes; ``sink_table`` is what the sink follows after it (the
    same under ``evolve``; the sink's own columns under ``ignore``; the union under ``lenient``)."""

    subject: str
    version: int
    schema: AvroDoc
    table: TableSchema
    sink_table: TableSchema
    seq: int
    position: str | None = None
    status: VersionStatus = "applied"
    mode: str = "evolve"
    compatibility: dict[str, Any] | None = None
    batch_id: str | None = None
    registered_at: str = ""

    @property
    def key(self) -> str:
        return schema_key(self.schema)

    @property
    def id(self) -> str:
        """Content-addressed id: the first 16 hex digits of the schema's SHA-256 (:func:`.avro.schema_key`)."""
        return self.key[:16]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.schema)

    @property
    def source_table(self) -> str:
        return split_subject(self.subject)[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject, "version": self.version, "id": self.id, "fingerprint": self.fingerprint,
            "schema": self.schema, "table": self.table.to_dict(), "sink_table": self.sink_table.to_dict(),
            "seq": self.seq, "position": self.position, "status": self.status, "mode": self.mode,
            "compatibility": self.compatibility, "batch_id": self.batch_id, "registered_at": self.registered_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SchemaVersion:
        return cls(
            subject=data["subject"], version=int(data["version"]), schema=dict(data["schema"]),
            table=TableSchema.from_dict(data["table"]), sink_table=TableSchema.from_dict(data["sink_table"]),
            seq=int(data["seq"]), position=data.get("position"), status=data.get("status", "applied"),
            mode=data.get("mode", "evolve"), compatibility=data.get("compatibility"),
            batch_id=data.get("batch_id"), registered_at=str(data.get("registered_at") or ""),
        )


def now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class Registry:
    """The versions of one source's subjects, as a sink read them; new versions are added in memory, and the sink
    stores :attr:`changed` in the batch's transaction."""

    def __init__(self, versions: Iterable[SchemaVersion] = ()) -> None:
        self._by_subject: dict[str, list[SchemaVersion]] = {}
        for version in sorted(versions, key=lambda v: (v.subject, v.version)):
            self._by_subject.setdefault(version.subject, []).append(version)
        self.changed: dict[tuple[str, int], SchemaVersion] = {}

    def subjects(self) -> list[str]:
        return sorted(self._by_subject)

    def versions(self, subject: str) -> list[SchemaVersion]:
        return list(self._by_subject.get(subject, []))

    def latest(self, subject: str) -> SchemaVersion | None:
        versions = self._by_subject.get(subject)
        return versions[-1] if versions else None

    def latest_followed(self, subject: str) -> SchemaVersion | None:
        """The newest version the sink follows (not held)."""
        for version in reversed(self._by_subject.get(subject, [])):
            if version.status in FOLLOWED:
                return version
        return None

    def find(self, subject: str, key: str) -> SchemaVersion | None:
        for version in self._by_subject.get(subject, []):
            if version.key == key:
                return version
        return None

    def document(self, subject: str, table: TableSchema, previous: TableSchema | None) -> AvroDoc:
        latest = self.latest(subject)
        source_id = subject.partition(".")[0]
        return avro_schema(table, source_id=source_id, previous=previous,
                           previous_doc=latest.schema if latest is not None else None)

    def add(self, version: SchemaVersion) -> SchemaVersion:
        """Add a new version, or replace one of the same number (a status change); marks it for storing."""
        versions = self._by_subject.setdefault(version.subject, [])
        for index, existing in enumerate(versions):
            if existing.version == version.version:
                versions[index] = version
                break
        else:
            expected = versions[-1].version + 1 if versions else 1  # a subject starts at version 1
            if version.version != expected:
                if not versions:
                    del self._by_subject[version.subject]  # leave no empty subject behind
                raise ValueError(f"{version.subject}: version {version.version} after {expected - 1}")
            versions.append(version)
        self.changed[(version.subject, version.version)] = version
        return version

    def next_version(self, subject: str) -> int:
        latest = self.latest(subject)
        return 1 if latest is None else latest.version + 1

    def in_effect(self) -> dict[str, int]:
        """Subject → the version the sink follows (what the ledger row records as ``schema_versions``)."""
        out = {}
        for subject in self._by_subject:
            followed = self.latest_followed(subject)
            if followed is not None:
                out[subject] = followed.version
        return out
