"""The transformation engine (issue 10): ``transformations.yaml`` rules applied to a batch's tables.

A plain library, without Airflow or databases; the transform stage wraps it. Modules:

``engine``     :class:`RuleSet` (compile, check, apply) and :class:`TableResult`
``rules``      one rule compiled from its config: shape checks, version hash, lineage edges
``sandbox``    the Jinja sandbox, static checks of expressions, and the compile cache
``functions``  built-ins (mask, hash, coalesce, cast, now) and the custom function registry
``vector``     Arrow compute for the expressions that allow it
``rowpath``    per-row Jinja evaluation (the reference semantics)
``aggregate``  row-level aggregates across fields
``state``      one table's columns and row masks while its rules run
``types``      result typing and exact conversion to the value contract
``examples``   example custom functions
"""

from __future__ import annotations

from airflow_provider_cdc.transform.engine import RowFailure, RuleSet, TableResult
from airflow_provider_cdc.transform.errors import RuleConfigError
from airflow_provider_cdc.transform.functions import FunctionError, FunctionRegistry
from airflow_provider_cdc.transform.rules import ColumnLineage, CompiledRule

__all__ = [
    "ColumnLineage", "CompiledRule", "FunctionError", "FunctionRegistry", "RowFailure", "RuleConfigError", "RuleSet",
    "TableResult",
]
