"""MongoDB values that break pipelines (EDGE_CASES.md, values and names), into PostgreSQL and MongoDB sinks.

NaN and the infinities as doubles and as ``Decimal128``, and field names with dots and dollars *inside* nested
documents and arrays (top-level ones are in ``tests/contract/test_contract_mongodb_source.py::
test_field_names_with_dots_dollars_and_unicode``). Each arrives exactly, by snapshot and by change stream, or the run
stops with an error naming the field and the document before anything is written.
"""

from __future__ import annotations

import math

import psycopg
import pytest
from bson import Decimal128
from contract.test_contract_mongodb_source import MongoPair, pair, pair_factory, sink_under_test  # noqa: F401
from psycopg import sql

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.parametrize(("sink_kind", "pg_server"), [("postgresql", "pg15"), ("mongodb", "pg15")],
                            indirect=["pg_server"], ids=["postgresql", "mongodb"]),
]

SPECIALS = {"f_nan": math.nan, "f_inf": math.inf, "f_ninf": -math.inf, "d_nan": Decimal128("NaN"),
            "d_inf": Decimal128("Infinity"), "d_ninf": Decimal128("-Infinity")}
ODD_NAMES = {"a.b": 1, "$price": 2, "x": {"$inner": [{"c.d": 3, "$e": {"f.g": None}}]}, "": "empty name"}


def specials_in_sink(made: MongoPair, doc_id: int) -> dict[str, str]:
    """The stored specials of one document, as text (NaN never equals itself, so values are compared as text)."""
    fields = list(SPECIALS)
    if made.under_test.name == "mongodb":
        from airflow_provider_cdc.connectors.mongodb.connection import connect

        with connect(made.under_test.location) as client:
            doc = client[made.target_schema]["items"].find_one({"_id": doc_id})
        assert doc is not None
        return {name: str(doc[name]) for name in fields}
    select = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(name)) for name in fields)
    with psycopg.connect(made.under_test.location) as conn:
        row = conn.execute(sql.SQL("SELECT {} FROM {} WHERE _id = %s").format(
            select, sql.Identifier(made.target_schema, "items")), (str(doc_id),)).fetchone()
    assert row is not None
    return dict(zip(fields, row))


def test_nan_and_infinities_arrive_exactly(pair):  # noqa: F811 - the imported fixture
    pair.db.items.insert_one({"_id": 1, **SPECIALS})
    pair.run()  # by snapshot
    pair.db.items.insert_one({"_id": 2, **SPECIALS})
    pair.db.items.update_one({"_id": 1}, {"$set": {"f_nan": -math.inf, "d_nan": Decimal128("-Infinity")}})
    pair.run()  # by change stream
    expected = {"f_nan": "NaN", "f_inf": "Infinity", "f_ninf": "-Infinity", "d_nan": "NaN", "d_inf": "Infinity",
                "d_ninf": "-Infinity"}
    if pair.under_test.name == "mongodb":  # BSON's own spellings
        expected = {"f_nan": "nan", "f_inf": "inf", "f_ninf": "-inf", "d_nan": "NaN", "d_inf": "Infinity",
                    "d_ninf": "-Infinity"}
    assert specials_in_sink(pair, 2) == expected
    assert specials_in_sink(pair, 1) == {**expected, "f_nan": expected["f_ninf"], "d_nan": expected["d_ninf"]}


def test_dots_and_dollars_inside_nested_documents_arrive_as_written(pair):  # noqa: F811 - the imported fixture
    pair.db.items.insert_one({"_id": 1, "doc": ODD_NAMES, "v": 1})
    pair.run()  # by snapshot
    pair.db.items.insert_one({"_id": 2, "doc": {"list": [ODD_NAMES, {"$$": "$x"}]}, "v": 2})
    pair.db.items.update_one({"_id": 1}, {"$set": {"v": 10}})
    pair.run()  # by change stream
    assert pair.assert_same("items") == 2
