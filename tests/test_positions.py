"""Positions in the Airflow Variable cdc.position.<source_id> (outside a task: Airflow's metadata DB)."""

from __future__ import annotations

from cdc_testing import unique_id

from airflow_provider_cdc.positions import PositionStore, position_key


def test_set_get_delete_round_trip_through_the_variable():
    from airflow.models import Variable

    store = PositionStore()
    source_id = unique_id("pos")
    assert store.get(source_id) is None
    store.set(source_id, {"lsn": "0/16B3748", "seq": 42}, batch_id=f"{source_id}:0/1-0/16B3748")
    assert store.get(source_id) == {"lsn": "0/16B3748", "seq": 42}
    raw = Variable.get(position_key(source_id), deserialize_json=True)
    assert raw["batch_id"] == f"{source_id}:0/1-0/16B3748" and raw["updated_at"].endswith("+00:00")
    assert position_key(source_id) == f"cdc.position.{source_id}"
    store.delete(source_id)
    assert store.get(source_id) is None
