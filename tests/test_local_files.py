"""Local files under a root: where a path really leads (symbolic links), and a file written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_cdc.local_files import resolved_outside, write_whole


def test_a_path_resolves_through_links_and_may_not_exist_yet(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "inner").symlink_to(root / "real", target_is_directory=True)
    (root / "outer").symlink_to(outside, target_is_directory=True)
    assert resolved_outside(str(root), str(root / "not" / "made" / "yet")) is None
    assert resolved_outside(str(root), str(root / "inner" / "t")) is None
    assert resolved_outside(str(root), str(root / "outer" / "t")) == str(outside.resolve() / "t")
    assert resolved_outside(str(root), str(root / ".." / "outside")) == str(outside.resolve())
    assert resolved_outside(str(tmp_path / "roo"), str(root)) == str(root.resolve())  # a prefix is no parent


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
    target = tmp_path / "file.json"
    write_whole(str(target), lambda handle: handle.write(b"old"))

    def half_then_fail(handle) -> None:
        handle.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_whole(str(target), half_then_fail)
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["file.json"]


def test_a_write_replaces_the_file_whole(tmp_path: Path):
    target = tmp_path / "file.json"
    target.write_bytes(b"a much longer old content")
    write_whole(str(target), lambda handle: handle.write(b"new"))
    assert target.read_bytes() == b"new" and [path.name for path in tmp_path.iterdir()] == ["file.json"]
