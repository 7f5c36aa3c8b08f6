"""The sandbox rules run in, the static checks of their Jinja, and the compile cache.

Expressions run in a :class:`RuleEnvironment`, an ``ImmutableSandboxedEnvironment`` (templates cannot reach Python
internals, nor change the values they are given) with ``StrictUndefined`` (an unknown field is an error, never an
empty string) and no autoescaping. On top of Jinja's own sandbox it refuses:

- attribute access on modules, on functions, and on any object from a module that reaches the operating system
  (``os``, ``subprocess``...: :data:`~.functions.DENIED_MODULES`), and calling anything from such a module: a custom
  function that returns ``os`` (or has it as an attribute) gives a template nothing;
- ``**`` with huge exponents and ``*`` that would build a huge string or list (a rule must not exhaust memory);
- Jinja's ``cycler``, ``joiner``, ``namespace`` and ``lipsum`` globals (no use in a row expression, and classic
  escape pivots).

:func:`analyse` finds statically what can be found before any row runs: syntax errors, names and attributes that
start with ``_`` (``''.__class__.__mro__``, ``__import__``, ``cycler.__init__``), template includes, unknown
functions, filters and tests. What escapes it (an attribute of a value only known at run time) is refused by the
environment at run time, which raises :class:`jinja2.exceptions.SecurityError`.

**Cache.** Each distinct expression is compiled once per environment (:meth:`Sandbox.program`), and one
environment exists per distinct set of functions (:func:`sandbox_for`), so rule sets built again for every batch
still compile nothing twice. Compiling costs far more than evaluating (``bench/transform_rules.py`` prints both).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime as dt
import json
import threading
import types
from collections.abc import Callable
from typing import Any, Literal

from jinja2 import StrictUndefined, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from airflow_provider_cdc.transform.functions import DENIED_MODULES, FunctionRegistry, module_root

ProgramKind = Literal["expression", "text", "json"]

MAX_SEQUENCE = 1_000_000  # the longest string or list ``*`` may build
MAX_EXPONENT = 1_000
REMOVED_GLOBALS = ("cycler", "joiner", "namespace", "lipsum")
KEPT_GLOBALS = frozenset({"range", "dict"})
ROW_VAR = "row"
"""Every field of the row, typed, as a mapping: ``{{ row['first name'] }}`` reaches a name that is no identifier."""
CACHE_SIZE = 4096


# Builtins a template must never call, should a custom function hand one out.
_DENIED_BUILTINS = frozenset({
    "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "globals", "locals", "vars",
    "input", "breakpoint", "help", "exit", "quit", "memoryview", "type", "object", "super", "classmethod",
    "staticmethod", "property", "__build_class__",
})
# Clock readers: rules are pure (``now()`` is the event time), so ``created_at.now()`` is refused too.
_CLOCK_ATTRIBUTES = frozenset({"now", "today", "utcnow", "fromtimestamp", "utcfromtimestamp"})


def _dangerous(root: str) -> bool:
    return root != "builtins" and (root in DENIED_MODULES or root.lstrip("_") in DENIED_MODULES)


class RuleEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, narrowed further for row expressions (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if isinstance(obj, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            return False
        if isinstance(value, types.ModuleType):
            return False
        if attr in _CLOCK_ATTRIBUTES and (isinstance(obj, (dt.date, dt.time))
                                          or (isinstance(obj, type) and issubclass(obj, (dt.date, dt.time)))):
            return False
        if _dangerous(module_root(type(obj))) or (isinstance(obj, type) and _dangerous(module_root(obj))):
            return False
        return not (callable(value) and not self.is_safe_callable(value))

    def is_safe_callable(self, obj: Any) -> bool:
        if not super().is_safe_callable(obj) or isinstance(obj, types.ModuleType):
            return False
        root = module_root(obj)
        if _dangerous(root) or _dangerous(module_root(type(obj))):
            return False
        return not (root == "builtins" and getattr(obj, "__name__", "") in _DENIED_BUILTINS)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, int) and not isinstance(right, bool) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is larger than the sandbox allows ({MAX_EXPONENT})")
        elif operator_name == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int) \
                        and len(seq) * count > MAX_SEQUENCE:
                    raise SecurityError(f"'*' would build a sequence of {len(seq) * count} items; the sandbox "
                                        f"allows {MAX_SEQUENCE}")
        return super().call_binop(context, operator_name, left, right)


def _json_finalize(value: Any) -> Any:
    """In a JSON template a field's text lands inside a JSON string: escape it there, so a value holding a quote
    cannot break the document or add keys. ``Markup`` (``| tojson``, ``| safe``) is already JSON and stays; a
    boolean is written as JSON writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not isinstance(value, Markup):
        return json.dumps(value, ensure_ascii=False)[1:-1]
    return value


def _text_finalize(value: Any) -> Any:
    return "" if value is None else value


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What a rule's Jinja needs and does, found without running it."""

    kind: ProgramKind
    node: nodes.Expr | None  # the expression of a ``{{ expr }}`` template (typed result; maybe vectorisable)
    names: frozenset[str]  # variables it reads (fields, functions, ``row``)
    called: frozenset[str]  # names called as functions
    filters: frozenset[str]  # filters it applies
    problems: tuple[str, ...]

    def uses(self, function: str) -> bool:
        """Whether the expression calls ``function`` (as a function or a filter)."""
        return function in self.called or function in self.filters


@dataclasses.dataclass(frozen=True)
class Program:
    """A compiled rule expression: ``run(variables)`` gives its typed result (``text``: a string; ``json``: the
    parsed value)."""

    text: str
    analysis: Analysis
    run: Callable[[dict[str, Any]], Any]

    @property
    def kind(self) -> ProgramKind:
        return self.analysis.kind


class Sandbox:
    """One :class:`RuleEnvironment` with a set of functions, and its compile cache."""

    def __init__(self, functions: FunctionRegistry) -> None:
        self.functions = functions
        self.env = self._environment(_text_finalize)
        self.json_env = self._environment(_json_finalize)
        self._cache: collections.OrderedDict[str, Program] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _environment(self, finalize: Callable[[Any], Any]) -> RuleEnvironment:
        env = RuleEnvironment(undefined=StrictUndefined, autoescape=False, finalize=finalize)
        for name in REMOVED_GLOBALS:
            env.globals.pop(name, None)
        for name, fn in self.functions.items():
            env.globals[name] = fn
            env.filters[name] = fn
        return env

    @property
    def known_globals(self) -> frozenset[str]:
        return frozenset(self.env.globals)

    def analyse(self, text: str) -> Analysis:
        """Parse ``text`` and check it statically; :class:`TemplateSyntaxError` when it does not parse."""
        template = self.env.parse(text)
        problems: list[str] = []
        _check_nodes(template, self.env, problems)
        kind, node = _classify(template)
        names: set[str] = set()
        called: set[str] = set()
        filters: set[str] = set()
        for found in template.find_all((nodes.Name, nodes.Call, nodes.Filter)):
            if isinstance(found, nodes.Name) and found.ctx == "load":
                names.add(found.name)
            elif isinstance(found, nodes.Call) and isinstance(found.node, nodes.Name):
                called.add(found.node.name)
            elif isinstance(found, nodes.Filter):
                filters.add(found.name)
        stored = {n.name for n in template.find_all(nodes.Name) if n.ctx in ("store", "param")}
        if kind == "text" and _static_prefix(template).startswith(("{", "[")):
            kind = "json"
        return Analysis(kind, node, frozenset(names - stored), frozenset(called), frozenset(filters),
                        tuple(problems))

    def program(self, text: str) -> Program:
        """The compiled program of ``text`` (cached). Raises what :meth:`analyse` raises, and
        :class:`ValueError` when the analysis found problems."""
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                self.hits += 1
                return cached
        program = self.compile(text)
        with self._lock:
            self.misses += 1
            self._cache[text] = program
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return program

    def compile(self, text: str) -> Program:
        """Compile ``text`` without the cache (what every row would pay without it)."""
        analysis = self.analyse(text)
        if analysis.problems:
            raise ValueError("; ".join(analysis.problems))
        if analysis.kind == "expression":
            assert analysis.node is not None
            # Compiling optimises the tree in place: give it a copy, the analysis keeps the node as written.
            body = [nodes.Assign(nodes.Name("result", "store"), copy.deepcopy(analysis.node), lineno=1)]
            expression = self.env.from_string(nodes.Template(body, lineno=1))
            return Program(text, analysis, _expression_runner(expression))
        env = self.json_env if analysis.kind == "json" else self.env
        return Program(text, analysis, _template_runner(env.from_string(text), analysis.kind == "json"))


def _expression_runner(template: Template) -> Callable[[dict[str, Any]], Any]:
    new_context = template.new_context
    render = template.root_render_func

    def run(variables: dict[str, Any]) -> Any:
        context = new_context(variables)
        for _ in render(context):
            pass
        value = context.vars["result"]
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()  # StrictUndefined, or the sandbox's refusal (SecurityError)
        if isinstance(value, Markup):
            value = str(value)
        return value

    return run


def _template_runner(template: Template, as_json: bool) -> Callable[[dict[str, Any]], Any]:
    render = template.render

    def run(variables: dict[str, Any]) -> Any:
        text = render(variables)
        if not as_json:
            return text
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the template renders text that is not JSON ({exc}): {text[:120]!r}") from exc

    return run


def _classify(template: nodes.Template) -> tuple[ProgramKind, nodes.Expr | None]:
    """``expression`` when the template is one ``{{ expr }}`` (blank text around it ignored), else ``text``."""
    if len(template.body) == 1 and isinstance(template.body[0], nodes.Output):
        parts = [n for n in template.body[0].nodes
                 if not (isinstance(n, nodes.TemplateData) and not n.data.strip())]
        if len(parts) == 1 and not isinstance(parts[0], nodes.TemplateData):
            return "expression", parts[0]
    return "text", None


def _static_prefix(template: nodes.Template) -> str:
    """The template's literal text before its first expression (stripped): ``{`` starts a JSON document."""
    for node in template.body:
        if isinstance(node, nodes.Output):
            for part in node.nodes:
                if isinstance(part, nodes.TemplateData):
                    if part.data.strip():
                        return part.data.strip()
                    continue
                return ""
        return ""
    return ""


def _check_nodes(template: nodes.Template, env: RuleEnvironment, problems: list[str]) -> None:
    for node in template.find_all(nodes.Node):
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            problems.append(f"attribute {node.attr!r} is refused by the sandbox (names starting with '_' are "
                            "internal)")
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            problems.append(f"item {node.arg.value!r} is refused by the sandbox (names starting with '_' are "
                            "internal)")
        elif isinstance(node, nodes.Name) and node.name.startswith("__"):
            problems.append(f"name {node.name!r} is refused by the sandbox (names starting with '__' are internal)")
        elif isinstance(node, (nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends)):
            problems.append("a rule cannot import, include or extend other templates")
        elif isinstance(node, nodes.Filter) and node.name not in env.filters:
            problems.append(f"unknown function {node.name!r} (used as a filter)")
        elif isinstance(node, nodes.Test) and node.name not in env.tests:
            problems.append(f"unknown test {node.name!r}")
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) \
                and node.node.name in REMOVED_GLOBALS:
            problems.append(f"{node.node.name}() is not available in rules")


def describe_syntax_error(exc: TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    where = f" (line {line})" if line else ""
    return f"does not compile: {exc.message or exc}{where}"


_SANDBOXES: collections.OrderedDict[tuple[tuple[str, int], ...], Sandbox] = collections.OrderedDict()
_SANDBOXES_LOCK = threading.Lock()


def sandbox_for(functions: FunctionRegistry) -> Sandbox:
    """The shared sandbox (and compile cache) of this set of functions."""
    key = functions.key()
    with _SANDBOXES_LOCK:
        sandbox = _SANDBOXES.get(key)
        if sandbox is None:
            sandbox = _SANDBOXES[key] = Sandbox(functions)
            while len(_SANDBOXES) > 16:
                _SANDBOXES.popitem(last=False)
        _SANDBOXES.move_to_end(key)
        return sandbox


__all__ = [
    "Analysis", "Program", "RuleEnvironment", "Sandbox", "SecurityError", "TemplateSyntaxError",
    "describe_syntax_error", "sandbox_for",
]
