"""What the loader asks of each connector factory: its role (source, sink), its ``options`` model, its sink
capabilities and its checks across sources, each problem reported with file, key and reason, all at once.

The connector types here are registered for the test (``register_factory``), so these tests hold whatever the real
connectors' options are; the PostgreSQL connector's own options are checked at the end.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_cdc.config import ConfigError, load_config
from airflow_provider_cdc.config.__main__ import run_check
from airflow_provider_cdc.connectors import registry
from airflow_provider_cdc.connectors.base import SinkCapabilities
from airflow_provider_cdc.connectors.registry import ConnectorFactory
from airflow_provider_cdc.errors import ConnectorUnavailableError, MissingExtraError, is_terminal

Register = Callable[..., ConnectorFactory]


class SlotOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    slot_name: str | None = Field(None, pattern=r"^[a-z0-9_]{1,63}$")
    create_slot: bool = True


class LakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["delta", "parquet"] = "delta"
    storage_options: dict[str, str] = {}


def never(*args: Any) -> Any:
    raise AssertionError("the loader builds no source or sink")


def check_shared_slots(entries: list[tuple[int, Any, SlotOptions]]) -> list[tuple[int, str, str]]:
    """Like a real connector's cross-source check: two sources of one server must not share a slot."""
    first: dict[tuple[Any, str], int] = {}
    problems = []
    for index, source, options in entries:
        key = (source.connection_string, options.slot_name or f"cdc_{source.id}")
        if key in first:
            problems.append((index, "options.slot_name", f"slot {key[1]!r} is also used by sources[{first[key]}]"))
        first.setdefault(key, index)
    return problems


SOFT = SinkCapabilities(native_types=frozenset({"integer", "text"}))
APPEND_ONLY = SinkCapabilities(native_types=frozenset({"integer", "text"}), transactional=False,
                               merge_by_key=False, soft_delete=False)


@pytest.fixture
def connectors(register_factory: Register) -> None:
    """``logdb``: source and sink; ``lake``: sink only, keeps no deleted rows; ``feed``: source only."""
    register_factory(ConnectorFactory(type="logdb", source_options=SlotOptions, capabilities=SOFT, source=never,
                                      sink=never, check_sources=check_shared_slots))
    register_factory(ConnectorFactory(type="lake", sink_options=LakeOptions, capabilities=APPEND_ONLY, sink=never))
    register_factory(ConnectorFactory(type="feed", source=never))


CONNECTORS = """
    connectors:
      - id: db
        type: logdb
        connection_string: logdb://db/app
      - id: files
        type: lake
        connection_string: file:///tmp/lake
"""


def source(source_id: str = "app", **keys: Any) -> str:
    fields = {"id": source_id, "type": "logdb", "connection_string": "logdb://db/app", "tables": "[users]",
              "sink": "db", **keys}
    fields = {key: value for key, value in fields.items() if value is not None}  # None: leave the key out
    return "".join(f"\n        {key}: {value}" if i else f"\n      - {key}: {value}"
                   for i, (key, value) in enumerate(fields.items()))


def write(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / f"{name}.yaml").write_text(textwrap.dedent(text))
    return directory


def lines_of(directory: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(directory)
    return [str(problem) for problem in exc.value.problems]


# ----------------------------------------------------------------------------------------------------- options


def test_valid_options_load(tmp_path: Path, connectors: None) -> None:
    write(tmp_path, connectors=CONNECTORS, cdc="    sources:" + source(options="{slot_name: app_slot}"))
    config = load_config(tmp_path)
    assert config.source("app").options == {"slot_name": "app_slot"}


def test_source_options_are_checked_by_the_connectors_model(tmp_path: Path, connectors: None) -> None:
    write(tmp_path, connectors=CONNECTORS,
          cdc="    sources:" + source(options="{slot_name: Bad-Slot, slotname: x, create_slot: maybe}"))
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[0].options.slot_name: String should match pattern '^[a-z0-9_]{1,63}$' (got 'Bad-Slot')",
        "cdc.yaml: sources[0].options.create_slot: should be a valid boolean, unable to interpret input "
        "(got 'maybe')",
        "cdc.yaml: sources[0].options.slotname: unknown key; did you mean 'slot_name'?",
    ]


def test_option_problems_come_with_the_entrys_other_problems(tmp_path: Path, connectors: None) -> None:
    write(tmp_path, connectors=CONNECTORS,
          cdc="    sources:" + source(batch_size=0, sink="nowhere", options="{slot: x}"))
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[0].batch_size: should be greater than 0 (got 0)",
        "cdc.yaml: sources[0].sink: unknown connector 'nowhere'",
        "cdc.yaml: sources[0].options.slot: unknown key; did you mean 'slot_name'?",
    ]


def test_sink_options_are_checked_by_the_connectors_model(tmp_path: Path, connectors: None) -> None:
    connectors_yaml = CONNECTORS + "        options: {format: csv, storage_options: {region: 1}, mode: x}\n"
    write(tmp_path, connectors=connectors_yaml, cdc="    sources:" + source(sink="files"))
    assert lines_of(tmp_path) == [
        "connectors.yaml: connectors[1].options.format: should be 'delta' or 'parquet' (got 'csv')",
        "connectors.yaml: connectors[1].options.storage_options.region: should be a valid string (got 1)",
        "connectors.yaml: connectors[1].options.mode: unknown key (allowed: format, storage_options)",
    ]


def test_a_connector_without_options_takes_none(tmp_path: Path, register_factory: Register) -> None:
    register_factory(ConnectorFactory(type="plain", source=never, sink=never))
    write(tmp_path, connectors="connectors:\n  - {id: db, type: plain, connection_string: plain://h, "
          "options: {x: 1}}\n",
          cdc="    sources:" + source(type="plain", connection_string="plain://h", options="{y: 2}"))
    assert lines_of(tmp_path) == [
        "connectors.yaml: connectors[0].options.x: unknown key (no options are allowed here)",
        "cdc.yaml: sources[0].options.y: unknown key (no options are allowed here)",
    ]


def test_options_of_a_connector_used_only_as_a_source_would_be_ignored(tmp_path: Path, connectors: None) -> None:
    connectors_yaml = CONNECTORS.replace("connection_string: logdb://db/app",
                                         "connection_string: logdb://db/app\n        options: {slot_name: s}")
    write(tmp_path, connectors=connectors_yaml,
          cdc="    sources:" + source(connection_string=None, connector="db", sink="files"))
    assert lines_of(tmp_path) == [
        "connectors.yaml: connectors[0].options: connector 'db' is used by no sink, only as a source (sources[0]), "
        "so these options would be ignored: a source's options go under that source's options: in cdc.yaml",
    ]


def test_an_unused_connectors_options_are_still_checked(tmp_path: Path, connectors: None) -> None:
    write(tmp_path, connectors=CONNECTORS + "        options: {format: csv}\n", cdc="sources: []\n")
    assert lines_of(tmp_path) == [
        "connectors.yaml: connectors[1].options.format: should be 'delta' or 'parquet' (got 'csv')",
    ]


def test_a_secret_option_is_never_echoed(tmp_path: Path, connectors: None) -> None:
    connectors_yaml = CONNECTORS + "        options: {storage_options: {AWS_SECRET_ACCESS_KEY: [s3cr3t-value]}}\n"
    write(tmp_path, connectors=connectors_yaml, cdc="    sources:" + source(sink="files"))
    lines = lines_of(tmp_path)
    assert lines == ["connectors.yaml: connectors[1].options.storage_options.AWS_SECRET_ACCESS_KEY: "
                     "should be a valid string"]


# ------------------------------------------------------------------------------------------ roles, capabilities


def test_soft_delete_into_a_sink_that_keeps_no_deleted_rows(tmp_path: Path, connectors: None) -> None:
    write(tmp_path, connectors=CONNECTORS,
          cdc="    sources:" + source(sink="files", delete_mode="soft")
          + source("other", sink="db", delete_mode="soft", options="{slot_name: other}"))
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[0].delete_mode: sink 'files' (type 'lake') cannot keep deleted rows; use delete_mode: "
        "hard, or a sink that can",
    ]


def test_a_type_that_cannot_capture_is_no_source(tmp_path: Path, connectors: None) -> None:
    write(tmp_path, connectors=CONNECTORS,
          cdc="    sources:" + source(type="lake", connection_string="file:///tmp/lake", options="{slot_name: x}"))
    assert lines_of(tmp_path) == ["cdc.yaml: sources[0].type: connector type 'lake' cannot be a source"]


def test_a_type_that_cannot_load_is_no_sink(tmp_path: Path, connectors: None) -> None:
    connectors_yaml = CONNECTORS + "      - {id: events, type: feed, connection_string: 'feed://x'}\n"
    write(tmp_path, connectors=connectors_yaml, cdc="    sources:" + source(sink="events"))
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[0].sink: connector 'events' is of type 'feed', which cannot be a sink",
    ]


def test_checks_across_sources_are_reported_under_each_source(tmp_path: Path, connectors: None) -> None:
    write(tmp_path, connectors=CONNECTORS,
          cdc="    sources:" + source("a", target_schema="a")
          + source("b", target_schema="b", options="{slot_name: cdc_a}")
          + source("c", target_schema="c", options="{slot_name: bad!}"))
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[1].options.slot_name: slot 'cdc_a' is also used by sources[0]",
        "cdc.yaml: sources[2].options.slot_name: String should match pattern '^[a-z0-9_]{1,63}$' (got 'bad!')",
    ]


# ---------------------------------------------------------------------------------- unavailable connectors


def test_unknown_connector_type_is_a_clear_terminal_error() -> None:
    with pytest.raises(ConnectorUnavailableError) as exc:
        registry.factory("oracle")
    assert is_terminal(exc.value)
    assert str(exc.value) == f"connector type 'oracle' is unknown (known: {', '.join(registry.CONNECTOR_MODULES)})"


def test_a_type_not_in_this_version_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.CONNECTOR_MODULES, "futuredb", ("futuredb_not_written_yet", "futuredb"))
    write(tmp_path, cdc="    sources:" + source(type="futuredb", connection_string="futuredb://h", sink="nowhere"))
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[0].sink: unknown connector 'nowhere' (there is no connectors.yaml)",
        "cdc.yaml: sources[0].type: connector type 'futuredb' is not available in this version of "
        "airflow-provider-cdc",
    ]


MONGO_FACTORY = """
import pymongo  # the driver the extra installs

FACTORY = None
"""


@pytest.fixture
def mongodb_without_pymongo(connector_package: Callable[[str, str], str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A mongodb connector package whose driver is not installed (``None`` in sys.modules: import fails)."""
    package = connector_package("mongodb_needs_pymongo", MONGO_FACTORY)
    monkeypatch.setitem(registry.CONNECTOR_MODULES, "mongodb", (package, "mongodb"))
    monkeypatch.setitem(sys.modules, "pymongo", None)


def test_a_missing_driver_names_the_pip_extra(mongodb_without_pymongo: None) -> None:
    with pytest.raises(MissingExtraError) as exc:
        registry.factory("mongodb")
    assert is_terminal(exc.value)
    assert str(exc.value) == "pymongo is missing: pip install 'airflow-provider-cdc[mongodb]'"


def test_a_missing_driver_is_a_config_problem_naming_the_pip_command(
    tmp_path: Path, mongodb_without_pymongo: None, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, connectors="connectors:\n  - {id: mongo, type: mongodb, connection_string: 'mongodb://h/db'}\n",
          cdc="    sources:" + source(type="mongodb", connection_string="mongodb://h/app", sink="mongo"))
    expected = "needs a driver: pymongo is missing: pip install 'airflow-provider-cdc[mongodb]'"
    assert lines_of(tmp_path) == [
        f"connectors.yaml: connectors[0].type: connector type 'mongodb' {expected}",
        f"cdc.yaml: sources[0].type: connector type 'mongodb' {expected}",
    ]
    assert run_check(str(tmp_path), online=False) == 1
    assert "pip install 'airflow-provider-cdc[mongodb]'" in capsys.readouterr().err


def test_an_unused_connector_with_a_missing_driver_is_no_problem(tmp_path: Path, mongodb_without_pymongo: None,
                                                                 connectors: None) -> None:
    write(tmp_path, connectors=CONNECTORS + "      - {id: mongo, type: mongodb, connection_string: 'mongodb://h'}\n",
          cdc="    sources:" + source())
    assert [c.id for c in load_config(tmp_path).connectors] == ["db", "files", "mongo"]


# -------------------------------------------------------------------------------------------- config check


def test_config_check_asks_each_used_factory_to_look_online(
    tmp_path: Path, register_factory: Register, capsys: pytest.CaptureFixture[str]
) -> None:
    looked: list[str] = []

    def look(name: str) -> Callable[[Any], list[str]]:
        def inspect(config: Any) -> list[str]:
            looked.append(name)
            return [f"warning: {name} found a leftover of a removed source"]
        return inspect

    def broken(config: Any) -> list[str]:
        raise RuntimeError("cannot reach logdb://admin:s3cr3t-pw@db/app")

    register_factory(ConnectorFactory(type="logdb", source=never, sink=never, capabilities=SOFT, inspect=look("logdb")))
    register_factory(ConnectorFactory(type="lake", sink=never, capabilities=APPEND_ONLY, inspect=look("lake")))
    register_factory(ConnectorFactory(type="unused", source=never, inspect=look("unused")))
    register_factory(ConnectorFactory(type="flaky", source=never, inspect=broken))
    write(tmp_path, connectors=CONNECTORS,
          cdc="    sources:" + source(sink="files")
          + source("f", type="flaky", connection_string="flaky://h", sink="files", target_schema="f"))

    assert run_check(str(tmp_path), online=False) == 0
    assert looked == []
    assert "leftover" not in capsys.readouterr().out

    assert run_check(str(tmp_path), online=True) == 0
    out = capsys.readouterr().out
    assert looked == ["logdb", "lake"]  # the types in use, sources first; never an unused one
    assert out.splitlines()[-3:] == [
        "warning: logdb found a leftover of a removed source",
        "warning: the flaky connector could not look for leftovers (RuntimeError: cannot reach "
        "logdb://admin:***@db/app); skipped",
        "warning: lake found a leftover of a removed source",
    ]
    assert "  files: lake, one commit per table and batch, append-only change log, no soft delete" in out.splitlines()


def test_config_check_summary_lists_each_sink_with_its_capabilities(
    tmp_path: Path, connectors: None, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, connectors=CONNECTORS,
          cdc="    sources:" + source(sink="files") + source("b", sink="db", options="{slot_name: b}"))
    assert run_check(str(tmp_path), online=False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("sinks: 2"):][:3] == [
        "sinks: 2",
        "  files: lake, one commit per table and batch, append-only change log, no soft delete",
        "  db: logdb, one transaction per batch, merge by key, soft delete",
    ]


# ----------------------------------------------------------------------------- the PostgreSQL connector's options


PG_SOURCES = """
    sources:
      - id: shop
        type: postgresql
        connection_string: postgresql://app@db/shop
        tables: [users]
        sink: warehouse
"""
PG_CONNECTORS = """
    connectors:
      - id: warehouse
        type: postgresql
        connection_string: postgresql://loader@wh/dwh
"""


def test_postgres_options_are_checked_with_file_key_and_reason(tmp_path: Path) -> None:
    write(tmp_path, connectors=PG_CONNECTORS, cdc=PG_SOURCES + "        options: {slot_name: Bad-Slot, slotname: x}\n")
    problems = {line.partition(": ")[2].partition(": ")[0]: line for line in lines_of(tmp_path)}
    assert set(problems) == {"sources[0].options.slot_name", "sources[0].options.slotname"}
    assert problems["sources[0].options.slot_name"].startswith("cdc.yaml: sources[0].options.slot_name: ")
    assert "'Bad-Slot'" in problems["sources[0].options.slot_name"]
    assert problems["sources[0].options.slotname"] == (
        "cdc.yaml: sources[0].options.slotname: unknown key; did you mean 'slot_name'?"
    )


def test_postgres_options_load(tmp_path: Path) -> None:
    options = "{slot_name: shop_slot, publication_name: shop_pub, create_slot: false, create_publication: false}"
    write(tmp_path, connectors=PG_CONNECTORS, cdc=PG_SOURCES + f"        options: {options}\n")
    config = load_config(tmp_path)
    parsed = registry.source_options(config.source("shop"))
    assert (parsed.slot_name, parsed.publication_name, parsed.create_slot, parsed.create_publication) == (
        "shop_slot", "shop_pub", False, False)


def test_postgres_sources_on_one_connection_need_distinct_slots(tmp_path: Path) -> None:
    second = PG_SOURCES.replace("sources:", "").replace("id: shop", "id: SHOP") + "        target_schema: other\n"
    write(tmp_path, connectors=PG_CONNECTORS, cdc=PG_SOURCES + second)
    lines = lines_of(tmp_path)
    assert len(lines) == 1, lines
    assert re.match(r"cdc\.yaml: sources\[1\]\.(options\.)?slot_name: ", lines[0]), lines
    assert "cdc_shop" in lines[0] and "sources[0]" in lines[0]


# ------------------------------------------------------------------------------------ the file connector's options


FILE_CONNECTORS = """
    connectors:
      - id: lake
        type: file
        connection_string: file:///tmp/lake
        options: {format: parquet, storage_options: {AWS_REGION: eu-west-1}}
"""


def test_file_sink_options_load_and_are_checked(tmp_path: Path) -> None:
    cdc = PG_SOURCES.replace("sink: warehouse", "sink: lake")
    write(tmp_path, connectors=FILE_CONNECTORS, cdc=cdc)
    assert registry.sink_options(load_config(tmp_path).connector("lake")).format == "parquet"

    write(tmp_path, connectors=FILE_CONNECTORS.replace("format: parquet", "fromat: csv"), cdc=cdc)
    assert lines_of(tmp_path) == [
        "connectors.yaml: connectors[0].options.fromat: unknown key; did you mean 'format'?",
    ]


def test_a_file_connector_is_no_source(tmp_path: Path) -> None:
    write(tmp_path, connectors=FILE_CONNECTORS,
          cdc=PG_SOURCES.replace("type: postgresql", "type: file").replace("sink: warehouse", "sink: lake"))
    assert lines_of(tmp_path) == ["cdc.yaml: sources[0].type: connector type 'file' cannot be a source"]
