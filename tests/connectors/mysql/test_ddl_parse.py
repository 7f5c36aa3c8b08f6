"""The DDL the stream follows, read from statement text as the binlog carries it."""

from __future__ import annotations

import pytest

from airflow_provider_cdc.connectors.mysql.ddl_parse import parse


def test_alter_table_renames_and_drops_columns_and_ignores_the_rest():
    effect = parse("ALTER TABLE `shop`.`it``ems` RENAME COLUMN note TO remark, ADD COLUMN extra int DEFAULT 5, "
                   "DROP COLUMN `x`, DROP INDEX i, DROP PRIMARY KEY, CHANGE `a b` `c` varchar(3), "
                   "CHANGE same same bigint, MODIFY z int AFTER w, DROP FOREIGN KEY fk")
    assert effect.kind == "alter"
    assert effect.tables == [("shop", "it`ems")]
    assert effect.renamed_columns == [("note", "remark"), ("a b", "c")]
    assert effect.dropped_columns == ["x"]


def test_keywords_in_backquotes_are_names_and_comments_are_skipped():
    effect = parse("/* a comment */ ALTER TABLE t -- another\n DROP COLUMN `index`, DROP IF EXISTS `y`")
    assert effect.dropped_columns == ["index", "y"]


@pytest.mark.parametrize("statement, pairs", [
    ("RENAME TABLE orders TO _orders_del, _orders_gho TO orders",
     [((None, "orders"), (None, "_orders_del")), ((None, "_orders_gho"), (None, "orders"))]),
    ("rename /*!50000 table */ `db`.a to db.b", [(("db", "a"), ("db", "b"))]),
    ("ALTER TABLE t RENAME TO u", [((None, "t"), (None, "u"))]),
    ("ALTER TABLE t RENAME AS x.u", [((None, "t"), ("x", "u"))]),
])
def test_table_renames(statement, pairs):
    assert parse(statement).renamed_tables == pairs


@pytest.mark.parametrize("statement, kind, tables", [
    ("TRUNCATE t", "truncate", [(None, "t")]),
    ("truncate table `db`.`t`", "truncate", [("db", "t")]),
    ("DROP TABLE IF EXISTS `x`, y.z", "drop", [(None, "x"), ("y", "z")]),
    ("CREATE TABLE IF NOT EXISTS `n` (id int)", "create", [(None, "n")]),
    ("CREATE OR REPLACE TABLE n (id int)", "create", [(None, "n")]),
    ("CREATE TEMPORARY TABLE x (id int)", "other", []),
    ("DROP TEMPORARY TABLE IF EXISTS x", "other", []),
    ("CREATE INDEX i ON t (c)", "other", []),
    ("SAVEPOINT s1", "other", []),
    ("GRANT SELECT ON *.* TO u", "other", []),
    ("", "other", []),
])
def test_statement_kinds(statement, kind, tables):
    effect = parse(statement)
    assert (effect.kind, effect.tables) == (kind, tables)
