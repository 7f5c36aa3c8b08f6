"""The audit contract without a server: the rows a batch makes, their ids, masking, actors and order."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_provider_cdc.connectors import audit
from airflow_provider_cdc.connectors.audit import AuditEntry, audit_entry, batch_audit_entries, newest_first
from airflow_provider_cdc.connectors.ledger import LedgerRow

AT = dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.timezone.utc)


def row(**overrides) -> LedgerRow:
    values = dict(batch_id="shop:1-3", source_id="shop", position_from={"lsn": "0/0"},
                  position_to={"lsn": "0/3", "seq": 3}, seq_from=1, seq_to=3,
                  counts={"public.items": {"c": 2, "d": 1}},
                  stage_versions={"transform": {"rules": {"mask": "h1"}},
                                  "validate": {"suites": {"checks": "s1"}, "metrics": {"public.items": {"failed": 1}}}},
                  schema_versions={"versions": {"shop.public.items": 1}, "changes": [], "held": {}},
                  run_id="manual__1", rows_upserted=2, rows_deleted=1, committed_at=AT)
    return LedgerRow(**{**values, **overrides})


def test_a_batch_makes_its_rows_from_the_ledger_row_and_the_facts():
    facts = {"capture": {"at": "2024-05-01T07:59:00+00:00", "changes": 4, "counts": {"public.items": {"c": 3}}},
             "transform": {"at": "2024-05-01T07:59:30+00:00", "changes": 4, "counts": {}, "quarantined": 0},
             "validate": {"at": "2024-05-01T07:59:40+00:00", "changes": 3, "counts": {}, "quarantined": 1}}
    entries = batch_audit_entries(row(), versions={"audit": facts}, quarantined=1)
    by_action = {entry.action: entry for entry in entries}
    assert [entry.action for entry in entries] == ["batch_captured", "batch_transformed", "batch_validated",
                                                   "rules_changed", "rules_changed", "batch_loaded"]
    assert by_action["batch_captured"].details["changes"] == 4
    assert by_action["batch_captured"].at == dt.datetime(2024, 5, 1, 7, 59, tzinfo=dt.timezone.utc)
    assert by_action["batch_validated"].details["quarantined"] == 1
    assert by_action["batch_validated"].details["versions"]["metrics"] == {"public.items": {"failed": 1}}
    assert by_action["batch_loaded"].details["rows_deleted"] == 1 and by_action["batch_loaded"].at == AT
    assert {entry.actor for entry in entries} == {"airflow:cdc_shop"}
    assert {entry.run_id for entry in entries} == {"manual__1"}
    # Ids derive from the batch: the same batch always makes the same ids, all different.
    again = batch_audit_entries(row(), versions={"audit": facts}, quarantined=1)
    assert [e.audit_id for e in entries] == [e.audit_id for e in again]
    assert len({e.audit_id for e in entries}) == len(entries)


def test_rules_changed_compares_with_the_previous_batch():
    same = batch_audit_entries(row(batch_id="shop:4-5"), previous=row())
    assert "rules_changed" not in [entry.action for entry in same]
    changed = row(batch_id="shop:4-5", stage_versions={"transform": {"rules": {"mask": "h2", "new": "n"}}})
    entries = [e for e in batch_audit_entries(changed, previous=row()) if e.action == "rules_changed"]
    assert [(e.details["stage"], e.details["added"], e.details["removed"], e.details["changed"]) for e in entries] \
        == [("transform", ["new"], [], ["mask"]), ("validate", [], ["checks"], [])]
    # A previous row that tells nothing of its stages (an accept's replay) is no reason to report a change.
    assert not [e for e in batch_audit_entries(changed, previous=row(stage_versions=None))
                if e.action == "rules_changed"]


def test_details_never_hold_a_credential():
    entry = audit_entry("resnapshot_started", "shop", actor="ops", details={
        "source": "postgresql://app:s3cret@db:5432/shop", "steps": ["dsn host=db password=s3cret"]})
    text = repr(entry.details)
    assert "s3cret" not in text and "app:***@db" in text


def test_the_actor_is_the_callers_else_cdc_actor_else_the_os_user(monkeypatch):
    monkeypatch.setenv("CDC_ACTOR", "jenkins")
    assert audit.resolve_actor("alice") == "alice"
    assert audit.resolve_actor() == "jenkins"
    monkeypatch.delenv("CDC_ACTOR")
    import getpass

    assert audit.resolve_actor() == getpass.getuser()
    assert audit.pipeline_actor("shop", None) == getpass.getuser()
    assert audit.pipeline_actor("shop", "scheduled__1") == "airflow:cdc_shop"


def test_records_round_trip_and_read_newest_first():
    entries = batch_audit_entries(row())
    records = [entry.to_record(json_as_text=True) for entry in entries]
    back = [AuditEntry.from_record({**record, "at": record["at"].replace(tzinfo=None)}) for record in records]
    assert back == entries
    ordered = newest_first(back + back)
    assert [e.action for e in ordered][:1] == ["batch_loaded"] and len(ordered) == len(entries)
    with pytest.raises(ValueError, match="unknown audit action"):
        audit_entry("batch_exploded", "shop")
