"""``python -m airflow_provider_cdc quarantine list|replay`` against a real PostgreSQL sink, end to end through the
pipeline functions: a rule ``{{ price + tax }}`` quarantines the rows whose tax is NULL; once the rule is fixed
(``{{ price + (tax or 0) }}``) the replay loads them exactly once, keeps a newer change to a key loaded meanwhile,
and leaves the rows that still fail waiting."""

from __future__ import annotations

import decimal
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cdc_testing import batch_of, unique_id, write_config

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.__main__ import main
from airflow_provider_cdc.connectors.postgres.sink import PgSink
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.quarantine import replay_batch_id
from airflow_provider_cdc.quarantine_commands import ReplayPlan, plan_replay, replay
from airflow_provider_cdc.stages import apply_stages, build_stages
from airflow_provider_cdc.tables import Column, TableSchema

pytestmark = [pytest.mark.timeout(300), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

ITEMS = TableSchema("public", "items", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("price", "numeric(12,2)", "decimal", precision=12, scale=2, ordinal=2),
    Column("tax", "numeric(12,2)", "decimal", precision=12, scale=2, ordinal=3),
), dialect="postgresql")

BROKEN = """\
rules:
  - rule_id: total
    rule_type: map
    source_fields: [price, tax]
    target_field: total
    expression: "{{ price + tax }}"
"""
FIXED = BROKEN.replace("{{ price + tax }}", "{{ price + (tax or 0) }}")


def row(id_: int, price: str | None, tax: str | None) -> dict:
    return {"id": str(id_), "price": price, "tax": tax}


@dataclass
class Source:
    source_id: str
    sink_url: str
    config_dir: Path
    source_url: str = ""

    def hook(self) -> CdcHook:
        return CdcHook(self.source_id, str(self.config_dir))  # built anew: it reads transformations.yaml again

    def load(self, events: list[tuple]) -> dict:
        """One batch through the source's current stage list and the load step, as a run does."""
        hook = self.hook()
        batch = batch_of(events, ITEMS, source_id=self.source_id)
        made, versions = apply_stages(build_stages(hook.source_config, hook.config), batch)
        with PgSink(self.sink_url, sink_id="warehouse") as sink:
            return pipeline.load_batch(made, sink, stage_versions=versions, policy=hook.schema_policy)

    def sink_rows(self) -> dict[int, tuple]:
        with psycopg.connect(self.sink_url) as conn:
            return {r[0]: r[1:] for r in conn.execute("SELECT id, total, _cdc_position FROM items").fetchall()}

    def quarantine(self) -> list[tuple]:
        with psycopg.connect(self.sink_url) as conn:
            return conn.execute("SELECT seq, replayed_batch_id FROM _cdc_quarantine ORDER BY seq").fetchall()

    def ledger_ids(self) -> list[str]:
        with psycopg.connect(self.sink_url) as conn:
            return [r[0] for r in conn.execute("SELECT batch_id FROM _cdc_ledger ORDER BY committed_at").fetchall()]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "airflow_provider_cdc", "quarantine", *args,
                               "--config-dir", str(self.config_dir)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "CDC_CONFIG_DIR": str(self.config_dir)})


@pytest.fixture
def source(pg_database_factory, tmp_path: Path) -> Iterator[Source]:
    source_id = unique_id("quar")
    source_url, sink_url = pg_database_factory("quar_src"), pg_database_factory("quar_sink")
    with psycopg.connect(source_url, autocommit=True) as conn:  # the source's table, as the batches below left it
        conn.execute("CREATE TABLE items (id integer PRIMARY KEY, price numeric(12,2), tax numeric(12,2))")
        conn.execute("INSERT INTO items VALUES (1, 1.25, 0.10), (2, 2.25, NULL), (3, 3.25, 0.30), (4, 4.25, 0.40),"
                     " (6, NULL, NULL)")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["items"])
    (config_dir / "transformations.yaml").write_text(BROKEN)
    src = Source(source_id, sink_url, config_dir, source_url)
    # 2 and 4 have no tax, 6 no price either: the broken rule quarantines all three.
    first = src.load([("c", 1, row(1, "1.25", "0.10")), ("c", 2, row(2, "2.25", None)),
                      ("c", 3, row(3, "3.25", "0.30")), ("c", 4, row(4, "4.25", None)), ("c", 6, row(6, None, None))])
    assert first["applied"] and first["quarantined"] == 3
    # A newer change to key 4 that passes, loaded before the rule is fixed: the replay must keep it.
    assert src.load([("u", 7, row(4, "4.25", "0.40"))])["applied"]
    yield src


def test_list_prints_the_waiting_rows(source: Source, capsys):
    assert main(["quarantine", "list", source.source_id, "--config-dir", str(source.config_dir)]) == 0
    out = capsys.readouterr().out
    assert f"source {source.source_id}: 3 quarantined rows waiting" in out
    lines = [line for line in out.splitlines() if "public.items" in line]
    assert len(lines) == 3 and all("transform" in line and "total" in line for line in lines)
    assert [line.split()[3] for line in lines] == ["-", "-", "-"]  # suite column: transform rows have none
    assert [line.split()[6] for line in lines] == ["2", "4", "6"]  # seq column
    assert f"quarantine replay {source.source_id}" in out


def test_replay_after_the_fix_loads_the_rows_once_and_keeps_newer_changes(source: Source):
    (source.config_dir / "transformations.yaml").write_text(FIXED)
    hook = source.hook()
    with PgSink(source.sink_url, sink_id="warehouse") as sink:
        plan = plan_replay(sink, source.source_id)
        assert [r["seq"] for r in plan.rows] == [2, 4, 6]
        outcome = replay(sink, plan, build_stages(hook.source_config, hook.config))
    ids = {seq: qid for seq, qid in ((r["seq"], r["quarantine_id"]) for r in plan.rows)}
    assert outcome.applied and outcome.replayed == 2
    assert outcome.batch_id == replay_batch_id(source.source_id, [ids[2], ids[4]])
    assert [(f["seq"], f["rule_id"]) for f in outcome.still_failing] == [(6, "total")]
    rows = source.sink_rows()
    assert rows[2] == (decimal.Decimal("2.25"), 2)  # replayed: tax or 0
    assert rows[4] == (decimal.Decimal("4.65"), 7)  # the newer change (seq 7) was not overwritten by seq 4
    assert 6 not in rows
    assert source.quarantine() == [(2, outcome.batch_id), (4, outcome.batch_id), (6, None)]
    assert source.ledger_ids()[-1] == outcome.batch_id

    # A second replay: nothing waits but the row that still fails, and the same rows again are a no-op.
    with PgSink(source.sink_url, sink_id="warehouse") as sink:
        again = replay(sink, plan_replay(sink, source.source_id), build_stages(hook.source_config, hook.config))
        assert again.batch_id is None and again.replayed == 0 and len(again.still_failing) == 1
        done = [r for r in sink.quarantined(source.source_id, waiting_only=False) if r["seq"] in (2, 4)]
        twice = replay(sink, ReplayPlan(source.source_id, done), build_stages(hook.source_config, hook.config))
    assert twice.batch_id == outcome.batch_id and not twice.applied and twice.replayed == 0
    assert source.ledger_ids().count(outcome.batch_id) == 1
    assert source.sink_rows() == rows


def test_the_cli_replays_once(source: Source):
    (source.config_dir / "transformations.yaml").write_text(FIXED)
    first = source.cli("replay", source.source_id, "--yes")
    assert first.returncode == 0, first.stderr
    assert "2 quarantined changes replayed as batch" in first.stdout
    assert "1 still failing" in first.stdout
    assert source.sink_rows()[2] == (decimal.Decimal("2.25"), 2)
    second = source.cli("replay", source.source_id, "--yes")
    assert second.returncode == 0, second.stderr
    assert "none of the 1 quarantined changes passes" in second.stdout
    listed = source.cli("list", source.source_id, "--all")
    assert listed.returncode == 0 and f"{source.source_id}:quarantine:" in listed.stdout


def test_replay_without_yes_and_without_a_terminal_refuses(source: Source, capsys, monkeypatch):
    (source.config_dir / "transformations.yaml").write_text(FIXED)
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    assert main(["quarantine", "replay", source.source_id, "--config-dir", str(source.config_dir)]) == 1
    assert "pass --yes" in capsys.readouterr().err
    assert source.quarantine() == [(2, None), (4, None), (6, None)]


def test_a_row_whose_key_the_source_deleted_since_is_not_brought_back(source: Source):
    """A hard delete leaves no trace in the sink: the replay asks the source, and leaves such a row waiting."""
    (source.config_dir / "transformations.yaml").write_text(FIXED)
    with psycopg.connect(source.source_url, autocommit=True) as conn:
        conn.execute("DELETE FROM items WHERE id = 2")
    result = source.cli("replay", source.source_id, "--yes")
    assert result.returncode == 0, result.stderr
    assert "no longer at the source" in result.stdout, result.stdout
    rows = source.sink_rows()
    assert 2 not in rows and rows[4] == (decimal.Decimal("4.65"), 7)
    assert [seq for seq, replayed in source.quarantine() if replayed is None] == [2, 6]
