"""The validate stage's metrics reach Airflow's metrics (StatsD here): counters and a score gauge per table, named
with and without tags. The child process initialises Airflow's metrics exactly as the task runner does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

METRICS = {"validate": {"suites": {"users_checks": "0123456789abcdef"}, "metrics": {
    "public.users": {"evaluated": 8, "passed": 1, "failed": 6, "warned": 1, "score": 0.125},
    "public.odd name": {"evaluated": 2, "passed": 2, "failed": 0, "warned": 0, "score": 1.0},
}}}


def test_quality_metrics_go_to_statsd():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        env = {**os.environ, "AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
               "AIRFLOW__METRICS__STATSD_PORT": str(sock.getsockname()[1]), "AIRFLOW__METRICS__STATSD_PREFIX": "af"}
        code = textwrap.dedent(f"""
            from airflow.sdk._shared.observability.metrics import stats
            from airflow.sdk.observability.metrics import stats_utils
            stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True)
            from airflow_provider_cdc.operators.cdc import emit_quality_stats
            emit_quality_stats("shop", {json.dumps(METRICS)})
            emit_quality_stats("shop", {{"transform": {{"rules": {{}}}}}})  # no validate stage: nothing sent
        """)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        packets: list[str] = []
        try:
            while True:
                packets += sock.recv(65536).decode().splitlines()
        except TimeoutError:
            pass
    ours = sorted(p for p in packets if ".cdc." in p)
    assert "af.cdc.quality.failed.shop.public.users:6|c" in ours
    assert "af.cdc.quality.evaluated.shop.public.users:8|c" in ours
    assert "af.cdc.quality.score.shop.public.users:0.125|g" in ours
    assert "af.cdc.quality.score.shop.public.odd_name:1.0|g" in ours  # a name StatsD refuses is made safe
    assert ours.count("af.cdc.quality.evaluated:8|c") == 1 and "af.cdc.quality.score:0.125|g" in ours
    assert len(ours) == 2 * 2 * 5
