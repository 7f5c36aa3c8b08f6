"""A lost position recovered by ``python -m airflow_provider_cdc resnapshot`` (issue 16, item 1), for the source
type whose recovery had no end-to-end test yet: MariaDB after its binlog was purged past the stored position.

The other two are proved elsewhere: a dropped PostgreSQL slot in
``tests/test_resnapshot.py::test_resnapshot_recovers_a_source_whose_slot_was_dropped``, a MongoDB oplog rolled over
(``ChangeStreamHistoryLost``) in
``tests/e2e/test_mongodb_pipeline.py::test_an_oplog_rolled_past_the_position_is_recovered_by_resnapshot``.
"""

from __future__ import annotations

import pytest
from cdc_testing import assert_ledger_consistent, drain, ledger_rows, staged_run
from conftest import MariaDBServer
from test_resnapshot import cli

from airflow_provider_cdc.errors import PositionLostError
from reliability.conftest import stored_position

pytestmark = [pytest.mark.timeout(300)]


def test_a_purged_mariadb_binlog_names_resnapshot_and_resnapshot_restores_equality(
        private_mariadb, sink_pg, shop_pipeline):
    from e2e.test_mariadb_pipeline import assert_same, execute

    shop = shop_pipeline(private_mariadb, sink_pg, name="purged", users=150, orders=250, batch_size=100)
    source_url, sink_url, source_id, hook = shop.source_url, shop.sink_url, shop.source_id, shop.hook
    config_dir = shop.config_dir
    drain(hook, "before")
    assert_same(source_url, sink_url, "users")
    stored = stored_position(source_id)

    # Changes nobody captured, then the binlogs that hold them are purged: only a snapshot has them now.
    execute(source_url, "UPDATE users SET name = 'lost' WHERE id <= 20; DELETE FROM orders WHERE id > 200; "
                        "INSERT INTO users (id, email, name) VALUES (1000, 'new@example.com', 'New')")
    MariaDBServer(private_mariadb.url()).purge_binlogs()
    with pytest.raises(PositionLostError, match=rf"purged.*python -m airflow_provider_cdc resnapshot {source_id}\b"):
        staged_run(hook, "lost")
    assert stored_position(source_id) == stored  # the run stopped: nothing skipped, nothing stored

    result = cli("resnapshot", source_id, "--yes", "--config-dir", str(config_dir), config_dir=config_dir)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    # A binlog position has no holder at the source: step 1 says so, and the rest is as for every source.
    for step in ("1. nothing holds the old position at the source", "from the sink ledger",
                 "3. truncated sink tables users, orders", f"5. deleted Variable cdc.position.{source_id}",
                 "snapshot of 2 tables pending"):
        assert step in result.stdout, result.stdout
    assert ledger_rows(sink_url, source_id) == []

    drain(hook, "after")
    assert assert_same(source_url, sink_url, "users") == 151
    assert_same(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)

    execute(source_url, "UPDATE users SET name = 'streamed' WHERE id BETWEEN 30 AND 40")  # and it streams again
    drain(hook, "streaming")
    assert_same(source_url, sink_url, "users")
    assert_ledger_consistent(sink_url, source_id)
