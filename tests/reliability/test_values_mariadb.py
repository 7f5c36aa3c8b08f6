"""Bytes that are not UTF-8 from a MariaDB source (EDGE_CASES.md, values and encodings), into PostgreSQL and MariaDB.

MySQL's ``latin1`` is cp1252 with its five holes (0x81 0x8D 0x8F 0x90 0x9D) mapped to the C1 controls, not ISO 8859-1;
every one of its 255 non-NUL bytes must arrive as the character MariaDB itself converts it to (the comparison reads
the source through a utf8mb4 session, so the server's conversion is the reference). Binary columns holding bytes that
are not UTF-8 arrive byte for byte. Snapshot and binlog stream both.

MariaDB cannot hold the other rows of that catalogue entry: its doubles have no NaN or Infinity, and ``json_valid``
refuses JSON nested more than 32 levels, so a 1,000-deep document never reaches its binlog.
"""

from __future__ import annotations

import pytest
from contract.test_contract_mariadb_source import pair_factory, sink_under_test  # noqa: F401 - the fixtures

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.parametrize(("sink_kind", "pg_server"), [("postgresql", "pg15"), ("mariadb", "pg15")],
                            indirect=["pg_server"], ids=["postgresql", "mariadb"]),
]

EVERY_BYTE = bytes(range(1, 256)).hex()
NOT_UTF8 = "fffec328c0af80"  # never valid, a lead byte without its continuation, an overlong '/', a lone continuation
DDL = ("CREATE TABLE enc (id int PRIMARY KEY, l varchar(300) CHARACTER SET latin1, lt text CHARACTER SET latin1,"
       " b varbinary(300), bl blob, fb binary(8)) CHARACTER SET utf8mb4")


def test_latin1_bytes_convert_as_mariadb_does_and_binary_bytes_arrive_as_they_are(pair_factory):  # noqa: F811
    pair = pair_factory(ddl=DDL, tables=["enc"])
    row = (f"CONVERT(x'{EVERY_BYTE}' USING latin1), CONVERT(x'{EVERY_BYTE[::-1]}' USING latin1), x'{NOT_UTF8}',"
           f" x'{NOT_UTF8}{EVERY_BYTE}', x'{NOT_UTF8}'")
    pair.sql(f"INSERT INTO enc VALUES (1, {row})")
    pair.run()  # by snapshot
    pair.sql(f"INSERT INTO enc VALUES (2, {row}); UPDATE enc SET b = x'80', lt = CONVERT(x'8d9d' USING latin1)"
             " WHERE id = 1")
    pair.run()  # by binlog stream
    assert pair.assert_same("enc") == 2
    rows = {r["id"]: r for r in pair.sink_rows("enc")}
    assert rows[2]["b"] == bytes.fromhex(NOT_UTF8) and rows[1]["b"] == b"\x80"
    assert rows[1]["lt"] == "\x8d\x9d"  # two of cp1252's holes: C1 controls, as MariaDB converts them
    assert rows[2]["l"][127:130] == "€\x81‚"  # 0x80 0x81 0x82: the cp1252 reading, not ISO 8859-1's
