"""``python -m airflow_provider_cdc schema versions|accept|check`` in-process, against a real PostgreSQL sink.

Each test builds a sink database with a held table the way a run makes one: a PgSink applies hand-built batches
(the second one changes a column from text to integer, which BACKWARD refuses), then the commands run through
``airflow_provider_cdc.__main__.main`` with a config directory naming that sink.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from airflow.models.dagrun import DagRun  # imported here, not under a test's captured output: Airflow sets up logging
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState
from cdc_testing import batch_of, item, unique_id, write_config
from sqlalchemy import delete

from airflow_provider_cdc.__main__ import main
from airflow_provider_cdc.config import load_config
from airflow_provider_cdc.connectors.postgres.sink import PgSink
from airflow_provider_cdc.schema.avro import avro_schema
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

ITEMS_V1 = TableSchema("public", "items", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("code", "text", "text", ordinal=2),
    Column("note", "text", "text", ordinal=3),
), dialect="postgresql")
ITEMS_V2 = TableSchema("public", "items", (
    ITEMS_V1.columns[0], Column("code", "integer", "integer", ordinal=2), ITEMS_V1.columns[2],
), dialect="postgresql")
OTHERS = TableSchema("public", "others", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("v", "text", "text", ordinal=2),
), dialect="postgresql")


@dataclass
class Held:
    """A sink database whose table public.items is held by source ``source_id``, and a config naming it."""

    source_id: str
    sink_url: str
    config_dir: Path

    @property
    def subject(self) -> str:
        return f"{self.source_id}.public.items"

    def cli(self, *args: str) -> int:
        return main([*args, "--config-dir", str(self.config_dir)])

    def rows(self, table: str = "items") -> list[tuple]:
        with psycopg.connect(self.sink_url) as conn:
            return conn.execute(f"SELECT id, code::text, note FROM {table} ORDER BY id").fetchall()

    def column_type(self, column: str) -> str:
        with psycopg.connect(self.sink_url) as conn:
            return conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                "WHERE attrelid = 'public.items'::regclass AND attname = %s", (column,)).fetchone()[0]

    def sink(self) -> PgSink:
        return PgSink(self.sink_url, sink_id="warehouse")


@pytest.fixture
def held(pg_database: str, tmp_path: Path) -> Iterator[Held]:
    source_id = unique_id("schema")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=pg_database, sink_url=pg_database,
                              tables=["items", "public.others"])
    policy = load_config(config_dir).schema_policy(source_id)
    with PgSink(pg_database, sink_id="warehouse") as sink:
        first = sink.apply(batch_of(
            [("r", 2, item(1, code="10", note="a")), ("r", 3, item(2, code="20", note="b")),
             ("r", 4, item(3, code="30", note="c"))], ITEMS_V1, source_id=source_id,
            schema_changes=[SchemaChange("public.items", 1, ITEMS_V1)],
            extra={OTHERS: [("r", 4, {"id": "1", "v": "one"})]}), policy=policy)
        assert first.applied and first.held_tables == {}
        # text -> integer: not BACKWARD compatible, so items is held; others flows in the same batch.
        second = sink.apply(batch_of(
            [("u", 6, item(1, code="99", note="a")), ("c", 7, item(4, code="40", note="d")), ("d", 8, item(3))],
            ITEMS_V2, source_id=source_id,
            schema_changes=[SchemaChange("public.items", 5, ITEMS_V2, before=ITEMS_V1)],
            extra={OTHERS: [("c", 8, {"id": "2", "v": "two"})]}), policy=policy)
        assert list(second.newly_held) == ["public.items"]
    yield Held(source_id, pg_database, config_dir)


def output(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


# --- versions ---------------------------------------------------------------------------------------------------


def test_versions_lists_each_version_and_the_held_table_as_json(held: Held, capsys):
    assert held.cli("schema", "versions", held.subject, "--json") == 0
    report = json.loads(output(capsys)[0])

    assert report["source_id"] == held.source_id and list(report["subjects"]) == [held.subject]
    versions = report["subjects"][held.subject]
    assert [(v["version"], v["status"], v["seq"]) for v in versions] == [(1, "applied", 1), (2, "held", 5)]
    first, second = versions
    assert len(first["id"]) == 16 and first["id"] != second["id"] and first["fingerprint"]
    assert first["registered_at"] and first["outcome"] == "-"  # a subject's first version is checked against nothing
    assert second["outcome"].startswith("not BACKWARD compatible: column 'code'")
    assert [f["name"] for f in second["schema"]["fields"]] == ["id", "code", "note"]
    reason = report["held"]["public.items"]
    assert "text -> integer" in reason and f"schema accept {held.subject}" in reason


def test_versions_of_a_source_prints_every_subject_and_the_holds(held: Held, capsys):
    assert held.cli("schema", "versions", held.source_id) == 0
    text = output(capsys)[0]
    lines = text.splitlines()

    assert lines[0] == f"source {held.source_id}: 2 subjects, 1 held table"
    assert f"{held.subject}:" in lines and f"{held.source_id}.public.others:" in lines
    header = next(line for line in lines if line.lstrip().startswith("version"))
    for column in ("id", "fingerprint", "status", "seq", "position", "registered_at", "compatibility"):
        assert column in header
    version_two = next(line for line in lines if line.lstrip().startswith("2 "))
    assert " held " in version_two and "not BACKWARD compatible: column 'code'" in version_two
    assert "held tables (their changes wait in the sink):" in lines
    assert any(line.startswith("  public.items: ") and "text -> integer" in line for line in lines)
    assert f"accept: python -m airflow_provider_cdc schema accept {held.subject}" in text


def test_versions_of_a_table_without_versions_says_so(held: Held, capsys):
    write_config(held.config_dir, source_id=held.source_id, source_url=held.sink_url, sink_url=held.sink_url,
                 tables=["items", "public.others", "fresh"])
    assert held.cli("schema", "versions", f"{held.source_id}.fresh") == 0
    assert "no registered version yet" in output(capsys)[0]


# --- accept -----------------------------------------------------------------------------------------------------


def test_accept_replays_the_held_changes_once_and_the_table_flows_again(held: Held, capsys):
    before = held.rows()
    assert before == [(1, "10", "a"), (2, "20", "b"), (3, "30", "c")]  # held: nothing of the second batch

    assert held.cli("schema", "accept", held.subject, "--yes") == 0
    out, err = output(capsys)
    assert f"schema accept of {held.subject} will:" in out
    assert f"accept the held version 2 of {held.subject} (held because: schema change of {held.subject} (code type " \
        "text -> integer) refused under schema_changes mode evolve, compatibility BACKWARD" in out
    assert "replay the 3 held changes of 1 batch" in out
    assert (f"accepted {held.subject}: version 2 accepted; 3 held events replayed as batch "
            f"{held.source_id}:accept:public.items:5-8 (2 upserted, 1 deleted)") in out, out
    assert "flows again from the next run" in out

    assert held.rows() == [(1, "99", "a"), (2, "20", "b"), (4, "40", "d")]
    assert held.column_type("code") == "integer"
    with held.sink() as sink:
        assert sink.held_tables(held.source_id) == {}
        assert [(v.version, v.status) for v in sink.schema_versions(held.source_id)
                if v.subject == held.subject] == [(1, "applied"), (2, "accepted")]
        assert sink.has_batch(f"{held.source_id}:accept:public.items:5-8")

    # Exactly once: a second accept refuses, naming why, and changes nothing.
    assert held.cli("schema", "accept", held.subject, "--yes") == 1
    out, err = output(capsys)
    assert f"{held.subject} is not held, so there is nothing to accept" in err
    assert held.rows() == [(1, "99", "a"), (2, "20", "b"), (4, "40", "d")]


def test_accept_without_yes_and_without_a_terminal_refuses_and_changes_nothing(held: Held, capsys):
    assert held.cli("schema", "accept", held.subject) == 1
    out, err = output(capsys)
    assert "will:" in out and "pass --yes" in err
    with held.sink() as sink:
        assert list(sink.held_tables(held.source_id)) == ["public.items"]
    assert held.rows() == [(1, "10", "a"), (2, "20", "b"), (3, "30", "c")]


def test_accept_refuses_while_a_dag_run_is_running(held: Held, capsys):
    dag_id = f"cdc_{held.source_id}"
    with create_session() as session:
        session.add(DagRun(dag_id=dag_id, run_id="manual__busy", state=DagRunState.RUNNING, run_type="manual",
                           run_after=dt.datetime.now(dt.timezone.utc)))
    try:
        assert held.cli("schema", "accept", held.subject) == 1
        out, err = output(capsys)
        assert f"DAG {dag_id} has 1 running run (manual__busy)" in err and "--yes" in err
        assert "will:" not in out  # refused before anything was planned or done
        with held.sink() as sink:
            assert list(sink.held_tables(held.source_id)) == ["public.items"]

        assert held.cli("schema", "accept", held.subject, "--yes") == 0
        out, err = output(capsys)
        assert "going ahead because of --yes" in err and f"accepted {held.subject}" in out
    finally:
        with create_session() as session:
            session.execute(delete(DagRun).where(DagRun.dag_id == dag_id))


def test_unknown_source_subject_or_table_is_refused_naming_what_is_configured(held: Held, capsys):
    assert held.cli("schema", "accept", "nope.public.items", "--yes") == 1
    err = output(capsys)[1]
    assert "unknown source 'nope'" in err and f"(configured: {held.source_id})" in err
    assert held.cli("schema", "accept", f"{held.source_id}.public.stock", "--yes") == 1
    err = output(capsys)[1]
    assert "not a configured table of this source: public.stock" in err
    assert f"{held.source_id}.public.items, {held.source_id}.public.others" in err
    assert held.cli("schema", "versions", "nope") == 1
    err = output(capsys)[1]
    assert "unknown source 'nope'" in err and held.source_id in err
    assert held.cli("schema", "accept", held.source_id, "--yes") == 1
    assert "is not a subject: write <source_id>.<schema>.<table>" in output(capsys)[1]


def test_accept_takes_a_bare_table_name_of_the_source(held: Held, capsys):
    assert held.cli("schema", "accept", f"{held.source_id}.items", "--yes") == 0
    assert f"accepted {held.subject}" in output(capsys)[0]


# --- check ------------------------------------------------------------------------------------------------------


def write_schema(path: Path, table: TableSchema, source_id: str) -> str:
    path.write_text(json.dumps(avro_schema(table, source_id=source_id)))
    return str(path)


def test_check_says_compatible_or_names_each_incompatible_field(held: Held, tmp_path: Path, capsys):
    added = TableSchema("public", "items", (*ITEMS_V2.columns, Column("extra", "text", "text", ordinal=4)),
                        dialect="postgresql")
    good = write_schema(tmp_path / "added.avsc", added, held.source_id)
    assert held.cli("schema", "check", held.subject, "--schema", good) == 0
    out = output(capsys)[0]
    assert out.strip() == f"{good} is compatible with {held.subject} at BACKWARD (checked against version 2)"

    back = write_schema(tmp_path / "back.avsc", ITEMS_V1, held.source_id)  # code back to text
    assert held.cli("schema", "check", held.subject, "--schema", back) == 1
    lines = output(capsys)[0].splitlines()
    assert lines[0] == f"{back} is NOT compatible with {held.subject} at BACKWARD (checked against version 2):"
    assert lines[1].startswith("  - column 'code': the new schema cannot read data written with version 2")

    assert held.cli("schema", "check", held.subject, "--schema", back, "--level", "BACKWARD_TRANSITIVE",
                    "--json") == 1
    found = json.loads(output(capsys)[0])
    assert (found["level"], found["compatible"], found["against_versions"]) == ("BACKWARD_TRANSITIVE", False, [1, 2])
    assert {problem["column"] for problem in found["problems"]} == {"code"}

    assert held.cli("schema", "check", held.subject, "--schema", back, "--level", "NONE") == 0
    assert "NONE checks nothing" in output(capsys)[0]


def test_check_uses_the_level_configured_for_the_table(held: Held, tmp_path: Path, capsys):
    write_config(held.config_dir, source_id=held.source_id, source_url=held.sink_url, sink_url=held.sink_url,
                 tables=["items", "public.others"],
                 extra="schema_changes:\n  table_compatibility: {items: FORWARD}\n")
    back = write_schema(tmp_path / "back.avsc", ITEMS_V1, held.source_id)
    # FORWARD: data written with the candidate (code as text) cannot be read by version 2 (code as int).
    assert held.cli("schema", "check", held.subject, "--schema", back) == 1
    assert f"is NOT compatible with {held.subject} at FORWARD" in output(capsys)[0]


def test_check_refuses_a_file_that_is_not_an_avro_schema(held: Held, tmp_path: Path, capsys):
    broken = tmp_path / "broken.avsc"
    broken.write_text("{not json")
    assert held.cli("schema", "check", held.subject, "--schema", str(broken)) == 1
    assert f"{broken} is not JSON, so not an Avro schema" in output(capsys)[1]
    wrong = tmp_path / "wrong.avsc"
    wrong.write_text(json.dumps({"type": "record", "name": "x", "fields": [{"name": "a", "type": "nosuchtype"}]}))
    assert held.cli("schema", "check", held.subject, "--schema", str(wrong)) == 1
    assert f"{wrong} is not a valid Avro schema" in output(capsys)[1]
