"""Every file of dags/examples parses as the demo's ``airflow standalone`` parses it: without its Connections, without
a YAML config, and without touching a database or the network at import. The pipelines the examples define are
paused when they first appear (their Connections must exist first)."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "dags" / "examples"


def refuse_connections(*args, **kwargs):
    raise AssertionError(f"an example DAG file opened a connection at import: {args[1:]}")


def test_the_examples_parse_without_connections_databases_or_network(tmp_path, monkeypatch: pytest.MonkeyPatch):
    from airflow.dag_processing.dagbag import DagBag

    for name in ("CDC_EXAMPLE_SOURCE_CONN", "CDC_EXAMPLE_SINK_CONN", "CDC_EXAMPLE_FUSED_SOURCE",
                 "CDC_EXAMPLE_NOTIFIED_SOURCE", "CDC_EXAMPLE_LOOP_SECONDS", "CDC_EXAMPLE_ALERTS_FILE",
                 "CDC_EXAMPLE_HANDWRITTEN_SOURCE", "CDC_EXAMPLE_MAPPED_SOURCES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CDC_CONFIG_DIR", str(tmp_path))
    monkeypatch.setattr(socket.socket, "connect", refuse_connections)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connections)
    # libpq opens its sockets in C, past the socket module
    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(refuse_connections))
    monkeypatch.setattr(psycopg, "connect", lambda *args, **kwargs: refuse_connections(None, *args))

    bag = DagBag(dag_folder=str(EXAMPLES))

    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["cdc_fused_shop", "cdc_fused_shop_resnapshot", "cdc_handwritten_shop",
                                   "cdc_mapped_sources", "cdc_notified_shop"]
    for dag_id in ("cdc_fused_shop", "cdc_notified_shop", "cdc_handwritten_shop", "cdc_mapped_sources"):
        assert bag.dags[dag_id].is_paused_upon_creation is True, dag_id
    assert bag.dags["cdc_fused_shop_resnapshot"].schedule is None
