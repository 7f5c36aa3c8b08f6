"""The lineage tests' config: the seed's rules and a suite over a shop, its warehouse and a lake, built in code."""

from __future__ import annotations

from typing import Any

import yaml

from airflow_provider_cdc.config.models import CdcConfig
from airflow_provider_cdc.lineage import LineageGraph, build_graph
from airflow_provider_cdc.tables import Column, TableSchema

# Credentials that must never reach a dataset name (each unlike any table, column or host name).
USER, PASSWORD = "cdcowner", "s3cr3tpw"

SHOP_URL = f"postgresql://{USER}:{PASSWORD}@DB.example.com:6543/shop?sslmode=require&password={PASSWORD}"
WAREHOUSE_URL = f"postgresql://{USER}:{PASSWORD}@wh.example.com/warehouse"
CRM_URL = f"mysql://{USER}:{PASSWORD}@crm.example.com/crm"
LAKE_URL = "s3://lake-bucket/cdc"

SHOP = "postgres://db.example.com:6543/shop.public"  # + .users, .payments
WAREHOUSE = "postgres://wh.example.com:5432/warehouse.public"
LAKE = "s3://lake-bucket/cdc/public"
COUNTRIES = "mysql://crm.example.com:3306/crm.countries"

# The seed's rules verbatim (ORIGINAL_SPEC.md), plus a join enriching users from the CRM.
SEED_RULES = yaml.safe_load("""
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
  tables: [payments]
  source_fields: [amount1, amount2]
  target_field: total
  parameters:
    type: sum
""")
JOIN_RULE = {
    "rule_id": "enrich_country", "rule_type": "join", "tables": ["users"],
    "parameters": {"connector": "crm", "table": "countries", "on": {"country_code": "code"},
                   "fields": {"name": "country_name"}},
}
SUITE = {"id": "users_checks", "tables": ["users"], "rules": [
    {"type": "pattern", "column": "email", "pattern": r"^[^@\s]+@[^@\s]+\.[a-z]+$", "policy": "quarantine"},
    {"type": "in_set", "column": "status", "values": ["active", "inactive"], "policy": "warn"},
]}


def col(name: str, logical: str = "text", *, pk: bool = False) -> Column:
    source = {"integer": "bigint", "decimal": "numeric(12,2)"}.get(logical, "text")
    return Column(name, source, logical, nullable=not pk, primary_key=pk)


def table(name: str, *columns: Column, schema: str = "public") -> TableSchema:
    return TableSchema(schema, name, tuple(columns), "postgresql")


USERS = table("users", col("id", "integer", pk=True), col("email"), col("phone"), col("price", "decimal"),
              col("tax", "decimal"), col("status"), col("country_code"))
PAYMENTS = table("payments", col("id", "integer", pk=True), col("amount1", "decimal"), col("amount2", "decimal"),
                 col("status"))
# What the lake's source reads back from the warehouse (its registry's schema of warehouse.public.users).
WAREHOUSE_USERS = table("users", col("id", "integer", pk=True), col("email"), col("masked_email"), col("status"),
                        col("total", "decimal"), col("country_name"))

SCHEMAS = {("shop", "public.users"): USERS, ("shop", "public.payments"): PAYMENTS,
           ("warehouse_lake", "public.users"): WAREHOUSE_USERS}


def config(**changes: Any) -> CdcConfig:
    """The shop -> warehouse -> lake config; ``changes`` replace top-level keys."""
    data: dict[str, Any] = {
        "directory": "/nonexistent/config",
        "connectors": [
            {"id": "warehouse", "type": "postgresql", "connection_string": WAREHOUSE_URL},
            {"id": "lake", "type": "file", "connection_string": LAKE_URL, "options": {"format": "delta"}},
            {"id": "crm", "type": "mysql", "connection_string": CRM_URL},
        ],
        "sources": [
            {"id": "shop", "type": "postgresql", "connection_string": SHOP_URL, "tables": ["users", "payments"],
             "sink": "warehouse", "target_schema": "public", "quality": ["users_checks"]},
            # Captures the warehouse's copy into the lake: a second pipeline downstream of the first.
            {"id": "warehouse_lake", "type": "postgresql", "connector": "warehouse", "tables": ["public.users"],
             "sink": "lake", "target_schema": "public", "transformations": [], "quality": []},
        ],
        "rules": [*SEED_RULES, JOIN_RULE],
        "suites": [SUITE],
    }
    data.update(changes)
    return CdcConfig.model_validate(data)


def graph(cfg: CdcConfig | None = None, **kwargs: Any) -> LineageGraph:
    kwargs.setdefault("schemas", SCHEMAS)
    return build_graph(cfg if cfg is not None else config(), **kwargs)


def short(node: str) -> str:
    """A node id without its datasource, for readable assertions (``shop.public.users#email``)."""
    return node.rpartition("/")[2]
