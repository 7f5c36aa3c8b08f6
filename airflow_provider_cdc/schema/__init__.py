"""Schema evolution: a versioned registry of every captured table (:mod:`.registry`, Avro schemas from
:mod:`.avro`), Confluent-grade compatibility (:mod:`.compatibility`), a policy per source (:mod:`.policy`), and the
gate that follows compatible changes and holds only the tables a refused change breaks (:mod:`.gate`).

No Airflow here: sinks store the versions and the held changes beside their ledger, in the batch's transaction.
"""

from __future__ import annotations

from airflow_provider_cdc.schema.compatibility import LEVELS, CompatibilityResult, check
from airflow_provider_cdc.schema.gate import AcceptPlan, GateDecision, HeldChunk, decide, plan_accept
from airflow_provider_cdc.schema.policy import DEFAULT_POLICY, MODES, SchemaPolicy
from airflow_provider_cdc.schema.registry import Registry, SchemaVersion, split_subject, subject_of

__all__ = [
    "DEFAULT_POLICY", "LEVELS", "MODES", "AcceptPlan", "CompatibilityResult", "GateDecision", "HeldChunk",
    "Registry", "SchemaPolicy", "SchemaVersion", "check", "decide", "plan_accept", "split_subject", "subject_of",
]
