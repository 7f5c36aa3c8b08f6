"""Local files under a root the product was given: where a path really leads, and writing a file whole.

Staging and the file sinks check each name that comes from data where they join it (no ``..``, no ``/``), but a
symbolic link already inside the root (planted, or left by an admin) is a folder name like any other and leads
anywhere: only the resolved path tells. Object stores have no links and their PUT is atomic, so both helpers are for
local paths only.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from typing import BinaryIO


def resolved_outside(root: str, path: str) -> str | None:
    """Where ``path`` really leads when that is outside ``root`` (a symbolic link on the way), else None.

    Components that do not exist yet resolve as written, so a path can be checked before its folders are made."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real if os.path.commonpath([real_root, real]) != real_root else None


def write_whole(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through a temporary file in its folder and a rename, so that a reader sees the old file or
    the new one, never part of one (two runs that captured one range stage it in one folder: one may rewrite a
    file while the other's load reads it).

    The temporary name is hidden (a leading dot), unique (two writers of one file never share it), never named by
    a manifest, and removed when the write fails. No fsync: this guards readers and killed processes, not a power
    cut, and a staged batch can be captured again."""
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        # O_EXCL: never write through a file (or a link) that is already there; 0o666 keeps the umask's modes.
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
