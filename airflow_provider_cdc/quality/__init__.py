"""Data quality: quality.yaml suites -> GX Core expectations, run over each table of a batch.

- :mod:`.rules`: a rule dict -> one :class:`QualityCheck`, and every config problem (no GX import: DAG parse);
  :func:`check_expectations` asks GX about expectation names and kwargs (``config check``).
- :mod:`.suites`: :class:`QualitySuites`, the suites of a task: scopes, versions, and one GX context and suite per
  table, built on first use and reused.
- :mod:`.frame`: the pandas frame GX judges (judged rows, typed values, text forms, unchanged values).
- :mod:`.validate`: one table of one batch -> :class:`TableValidation` (violations per row, table failures,
  metrics, GX's own results).
- ``stage.py``: the ``validate`` stage over a whole batch (quarantine, fail, warn).

Importing this package imports neither GX nor pandas.
"""

from __future__ import annotations

from airflow_provider_cdc.quality.errors import QualityConfigError
from airflow_provider_cdc.quality.rules import (
    QualityCheck,
    check_columns,
    check_expectations,
    check_rules,
    compile_rules,
)
from airflow_provider_cdc.quality.suites import CompiledSuite, QualitySuites
from airflow_provider_cdc.quality.validate import TableFailure, TableValidation, Violation

__all__ = [
    "CompiledSuite",
    "QualityCheck",
    "QualityConfigError",
    "QualitySuites",
    "TableFailure",
    "TableValidation",
    "Violation",
    "check_columns",
    "check_expectations",
    "check_rules",
    "compile_rules",
]
