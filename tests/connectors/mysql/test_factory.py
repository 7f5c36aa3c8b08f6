"""The MySQL connector's factory and the parts of it that need no server: URLs, options, config checks, and the
MySQL 8 GTID form (MySQL itself cannot run here; its GTID text is MySQL's documented ``uuid:interval`` form)."""

from __future__ import annotations

import pytest

from airflow_provider_cdc.config import SourceConfig
from airflow_provider_cdc.connectors.mysql.connection import connect_kwargs, database_of, normalize_uri
from airflow_provider_cdc.connectors.mysql.factory import check_sources
from airflow_provider_cdc.connectors.mysql.options import MySqlSourceOptions
from airflow_provider_cdc.connectors.mysql.stream import BinlogBatch, _add_mysql_gtid, _gtid_domains
from airflow_provider_cdc.connectors.registry import factory, make_source
from airflow_provider_cdc.errors import TableRefusedError


def test_mysqlhook_uris_become_driver_urls():
    url = normalize_uri("mysql+pymysql://us+er:p%2Bw+x@db.example:3307/my+db?charset=utf8&client=pymysql")
    assert url.startswith("mysql://us%20er:p%2Bw%20x@db.example:3307/my%20db")
    kwargs = connect_kwargs(url)
    assert (kwargs["user"], kwargs["password"]) == ("us er", "p+w x")
    assert (kwargs["host"], kwargs["port"]) == ("db.example", 3307)
    assert database_of(url) == "my db"
    assert normalize_uri("mysql://root@h/") == "mysql://root@h"


def test_unqualified_tables_need_a_database_in_the_url():
    config = SourceConfig(id="m", type="mysql", connection_string="mysql://root@h:3306", tables=["users"],
                          sink="warehouse")
    with pytest.raises(TableRefusedError, match="name the database"):
        make_source(config, "mysql://root@h:3306")
    qualified = SourceConfig(id="m", type="mysql", connection_string="mysql://root@h:3306/shop",
                             tables=["users", "crm.leads"], sink="warehouse")
    assert make_source(qualified, "mysql://root@h:3306/shop").qualified_tables == ["shop.users", "crm.leads"]


def test_two_sources_on_one_server_need_distinct_server_ids():
    a = SourceConfig(id="a", type="mysql", connection_string="mysql://root@h/shop", tables=["t"], sink="w")
    b = SourceConfig(id="b", type="mysql", connection_string="mysql://root@h/shop", tables=["t"], sink="w",
                     options={"server_id": 7})
    c = SourceConfig(id="c", type="mysql", connection_string="mysql://root@h/shop", tables=["t"], sink="w",
                     options={"server_id": 7})
    entries = [(i, s, MySqlSourceOptions.model_validate(s.options)) for i, s in enumerate([a, b, c])]
    assert check_sources(entries) == [(2, "options.server_id", "server_id 7 is also used by sources[1] on the same "
                                       "connection; set a distinct options.server_id")]
    assert MySqlSourceOptions().effective_server_id("a") != MySqlSourceOptions().effective_server_id("b")


def test_options_are_validated():
    assert factory("mysql").source_options is MySqlSourceOptions
    with pytest.raises(ValueError, match="position_mode"):
        MySqlSourceOptions.model_validate({"position_mode": "lsn"})
    with pytest.raises(ValueError, match="extra"):
        MySqlSourceOptions.model_validate({"slot_name": "x"})


def test_mysql_gtid_sets_grow_by_one_transaction_in_mysqls_own_form():
    uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
    assert _add_mysql_gtid("", f"{uuid}:1") == f"{uuid}:1"
    assert _add_mysql_gtid(f"{uuid}:1-41", f"{uuid}:42") == f"{uuid}:1-42"
    other = "4e11fa47-71ca-11e1-9e33-c80aa9429562"
    grown = _add_mysql_gtid(f"{uuid}:1-5", f"{other}:9")
    assert set(grown.split(",")) == {f"{uuid}:1-5", f"{other}:9"}


def test_mariadb_gtid_positions_keep_one_gtid_per_domain():
    assert _gtid_domains("0-1-42,1-2-7") == {0: "0-1-42", 1: "1-2-7"}
    assert _gtid_domains("") == {}


def _reader_of(position: dict) -> dict:
    """The arguments the binlog reader is opened with for ``position`` (captured, not connected)."""
    import airflow_provider_cdc.connectors.mysql.stream as stream

    seen: dict = {}

    class Spy:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    original = stream.BinLogStreamReader
    stream.BinLogStreamReader = Spy  # type: ignore[misc]
    try:
        BinlogBatch(source_id="s", url="mysql://root@h/shop", conn=None, position=position,  # type: ignore[arg-type]
                    keep={"shop.t"}, configured=["shop.t"], server_id=9, zero_dates="null",
                    max_changes=10)._reader()
    finally:
        stream.BinLogStreamReader = original  # type: ignore[misc]
    return seen


def test_each_position_kind_opens_the_reader_the_way_the_library_resumes_it():
    by_file = _reader_of({"file": "mysql-bin.000003", "pos": 1234, "gtid": "0-1-5", "gtid_kind": "mariadb",
                          "mode": "file"})
    # By file and offset the library must not be told it is MariaDB: with is_mariadb it resumes only by GTID.
    assert by_file["log_file"] == "mysql-bin.000003" and by_file["log_pos"] == 1234
    assert "is_mariadb" not in by_file and "auto_position" not in by_file
    mariadb = _reader_of({"file": "f.1", "pos": 4, "gtid": "0-1-5", "gtid_kind": "mariadb", "mode": "gtid"})
    assert mariadb["auto_position"] == "0-1-5" and mariadb["is_mariadb"] is True
    mysql = _reader_of({"file": "f.1", "pos": 4, "gtid": "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42",
                        "gtid_kind": "mysql", "mode": "gtid"})
    assert mysql["auto_position"].endswith(":1-42") and "is_mariadb" not in mysql
    fresh = _reader_of({"file": "f.1", "pos": 4, "gtid": "", "gtid_kind": "mariadb", "mode": "gtid"})
    assert fresh["log_pos"] == 4  # no GTID yet: by offset, never "from the first binlog"
