"""Staged batches on ``ObjectStoragePath``: one file per table plus a JSON manifest, written last.

Staged batches are the hand-over between tasks that may run on different workers (Celery, Kubernetes), so they
live on object storage (``CDC_STAGING_URL``: ``s3://…``, ``gs://…``, or the default ``file://$AIRFLOW_HOME/
cdc_staging``), never in a worker's temp folder or in XCom. XCom carries only the manifest URI and counts.

The manifest is the commit marker (dlt writes its load packages the same way): table files first, manifest last,
so a reader sees a whole batch or none. Each file appears whole: on a local file system it is written under a
hidden temporary name and renamed into place, on an object store its PUT is atomic. Two runs that captured the same
range stage it in the same folder, so one may rewrite a batch while the other's load reads it: the load still reads
whole files of identical content (the batch id fixes the range). Layout::

    <root>/<source_id>/<batch key>/manifest.json
    <root>/<source_id>/<batch key>/<schema>.<table>.parquet
    <root>/<source_id>/<batch key>/<stage>/manifest.json   # the batch as a stage (transform...) made it
    <root>/<source_id>/runs/<run key>.json      # which manifest a DAG run captured (clear → same range)
    <root>/<source_id>/snapshot-ranges/<plan>/   # chunks of a snapshot read in key ranges (PostgreSQL)
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from typing import IO, Any

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from airflow_provider_cdc.errors import StagingError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.local_files import resolved_outside, write_whole
from airflow_provider_cdc.tables import SchemaChange, TableSchema

log = logging.getLogger("airflow_provider_cdc.staging")

MANIFEST = "manifest.json"
RANGES_DIR = "snapshot-ranges"  # chunks of snapshots read in key ranges
# A batch's quarantined changes, beside its tables (a name no table file can have: those are schema.table).
QUARANTINE_FILE = "_cdc_quarantine"
MANIFEST_VERSION = 1
_SUFFIX = {"parquet": ".parquet", "arrow": ".arrow"}


def _object_path(uri: str):
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri)


def default_staging_url() -> str:
    url = os.environ.get("CDC_STAGING_URL")
    if url:
        return url
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return f"file://{os.path.abspath(home)}/cdc_staging"


def _key(text: str) -> str:
    """A file-system- and object-store-safe name for a batch id, run id, source id or table (kept readable).

    Where characters had to be replaced, a hash of the original follows, so names that differ only in those
    characters (``клиенты`` and ``заказы``, ``Users`` and ``users`` on a case-insensitive store) stay apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    if safe == text and text.lower() == text and safe.strip(".") != "":
        return safe  # '.', '..' (a folder's own names) and '' always get the hash
    return f"{safe}~{hashlib.sha1(text.encode()).hexdigest()[:10]}"


class BatchStore:
    """Writes and reads staged batches under one root URL."""

    def __init__(self, root: str | None = None, *, fmt: str = "parquet") -> None:
        if fmt not in _SUFFIX:
            raise ValueError(f"staging format must be one of {sorted(_SUFFIX)}, not {fmt!r}")
        self.root_url = (root or default_staging_url()).rstrip("/")
        self.fmt = fmt

    def _root(self):
        return _object_path(self.root_url)

    def batch_dir(self, source_id: str, batch_id: str):
        return self._inside_root(self._root() / _key(source_id) / _key(batch_id))

    def _inside_root(self, path):
        """``path``, checked to resolve inside the root where the store is a local file system: a symlink planted in
        the staging root must not lead writes (or reads) elsewhere. Object stores have no links."""
        root, local = _local_path(self._root()), _local_path(path)
        if root is None or local is None:
            return path
        real = resolved_outside(root, local)
        if real is not None:
            raise StagingError(str(path), f"resolves to {real}, outside the staging root {root} (a symbolic link?); "
                                          "remove the link, or point CDC_STAGING_URL elsewhere")
        return path

    # -- write ----------------------------------------------------------------------------------------------

    def write(self, batch: ChangeBatch, *, stage: str = "capture", extra: dict[str, Any] | None = None) -> str:
        """Stage ``batch`` and return its manifest URI. Rewriting the same batch id replaces it whole."""
        folder = self.batch_dir(batch.source_id, batch.batch_id)
        if stage != "capture":
            folder = self._inside_root(folder / _key(stage))
        folder.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        for qualified, table in batch.tables.items():
            name = _key(qualified) + _SUFFIX[self.fmt]
            # No dictionary pages: change values rarely repeat, and building them doubled the write time. No
            # min/max statistics: nothing reads them, and for a 100 MB value they cost 8x its size in memory.
            _write_file(folder / name,
                        functools.partial(self._write_table, table, use_dictionary=False, write_statistics=False))
            files[qualified] = name
        quarantine_file = None
        if batch.quarantined_count:
            quarantine_file = QUARANTINE_FILE + _SUFFIX[self.fmt]
            _write_file(folder / quarantine_file, functools.partial(self._write_table, batch.quarantine))
        manifest = {
            "version": MANIFEST_VERSION,
            "stage": stage,
            "batch_id": batch.batch_id,
            "source_id": batch.source_id,
            "connector": batch.connector,
            "database": batch.database,
            "position_from": batch.position_from,
            "position_to": batch.position_to,
            "seq_from": batch.seq_from,
            "seq_to": batch.seq_to,
            "change_count": batch.change_count,
            "counts": batch.counts(),
            "format": self.fmt,
            "files": files,
            "quarantine": quarantine_file,
            "quarantined": batch.quarantined_count,
            "schemas": {k: v.to_dict() for k, v in batch.schemas.items()},
            "schema_changes": [c.to_dict() for c in batch.schema_changes],
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            **(extra or {}),
        }
        payload = json.dumps(manifest, indent=1, sort_keys=True).encode()
        _write_file(folder / MANIFEST, lambda fh: fh.write(payload))
        uri = str(folder / MANIFEST)
        log.info("staged batch %s: %d changes in %d tables at %s", batch.batch_id, batch.change_count, len(files), uri)
        return uri

    def _write_table(self, table: pa.Table | None, fh: IO[bytes], **parquet_options: Any) -> None:
        if self.fmt == "parquet":
            pq.write_table(table, fh, compression="zstd", **parquet_options)
        else:
            feather.write_feather(table, fh, compression="lz4")

    # -- read -----------------------------------------------------------------------------------------------

    @staticmethod
    def read_manifest(uri: str) -> dict[str, Any]:
        path = _object_path(uri)
        try:
            with path.open("r") as fh:
                return json.loads(fh.read())
        except FileNotFoundError as exc:
            raise StagingError(
                uri, "manifest not found: the batch was purged or never completed; clear the run's capture task"
            ) from exc
        except (OSError, ValueError) as exc:
            raise StagingError(uri, f"manifest unreadable: {exc}") from exc

    @classmethod
    def read(cls, uri: str) -> ChangeBatch:
        return cls.read_staged(uri)[0]

    @classmethod
    def read_staged(cls, uri: str) -> tuple[ChangeBatch, dict[str, Any]]:
        """The staged batch and its manifest (which also carries what stages added, e.g. ``stage_versions``)."""
        manifest = cls.read_manifest(uri)
        folder = _object_path(uri).parent
        tables: dict[str, pa.Table] = {}
        for qualified, name in manifest["files"].items():
            _plain_name(uri, name)
            try:
                with (folder / name).open("rb") as fh:
                    if manifest["format"] == "parquet":
                        tables[qualified] = pq.read_table(fh)
                    else:
                        tables[qualified] = feather.read_table(fh)
            except FileNotFoundError as exc:
                raise StagingError(uri, f"table file {name} is missing") from exc
        quarantine = None
        if manifest.get("quarantine"):
            _plain_name(uri, manifest["quarantine"])
            try:
                with (folder / manifest["quarantine"]).open("rb") as fh:
                    quarantine = (pq.read_table(fh) if manifest["format"] == "parquet" else feather.read_table(fh))
            except FileNotFoundError as exc:
                raise StagingError(uri, f"quarantine file {manifest['quarantine']} is missing") from exc
        return ChangeBatch(
            source_id=manifest["source_id"],
            batch_id=manifest["batch_id"],
            position_from=manifest["position_from"],
            position_to=manifest["position_to"],
            seq_from=manifest["seq_from"],
            seq_to=manifest["seq_to"],
            tables=tables,
            schemas={k: TableSchema.from_dict(v) for k, v in manifest["schemas"].items()},
            schema_changes=[SchemaChange.from_dict(c) for c in manifest["schema_changes"]],
            connector=manifest.get("connector", ""),
            database=manifest.get("database", ""),
            quarantine=quarantine,
        ), manifest

    # -- runs -----------------------------------------------------------------------------------------------

    def _run_pointer(self, source_id: str, run_id: str):
        return self._root() / _key(source_id) / "runs" / (_key(run_id) + ".json")

    def remember_run(self, source_id: str, run_id: str, manifest_uri: str) -> None:
        """Record which batch a DAG run captured, so that clearing its capture task re-stages the same range."""
        pointer = self._run_pointer(source_id, run_id)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"manifest": manifest_uri}).encode()
        _write_file(pointer, lambda fh: fh.write(payload))

    def manifest_for_run(self, source_id: str, run_id: str) -> str | None:
        pointer = self._run_pointer(source_id, run_id)
        try:
            with pointer.open("r") as fh:
                uri = json.loads(fh.read())["manifest"]
        except FileNotFoundError:
            return None
        return uri if _object_path(uri).exists() else None

    # -- retention ------------------------------------------------------------------------------------------

    @staticmethod
    def _purge_range_plans(folder, cutoff: float) -> int:
        """Staged chunks of ranged snapshots (``connectors/postgres/snapshot_ranges.py``), once no file of a plan was
        written within the retention: the capture reads them for as long as the snapshot emits them."""
        removed = 0
        for plan in folder.iterdir():
            newest = max((_mtime(chunk) for part in plan.iterdir() for chunk in part.iterdir()), default=_mtime(plan))
            if newest < cutoff:
                plan.rmdir(recursive=True)
                removed += 1
        return removed

    def purge(self, source_id: str, older_than_hours: float) -> int:
        """Delete staged batches (and run pointers) older than the retention; returns how many batches went."""
        base = self._root() / _key(source_id)
        if not base.exists():
            return 0
        cutoff = dt.datetime.now(dt.timezone.utc).timestamp() - older_than_hours * 3600
        removed = 0
        for child in base.iterdir():
            if child.name == RANGES_DIR:
                removed += self._purge_range_plans(child, cutoff)
                continue
            if child.name == "runs":
                for pointer in child.iterdir():
                    if _mtime(pointer) < cutoff:
                        pointer.unlink()
                continue
            manifest = child / MANIFEST
            if _mtime(manifest if manifest.exists() else child) < cutoff:
                child.rmdir(recursive=True)
                removed += 1
        if removed:
            log.info("purged %d staged batches of %s older than %sh", removed, source_id, older_than_hours)
        return removed


# How each fsspec store names a file's modification time: local files and gcsfs ``mtime``, s3fs ``LastModified``,
# adlfs ``last_modified``, gcsfs also ``updated`` (ISO text).
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created")


def _local_path(path) -> str | None:
    """The local file-system path of an ``ObjectStoragePath`` on ``file://``; None on an object store."""
    return path.path if path.protocol in ("", "file", "local") else None


def _write_file(path, write: Callable[[IO[bytes]], object]) -> None:
    """Write the staged file ``path`` so that a reader sees it whole or not at all (module docstring)."""
    local = _local_path(path)
    if local is not None:
        write_whole(local, write)
        return
    with path.open("wb") as fh:  # an object store's PUT is atomic: the object appears when the upload completes
        write(fh)


def _plain_name(uri: str, name: Any) -> None:
    """A file a manifest names must be a plain name in the batch's folder (an edited manifest reads nothing else)."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise StagingError(uri, f"the manifest names {name!r}, not a file of its batch's folder")


def _mtime(path) -> float:
    """When ``path`` was last written (seconds since the epoch). Object stores have no folders, so they give a
    prefix no time: a folder without one is as new as its newest file (0 when empty). Were that 0 for every
    batch on S3, retention would purge batches the moment they are committed."""
    info = path.stat()
    for key in _MTIME_KEYS:
        value = info.get(key)
        if value:
            return _timestamp(value)
    if info.get("type") == "directory":
        return max((_mtime(child) for child in path.iterdir()), default=0.0)
    return 0.0


def _timestamp(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return float(value)
