"""The one door to Great Expectations (GX Core 1.x): imported here, on first use, never at DAG parse.

Importing GX takes seconds and pulls in a large dependency tree, so :mod:`.rules` (config parsing, run at every DAG
parse) never imports it; only ``config check`` (:func:`.rules.check_expectations`) and a validating task do, through
:func:`import_gx`. Before the import, GX analytics are switched off through ``GX_ANALYTICS_ENABLED`` (no network from a
task), and the context is built with analytics and progress bars off: GX's tqdm bars ("Calculating Metrics") would
otherwise write a line per expectation into every task log.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from airflow_provider_cdc.quality.errors import suggest

# GX's own names for the kinds of expectation that judge one row at a time (and so can name failing rows).
_PER_ROW_BASES = ("ColumnMapExpectation", "ColumnPairMapExpectation", "MulticolumnMapExpectation")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@functools.cache
def import_gx() -> ModuleType:
    """``great_expectations``, imported once with analytics off and its import-time INFO chatter kept out of task
    logs (GX logs every documented closure it skips; only its warnings are worth a line)."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)
    import great_expectations

    return great_expectations


def new_context() -> Any:
    """An ephemeral GX context (in memory, nothing written) with analytics and progress bars off."""
    gx = import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def snake_name(name: str) -> str:
    """``expect_column_values_to_be_in_set`` for that name or ``ExpectColumnValuesToBeInSet`` (acronyms stay whole:
    ``ExpectColumnKLDivergenceToBeLessThan`` -> ``expect_column_kl_divergence_to_be_less_than``)."""
    return name if name.islower() else _CAMEL_BOUNDARY.sub("_", name).lower()


@functools.cache
def expectation_classes() -> Mapping[str, type]:
    """Every expectation GX knows, by its snake_case type: the classes of ``gx.expectations`` plus any registered
    custom expectation (GX's registry holds both)."""
    import_gx()
    import great_expectations.expectations as gxe
    from great_expectations.expectations.expectation import Expectation
    from great_expectations.expectations.registry import (
        get_expectation_impl,
        list_registered_expectation_implementations,
    )

    found: dict[str, type] = {}
    for attribute in dir(gxe):
        cls = getattr(gxe, attribute)
        if isinstance(cls, type) and issubclass(cls, Expectation) and cls is not Expectation:
            found[str(getattr(cls, "expectation_type", None) or snake_name(attribute))] = cls
    for name in list_registered_expectation_implementations():
        found.setdefault(name, get_expectation_impl(name))
    return found


def expectation_class(name: str) -> type | None:
    """The GX class of an expectation named in snake_case or as its class name; None when GX has no such one.
    A custom expectation registered after the first lookup (its module imported later) is found in GX's registry."""
    snake = snake_name(name)
    found = expectation_classes().get(snake)
    if found is None:
        from great_expectations.exceptions import ExpectationNotFoundError
        from great_expectations.expectations.registry import get_expectation_impl

        try:
            found = get_expectation_impl(snake)
        except ExpectationNotFoundError:
            return None
    return found


def unknown_expectation(name: str) -> str:
    """Why ``name`` is no expectation, with the nearest known name."""
    return (f"unknown expectation {name!r} (not a GX Core {import_gx().__version__} expectation"
            f"{suggest(snake_name(name), expectation_classes())})")


def is_per_row(cls: type) -> bool:
    """Whether GX reports the failing rows of this expectation (column map, column pair map, multicolumn map)."""
    return any(base.__name__ in _PER_ROW_BASES for base in cls.__mro__)


def kwargs_problem(cls: type, kwargs: Mapping[str, Any]) -> str | None:
    """Construct ``cls(**kwargs)`` and turn GX's pydantic errors into one line naming each key, or None when GX
    accepts them."""
    try:
        cls(**kwargs)
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        if not callable(errors):
            return str(exc).splitlines()[0]
        return _pydantic_line(errors(), cls)
    return None


def _pydantic_line(errors: list[dict[str, Any]], cls: type) -> str:
    """``value_set: value is not a valid list; colum: unknown key; did you mean 'column'?``.

    Most GX fields also accept a suite parameter (``{"$PARAMETER": ...}``), so pydantic adds "value is not a valid
    dict" to every wrong value: that alternative is dropped when the key has a more telling error."""
    by_key: dict[str, list[str]] = {}
    fields = list(getattr(cls, "__fields__", {}))
    for error in errors:
        key = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__") or "kwargs"
        kind = str(error.get("type", ""))
        if kind == "value_error.extra":
            message = "unknown key" + (suggest(key, fields) or f" (allowed: {', '.join(_public(fields))})")
        elif kind == "value_error.missing":
            message = "is required"
        else:
            message = str(error.get("msg", kind))
        by_key.setdefault(key, []).append(message)
    parts = []
    for key, messages in by_key.items():
        telling = [m for m in messages if m != "value is not a valid dict"] or messages
        parts.append(f"{key}: {' or '.join(dict.fromkeys(telling))}")
    return "; ".join(parts)


def _public(fields: list[str]) -> list[str]:
    hidden = {"id", "meta", "notes", "description", "rendered_content", "batch_id", "result_format", "catch_exceptions",
              "severity", "windows"}
    return [f for f in fields if f not in hidden]
