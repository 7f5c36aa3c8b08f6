"""Fixtures for the config tests: connector factories registered for one test.

The loader asks the registry for each connector type's factory. A test that needs a connector with particular
options, capabilities or checks registers a small :class:`ConnectorFactory` of its own under a new type, the way a
connector package would: a ``factory`` module with a ``FACTORY`` (here put straight into ``sys.modules``) and one
entry in :data:`~airflow_provider_cdc.connectors.registry.CONNECTOR_MODULES`.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import airflow_provider_cdc.connectors as connectors_package
from airflow_provider_cdc.connectors import registry
from airflow_provider_cdc.connectors.registry import ConnectorFactory

PACKAGE = "airflow_provider_cdc.connectors"


@pytest.fixture
def register_factory(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ConnectorFactory]:
    """``register_factory(ConnectorFactory(type="x", ...), extra=None)``: the registry serves it for this test."""

    def register(built: ConnectorFactory, extra: str | None = None) -> ConnectorFactory:
        package = f"test_{built.type}"
        module = types.ModuleType(f"{PACKAGE}.{package}.factory")
        module.FACTORY = built  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setitem(registry.CONNECTOR_MODULES, built.type, (package, extra))
        return built

    return register


@pytest.fixture
def connector_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """``connector_package(name, factory_source)``: a real connector package on disk, importable as
    ``airflow_provider_cdc.connectors.<name>``, for imports that fail the way a missing driver makes them fail."""
    root = tmp_path / "connector_packages"
    root.mkdir()
    monkeypatch.setattr(connectors_package, "__path__", [*connectors_package.__path__, str(root)])
    created: list[str] = []

    def make(name: str, factory_source: str) -> str:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")
        (root / name / "factory.py").write_text(factory_source)
        importlib.invalidate_caches()
        created.append(name)
        return name

    yield make
    for name in created:
        for module in [m for m in sys.modules if m == f"{PACKAGE}.{name}" or m.startswith(f"{PACKAGE}.{name}.")]:
            del sys.modules[module]
