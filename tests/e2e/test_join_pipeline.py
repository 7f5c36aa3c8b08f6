"""A join rule end to end through ``airflow dags test`` (fused), PostgreSQL into PostgreSQL: the key join of two
tables of the same source database (``orders.country_code`` -> ``countries.code``, no ``connector``: the source's
own database). The sink's orders carry ``country_name``; an order whose country is unknown gets NULL; a later
change of an order's country is enriched with the new country's name."""

from __future__ import annotations

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, dags_test, unique_id, write_config

pytestmark = [pytest.mark.timeout(600), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

DDL = """
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigint PRIMARY KEY, country_code text, amount numeric(10,2));
INSERT INTO countries VALUES ('FR', 'France'), ('DE', 'Germany'), ('IT', 'Italy');
INSERT INTO orders VALUES (1, 'FR', 10.00), (2, 'DE', 20.00), (3, 'ZZ', 30.00), (4, NULL, 40.00), (5, 'FR', 50.00);
"""

RULES = """\
rules:
  - rule_id: enrich_country
    rule_type: join
    tables: [public.orders]
    parameters:
      table: public.countries
      on: {country_code: code}
      fields: {name: country_name}
      ttl_seconds: 300
"""



def sink_orders(sink_url: str) -> dict[int, str | None]:
    with psycopg.connect(sink_url) as conn:
        return dict(conn.execute("SELECT id, country_name FROM public.orders").fetchall())


def test_orders_are_enriched_from_the_sources_own_countries_table(pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(DDL)
    source_id = unique_id("join")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["orders", "countries"], mode="fused")
    (config_dir / "transformations.yaml").write_text(RULES)

    out = dags_test(source_id, config_dir)
    assert source_url not in out  # the reference URL is never logged
    assert sink_orders(sink_url) == {1: "France", 2: "Germany", 3: None, 4: None, 5: "France"}
    with psycopg.connect(sink_url) as conn:
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name ="
                                  " 'orders' AND table_schema = 'public'").fetchall())
        countries = conn.execute("SELECT count(*) FROM public.countries").fetchone()
    assert types["country_name"] == "text" and countries == (3,)

    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE orders SET country_code = 'IT' WHERE id = 1")
        conn.execute("INSERT INTO orders VALUES (6, 'DE', 60.00)")
        conn.execute("DELETE FROM orders WHERE id = 5")
    dags_test(source_id, config_dir)
    assert sink_orders(sink_url) == {1: "Italy", 2: "Germany", 3: None, 4: None, 6: "Germany"}
    assert_ledger_consistent(sink_url, source_id)
    with psycopg.connect(sink_url) as conn:
        versions = conn.execute("SELECT stage_versions FROM public._cdc_ledger WHERE source_id = %s ORDER BY seq_to",
                                (source_id,)).fetchall()
    assert list(versions[-1][0]["transform"]["rules"]) == ["enrich_country"]
