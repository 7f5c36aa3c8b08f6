"""The example DAGs of ``dags/examples/`` as a user runs them: their Connections as ``AIRFLOW_CONN_*`` variables on
the test's databases, a source id of their own (a replication slot is named for the whole server, and other tests
run beside these), no YAML config anywhere, and the module imported from its file."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "dags" / "examples"


class Examples:
    """Sets up the environment the example DAG files read (``use``), then imports them (``load``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.monkeypatch = monkeypatch
        self.tmp_path = tmp_path
        self.suffix = uuid.uuid4().hex[:8]
        # Source ids of their own, and distinct: dag.test() parses every example, and DAG ids must not clash.
        self.fused_source = f"fused_{self.suffix}"
        self.notified_source = f"notified_{self.suffix}"

    def use(self, source_url: str, sink_url: str, **env: str) -> None:
        """Connections on these databases, the source ids above, and ``env`` for the examples."""
        source_conn, sink_conn = f"cdc_example_source_{self.suffix}", f"cdc_example_sink_{self.suffix}"
        settings = {
            f"AIRFLOW_CONN_{source_conn.upper()}": source_url,
            f"AIRFLOW_CONN_{sink_conn.upper()}": sink_url,
            "CDC_EXAMPLE_SOURCE_CONN": source_conn,
            "CDC_EXAMPLE_SINK_CONN": sink_conn,
            "CDC_EXAMPLE_FUSED_SOURCE": self.fused_source,
            "CDC_EXAMPLE_NOTIFIED_SOURCE": self.notified_source,
            **env,
        }
        for name, value in settings.items():
            self.monkeypatch.setenv(name, value)
        empty = self.tmp_path / "no_yaml"
        empty.mkdir(exist_ok=True)
        self.monkeypatch.setenv("CDC_CONFIG_DIR", str(empty))

    def load(self, name: str) -> ModuleType:
        """``dags/examples/<name>.py``, imported under a name of its own (each test gets fresh DAG objects)."""
        spec = importlib.util.spec_from_file_location(f"{name}_{self.suffix}", EXAMPLES / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Examples:
    return Examples(monkeypatch, tmp_path)
