"""Staged batches on ObjectStoragePath: round trip, manifest as commit marker, run pointers, retention, and every
file appearing whole (a rewrite of a batch never shows a reader part of a file)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_provider_cdc.errors import StagingError
from airflow_provider_cdc.events import ChangeBatch, TableChangesBuilder
from airflow_provider_cdc.staging import BatchStore
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

USERS = TableSchema("public", "users", (Column("id", "bigint", "integer", False, True), Column("email", "text")))


def sample_batch() -> ChangeBatch:
    builder = TableChangesBuilder(USERS)
    builder.append("c", 1, 1000, "7", "0/10", ["1", "a@x"])
    builder.append("u", 2, 1001, "8", "0/20", ["1", None], before=["1", "a@x"], unchanged=["email"])
    builder.append("d", 3, 1002, "9", "0/30", ["1", None])
    return ChangeBatch(
        source_id="s", batch_id="s:0/10-0/30", position_from={"lsn": "0/1", "seq": 0},
        position_to={"lsn": "0/30", "seq": 3}, seq_from=1, seq_to=3, tables={"public.users": builder.finish()},
        schemas={"public.users": USERS}, schema_changes=[SchemaChange("public.users", 0, USERS)],
        database="shop",
    )


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_round_trip_keeps_events_schemas_and_positions(tmp_path, fmt):
    store = BatchStore(f"file://{tmp_path}", fmt=fmt)
    batch = sample_batch()
    uri = store.write(batch)
    assert uri.endswith("/manifest.json") and uri.startswith("file://")
    back = BatchStore.read(uri)
    assert [e.to_dict() for e in back.events()] == [e.to_dict() for e in batch.events()]
    assert back.tables["public.users"].equals(batch.tables["public.users"])
    assert back.schemas == batch.schemas and back.schema_changes == batch.schema_changes
    assert (back.position_to, back.batch_id, back.database) == (batch.position_to, batch.batch_id, "shop")
    manifest = BatchStore.read_manifest(uri)
    assert manifest["counts"] == {"public.users": {"c": 1, "u": 1, "d": 1, "s": 1}}
    assert manifest["format"] == fmt and manifest["change_count"] == 3


def test_without_a_manifest_there_is_no_batch(tmp_path):
    store = BatchStore(f"file://{tmp_path}")
    uri = store.write(sample_batch())
    os.remove(uri.removeprefix("file://"))
    with pytest.raises(StagingError, match="manifest not found.*clear the run's capture task"):
        BatchStore.read(uri)


def test_missing_table_file_is_reported(tmp_path):
    store = BatchStore(f"file://{tmp_path}")
    uri = store.write(sample_batch())
    folder = os.path.dirname(uri.removeprefix("file://"))
    os.remove(os.path.join(folder, "public.users.parquet"))
    with pytest.raises(StagingError, match="table file public.users.parquet is missing"):
        BatchStore.read(uri)


def test_run_pointer_and_retention(tmp_path):
    store = BatchStore(f"file://{tmp_path}")
    uri = store.write(sample_batch())
    store.remember_run("s", "manual__2024-01-01T00:00:00+00:00", uri)
    assert store.manifest_for_run("s", "manual__2024-01-01T00:00:00+00:00") == uri
    assert store.manifest_for_run("s", "other") is None
    assert store.purge("s", older_than_hours=1) == 0
    old = time.time() - 3 * 3600
    for root, _dirs, files in os.walk(tmp_path):
        for name in files:
            os.utime(os.path.join(root, name), (old, old))
    assert store.purge("s", older_than_hours=1) == 1
    assert store.manifest_for_run("s", "manual__2024-01-01T00:00:00+00:00") is None


def test_default_root_follows_airflow_home_or_cdc_staging_url(monkeypatch, tmp_path):
    monkeypatch.delenv("CDC_STAGING_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert BatchStore().root_url == f"file://{tmp_path}/cdc_staging"
    monkeypatch.setenv("CDC_STAGING_URL", "file:///data/cdc/")
    assert BatchStore().root_url == "file:///data/cdc"
    with pytest.raises(ValueError, match="staging format"):
        BatchStore(fmt="csv")


# --- every staged file appears whole (two runs that captured one range stage it in one folder) -------------------


def folder_of(uri: str) -> str:
    return os.path.dirname(uri.removeprefix("file://"))


def files_of(folder: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in Path(folder).iterdir()}


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_reader_during_a_rewrite_reads_the_whole_batch(tmp_path, monkeypatch, fmt):
    """The rewrite is stopped where it writes the table file; a load reading the batch then gets every change."""
    from airflow_provider_cdc import staging

    store = BatchStore(f"file://{tmp_path}", fmt=fmt)
    uri = store.write(sample_batch())
    seen: list[int] = []
    owner, name = (staging.pq, "write_table") if fmt == "parquet" else (staging.feather, "write_feather")
    original = getattr(owner, name)

    def read_then_write(*args, **kwargs):
        seen.append(BatchStore.read(uri).change_count)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, read_then_write)
    assert store.write(sample_batch()) == uri
    assert seen == [3]
    assert sorted(os.listdir(folder_of(uri))) == ["manifest.json", f"public.users.{fmt}"]  # no temporary name left


def test_a_failed_rewrite_leaves_the_batch_as_it_was_and_no_temporary_file(tmp_path):
    store = BatchStore(f"file://{tmp_path}")
    uri = store.write(sample_batch())
    before = files_of(folder_of(uri))
    unwritable = sample_batch()
    union = pa.UnionArray.from_sparse(pa.array([0, 1], type=pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])])
    unwritable.tables["public.users"] = pa.table({"u": union})  # Parquet has no union type
    with pytest.raises(pa.ArrowNotImplementedError, match="union"):
        store.write(unwritable)
    assert files_of(folder_of(uri)) == before
    assert BatchStore.read(uri).change_count == 3


def test_a_staged_file_replaces_a_link_in_its_place_instead_of_writing_through_it(tmp_path):
    store = BatchStore(f"file://{tmp_path / 'root'}")
    uri = store.write(sample_batch())
    planted = tmp_path / "elsewhere.parquet"
    planted.write_bytes(b"not staging's")
    table_file = os.path.join(folder_of(uri), "public.users.parquet")
    os.remove(table_file)
    os.symlink(planted, table_file)
    store.write(sample_batch())
    assert planted.read_bytes() == b"not staging's"
    assert not os.path.islink(table_file) and BatchStore.read(uri).change_count == 3


def test_staged_files_and_run_pointers_get_the_modes_of_the_umask(tmp_path):
    store = BatchStore(f"file://{tmp_path}")
    uri = store.write(sample_batch())
    store.remember_run("s", "run", uri)
    umask = os.umask(0)
    os.umask(umask)
    for root, _dirs, files in os.walk(tmp_path):
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o666 & ~umask, name
