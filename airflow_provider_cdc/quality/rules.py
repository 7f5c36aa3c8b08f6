"""quality.yaml rules -> compiled checks, each one GX expectation; and every problem a rule can have.

A suite's ``rules`` are dicts (:class:`~airflow_provider_cdc.config.models.SuiteConfig` checks only ``policy``). Each
compiles to a :class:`QualityCheck`: which GX expectation it is, with which kwargs, which columns it reads, and whether
GX names the rows it fails (``per_row``: column map expectations do; table and aggregate ones such as
``expect_table_row_count_to_be_between`` judge the whole batch and cannot).

Rule kinds (``type:``) and their keys:

===============  =========================================================================================
``type``         ``column``, ``expected`` (alias ``data_type``): a logical type of the value contract; each value
                 is in (or converts to) that type's portable form. Not an expectation GX has, so it runs as
                 ``expect_column_values_to_be_null`` over a companion column holding the values that do not
                 convert (see :mod:`.frame`)
``range``        ``column``, ``min`` and/or ``max`` (inclusive; ``strict_min``/``strict_max: true``, or
                 ``inclusive: false`` for both) -> ``expect_column_values_to_be_between``
``pattern``      ``column``, ``pattern`` (a Python regex, searched as GX does) -> ``..._to_match_regex``
``not_null``     ``column`` -> ``expect_column_values_to_not_be_null``
``unique``       ``column``, or ``columns`` for a compound key; within the batch (``against_sink: true`` is carried
                 for the sink check) -> ``expect_column_values_to_be_unique`` / ``expect_compound_columns_to_be_unique``
``in_set``       ``column``, ``values`` -> ``expect_column_values_to_be_in_set``
``length``       ``column``, ``min``/``max`` (characters) -> ``expect_column_value_lengths_to_be_between``
``expectation``  ``expectation: <snake_case or ClassName>`` with ``kwargs: {...}``: any GX Core expectation
===============  =========================================================================================

Every rule may also give ``id`` (default ``<kind>_<column>``, made unique in its suite with ``_2``, ``_3``...),
``policy`` (``warn``, ``quarantine`` or ``fail``; default ``quarantine``), ``mostly`` (GX's, 0..1) and
``description``.

Nothing here imports GX: this module runs at every DAG parse. Checking expectation names and kwargs needs GX and
lives in :func:`check_expectations`, which ``config check`` calls. Whether an ``expectation:`` rule is per row is
read from GX's naming convention here (map expectations are ``expect_column_values_*``, ``expect_column_pair_values_*``,
``expect_multicolumn_*``...; the other ``expect_column_*`` and ``expect_table_*`` judge the whole batch) and taken
from the GX class wherever GX is loaded; a custom expectation's name says nothing, so only its class decides.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.quality.errors import location, one_of, problem, suggest
from airflow_provider_cdc.values import LOGICAL_TYPES

if TYPE_CHECKING:
    from airflow_provider_cdc.config.models import SuiteConfig
    from airflow_provider_cdc.tables import TableSchema

RULE_KINDS = ("type", "range", "pattern", "not_null", "unique", "in_set", "length", "expectation")
POLICIES = ("warn", "quarantine", "fail")
DEFAULT_POLICY = "quarantine"
COMMON_KEYS = ("id", "policy", "mostly", "description")

# kind -> (required keys, optional keys), beside ``type`` and COMMON_KEYS. ``type`` also needs one of ``expected``
# and ``data_type``, ``unique`` one of ``column`` and ``columns``, ``range`` and ``length`` at least a bound.
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "type": (("column",), ("expected", "data_type")),
    "range": (("column",), ("min", "max", "strict_min", "strict_max", "inclusive")),
    "pattern": (("column", "pattern"), ()),
    "not_null": (("column",), ()),
    "unique": ((), ("column", "columns", "against_sink")),
    "in_set": (("column", "values"), ()),
    "length": (("column",), ("min", "max")),
    "expectation": (("expectation",), ("kwargs",)),
}

# GX's naming convention for expectations that judge each row (column map, column pair map, multicolumn map): every
# GX Core 1.x expectation whose name starts so is one, and no other is...
_PER_ROW_PREFIXES = (
    "expect_column_values_", "expect_column_value_", "expect_column_pair_values_", "expect_multicolumn_",
    "expect_compound_columns_", "expect_select_column_values_",
)
# ...and for those that judge the whole batch: GX Core's other ``expect_column_*`` (mean, max, distinct values...),
# ``expect_table_*`` and query expectations.
_WHOLE_BATCH_PREFIXES = ("expect_column_", "expect_table_", "expect_query_", "unexpected_rows_")
# kwargs of an ``expectation:`` rule that name the columns it reads.
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")
# kwargs the validate stage sets itself: a rule's own would hide the failing rows from it.
_RESERVED_KWARGS = ("result_format", "catch_exceptions")
_EXPECTATION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SHOWN_VALUES = 10


@dataclasses.dataclass(frozen=True)
class QualityCheck:
    """One compiled rule: a GX expectation over a batch table's columns.

    ``kwargs`` name source columns and carry bounds as written; :mod:`.frame` maps them onto the validated frame
    (text forms, typed bounds) per table. ``index`` is the rule's position in its suite, for messages.
    """

    suite_id: str
    index: int
    rule_id: str
    kind: str
    policy: str
    expectation: str
    kwargs: Mapping[str, Any] = dataclasses.field(hash=False)
    columns: tuple[str, ...]
    per_row: bool
    description: str
    against_sink: bool = False
    expected_type: str | None = None  # the logical type of a ``type`` rule

    def where(self, key: str | None = None) -> str:
        """``suite 'users_checks' rules[2].min``: where a message about this check points."""
        return location(self.suite_id, self.index, key)

    def column_key(self, column: str) -> str:
        """The config key that names ``column`` (``column``, ``columns``, ``kwargs.column_A``...)."""
        if self.kind == "expectation":
            for key in _COLUMN_KWARGS:
                value = self.kwargs.get(key)
                if value == column or (isinstance(value, list) and column in value):
                    return f"kwargs.{key}"
            return "kwargs"
        return "columns" if self.kind == "unique" and len(self.columns) > 1 else "column"


# --- compiling ----------------------------------------------------------------------------------------------------


def compile_rules(suite: SuiteConfig) -> tuple[list[QualityCheck], list[str]]:
    """The checks of ``suite`` (rules with problems left out) and every problem found without GX or a table."""
    checks: list[QualityCheck] = []
    problems: list[str] = []
    for index, rule in enumerate(suite.rules):
        check, found = _compile_rule(suite.id, index, rule)
        problems += found
        if check is not None:
            checks.append(check)
    return _unique_ids(suite, checks, problems), problems


def check_rules(suite: SuiteConfig) -> list[str]:
    """Every problem of ``suite``'s rules that shows without GX or a table: kinds, keys, values, regexes, bounds,
    ids, and ``policy: quarantine`` on an expectation that cannot name rows."""
    return compile_rules(suite)[1]


def _compile_rule(suite_id: str, index: int, rule: Any) -> tuple[QualityCheck | None, list[str]]:
    reader = _RuleReader(suite_id, index, rule if isinstance(rule, Mapping) else {})
    if not isinstance(rule, Mapping):
        return None, [problem(suite_id, index, "should be a mapping (type: ..., column: ...)")]
    kind = reader.kind()
    if kind is None:
        return None, reader.problems
    reader.check_keys(kind)
    built = _BUILDERS[kind](reader)
    policy, mostly, description = reader.policy(), reader.mostly(), reader.text("description")
    rule_id = reader.text("id") or ""
    if built is None or reader.problems:
        return None, reader.problems
    expectation, kwargs, columns, default_description = built
    if mostly is not None:
        kwargs["mostly"] = mostly
    per_row = is_per_row_name(expectation)
    if policy == "quarantine" and per_row is False:
        reader.add("policy", f"quarantine needs an expectation that names the failing rows; {expectation} judges "
                             "the whole batch: use policy warn or fail")
        return None, reader.problems
    check = QualityCheck(
        suite_id=suite_id, index=index, rule_id=rule_id, kind=kind, policy=policy,
        expectation=expectation, kwargs=kwargs, columns=tuple(columns), per_row=per_row is not False,
        description=description or default_description, against_sink=rule.get("against_sink") is True,
        expected_type=reader.expected_type if kind == "type" else None,
    )
    return check, []


def is_per_row_name(expectation: str) -> bool | None:
    """Whether an expectation named so judges each row, by GX's naming convention (see the module docstring); None
    for a name outside GX's families (a custom expectation), which only its GX class can tell."""
    if expectation.startswith(_PER_ROW_PREFIXES):
        return True
    if expectation.startswith(_WHOLE_BATCH_PREFIXES):
        return False
    return None


def _unique_ids(suite: SuiteConfig, checks: list[QualityCheck], problems: list[str]) -> list[QualityCheck]:
    """Explicit ids must be unique; default ids (``<kind>_<column>``) get ``_2``, ``_3``... where taken."""
    taken: dict[str, int] = {}
    for check in checks:
        if check.rule_id:
            if check.rule_id in taken:
                problems.append(problem(suite.id, check.index, f"rule id {check.rule_id!r} is also the id of "
                                                               f"rules[{taken[check.rule_id]}]; ids must be unique in "
                                                               "a suite", key="id"))
            taken.setdefault(check.rule_id, check.index)
    out = []
    for check in checks:
        if not check.rule_id:
            base = default_id(check)
            rule_id, n = base, 1
            while rule_id in taken:
                n += 1
                rule_id = f"{base}_{n}"
            taken[rule_id] = check.index
            check = dataclasses.replace(check, rule_id=rule_id)
        out.append(check)
    return out


def default_id(check: QualityCheck) -> str:
    """``pattern_email``, ``unique_tenant_id_email``, ``expect_table_row_count_to_be_between``."""
    head = check.expectation if check.kind == "expectation" else check.kind
    return "_".join([head, *check.columns])


# --- reading one rule -------------------------------------------------------------------------------------------


class _RuleReader:
    """Reads the keys of one rule, collecting a problem line for each bad one (all of them, not just the first)."""

    def __init__(self, suite_id: str, index: int, rule: Mapping[str, Any]) -> None:
        self.suite_id, self.index, self.rule = suite_id, index, rule
        self.problems: list[str] = []
        self.expected_type: str | None = None

    def add(self, key: str | None, reason: str) -> None:
        self.problems.append(problem(self.suite_id, self.index, reason, key=key))

    def has(self, key: str) -> bool:
        return key in self.rule

    def kind(self) -> str | None:
        kind = self.rule.get("type")
        if kind is None and "expectation" in self.rule:
            return "expectation"
        if kind is None:
            self.add(None, f"give the rule's type: ({one_of(RULE_KINDS[:-1])}) or expectation: <a GX expectation "
                           "name>")
            return None
        if not isinstance(kind, str) or kind not in RULE_KINDS:
            self.add("type", f"unknown rule type {kind!r} (known: {', '.join(RULE_KINDS)}"
                             f"{suggest(str(kind), RULE_KINDS)})")
            return None
        return kind

    def check_keys(self, kind: str) -> None:
        required, optional = _KEYS[kind]
        allowed = ("type", *required, *optional, *COMMON_KEYS)
        misspelt: set[str] = set()
        for key in self.rule:
            if key not in allowed:
                hint = suggest(str(key), allowed)
                misspelt.update(difflib.get_close_matches(str(key), allowed, n=1))
                self.add(str(key), f"unknown key for a {kind} rule" + (hint or f" (allowed: {', '.join(allowed)})"))
        for key in required:
            if key not in self.rule and key not in misspelt:  # the typo's line already names it
                self.add(key, f"is required (a {kind} rule needs {' and '.join(required)})")

    # -- common keys --

    def policy(self) -> str:
        policy = self.rule.get("policy", DEFAULT_POLICY)
        if policy not in POLICIES:
            self.add("policy", f"{policy!r} is not one of {', '.join(POLICIES)}")
            return DEFAULT_POLICY
        return str(policy)

    def mostly(self) -> float | None:
        if "mostly" not in self.rule:
            return None
        value = self.rule["mostly"]
        if not _is_number(value) or not 0 <= value <= 1:
            self.add("mostly", f"{value!r} should be a number from 0 to 1 (the share of rows that must pass)")
            return None
        return float(value)

    def text(self, key: str) -> str | None:
        value = self.rule.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.add(key, "should be a non-empty string")
            return None
        return value

    def column(self, key: str = "column") -> str | None:
        value = self.rule.get(key)
        if not isinstance(value, str) or not value:
            if key in self.rule:
                self.add(key, f"{value!r} should be a column name")
            return None
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.rule.get(key)
        if value is not None and not isinstance(value, bool):
            self.add(key, f"{value!r} should be true or false")
            return None
        return value


Built = tuple[str, dict[str, Any], list[str], str]


def _build_type(reader: _RuleReader) -> Built | None:
    column = reader.column()
    given = [key for key in ("expected", "data_type") if reader.has(key)]
    if len(given) != 1:
        reader.add("expected", "give expected: <logical type>" if not given
                   else "give expected or data_type (the same key), not both")
        return None
    expected = reader.rule[given[0]]
    if expected not in LOGICAL_TYPES:
        reader.add(given[0], f"unknown logical type {expected!r} (known: {', '.join(LOGICAL_TYPES)}"
                             f"{suggest(str(expected), LOGICAL_TYPES)})")
        return None
    if column is None:
        return None
    reader.expected_type = str(expected)
    return ("expect_column_values_to_be_null", {"column": column}, [column],
            f"{column} is (or converts to) {expected}")


def _build_range(reader: _RuleReader) -> Built | None:
    column = reader.column()
    low, high = reader.rule.get("min"), reader.rule.get("max")
    if low is None and high is None:
        reader.add("min", "give min, max or both")
    for key, value in (("min", low), ("max", high)):
        if value is not None and not _is_bound(value):
            reader.add(key, f"{value!r} should be a number, a date, a time or a string")
    strict = _strictness(reader)
    if reader.problems or column is None or strict is None:
        return None
    strict_min, strict_max = strict
    _check_order(reader, low, high, strict_min or strict_max)
    kwargs: dict[str, Any] = {"column": column, "min_value": low, "max_value": high}
    if strict_min:
        kwargs["strict_min"] = True
    if strict_max:
        kwargs["strict_max"] = True
    return "expect_column_values_to_be_between", kwargs, [column], _range_text(column, low, high, strict_min,
                                                                                 strict_max)


def _strictness(reader: _RuleReader) -> tuple[bool, bool] | None:
    strict_min, strict_max, inclusive = (reader.boolean(k) for k in ("strict_min", "strict_max", "inclusive"))
    if inclusive is not None and (strict_min is not None or strict_max is not None):
        reader.add("inclusive", "give inclusive (for both bounds) or strict_min/strict_max, not both")
        return None
    if inclusive is False:
        return True, True
    return bool(strict_min), bool(strict_max)


def _check_order(reader: _RuleReader, low: Any, high: Any, strict: bool) -> None:
    order = _compare(low, high)
    if order is not None and order > 0:
        reader.add("min", f"min {low!r} is greater than max {high!r}")
    elif order == 0 and strict:
        reader.add("min", f"min and max are both {low!r} and a bound is strict: no value can pass")


def _compare(a: Any, b: Any) -> int | None:
    """-1, 0 or 1 when ``a`` and ``b`` are comparable as written (numbers, numeric text, same-typed values)."""
    if a is None or b is None:
        return None
    na, nb = _as_decimal(a), _as_decimal(b)
    if na is not None and nb is not None:
        return (na > nb) - (na < nb)
    if type(a) is type(b):
        try:
            return (a > b) - (a < b)
        except TypeError:
            return None
    return None


def _build_pattern(reader: _RuleReader) -> Built | None:
    column, pattern = reader.column(), reader.rule.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        if reader.has("pattern"):
            reader.add("pattern", f"{pattern!r} should be a regular expression (a string)")
        return None
    try:
        re.compile(pattern)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        reader.add("pattern", f"bad regex {pattern!r}: {exc.msg}{where}")
        return None
    if column is None:
        return None
    return "expect_column_values_to_match_regex", {"column": column, "regex": pattern}, [column], \
        f"{column} matches '{pattern}'"


def _build_not_null(reader: _RuleReader) -> Built | None:
    column = reader.column()
    if column is None:
        return None
    return "expect_column_values_to_not_be_null", {"column": column}, [column], f"{column} is not null"


def _build_unique(reader: _RuleReader) -> Built | None:
    reader.boolean("against_sink")
    given = [key for key in ("column", "columns") if reader.has(key)]
    if len(given) != 1:
        reader.add("column", "give column (one column) or columns (a compound key)" if not given
                   else "give column or columns, not both")
        return None
    if given[0] == "column":
        column = reader.column()
        columns = [column] if column else []
    else:
        columns = _column_list(reader, "columns")
    if not columns:
        return None
    if len(columns) == 1:
        return ("expect_column_values_to_be_unique", {"column": columns[0]}, columns,
                f"{columns[0]} is unique within the batch")
    return ("expect_compound_columns_to_be_unique", {"column_list": list(columns)}, columns,
            f"({', '.join(columns)}) is unique within the batch")


def _column_list(reader: _RuleReader, key: str) -> list[str]:
    value = reader.rule.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        reader.add(key, f"{value!r} should be a non-empty list of column names")
        return []
    twice = sorted({c for i, c in enumerate(value) if c in value[:i]})
    if twice:
        reader.add(key, f"lists {', '.join(twice)} twice")
        return []
    return list(value)


def _build_in_set(reader: _RuleReader) -> Built | None:
    column, values = reader.column(), reader.rule.get("values")
    if not isinstance(values, list) or not values:
        if reader.has("values"):
            reader.add("values", f"{values!r} should be a non-empty list of values")
        return None
    bad = [v for v in values if v is None or isinstance(v, (list, dict))]
    if bad:
        reader.add("values", f"{bad[0]!r} is not a value to compare with (NULL always passes in_set: use not_null "
                             "to refuse it)")
        return None
    if column is None:
        return None
    return "expect_column_values_to_be_in_set", {"column": column, "value_set": list(values)}, [column], \
        f"{column} is one of {show_values(values)}"


def _build_length(reader: _RuleReader) -> Built | None:
    column = reader.column()
    low, high = reader.rule.get("min"), reader.rule.get("max")
    if low is None and high is None:
        reader.add("min", "give min, max or both (a number of characters)")
    for key, value in (("min", low), ("max", high)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            reader.add(key, f"{value!r} should be a whole number of characters (0 or more)")
    if reader.problems or column is None:
        return None
    if low is not None and high is not None and low > high:
        reader.add("min", f"min {low!r} is greater than max {high!r}")
        return None
    kwargs = {"column": column, "min_value": low, "max_value": high}
    return "expect_column_value_lengths_to_be_between", kwargs, [column], f"{column} has {_length_text(low, high)}"


def _build_expectation(reader: _RuleReader) -> Built | None:
    name, kwargs = reader.rule.get("expectation"), reader.rule.get("kwargs", {})
    if not isinstance(name, str) or not _EXPECTATION_NAME.fullmatch(name):
        reader.add("expectation", f"{name!r} should be a GX expectation name (snake_case or ClassName)")
        return None
    if not isinstance(kwargs, Mapping):
        reader.add("kwargs", f"{kwargs!r} should be a mapping of the expectation's arguments")
        return None
    from airflow_provider_cdc.quality.gx import snake_name

    expectation = snake_name(name)
    kwargs = dict(kwargs)
    for key in _RESERVED_KWARGS:
        if key in kwargs:
            reader.add(f"kwargs.{key}", "is set by the validate stage (it needs every failing row); leave it out")
    if "mostly" in kwargs and reader.has("mostly"):
        reader.add("mostly", "is given twice (here and in kwargs); keep one")
    columns = _expectation_columns(reader, kwargs)
    if reader.problems:
        return None
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return expectation, kwargs, columns, f"{expectation}({shown})"


def _expectation_columns(reader: _RuleReader, kwargs: Mapping[str, Any]) -> list[str]:
    columns: list[str] = []
    for key in _COLUMN_KWARGS:
        value = kwargs.get(key)
        names = value if isinstance(value, list) else [value] if value is not None else []
        for name in names:
            if not isinstance(name, str) or not name:
                reader.add(f"kwargs.{key}", f"{name!r} should be a column name")
            elif name not in columns:
                columns.append(name)
    return columns


_BUILDERS: dict[str, Callable[[_RuleReader], Built | None]] = {
    "type": _build_type,
    "range": _build_range,
    "pattern": _build_pattern,
    "not_null": _build_not_null,
    "unique": _build_unique,
    "in_set": _build_in_set,
    "length": _build_length,
    "expectation": _build_expectation,
}


# --- checks against GX and against a table -----------------------------------------------------------------------


def check_expectations(suite: SuiteConfig) -> list[str]:
    """Problems only GX can tell, for ``config check`` (imports GX, so never at DAG parse): an ``expectation:``
    name GX does not know (with the nearest one), kwargs its class refuses (its pydantic errors, one line), and
    ``policy: quarantine`` on a class that cannot name failing rows."""
    from airflow_provider_cdc.quality import gx

    checks, _ = compile_rules(suite)
    out: list[str] = []
    for check in checks:
        if check.kind != "expectation":
            continue
        cls = gx.expectation_class(check.expectation)
        if cls is None:
            out.append(problem(suite.id, check.index, gx.unknown_expectation(check.expectation), key="expectation"))
            continue
        reason = gx.kwargs_problem(cls, check.kwargs)
        if reason is not None:
            out.append(problem(suite.id, check.index, f"{check.expectation} refuses them: {reason}", key="kwargs"))
        if check.policy == "quarantine" and not gx.is_per_row(cls):
            out.append(problem(suite.id, check.index, f"quarantine needs an expectation that names the failing rows; "
                                                      f"{check.expectation} judges the whole batch: use policy warn "
                                                      "or fail", key="policy"))
    return out


def check_columns(checks: Iterable[QualityCheck], schema: TableSchema) -> list[str]:
    """Every column a check reads exists in ``schema``'s table, and every bound or set value converts to its
    column's type (``range`` on a date column needs dates)."""
    from airflow_provider_cdc.quality.frame import bound_problem, set_problem

    names = schema.column_names
    out: list[str] = []
    for check in checks:
        missing = [c for c in check.columns if c not in names]
        for column in missing:
            out.append(f"{check.where(check.column_key(column))}: table {schema.qualified_name} has no column "
                       f"{column!r} (its columns: {', '.join(names)}){suggest(column, names)}")
        if missing:
            continue
        if check.kind == "range":
            ranged = schema.column(check.columns[0])
            for key, bound in (("min", check.kwargs.get("min_value")), ("max", check.kwargs.get("max_value"))):
                reason = bound_problem(bound, ranged) if bound is not None else None
                if reason:
                    out.append(f"{check.where(key)}: {reason}")
        elif check.kind == "in_set":
            reason = set_problem(check.kwargs["value_set"], schema.column(check.columns[0]))
            if reason:
                out.append(f"{check.where('values')}: {reason}")
    return out


# --- wording ------------------------------------------------------------------------------------------------------


def show_values(values: Sequence[Any]) -> str:
    """``'active', 'inactive'`` (the first ten, then how many more)."""
    shown = ", ".join(repr(plain(v)) for v in values[:_SHOWN_VALUES])
    more = len(values) - _SHOWN_VALUES
    return shown + (f" (and {more} more)" if more > 0 else "")


def range_text(low: Any, high: Any, strict_min: bool, strict_max: bool) -> str:
    """``[0, 100)``, ``>= 0``, ``< 100``: a range as a reason shows it."""
    if low is not None and high is not None:
        return f"{'(' if strict_min else '['}{plain(low)}, {plain(high)}{')' if strict_max else ']'}"
    if low is not None:
        return f"{'>' if strict_min else '>='} {plain(low)}"
    return f"{'<' if strict_max else '<='} {plain(high)}"


def _range_text(column: str, low: Any, high: Any, strict_min: bool, strict_max: bool) -> str:
    return f"{column} in {range_text(low, high, strict_min, strict_max)}"


def _length_text(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"{low} to {high} characters"
    return f"at least {low} characters" if low is not None else f"at most {high} characters"


def plain(value: Any) -> Any:
    """Dates and times as their ISO text in messages (``2024-05-01``, not ``datetime.date(2024, 5, 1)``)."""
    return value.isoformat() if isinstance(value, (dt.date, dt.time)) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool)


def _is_bound(value: Any) -> bool:
    return _is_number(value) or isinstance(value, (str, dt.date, dt.time))


def _as_decimal(value: Any) -> decimal.Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, decimal.Decimal, str)):
        try:
            number = decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None
