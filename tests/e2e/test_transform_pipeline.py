"""The seed's transformation rules end to end through ``airflow dags test``, staged and fused, PostgreSQL into
PostgreSQL: ``mask_email``, the ``mask_pii`` JSON object, ``total = price + tax``, the ``status == 'active'`` filter
and the sum aggregate of ``amount1`` and ``amount2``. The sink must hold exactly the transformed rows: filtered-out
rows deleted, a row whose expression fails quarantined with its reason (in the batch's transaction), and the rule
versions in the ledger row."""

from __future__ import annotations

import decimal
import textwrap

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, dags_test, ledger_rows, unique_id, write_config

pytestmark = [pytest.mark.timeout(600), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

DDL = """
CREATE TABLE customers (
    id bigint PRIMARY KEY, email text, phone text, status text,
    price numeric(12,2), tax numeric(12,2), amount1 numeric(12,2), amount2 numeric(12,2)
);
"""

RULES = """\
rules:
  - rule_id: mask_email
    name: Mask Email Addresses
    rule_type: map
    source_fields: [email]
    target_field: masked_email
    expression: "{{ email.split('@')[0][:3] }}***@{{ email.split('@')[1] }}"
  - rule_id: mask_pii
    name: Mask PII Data
    rule_type: map
    source_fields: [email, phone]
    target_field: masked_data
    expression: |
      {
        "email": "***@{{ email.split('@')[1] }}",
        "phone": "***-***-{{ phone[-4:] }}"
      }
  - rule_id: total
    rule_type: map
    source_fields: [price, tax]
    target_field: total
    expression: "{{ price + tax }}"
  - rule_id: active_only
    rule_type: filter
    source_fields: [status]
    expression: "{{ status == 'active' }}"
  - rule_id: amounts
    rule_type: aggregate
    source_fields: [amount1, amount2]
    target_field: amount_sum
    parameters:
      type: sum
"""



def expected(rows: list[tuple]) -> dict[int, dict]:
    """What the rules make of the source rows: active ones only, with their derived columns."""
    out = {}
    for id_, email, phone, status, price, tax, amount1, amount2 in rows:
        if status != "active" or tax is None:
            continue
        local, domain = email.split("@")
        out[id_] = {"masked_email": f"{local[:3]}***@{domain}",
                    "masked_data": {"email": f"***@{domain}", "phone": f"***-***-{phone[-4:]}"},
                    "total": price + tax, "amount_sum": amount1 + amount2, "email": email}
    return out


def sink_rows(sink_url: str) -> dict[int, dict]:
    with psycopg.connect(sink_url) as conn:
        rows = conn.execute("SELECT id, masked_email, masked_data, total, amount_sum, email FROM public.customers"
                            ).fetchall()
    return {r[0]: {"masked_email": r[1], "masked_data": r[2], "total": r[3], "amount_sum": r[4], "email": r[5]}
            for r in rows}


def source_rows(source_url: str) -> list[tuple]:
    with psycopg.connect(source_url) as conn:
        return conn.execute("SELECT id, email, phone, status, price, tax, amount1, amount2 FROM customers").fetchall()


@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_the_seed_rules_reach_the_sink_exactly(mode, pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(DDL)
        for i in range(1, 21):
            conn.execute("INSERT INTO customers VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                         (i, f"person.{i}@example{i % 3}.com", f"+1-555-{1000 + i}", "active" if i % 4 else "inactive",
                          decimal.Decimal(f"{i}.25"), None if i == 7 else decimal.Decimal(f"0.{i:02d}"),
                          decimal.Decimal(f"{i * 10}.10"), decimal.Decimal("0.05")))
    source_id = unique_id("rules")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["customers"], mode=mode)
    (config_dir / "transformations.yaml").write_text(RULES)

    dags_test(source_id, config_dir)
    assert sink_rows(sink_url) == expected(source_rows(source_url))
    assert sink_rows(sink_url)[1] == {"masked_email": "per***@example1.com", "total": decimal.Decimal("1.26"),
                                      "masked_data": {"email": "***@example1.com", "phone": "***-***-1001"},
                                      "amount_sum": decimal.Decimal("10.15"), "email": "person.1@example1.com"}
    with psycopg.connect(sink_url) as conn:
        quarantined = conn.execute("SELECT source_table, stage, rule_id, row->>'id', reason FROM public._cdc_quarantine"
                                   ).fetchall()
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name ="
                                  " 'customers' AND table_schema = 'public'").fetchall())
    assert [q[:4] for q in quarantined] == [("public.customers", "transform", "total", "7")]
    assert "tax" in quarantined[0][4]
    assert types["total"] == "numeric" and types["masked_data"] == "jsonb" and types["amount_sum"] == "numeric"

    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE customers SET status = 'inactive' WHERE id = 1")  # leaves the filter: deleted
        conn.execute("UPDATE customers SET status = 'active' WHERE id = 4")  # enters it: inserted
        conn.execute("UPDATE customers SET price = 100.00, email = 'new.address@example.org' WHERE id = 2")
        conn.execute("DELETE FROM customers WHERE id = 3")
        conn.execute("UPDATE customers SET tax = 1.00 WHERE id = 7")  # the quarantined row, fixed at the source
    dags_test(source_id, config_dir)
    got = sink_rows(sink_url)
    assert got == expected(source_rows(source_url))
    assert 1 not in got and 4 in got and 3 not in got and got[2]["masked_email"] == "new***@example.org"
    assert got[7]["total"] == decimal.Decimal("8.25")
    rows = ledger_rows(sink_url, source_id)
    assert_ledger_consistent(sink_url, source_id)
    with psycopg.connect(sink_url) as conn:
        versions = conn.execute("SELECT stage_versions FROM public._cdc_ledger WHERE source_id = %s ORDER BY seq_to",
                                (source_id,)).fetchall()
    assert len(rows) == 2
    assert sorted(versions[-1][0]["transform"]["rules"]) == sorted(["mask_email", "mask_pii", "total", "active_only",
                                                                     "amounts"])
    assert all(len(digest) == 64 for digest in versions[-1][0]["transform"]["rules"].values())


def test_a_rule_with_policy_fail_stops_the_run_and_loads_nothing(pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute("INSERT INTO customers VALUES (1, 'a@b.c', '1234', 'active', 1, NULL, 1, 1),"
                     " (2, 'd@e.f', '5678', 'active', 2, 1, 1, 1)")
    source_id = unique_id("rulesfail")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["customers"], mode="fused")
    (config_dir / "transformations.yaml").write_text(textwrap.dedent("""\
        rules:
          - rule_id: total
            rule_type: map
            source_fields: [price, tax]
            target_field: total
            expression: "{{ price + tax }}"
            policy: fail
        """))
    out = dags_test(source_id, config_dir, ok=False)
    assert out.rstrip().endswith("Run failed"), out[-2000:]
    assert "failed rules whose policy is fail" in out and "rule total" in out
    with psycopg.connect(sink_url) as conn:  # nothing was loaded: no sink table, no ledger
        assert conn.execute("SELECT to_regclass('public.customers'), to_regclass('public._cdc_ledger')"
                            ).fetchone() == (None, None)
