"""The vectorised path: a ``{{ expr }}`` made of simple parts evaluated with ``pyarrow.compute`` over whole columns.

:func:`plan` accepts field references (``integer``, ``float``, ``decimal(p,s)`` with p <= 38, ``boolean`` and
``text`` columns), constants, ``+ - * /``, unary ``-``, the six comparisons, ``in`` a literal list, ``and``, ``or``,
``not``, ``~``, and calls (or filters) of functions that declare an Arrow variant (:mod:`.functions`). Anything else
runs row by row in Jinja (:mod:`.engine`), which is the reference: the two paths give identical output, which the
tests check on random batches.

Where Arrow and Python would disagree, the row goes to the Jinja path instead of being computed here: each step
returns, with its values, a mask of such rows. An operand that is NULL (Python raises on ``None + 1``, and says
``None == 'a'`` is False where Arrow says NULL), a division by zero (Python raises), an integer beyond 2**53 meeting a
float (Python compares exactly), a value whose portable text has no Arrow form (a numeric ``NaN``). Decimal
arithmetic is exact in ``decimal128``; where the result's precision would pass 38 digits, the expression is not
vectorised. A kernel that fails outright (an ``int64`` overflow) sends the whole rule to the row path. Results
become portable text through :func:`to_portable`, which writes what :func:`~airflow_provider_cdc.values.format_value`
writes (floats go through Python, since Arrow prints ``nan`` and ``1e-7``).
"""

from __future__ import annotations

import dataclasses
import decimal
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc
from jinja2 import nodes

from airflow_provider_cdc.tables import Column
from airflow_provider_cdc.transform.functions import RUNTIME_ARROW, FunctionRegistry, RuleRuntime
from airflow_provider_cdc.transform.types import OutType
from airflow_provider_cdc.values import MAX_DECIMAL128_PRECISION, format_value

EXACT_FLOAT_INT = 2**53  # integers beyond this are not all floats: Python compares and divides them exactly
_INT64 = (-(2**63), 2**63 - 1)
_NUMERIC = frozenset({"integer", "float", "decimal"})

Value: TypeAlias = "pa.Array | pa.Scalar"
Mask: TypeAlias = "pa.Array | None"


@dataclasses.dataclass(frozen=True)
class VType:
    """The type of a vectorised value: a logical kind, and a decimal's precision and scale."""

    kind: str  # integer | float | decimal | boolean | text
    precision: int = 0
    scale: int = 0

    @property
    def arrow(self) -> pa.DataType:
        if self.kind == "decimal":
            return pa.decimal128(self.precision, self.scale)
        return _ARROW[self.kind]

    def out_type(self) -> OutType:
        if self.kind == "decimal":
            return OutType("decimal", self.precision, self.scale)
        return OutType(self.kind)


_ARROW = {"integer": pa.int64(), "float": pa.float64(), "boolean": pa.bool_(), "text": pa.string()}


def vtype_of_column(column: Column) -> VType | None:
    """The vectorised type of a column's typed view, or None when the column stays on the row path."""
    kind = column.logical_type
    if kind == "decimal":
        if column.precision is None or column.precision > MAX_DECIMAL128_PRECISION:
            return None  # unconstrained: its typed view is text, and Python's Decimal is the reference
        return VType("decimal", column.precision, column.scale or 0)
    return VType(kind) if kind in _ARROW else None


def vtype_of_arrow(dtype: pa.DataType) -> VType | None:
    if pa.types.is_decimal128(dtype):
        return VType("decimal", dtype.precision, dtype.scale)
    for kind, arrow in _ARROW.items():
        if dtype == arrow:
            return VType(kind)
    return None


@dataclasses.dataclass
class EvalContext:
    rows: int
    runtime: RuleRuntime


Step = Callable[[Mapping[str, pa.Array], EvalContext], tuple[Value, Mask]]


@dataclasses.dataclass(frozen=True)
class Part:
    """A compiled piece of an expression: its type, and how to compute it (``const``: its value, if constant)."""

    vtype: VType
    step: Step
    const: Any = dataclasses.field(default=None)
    is_const: bool = False


class NotVectorisable(Exception):
    """This expression (or part) runs row by row; the message says why (for the counts and the logs)."""


@dataclasses.dataclass(frozen=True)
class VectorPlan:
    """An expression compiled to Arrow compute over the typed columns ``fields``."""

    fields: tuple[str, ...]
    vtype: VType
    root: Part

    def evaluate(self, inputs: Mapping[str, pa.Array], rows: int, runtime: RuleRuntime) -> tuple[pa.Array, pa.Array]:
        """Values for ``rows`` rows, and the mask of rows that must be evaluated by the row path instead."""
        value, mask = self.root.step(inputs, EvalContext(rows, runtime))
        if isinstance(value, pa.Scalar):
            value = pa.repeat(value, rows)
        if isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        if len(value) != rows:
            raise ValueError(f"the vectorised expression gave {len(value)} values for {rows} rows")
        if value.type != self.vtype.arrow:
            value = pc.cast(value, self.vtype.arrow)
        return value, (mask if mask is not None else pa.repeat(pa.scalar(False), rows))


def plan(node: nodes.Expr, columns: Mapping[str, Column], functions: FunctionRegistry) -> VectorPlan:
    """Compile ``node`` for the vectorised path; :class:`NotVectorisable` when it cannot be."""
    fields: list[str] = []
    root = _compile(node, columns, functions, fields)
    return VectorPlan(tuple(fields), root.vtype, root)


# --- masks --------------------------------------------------------------------------------------------------------


def _or(*masks: Mask) -> Mask:
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = pc.or_(out, m)
    return out


def _nulls(value: Value) -> Mask:
    if isinstance(value, pa.Array) and value.null_count:
        return pc.is_null(value)
    return None


def _beyond_float(value: Value, vtype: VType) -> Mask:
    if vtype.kind != "integer" or not isinstance(value, pa.Array):
        return None
    beyond = pc.or_(pc.greater(value, EXACT_FLOAT_INT), pc.less(value, -EXACT_FLOAT_INT))
    return pc.fill_null(beyond, False)


# --- compiling ----------------------------------------------------------------------------------------------------


def _const(value: Any) -> Part:
    if isinstance(value, bool):
        vtype = VType("boolean")
    elif isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise NotVectorisable(f"integer {value} is beyond int64")
        vtype = VType("integer")
    elif isinstance(value, float):
        vtype = VType("float")
    elif isinstance(value, str):
        vtype = VType("text")
    else:
        raise NotVectorisable(f"constant {value!r}")
    scalar = pa.scalar(value, vtype.arrow)
    return Part(vtype, lambda inputs, ctx: (scalar, None), const=value, is_const=True)


def _field(name: str, columns: Mapping[str, Column], fields: list[str]) -> Part:
    column = columns.get(name)
    if column is None:
        raise NotVectorisable(f"{name!r} is not a column")
    vtype = vtype_of_column(column)
    if vtype is None:
        raise NotVectorisable(f"column {name!r} ({column.logical_type}) has no vectorised form")
    if name not in fields:
        fields.append(name)
    return Part(vtype, lambda inputs, ctx: (inputs[name], None))


def _compile(node: nodes.Node, columns: Mapping[str, Column], functions: FunctionRegistry,
             fields: list[str]) -> Part:
    if isinstance(node, nodes.Const):
        return _const(node.value)
    if isinstance(node, nodes.Name) and node.ctx == "load":
        return _field(node.name, columns, fields)
    if isinstance(node, (nodes.Add, nodes.Sub, nodes.Mul, nodes.Div)):
        return _arithmetic(node.operator, _compile(node.left, columns, functions, fields),
                           _compile(node.right, columns, functions, fields))
    if isinstance(node, nodes.Concat):
        return _concat([_compile(n, columns, functions, fields) for n in node.nodes])
    if isinstance(node, nodes.Neg):
        return _negate(_compile(node.node, columns, functions, fields))
    if isinstance(node, nodes.Pos):
        inner = _compile(node.node, columns, functions, fields)
        if inner.vtype.kind not in _NUMERIC:
            raise NotVectorisable("unary + of a non-number")
        return inner
    if isinstance(node, nodes.Compare):
        if len(node.ops) != 1:
            raise NotVectorisable("chained comparison")
        operand = node.ops[0]
        left = _compile(node.expr, columns, functions, fields)
        if operand.op in ("in", "notin"):
            return _membership(left, operand.expr, negate=operand.op == "notin")
        return _compare(operand.op, left, _compile(operand.expr, columns, functions, fields))
    if isinstance(node, (nodes.And, nodes.Or)):
        return _logical(node, _compile(node.left, columns, functions, fields),
                        _compile(node.right, columns, functions, fields))
    if isinstance(node, nodes.Not):
        return _not(_compile(node.node, columns, functions, fields))
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name):
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise NotVectorisable("*args or **kwargs in a call")
        return _call(node.node.name, list(node.args), node.kwargs, columns, functions, fields)
    if isinstance(node, nodes.Filter) and node.node is not None:
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise NotVectorisable("*args or **kwargs in a filter")
        return _call(node.name, [node.node, *node.args], node.kwargs, columns, functions, fields)
    raise NotVectorisable(f"{type(node).__name__} has no vectorised form")


def _as_decimal(value: Value, part: Part) -> tuple[Value, VType]:
    """An integer or decimal operand as a decimal128 value (integers keep all their digits)."""
    if part.vtype.kind == "decimal":
        return value, part.vtype
    vtype = _decimal_operand_type(part)
    if part.is_const:  # Arrow casts int64 only to decimal128(19, 0) and wider; a constant needs its own digits
        return pa.scalar(decimal.Decimal(part.const), vtype.arrow), vtype
    return pc.cast(value, vtype.arrow), vtype


def _decimal_operand_type(part: Part) -> VType:
    if part.vtype.kind == "decimal":
        return part.vtype
    return VType("decimal", max(1, len(str(abs(part.const)))) if part.is_const else 19, 0)


def _arithmetic(op: str, left: Part, right: Part) -> Part:
    kinds = {left.vtype.kind, right.vtype.kind}
    if kinds == {"text"} and op == "+":
        return _concat([left, right])
    if not kinds <= _NUMERIC:
        raise NotVectorisable(f"{op} on {left.vtype.kind} and {right.vtype.kind}")
    kernel = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}[op]
    if "decimal" in kinds:
        if "float" in kinds or op == "/":
            raise NotVectorisable("decimal division, or decimals with floats (Python raises or rounds there)")
        lt, rt = _decimal_operand_type(left), _decimal_operand_type(right)
        if op == "*":
            result = VType("decimal", lt.precision + rt.precision + 1, lt.scale + rt.scale)
        else:
            scale = max(lt.scale, rt.scale)
            result = VType("decimal", max(lt.precision - lt.scale, rt.precision - rt.scale) + scale + 1, scale)
        if result.precision > MAX_DECIMAL128_PRECISION:
            raise NotVectorisable(f"the result needs decimal({result.precision},{result.scale}), beyond decimal128")

        def decimal_step(inputs: Mapping[str, pa.Array], ctx: EvalContext) -> tuple[Value, Mask]:
            (a, ma), (b, mb) = left.step(inputs, ctx), right.step(inputs, ctx)
            out = getattr(pc, kernel)(_as_decimal(a, left)[0], _as_decimal(b, right)[0])
            if out.type != result.arrow:
                out = pc.cast(out, result.arrow)
            return out, _or(ma, mb, _nulls(a), _nulls(b))

        return Part(result, decimal_step)
    if "float" in kinds or op == "/":

        def float_step(inputs: Mapping[str, pa.Array], ctx: EvalContext) -> tuple[Value, Mask]:
            (a, ma), (b, mb) = left.step(inputs, ctx), right.step(inputs, ctx)
            fa, fb = pc.cast(a, pa.float64(), safe=False), pc.cast(b, pa.float64(), safe=False)
            masks = [ma, mb, _nulls(a), _nulls(b)]
            if op == "/":
                masks += [_beyond_float(a, left.vtype), _beyond_float(b, right.vtype)]
                zero = pc.equal(fb, 0.0)
                masks.append(pc.fill_null(zero, False) if isinstance(zero, pa.Array) else
                             (pa.repeat(pa.scalar(bool(zero.as_py())), ctx.rows)))
            return getattr(pc, kernel)(fa, fb), _or(*masks)

        return Part(VType("float"), float_step)

    def integer_step(inputs: Mapping[str, pa.Array], ctx: EvalContext) -> tuple[Value, Mask]:
        (a, ma), (b, mb) = left.step(inputs, ctx), right.step(inputs, ctx)
        return getattr(pc, kernel + "_checked")(a, b), _or(ma, mb, _nulls(a), _nulls(b))

    return Part(VType("integer"), integer_step)


def _concat(parts: list[Part]) -> Part:
    if any(p.vtype.kind != "text" for p in parts):
        raise NotVectorisable("~ of non-text values (Python's str() of them differs from Arrow's text)")

    def step(inputs: Mapping[str, pa.Array], ctx: EvalContext) -> tuple[Value, Mask]:
        evaluated = [p.step(inputs, ctx) for p in parts]
        values = [v for v, _ in evaluated]
        if all(isinstance(v, pa.Scalar) for v in values):
            values[0] = pa.repeat(values[0], ctx.rows)
        out = pc.binary_join_element_wise(*values, "")
        return out, _or(*(m for _, m in evaluated), *(_nulls(v) for v in values))

    return Part(VType("text"), step)


def _negate(inner: Part) -> Part:
    if inner.vtype.kind not in _NUMERIC:
        raise NotVectorisable("unary - of a non-number")
    kernel = pc.negate_checked if inner.vtype.kind == "integer" else pc.negate

    def step(inputs: Mapping[str, pa.Array], ctx: EvalContext) -> tuple[Value, Mask]:
        value, mask = inner.step(inputs, ctx)
        return kernel(value), _or(mask, _nulls(value))

    return Part(inner.vtype, step)


_COMPARE = {"eq": "equal", "ne": "not_equal", "lt": "less", "lteq": "less_equal", "gt": "greater",
            "gteq": "greater_equal"}


def _compare(op: str, left: Part, right: Part) -> Part:
    kernel = getattr(pc, _COMPARE[op])
    kinds = {left.vtype.kind, right.vtype.kind}
    convert: Callable[[Value, Part], Value]
    checks: Callable[[Value, Value], list[Mask]] = lambda a, b: []  # noqa: E731
    if kinds <= _NUMERIC:
        if kinds == {"decimal", "float"}:
            raise NotVectorisable("a decimal compared with a float (Python compares exactly)")
        if "decimal" in kinds:
            lt, rt = _decimal_operand_type(left), _decimal_operand_type(right)
            scale = max(lt.scale, rt.scale)
            common = VType("decimal", max(lt.precision - lt.scale, rt.precision - rt.scale) + scale, scale)
            if common.precision > MAX_DECIMAL128_PRECISION:
                raise NotVectorisable("decimals too wide to compare in decimal128")

            def convert(value: Value, part: Part) -> Value:
                return pc.cast(_as_decimal(value, part)[0], common.arrow)
        elif "float" in kinds:
            def convert(value: Value, part: Part) -> Value:
                return pc.cast(value, pa.float64(), safe=False)

            def checks(a: Value, b: Value) -> list[Mask]:
                return [_beyond_float(a, left.vtype), _beyond_float(b, right.vtype)]
        else:
            def convert(value: Value, part: Part) -> Value:
                return value
    elif kinds == {"text"} or (kinds == {"boolean"} and op in ("eq", "ne")):
        def convert(value: Value, part: Part) -> Value:
            return value
    else:
        raise NotVectorisable(f"comparison of {left.vtype.kind} with {right.vtype.kind}")

    def step(inputs: Mapping[str, pa.Array], ctx: EvalContext) -> tuple[Value, Mask]:
        (a, ma), (b, mb) = left.step(inputs, ctx), right.step(inputs, ctx)
        out = kernel(convert(a, left), convert(b, right))
        return out, _or(ma, mb, _nulls(a), _nulls(b), *checks(a, b))

    return Part(VType("boolean"), step)


def _membership(left: Part, container: nodes.Node, negate: bool) -> Part:
    if isinstance(container, nodes.Const) and isinstance(container.value, (list, tuple)):
        items = list(container.value)
    elif isinstance(container, (nodes.List, nodes.Tuple)) and all(isinstance(i, nodes.Const)
                                                                  for i in container.items):
        items = [i.value for i in container.items if isinstance(i, nodes.Const)]
    else:
        raise NotVectorisable("'in' needs a literal list")
    if left.vtype.kind == "text" and all(isinstance(i, str) for i in items):
        value_set = pa.array(items, pa.string())
    elif left.vtype.kind == "integer" and all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        if not all(_INT64[0] <= i <= _INT64[1] for i in items):
            raise NotVectorisable("'in' a list of integers beyond int64")
        value_set = pa.array(items, pa.int64())
    else:
        raise NotVectorisable(f"'in' of a {left.vtype.kind} and a list of other types")

    def step(inputs: Mapping[str, pa.Array], ctx: EvalContext) -> tuple[Value, Mask]:
        value, mask = left.step(inputs, ctx)
        if isinstance(value, pa.Scalar):
            value = pa.repeat(value, ctx.rows)
        out = pc.is_in(value, value_set=value_set)
        return (pc.invert(out) if negate else out), _or(mask, _nulls(value))

    return Part(VType("boolean"), step)


def _logical(node: nodes.And | nodes.Or, left: Part, right: Part) -> Part:
    if left.vtype.kind != "boolean" or right.vtype.kind != "boolean":
        raise NotVectorisable("'and'/'or' of non-booleans (Python returns an operand, not a boolean)")
    kernel = pc.and_ if isinstance(node, nodes.And) else pc.or_

    def step(inputs: Mapping[str, pa.Array], ctx: EvalContext) -> tuple[Value, Mask]:
        (a, ma), (b, mb) = left.step(inputs, ctx), right.step(inputs, ctx)
        return kernel(a, b), _or(ma, mb, _nulls(a), _nulls(b))

    return Part(VType("boolean"), step)


def _not(inner: Part) -> Part:
    if inner.vtype.kind != "boolean":
        raise NotVectorisable("'not' of a non-boolean")

    def step(inputs: Mapping[str, pa.Array], ctx: EvalContext) -> tuple[Value, Mask]:
        value, mask = inner.step(inputs, ctx)
        return pc.invert(value), _or(mask, _nulls(value))

    return Part(VType("boolean"), step)


_PROBE_ERRORS = (TypeError, ValueError, NotImplementedError, pa.ArrowException)


def _call(name: str, args: list[nodes.Expr], kwargs: list[Any], columns: Mapping[str, Column],
          functions: FunctionRegistry, fields: list[str]) -> Part:
    if name in columns:
        raise NotVectorisable(f"{name!r} is a field, not a function")
    variant = functions.arrow_variant(name) if name in functions else None
    if variant is None:
        raise NotVectorisable(f"{name}() has no Arrow variant")
    parts = [_compile(a, columns, functions, fields) for a in args]
    options: dict[str, Any] = {}
    for keyword in kwargs:
        if not isinstance(keyword.value, nodes.Const):
            raise NotVectorisable(f"{name}(): keyword {keyword.key!r} is not a constant")
        options[keyword.key] = keyword.value.value
    if variant in RUNTIME_ARROW:
        options["runtime"] = RuleRuntime(rule_id="probe")
    probe_args = [pa.scalar(p.const, p.vtype.arrow) if p.is_const else pa.array([], p.vtype.arrow) for p in parts]
    try:
        probe = variant(*probe_args, **options)
    except _PROBE_ERRORS as exc:
        raise NotVectorisable(f"{name}(): {exc}") from exc
    vtype = vtype_of_arrow(probe.type) if isinstance(probe, (pa.Array, pa.ChunkedArray, pa.Scalar)) else None
    if vtype is None:
        raise NotVectorisable(f"{name}() gives {getattr(probe, 'type', type(probe).__name__)}")
    needs_runtime = variant in RUNTIME_ARROW

    def step(inputs: Mapping[str, pa.Array], ctx: EvalContext) -> tuple[Value, Mask]:
        evaluated = [p.step(inputs, ctx) for p in parts]
        call_options = dict(options, runtime=ctx.runtime) if needs_runtime else options
        out = variant(*(v for v, _ in evaluated), **call_options)
        if isinstance(out, pa.ChunkedArray):
            out = out.combine_chunks()
        return out, _or(*(m for _, m in evaluated))

    return Part(vtype, step)


# --- output -------------------------------------------------------------------------------------------------------


def compatible(vtype: VType, target: OutType | None) -> bool:
    """Whether a vectorised result of ``vtype`` can be written as ``target`` without the row path."""
    if target is None or target == vtype.out_type():
        return True
    return vtype.kind in ("decimal", "integer") and target.logical == "decimal" and target.precision is not None \
        and target.precision <= MAX_DECIMAL128_PRECISION


def to_portable(values: pa.Array, out: OutType) -> pa.Array:
    """Portable text of typed values (what :func:`values.format_value` gives for each)."""
    kind = out.logical
    if kind == "text":
        return values if values.type == pa.string() else pc.cast(values, pa.string())
    if kind == "integer":
        return pc.cast(values, pa.string())
    if kind == "boolean":
        return pc.if_else(values, "true", "false")
    if kind == "decimal":
        assert out.precision is not None
        target = pa.decimal128(out.precision, out.scale or 0)
        if values.type != target:
            values = pc.cast(values, target)  # safe: raises rather than rounds (the rule then runs row by row)
        return pc.cast(values, pa.string())
    if kind == "float":
        return pa.array([format_value(v, "float") for v in values.to_pylist()], pa.string())
    raise ValueError(f"no vectorised output for {out.name}")
