"""The CDC metrics (:mod:`airflow_provider_cdc.metrics`) reach Airflow's metrics: a real StatsD UDP listener on
localhost, and a real ``dag.test()`` run (PostgreSQL into PostgreSQL, staged and fused) in a child process whose
metrics Airflow initialises exactly as its task runner does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import psycopg
import pytest
from cdc_testing import unique_id, write_config

from airflow_provider_cdc.metrics import batch_metrics

DDL = """
CREATE TABLE users (id bigint PRIMARY KEY, email text);
INSERT INTO users VALUES (1, 'ann@example.com'), (2, 'bob@example.com'), (3, 'no-at-sign'), (4, 'cy@example.com');
CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12,2));
INSERT INTO orders VALUES (1, 10.5), (2, 20.25);
"""

# The domain of an email without '@' cannot be taken: that row fails the rule and is quarantined.
RULES = """\
rules:
  - rule_id: email_domain
    rule_type: map
    tables: [users]
    source_fields: [email]
    target_field: domain
    expression: "{{ email.split('@')[1] }}"
"""


def test_batch_metrics_from_a_load_summary_and_its_manifest():
    summary = {"batch_id": "b", "applied": True, "seconds": 0.5,
               "tables": {"public.users": {"events": 3}, "public.orders": {"events": 2}}}
    manifest = {"audit": {"capture": {"at": "2026-01-01T00:00:00+00:00"}, "transform": {"quarantined": 1}}}
    now = 1767225600.0 + 10  # 10 s after the capture
    values = batch_metrics(summary, manifest, newest_ts_ms=int((now - 4) * 1000), now=now)
    assert values == {"events_processed": {"public.users": 3, "public.orders": 2}, "events_per_second": 0.5,
                      "transform_failures": 1, "lag_seconds": pytest.approx(4.0)}
    # a fused batch: the load is nested, no manifest (its load time is the rate's)
    fused = batch_metrics({"load": summary}, None, now=now)
    assert fused["events_per_second"] == 10.0 and fused["transform_failures"] is None
    assert fused["lag_seconds"] is None
    # a fused batch's summary (pipeline.run_fused) carries its newest commit time and each stage's quarantined count
    fused = batch_metrics({"load": summary, "newest_ts_ms": int((now - 2.5) * 1000),
                           "quarantined": {"transform": 2, "validate": 1}}, None, now=now)
    assert fused["transform_failures"] == 2 and fused["lag_seconds"] == pytest.approx(2.5)
    assert batch_metrics({"load": summary, "quarantined": {"validate": 1}}, None, now=now)["transform_failures"] is None
    # a replayed batch (already in the ledger) counts nothing
    assert batch_metrics({**summary, "applied": False})["events_processed"] == {}


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(3)
    return sock


def _packets(sock: socket.socket) -> list[str]:
    packets: list[str] = []
    try:
        while True:
            packets += sock.recv(65536).decode().splitlines()
    except TimeoutError:
        pass
    return packets


def _value(packets: list[str], name: str) -> list[float]:
    """The values sent under ``name`` (``af.<name>:<value>|c`` or ``|g``)."""
    return [float(p.split(":", 1)[1].split("|", 1)[0]) for p in packets if p.split(":", 1)[0] == f"af.{name}"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)
@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_a_dag_run_sends_the_cdc_metrics_to_statsd(pg_database_factory, tmp_path, mode):
    source_url, sink_url = pg_database_factory("cdc_metrics_src"), pg_database_factory("cdc_metrics_sink")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(DDL)
    source_id = unique_id("metrics")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"], mode=mode)
    (config_dir / "transformations.yaml").write_text(RULES)
    code = textwrap.dedent(f"""
        from airflow.sdk._shared.observability.metrics import stats
        from airflow.sdk.observability.metrics import stats_utils
        stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True)
        from airflow_provider_cdc.dag_factory import build_dags
        run = build_dags({str(config_dir)!r})["cdc_{source_id}"].test()
        print("STATE", run.state)
    """)
    started = time.time()
    with _listen() as sock:
        env = {**os.environ, "CDC_CONFIG_DIR": str(config_dir), "AIRFLOW__METRICS__STATSD_ON": "True",
               "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1", "AIRFLOW__METRICS__STATSD_PORT":
               str(sock.getsockname()[1]), "AIRFLOW__METRICS__STATSD_PREFIX": "af"}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=500)
        assert proc.returncode == 0 and "STATE success" in proc.stdout, (proc.stdout + proc.stderr)[-4000:]
        packets = _packets(sock)
    elapsed = time.time() - started
    ours = [p for p in packets if p.startswith("af.cdc.")]
    suffix = f"{source_id}.public.users"
    # the snapshot: 4 users (one quarantined by the rule, so 3 applied) and 2 orders
    assert _value(ours, f"cdc.events_processed.{suffix}") == [3.0], ours
    assert _value(ours, f"cdc.events_processed.{source_id}.public.orders") == [2.0], ours
    (rate,) = _value(ours, f"cdc.events_per_second.{source_id}")
    assert rate > 0
    # both modes: the staged one from the manifest and its files, the fused one from run_fused's summary
    assert _value(ours, f"cdc.transform.failures.{source_id}") == [1.0], ours
    (lag,) = _value(ours, f"cdc.lag_seconds.{source_id}")
    # the rows were committed at the source just before the run: the lag is the run's own time, about
    assert 0 <= lag <= elapsed + 60
    # tagged names too (StatsD drops the tags; the bare name is sent once per table or source)
    assert len(_value(ours, "cdc.events_processed")) == 2 and len(_value(ours, "cdc.events_per_second")) == 1
