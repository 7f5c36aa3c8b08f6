"""Where the file sink's tables live, and the few Delta Lake operations every part of it shares.

The root is a URL (``file:///data/lake``, ``s3://bucket/lake``, ``gs://bucket/lake``) or a plain local path. Local
roots are handed to delta-rs as absolute paths; object-store URLs go as they are, with the connector's
``storage_options``. Tables sit at ``<root>/<target_schema>/<table>``; the sink's own tables (``_cdc_ledger``,
``_cdc_held``, ``_cdc_schemas``, ``_cdc_held_changes``, ``_cdc_quarantine``) directly under the root, where no target
schema can be (names in ``_cdc_*`` are refused). Under a local root, a path must also resolve inside it: a symbolic
link in the root (a schema folder linked elsewhere) would otherwise lead the writes out.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from airflow_provider_cdc.local_files import resolved_outside


class PathOutsideRoot(ValueError):
    """A local path under the sink root that resolves outside it. Terminal: retrying follows the same link. The sink
    turns it into a ``SinkError`` naming itself where it joins a table's path; where a bookkeeping table's path is
    joined (when the sink is made) it escapes as it is, naming the path."""

    terminal = True


def normalise_root(root: str) -> str:
    """``file:///x`` and relative paths become absolute local paths; other URLs stay (without a trailing ``/``)."""
    root = root.strip()
    if not root:
        raise ValueError("the file sink needs a root URL or path")
    parts = urlsplit(root)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {root!r} names a host; use file:///absolute/path")
        return os.path.abspath(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # s3://, gs://, az://... (a single letter is a Windows drive)
        return root.rstrip("/")
    return os.path.abspath(root)


def is_local(root: str) -> bool:
    return "://" not in root


def join(root: str, *parts: str) -> str:
    """``root`` and ``parts`` as one path; ValueError when a part is no folder name, ``PathOutsideRoot`` when the
    local path leads out of ``root`` (for a table's path the sinks turn both into a terminal ``SinkError``)."""
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part:
            raise ValueError(f"{part!r} cannot be a folder name under the sink root")
    if not is_local(root):
        return "/".join([root.rstrip("/"), *parts])  # object stores have no links
    path = os.path.join(root, *parts)
    real = resolved_outside(root, path)
    if real is not None:
        raise PathOutsideRoot(f"{path} resolves to {real}, outside the sink root {os.path.realpath(root)} (a "
                              "symbolic link?); remove the link, or give the sink another root")
    return path


def open_table(uri: str, storage_options: dict[str, str]) -> DeltaTable | None:
    """The Delta table at ``uri``, or None when there is none."""
    if is_local(uri) and not os.path.isdir(os.path.join(uri, "_delta_log")):
        return None
    if not DeltaTable.is_deltatable(uri, storage_options=storage_options or None):
        return None
    return DeltaTable(uri, storage_options=storage_options or None)


def has_rows(table: DeltaTable | None) -> bool:
    return table is not None and table.count() > 0


def arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())


def commit_properties(app_transactions: dict[str, int], **metadata: Any) -> CommitProperties:
    return CommitProperties(
        app_transactions=[Transaction(app_id, version) for app_id, version in app_transactions.items()] or None,
        custom_metadata={key: str(value) for key, value in metadata.items()} or None,
    )


def empty_commit(table: DeltaTable, app_transactions: dict[str, int], **metadata: Any) -> None:
    """A commit that changes no row, to record application transaction versions (delta-rs skips empty merges)."""
    write_deltalake(table, arrow_schema(table).empty_table(), mode="append",
                    commit_properties=commit_properties(app_transactions, **metadata))


def reset_app_transactions(table: DeltaTable, app_ids: list[str], **metadata: Any) -> None:
    """Set the versions of ``app_ids`` back to 0 (Delta keeps the last one of each id; it may go down)."""
    stale = {app_id: 0 for app_id in app_ids if (table.transaction_version(app_id) or 0) > 0}
    if stale:
        empty_commit(table, stale, **metadata)
