"""The registry's pure part: subjects, SchemaVersion (ids, round trip) and the Registry view a sink reads."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from airflow_provider_cdc.schema.avro import avro_schema, fingerprint, schema_key
from airflow_provider_cdc.schema.registry import Registry, SchemaVersion, split_subject, subject_of
from airflow_provider_cdc.tables import Column, TableSchema

ID = Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1)
USERS = TableSchema("public", "users", (ID, Column("email", "text", "text", ordinal=2)), "postgresql")
USERS_V2 = dataclasses.replace(USERS, columns=(*USERS.columns, Column("age", "integer", "integer", ordinal=3)))
ORDERS = TableSchema("sales", "orders", (ID,), "postgresql")


def version(table: TableSchema, number: int, status: str = "applied", *, source_id: str = "shop",
            seq: int | None = None) -> SchemaVersion:
    return SchemaVersion(
        subject=subject_of(source_id, table.qualified_name), version=number,
        schema=avro_schema(table, source_id=source_id), table=table, sink_table=table,
        seq=seq if seq is not None else number * 10, status=status,  # type: ignore[arg-type]
    )


# --- subjects ---------------------------------------------------------------------------------------------------

def test_a_subject_is_source_schema_and_table_and_splits_back() -> None:
    assert subject_of("shop", "public.users") == "shop.public.users"
    assert split_subject("shop.public.users") == ("shop", "public.users")
    # Only the first dot separates the source: a dotted table name stays whole.
    assert split_subject("shop.public.users.archive") == ("shop", "public.users.archive")


@pytest.mark.parametrize("bad", ["shop", "shop.users", "shop.", ""])
def test_a_subject_without_schema_and_table_is_refused_with_its_form(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{bad!r} is not a subject; write <source_id>.<schema>.<table>")):
        split_subject(bad)


# --- SchemaVersion ----------------------------------------------------------------------------------------------

def test_the_id_is_content_addressed_and_equal_for_equal_schemas_across_subjects() -> None:
    first = version(USERS, 1)
    doc = first.schema
    elsewhere = SchemaVersion(subject="billing.public.customers", version=4, schema=json.loads(json.dumps(doc)),
                              table=ORDERS, sink_table=ORDERS, seq=999, status="held")
    assert elsewhere.id == first.id
    assert elsewhere.fingerprint == first.fingerprint == fingerprint(doc)
    assert re.fullmatch(r"[0-9a-f]{16}", first.id)
    assert first.id == schema_key(doc)[:16] and first.key == schema_key(doc)
    assert version(USERS_V2, 2).id != first.id


def test_to_dict_and_from_dict_round_trip_through_json() -> None:
    original = dataclasses.replace(
        version(USERS_V2, 3, "held", seq=42), position="0/1A2B", mode="lenient",
        compatibility={"level": "FULL", "compatible": False, "problems": []}, batch_id="shop:40-42",
        registered_at="2024-05-01T08:00:00+00:00",
        sink_table=dataclasses.replace(USERS_V2, columns=USERS_V2.columns[:2]),
    )
    data = json.loads(json.dumps(original.to_dict()))
    assert data["id"] == original.id and data["fingerprint"] == original.fingerprint
    assert data["subject"] == "shop.public.users" and data["status"] == "held" and data["seq"] == 42
    restored = SchemaVersion.from_dict(data)
    assert restored == original
    assert restored.table == USERS_V2 and restored.sink_table.column_names == ["id", "email"]
    assert restored.source_table == "public.users"


def test_from_dict_fills_what_older_rows_lack() -> None:
    data = version(USERS, 1).to_dict()
    for key in ("position", "status", "mode", "compatibility", "batch_id", "registered_at"):
        del data[key]
    restored = SchemaVersion.from_dict(data)
    assert (restored.status, restored.mode, restored.position, restored.registered_at) == ("applied", "evolve",
                                                                                           None, "")


# --- Registry ---------------------------------------------------------------------------------------------------

def registry() -> Registry:
    """users: v1 applied, v2 held; orders: v1 applied, v2 accepted; passed out of order, as a query may return."""
    return Registry([version(USERS_V2, 2, "held"), version(ORDERS, 2, "accepted"), version(USERS, 1),
                     version(ORDERS, 1)])


def test_latest_latest_followed_and_find() -> None:
    reg = registry()
    users, orders = "shop.public.users", "shop.sales.orders"
    assert reg.subjects() == [users, orders]
    assert [v.version for v in reg.versions(users)] == [1, 2]
    assert reg.latest(users).version == 2  # type: ignore[union-attr]
    assert reg.latest_followed(users).version == 1  # type: ignore[union-attr]  # v2 is held
    assert reg.latest_followed(orders).version == 2  # type: ignore[union-attr]  # accepted is followed
    assert reg.find(users, version(USERS_V2, 9).key).version == 2  # type: ignore[union-attr]
    assert reg.find(users, version(ORDERS, 1).key) is None  # orders' schema is not a users version
    assert reg.latest("shop.public.nothing") is None and reg.latest_followed("shop.public.nothing") is None
    assert reg.versions("shop.public.nothing") == []


def test_next_version_and_in_effect() -> None:
    reg = registry()
    assert reg.next_version("shop.public.users") == 3
    assert reg.next_version("shop.public.new") == 1
    assert reg.in_effect() == {"shop.public.users": 1, "shop.sales.orders": 2}
    only_held = Registry([version(USERS, 1, "held")])
    assert only_held.in_effect() == {}
    ignored = Registry([version(USERS, 1), version(USERS_V2, 2, "ignored")])
    assert ignored.in_effect() == {"shop.public.users": 2}


def test_add_appends_the_next_version_and_marks_it_changed() -> None:
    reg = registry()
    assert reg.changed == {}
    added = reg.add(version(USERS_V2, 3))
    assert reg.latest("shop.public.users") is added
    assert list(reg.changed) == [("shop.public.users", 3)]
    assert reg.in_effect()["shop.public.users"] == 3


def test_add_of_an_existing_number_replaces_it_as_a_status_change() -> None:
    reg = registry()
    accepted = dataclasses.replace(reg.versions("shop.public.users")[1], status="accepted")
    reg.add(accepted)
    assert [v.status for v in reg.versions("shop.public.users")] == ["applied", "accepted"]
    assert reg.changed == {("shop.public.users", 2): accepted}
    assert reg.latest_followed("shop.public.users") is accepted


def test_add_refuses_a_gap() -> None:
    reg = registry()
    with pytest.raises(ValueError, match=r"shop\.public\.users: version 4 after 2"):
        reg.add(version(USERS_V2, 4))
    with pytest.raises(ValueError, match=r"shop\.public\.new: version 2 after 0"):
        reg.add(dataclasses.replace(version(USERS, 2), subject="shop.public.new"))
    assert reg.changed == {}
    assert reg.versions("shop.public.new") == []


def test_document_carries_the_latest_versions_aliases_to_a_rename() -> None:
    v1_table = TableSchema("public", "users", (ID, Column("email", "text", "text", ordinal=2)))
    v2_table = TableSchema("public", "users", (ID, Column("mail", "text", "text", ordinal=2)))
    v3_table = TableSchema("public", "users", (ID, Column("e_mail", "text", "text", ordinal=2)))
    reg = Registry([version(v1_table, 1)])
    v2_doc = reg.document("shop.public.users", v2_table, v1_table)
    reg.add(dataclasses.replace(version(v2_table, 2), schema=v2_doc))
    v3_doc = reg.document("shop.public.users", v3_table, v2_table)
    assert v3_doc["fields"][1]["aliases"] == ["email", "mail"]
    assert v3_doc["namespace"] == "shop.public"
