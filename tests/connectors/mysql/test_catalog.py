"""The MySQL/MariaDB catalog on a real MariaDB: columns, keys, refusals, caveats and backfills."""

from __future__ import annotations

from typing import Any

from airflow_provider_cdc.connectors.mysql import connection
from airflow_provider_cdc.connectors.mysql.catalog import caveats, read_catalog, read_tables, refusal, refusals
from airflow_provider_cdc.connectors.mysql.types import snapshot_formatter, snapshot_select_expr
from airflow_provider_cdc.tables import TableSchema

q = connection.quote_name


def execute(conn: Any, *statements: str) -> None:
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


class CountingConnection:
    """A pymysql connection that counts the statements run through its cursors."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.statements = conn, 0

    def get_server_info(self) -> str:
        return str(self.conn.get_server_info())

    def cursor(self) -> Any:
        outer, cursor = self, self.conn.cursor()
        execute_one = cursor.execute

        def counted(*args: Any, **kwargs: Any) -> Any:
            outer.statements += 1
            return execute_one(*args, **kwargs)

        cursor.execute = counted
        return cursor


def test_keys_and_refusals(mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    with mariadb_server.connect(db) as conn:
        execute(
            conn,
            "CREATE TABLE composite (a int NOT NULL, b varchar(10) NOT NULL, c int, PRIMARY KEY (b, a))",
            "CREATE TABLE by_unique (a int, d int NOT NULL, e int NOT NULL, f int NOT NULL, "
            "UNIQUE KEY aa (a), UNIQUE KEY zz (d, e), UNIQUE KEY mm (f), KEY bb (d))",
            "CREATE TABLE no_key (a int, b int NOT NULL, UNIQUE KEY nullable (a), KEY plain (b))",
            "CREATE TABLE reserved (id int PRIMARY KEY, _cdc_x int, _cdc_op text)",
            "CREATE TABLE cyrillic (id int PRIMARY KEY, name varchar(10) CHARACTER SET cp1251, "
            "l1 varchar(10) CHARACTER SET latin1)",
            "CREATE TABLE mem (id int PRIMARY KEY) ENGINE=MEMORY",
            "CREATE TABLE mine (id int PRIMARY KEY) ENGINE=MyISAM",
            "CREATE TABLE aria (id int PRIMARY KEY) ENGINE=Aria",
            "CREATE TABLE merged (id int NOT NULL, KEY (id)) ENGINE=MRG_MyISAM UNION=(mine)",
            "CREATE VIEW vw AS SELECT a, b FROM composite",
            "CREATE SEQUENCE seq",
        )
    names = ["composite", "by_unique", "no_key", "reserved", "cyrillic", "mem", "mine", "aria", "merged", "vw", "seq",
             "missing"]
    with connection.connect(url) as raw:
        counting = CountingConnection(raw)
        found = read_catalog(counting, [(db, name) for name in names])
    assert counting.statements == 4  # TABLES, COLUMNS, STATISTICS, CHECK_CONSTRAINTS: whatever the number of tables
    assert sorted(found) == sorted(f"{db}.{name}" for name in names if name != "missing")

    composite = found[f"{db}.composite"]
    assert composite.schema.column_names == ["a", "b", "c"] and composite.schema.primary_key == ["a", "b"]
    assert [c.nullable for c in composite.schema.columns] == [False, False, True]
    assert composite.info.key_index == "PRIMARY"
    assert refusal(composite.schema, composite.info) is None and caveats(composite.schema, composite.info) == []

    by_unique = found[f"{db}.by_unique"]  # aa is on a nullable column; mm comes before zz
    assert by_unique.schema.primary_key == ["f"] and by_unique.info.key_index == "mm"
    assert refusal(by_unique.schema, by_unique.info) is None
    assert caveats(by_unique.schema, by_unique.info) == [
        f"{db}.by_unique has no primary key: rows are keyed by its unique index 'mm' (f)"]

    reasons = refusals(found.values())
    assert reasons == {
        f"{db}.no_key": f"{db}.no_key has no primary key and no unique index on NOT NULL columns, so its rows have no "
                        f"identity to merge by: add a primary key, or a unique index on NOT NULL columns",
        f"{db}.reserved": f"{db}.reserved has columns in the _cdc_ namespace, which is reserved for bookkeeping: "
                          f"_cdc_x, _cdc_op; rename them",
        f"{db}.cyrillic": f"{db}.cyrillic has text columns in character sets the binlog reader cannot decode exactly: "
                          f"name (cp1251) (supported: ascii, binary, latin1, ucs2, utf16, utf16le, utf32, utf8, "
                          f"utf8mb3, utf8mb4); convert them, e.g. ALTER TABLE ... CONVERT TO CHARACTER SET utf8mb4",
        f"{db}.mem": f"{db}.mem uses the MEMORY engine, which cannot be captured faithfully: a server restart "
                     f"empties it, and the binlog records that as a DELETE FROM statement, not as row events, so the "
                     f"sink would keep rows the source lost; convert it, e.g. ALTER TABLE ... ENGINE=InnoDB",
        f"{db}.merged": f"{db}.merged uses the MRG_MyISAM engine, which cannot be captured faithfully: writes land in "
                        f"its underlying MyISAM tables and are logged under their names; convert it, e.g. ALTER TABLE "
                        f"... ENGINE=InnoDB",
        f"{db}.vw": f"{db}.vw is a view: the binlog has no row events for views; capture the tables it reads instead",
        f"{db}.seq": f"{db}.seq is a sequence: it is a generated sequence, not stored rows",
    }
    for name, engine in (("mine", "MyISAM"), ("aria", "Aria")):
        table = found[f"{db}.{name}"]
        assert refusal(table.schema, table.info) is None
        assert caveats(table.schema, table.info) == [
            f"{db}.{name} uses the non-transactional {engine} engine: every change is in the binlog as it happened, "
            f"but its snapshot is not a point-in-time image, so the sink may briefly show rows newer than the changes "
            f"still to come; the stream converges them"]


WEIRD_TABLES = {
    "my table": ["col one", "order", 'qu"ote', "ba`ck", "ünï", "it's"],
    'it\'s "q"': ["id", "select"],
    "back`tick": ["id", "x"],
    "naïve_名前": ["ключ", "値"],
    "select": ["from", "where"],
    "Users": ["id"],
    "users": ["ID2"],
}


def test_names_that_need_quoting(mariadb_server: Any) -> None:
    weird_db = "cdc weird `db` ü"
    with mariadb_server.connect() as conn:
        execute(conn, f"DROP DATABASE IF EXISTS {q(weird_db)}", f"CREATE DATABASE {q(weird_db)} CHARACTER SET utf8mb4")
    try:
        with mariadb_server.connect(weird_db) as conn:
            for table, columns in WEIRD_TABLES.items():
                defs = ", ".join(f"{q(c)} int" + (" PRIMARY KEY" if i == 0 else "") for i, c in enumerate(columns))
                execute(conn, f"CREATE TABLE {q(table)} ({defs})")
        url = mariadb_server.url("")
        with connection.connect(url) as conn:
            found = read_tables(conn, [(weird_db, t) for t in WEIRD_TABLES] + [(weird_db, "USERS")])
        assert sorted(found) == sorted(f"{weird_db}.{t}" for t in WEIRD_TABLES)  # names match exactly
        for table, columns in WEIRD_TABLES.items():
            schema = found[f"{weird_db}.{table}"]
            assert (schema.schema, schema.name, schema.column_names, schema.primary_key) == (
                weird_db, table, columns, columns[:1])
    finally:
        with mariadb_server.connect() as conn:
            execute(conn, f"DROP DATABASE IF EXISTS {q(weird_db)}")


# Columns added to a table that has rows: (definition, expected backfill, expected backfill_unknown).
ADDED = {
    "n_int": ("int NOT NULL DEFAULT 42", "42", False),
    "n_neg": ("int DEFAULT -7", "-7", False),
    "s": ("varchar(20) DEFAULT 'it''s \\\\ x'", "it's \\ x", False),
    "s_null_text": ("varchar(10) DEFAULT 'NULL'", "NULL", False),
    "s_null": ("varchar(10) DEFAULT NULL", None, False),
    "s_plain": ("varchar(10)", None, False),
    "emoji": ("varchar(5) DEFAULT '😀'", None, True),  # the catalog shows '?': unknowable
    "question": ("varchar(5) CHARACTER SET latin1 DEFAULT '?'", "?", False),  # latin1 has no emoji: a real '?'

    "l1": ("varchar(5) CHARACTER SET latin1 DEFAULT 'é€'", "é€", False),
    "tx": ("text DEFAULT 'hello'", "hello", False),
    "c": ("char(5) DEFAULT 'ab  '", "ab", False),
    "nn_int": ("int NOT NULL", "0", False),
    "nn_str": ("varchar(5) NOT NULL", "", False),
    "nn_enum": ("enum('x','y') NOT NULL", "x", False),
    "nn_dec": ("decimal(5,2) NOT NULL", "0.00", False),
    "nn_bin": ("binary(2) NOT NULL", "0000", False),
    "nn_time": ("time NOT NULL", "00:00:00", False),
    "nn_date": ("date NOT NULL", None, False),  # the zero date, as the null policy reads it
    "dc": ("decimal(6,3) DEFAULT 1.5", "1.500", False),
    "bu": ("bigint unsigned DEFAULT 18446744073709551615", "18446744073709551615", False),
    "f": ("float DEFAULT 1.1", "1.1", False),
    "d": ("double DEFAULT 0.1", "0.1", False),
    "bt": ("bit(4) DEFAULT b'1010'", "10", False),
    "bn": ("binary(3) DEFAULT 'ab'", "616200", False),
    "vb": ("varbinary(5) DEFAULT 'xyz'", "78797a", False),
    "bl": ("blob DEFAULT 'ab'", "6162", False),
    "da": ("date DEFAULT '2024-02-29'", "2024-02-29", False),
    "dz": ("date DEFAULT '0000-00-00'", None, False),
    "dt": ("datetime(3) DEFAULT '2024-01-02 03:04:05.600'", "2024-01-02T03:04:05.6", False),
    "ts": ("timestamp NULL DEFAULT '2024-01-01 05:30:00'", "2024-01-01T00:00:00Z", False),  # written at +05:30
    "tm": ("time(2) DEFAULT '-01:00:00.5'", "-01:00:00.5", False),
    "y": ("year DEFAULT 2024", "2024", False),
    "e": ("enum('a','b') DEFAULT 'b'", "b", False),
    "st": ("set('a','b','c') DEFAULT 'c,a'", "a,c", False),
    "j": ("json DEFAULT '{\"a\": [1, 2.50]}'", '{"a": [1, 2.50]}', False),
    "uu": ("uuid DEFAULT '123E4567-E89B-12D3-A456-426614174000'", "123e4567-e89b-12d3-a456-426614174000", False),
    "i6": ("inet6 DEFAULT '::ffff:1.2.3.4'", "::ffff:1.2.3.4", False),
    "expr_ts": ("datetime DEFAULT current_timestamp()", None, True),
    "expr_uuid": ("char(36) DEFAULT uuid()", None, True),
    "expr_calc": ("int DEFAULT (1 + 1)", None, True),
    "gen_v": ("int AS (n_int + 1) VIRTUAL", None, True),
    "gen_s": ("int AS (n_int * 2) STORED", None, True),
}


def test_backfill_of_added_columns_is_what_older_rows_hold(mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    with mariadb_server.connect(db) as conn:
        execute(conn, "CREATE TABLE grown (id int PRIMARY KEY)", "INSERT INTO grown VALUES (1), (2)",
                "SET sql_mode = '', time_zone = '+05:30'")
        for name, (definition, _, _) in ADDED.items():  # one ALTER each, as users add columns
            execute(conn, f"ALTER TABLE grown ADD COLUMN {q(name)} {definition}")
    with connection.connect(url) as conn:
        schema = read_tables(conn, [(db, "grown")])[f"{db}.grown"]
        with conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(snapshot_select_expr(c) for c in schema.columns)} FROM grown WHERE id = 1")
            row = cur.fetchone()
    held = {c.name: snapshot_formatter(c)(v) for c, v in zip(schema.columns, row)}
    by_name = {c.name: c for c in schema.columns}
    assert schema.column("j").logical_type == "json"
    for name, (_, backfill, unknown) in ADDED.items():
        column = by_name[name]
        assert (column.backfill, column.backfill_unknown) == (backfill, unknown), name
        if not unknown:
            assert held[name] == backfill, name  # what the older row holds, as the snapshot reads it
    assert held["expr_calc"] == "2" and held["gen_v"] == "43" and held["gen_s"] == "84" and held["emoji"] == "😀"


def test_mariadb_json_is_found_from_its_check(mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    with mariadb_server.connect(db) as conn:
        execute(conn, "CREATE TABLE docs (id int PRIMARY KEY, j json, t longtext, `we``ird` longtext, "
                      "CONSTRAINT table_level CHECK (json_valid(`we``ird`)), "
                      "u longtext CHECK (json_valid(u) or u = ''))")
    with connection.connect(url) as conn:
        schema: TableSchema = read_tables(conn, [(db, "docs")])[f"{db}.docs"]
    assert [(c.name, c.source_type, c.logical_type) for c in schema.columns] == [
        ("id", "int(11)", "integer"), ("j", "longtext", "json"), ("t", "longtext", "text"),
        ("we`ird", "longtext", "json"), ("u", "longtext", "text"),  # only a plain json_valid check makes JSON
    ]


def test_read_tables_of_nothing(mariadb_server: Any, mariadb_database: str) -> None:
    with connection.connect(mariadb_database) as conn:
        assert read_tables(conn, []) == {}
        assert read_tables(conn, [(connection.database_of(mariadb_database), "absent")]) == {}


def test_generated_columns_stay_ordinary_columns(mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    with mariadb_server.connect(db) as conn:
        execute(conn, "CREATE TABLE gen (id int PRIMARY KEY, v int AS (id * 2) VIRTUAL, s int AS (id + 1) STORED)")
    with connection.connect(url) as conn:
        schema = read_tables(conn, [(db, "gen")])[f"{db}.gen"]
    assert [(c.name, c.logical_type, c.backfill_unknown) for c in schema.columns] == [
        ("id", "integer", False), ("v", "integer", True), ("s", "integer", True)]
