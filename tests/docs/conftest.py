"""The documentation in docs/: its generator script, imported from its path (docs/ is not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="session")
def reference_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_config_reference", DOCS / "generate_config_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
