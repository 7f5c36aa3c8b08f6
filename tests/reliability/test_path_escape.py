"""Staged batches and the file sink stay under their root, whatever names the data brings (``../``, absolute
paths, symlinks).

Table and schema names come from the source database, so they are data, not config: a PostgreSQL table may be
called ``../../etc`` or ``/etc``. Staging turns every name into one safe file-name component; the Delta Lake sink and
the Parquet change log refuse names that are no folder name, with a terminal error naming the table. Each case then
checks the directory beside the root: nothing was written there.

Staging also hashes an id that is exactly ``..``, refuses a local folder that resolves outside its root (a planted
symlink), and reads only files of the batch's own folder (an edited manifest names nothing else). The file sinks
refuse a local path that resolves outside their root the same way (a terminal error naming the path and the sink).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cdc_testing import batch_of, item

from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
from airflow_provider_cdc.connectors.delta.parquet_log import ParquetChangeLogSink
from airflow_provider_cdc.connectors.delta.sink import DeltaSink
from airflow_provider_cdc.errors import CdcError, SinkError, is_terminal
from airflow_provider_cdc.staging import BatchStore
from airflow_provider_cdc.tables import Column, TableSchema

ESCAPING_NAMES = ["../../outside/x", "..", "/etc/passwd", "/outside", "a/../../outside"]


def table(name: str, schema: str = "public") -> TableSchema:
    return TableSchema(schema, name, (Column("id", "bigint", "integer", primary_key=True), Column("v", "text")),
                       "postgresql")


def one_row(schema: TableSchema, source_id: str = "src"):
    return batch_of([("c", 1, item(1, v="a"))], schema, source_id=source_id)


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): the root the product is given, and a directory beside it that must stay empty."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def written_outside(tmp_path: Path, root: Path) -> list[str]:
    """Every path under ``tmp_path`` that is not under ``root`` (the directories themselves aside)."""
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                  if p.is_file() and not p.resolve().is_relative_to(root.resolve()))


# --------------------------------------------------------------------------------------------------- staging


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_staging_keeps_table_and_schema_names_inside_the_batch_folder(name, roots, tmp_path):
    root, _ = roots
    store = BatchStore(f"file://{root}")
    uri = store.write(one_row(table(name, schema=name)))
    assert Path(uri.removeprefix("file://")).resolve().is_relative_to(root.resolve())
    assert BatchStore.read(uri).change_count == 1
    assert written_outside(tmp_path, root) == []


@pytest.mark.parametrize("run_id", ["../../outside/run", "/outside/run", ".."])
def test_staging_keeps_run_pointers_inside_the_root(run_id, roots, tmp_path):
    root, _ = roots
    store = BatchStore(f"file://{root}")
    uri = store.write(one_row(table("t")))
    store.remember_run("src", run_id, uri)
    assert store.manifest_for_run("src", run_id) == uri
    assert written_outside(tmp_path, root) == []


def test_staging_never_uses_dot_dot_as_a_folder(roots, tmp_path):
    root, _ = roots
    BatchStore(f"file://{root}").write(one_row(table("t"), source_id=".."))
    assert written_outside(tmp_path, root) == []


def test_staging_refuses_a_symlink_that_leads_out_of_the_root(roots, tmp_path):
    root, outside = roots
    (root / "src").symlink_to(outside, target_is_directory=True)
    try:
        BatchStore(f"file://{root}").write(one_row(table("t")))
    except CdcError as exc:
        assert "src" in str(exc)
    assert written_outside(tmp_path, root) == []


def test_a_manifest_naming_a_file_outside_its_batch_is_refused(roots):
    root, outside = roots
    store = BatchStore(f"file://{root}")
    uri = store.write(one_row(table("t")))
    manifest_path = Path(uri.removeprefix("file://"))
    manifest = json.loads(manifest_path.read_text())
    staged = manifest_path.parent / manifest["files"]["public.t"]
    (outside / "planted.parquet").write_bytes(staged.read_bytes())
    manifest["files"]["public.t"] = "../../../outside/planted.parquet"
    manifest_path.write_text(json.dumps(manifest))
    try:
        BatchStore.read(uri)
    except CdcError as exc:
        assert "planted.parquet" in str(exc)
        return
    raise AssertionError("a manifest read a table file outside its batch folder")


# ----------------------------------------------------------------------------- the file sink (Delta, Parquet log)


def file_sink(kind: str, root: Path, target_schema: str = "public"):
    if kind == "delta":
        return DeltaSink(str(root), sink_id="lake", target_schema=target_schema, options=DeltaSinkOptions())
    return ParquetChangeLogSink(str(root), sink_id="lake", target_schema=target_schema,
                                options=DeltaSinkOptions(format="parquet"))


@pytest.mark.parametrize("kind", ["delta", "parquet"])
@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_the_file_sink_refuses_table_names_that_leave_its_root(kind, name, roots, tmp_path):
    root, _ = roots
    sink = file_sink(kind, root)
    with pytest.raises(SinkError) as refused:
        sink.apply(one_row(table(name)))
    assert name in str(refused.value) and is_terminal(refused.value), str(refused.value)
    assert written_outside(tmp_path, root) == []


@pytest.mark.parametrize("kind", ["delta", "parquet"])
@pytest.mark.parametrize("target_schema", ["../../outside", "/outside", ".."])
def test_the_file_sink_refuses_a_target_schema_that_leaves_its_root(kind, target_schema, roots, tmp_path):
    root, _ = roots
    with pytest.raises(SinkError) as refused:
        file_sink(kind, root, target_schema).apply(one_row(table("t")))
    assert target_schema in str(refused.value) and is_terminal(refused.value), str(refused.value)
    assert written_outside(tmp_path, root) == []


@pytest.mark.parametrize("kind", ["delta", "parquet"])
def test_the_file_sink_refuses_a_symlink_that_leads_out_of_its_root(kind, roots, tmp_path):
    root, outside = roots
    (root / "public").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SinkError) as refused:
        file_sink(kind, root).apply(one_row(table("t")))
    message = str(refused.value)
    assert is_terminal(refused.value) and "'lake'" in message, message
    assert f"{root / 'public' / 't'} resolves to {outside.resolve() / 't'}" in message, message
    assert written_outside(tmp_path, root) == []
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("kind", ["delta", "parquet"])
def test_the_file_sink_follows_a_symlink_that_stays_inside_its_root(kind, roots, tmp_path):
    root, _ = roots
    (root / "lake_public").mkdir()
    (root / "public").symlink_to(root / "lake_public", target_is_directory=True)
    assert file_sink(kind, root).apply(one_row(table("t"))).applied
    assert list((root / "lake_public" / "t").iterdir()) and written_outside(tmp_path, root) == []


@pytest.mark.parametrize(("kind", "own_folder"), [("delta", "_cdc_ledger"), ("parquet", "_cdc_manifests")])
def test_the_file_sink_refuses_its_own_folder_linked_out_of_its_root(kind, own_folder, roots, tmp_path):
    """The sink's own tables (Delta) and manifests (Parquet log) sit under the root too. Delta joins the ledger's
    path when the sink is made, before any sink name is at hand: the error names the path, and is terminal."""
    root, outside = roots
    (root / own_folder).symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError if kind == "delta" else SinkError) as refused:
        file_sink(kind, root).apply(one_row(table("t")))
    assert f"{root / own_folder}" in str(refused.value) and "outside the sink root" in str(refused.value)
    assert is_terminal(refused.value), str(refused.value)
    assert written_outside(tmp_path, root) == [] and list(outside.iterdir()) == []
