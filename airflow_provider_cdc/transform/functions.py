"""The functions rules can call: built-ins, and custom ones from entry points and modules.

Every function is exposed to expressions both as a Jinja global and as a filter: ``{{ mask(email, 2) }}`` and
``{{ email | mask(2) }}`` are the same call.

**Built-ins.** ``mask(value, keep_last=4, char="*")``; ``hash(value)`` (salted SHA-256, hex: ``sha256(salt ||
text)``, where the salt is the secret the rule names in ``parameters.salt`` and the caller resolves from an Airflow
Variable or Connection, never from the YAML); ``coalesce(*values)``; ``cast(value, "decimal(10,2)")`` (exact: a
value that would need rounding is an error); ``now()``, the row's event time (``_cdc_ts_ms``), never the wall
clock, so a replay gives identical output. ``hash`` and ``mask`` work on a value's portable text
(:func:`~airflow_provider_cdc.transform.types.canonical_text`), so one logical value always gives one result.

**Custom functions** come from the entry-point group ``airflow_provider_cdc.functions`` (an entry point names a
function, registered under the entry point's name, or a module) and from module paths the caller gives. From a
module, the names in its ``CDC_FUNCTIONS`` dict if it has one, else every public function *defined* in it (not
those it imports: ``from os import system`` must not become a rule function). Functions from modules that reach
the operating system (``os``, ``subprocess``...) and builtins such as ``eval`` or ``open`` are refused.

**Arrow variants.** A function may carry ``fn.arrow``, a callable taking ``pa.Array`` (or ``pa.Scalar`` for
constants) positional arguments and the call's constant keyword arguments, returning a ``pa.Array``; and
optionally ``fn.returns``, the logical type of its result. The vectorised path (:mod:`.vector`) uses it; it must
give exactly what the Python function gives row by row (the tests check the built-ins on random batches). A variant
that cannot handle its argument types raises ``TypeError``, and the rule runs row by row instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib
import importlib.metadata
import inspect
import keyword
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from jinja2 import pass_context
from jinja2.runtime import Context

from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.transform.types import canonical_text, convert, parse_type

ENTRY_POINT_GROUP = "airflow_provider_cdc.functions"

# Modules whose functions and objects give a template the operating system, the interpreter or the network.
DENIED_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "socket", "ctypes", "pickle", "marshal",
    "multiprocessing", "pty", "signal", "io", "pathlib", "code", "codeop", "runpy", "tempfile", "builtins",
    "gc", "inspect", "threading", "_thread", "asyncio", "http", "urllib", "ftplib", "smtplib", "telnetlib",
    "webbrowser", "shelve", "dbm", "sqlite3", "zipimport", "pkgutil", "resource", "fcntl", "mmap", "posixpath",
    "ntpath", "glob", "fileinput", "airflow", "types",
})
# Builtins that are harmless and useful as rule functions (``CDC_FUNCTIONS = {"length": len}``).
ALLOWED_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "chr", "divmod", "float", "hex", "int", "len", "max", "min", "oct", "ord",
    "pow", "repr", "round", "sorted", "str", "sum",
})


class FunctionError(CdcError):
    """A custom function module or entry point that cannot be loaded, or a function that may not be exposed."""

    terminal = True


def module_root(obj: Any) -> str:
    """The top-level package an object comes from (``os`` for ``os.path.join``, ``posix`` for ``os.system``)."""
    if isinstance(obj, types.ModuleType):
        name = obj.__name__
    else:
        name = getattr(obj, "__module__", None) or ""
        if not isinstance(name, str):
            name = ""
    return name.partition(".")[0]


def refusal(fn: Any) -> str | None:
    """Why ``fn`` may not be exposed to templates (None: it may)."""
    if isinstance(fn, types.ModuleType):
        return "it is a module"
    if not callable(fn):
        return "it is not callable"
    root = module_root(fn)
    if root == "builtins":
        if getattr(fn, "__name__", "") not in ALLOWED_BUILTINS:
            return f"builtin {getattr(fn, '__name__', fn)!r} is not on the allowed list"
        return None
    if root in DENIED_MODULES or root.lstrip("_") in DENIED_MODULES:
        return f"it comes from module {root!r}, which reaches the operating system or the interpreter"
    return None


# --- the per-row runtime the built-ins read -----------------------------------------------------------------------

RUNTIME_VAR = "__cdc"
"""The context variable holding :class:`RuleRuntime` (a name templates cannot spell: ``__`` names are refused)."""


@dataclasses.dataclass(slots=True)
class RuleRuntime:
    """What the built-ins need from the rule and the row: the salt (resolved when first needed) and event time."""

    rule_id: str
    salt_source: Callable[[], str] | None = None
    ts_ms: int | None = None
    _salt: str | None = None

    @property
    def salt(self) -> str:
        if self._salt is None:
            if self.salt_source is None:
                raise ValueError(f"rule {self.rule_id!r} calls hash() but names no salt; add parameters: "
                                 "{salt: <secret name>}")
            self._salt = self.salt_source()
        return self._salt

    @property
    def event_time(self) -> dt.datetime:
        if self.ts_ms is None:
            raise ValueError("now() needs the row's event time (_cdc_ts_ms), which this row does not have")
        return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=self.ts_ms)


def _runtime(context: Context) -> RuleRuntime:
    runtime = context.get(RUNTIME_VAR)
    if not isinstance(runtime, RuleRuntime):
        raise ValueError("this function runs only inside a rule")
    return runtime


# --- built-ins ----------------------------------------------------------------------------------------------------


def _py(value: Any) -> Any:
    """A constant argument of an Arrow variant as its Python value (the planner passes constants as scalars)."""
    return value.as_py() if isinstance(value, pa.Scalar) else value


def _mask_args(keep_last: Any, char: Any) -> tuple[int, str]:
    keep_last, char = _py(keep_last), _py(char)
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise ValueError(f"mask(): keep_last must be a whole number >= 0, not {keep_last!r}")
    if not isinstance(char, str) or len(char) != 1:
        raise ValueError(f"mask(): char must be one character, not {char!r}")
    return keep_last, char


def mask(value: Any, keep_last: int = 4, char: str = "*") -> str | None:
    """``value`` with every character but the last ``keep_last`` replaced by ``char``; a value no longer than
    ``keep_last`` is masked whole (else a short value would be shown in full). None stays None."""
    keep, fill = _mask_args(keep_last, char)
    if value is None:
        return None
    text = canonical_text(value)
    if len(text) <= keep:
        return fill * len(text)
    return fill * (len(text) - keep) + text[len(text) - keep:]


def _mask_arrow(values: Any, keep_last: int = 4, char: str = "*") -> pa.Array:
    keep, fill = _mask_args(keep_last, char)
    if not isinstance(values, pa.Array):
        raise TypeError("mask(): the vectorised form takes a column")
    if pa.types.is_integer(values.type):
        values = pc.cast(values, pa.string())  # str(int) is the integer's canonical text
    if not pa.types.is_string(values.type):
        raise TypeError(f"mask(): no vectorised form for {values.type}")
    length = pc.utf8_length(values)
    short = pc.less_equal(length, keep)
    stars = pc.binary_repeat(fill, pc.if_else(short, length, pc.subtract(length, keep)))
    if keep == 0:
        return stars
    tail = pc.if_else(short, "", pc.utf8_slice_codeunits(values, start=-keep))
    return pc.binary_join_element_wise(stars, tail, "")


mask.arrow = _mask_arrow  # type: ignore[attr-defined]
mask.returns = "text"  # type: ignore[attr-defined]


@pass_context
def salted_hash(context: Context, value: Any) -> str | None:
    """Hex SHA-256 of the rule's salt followed by ``value``'s portable text (None stays None)."""
    if value is None:
        return None
    salt = _runtime(context).salt
    return hashlib.sha256((salt + canonical_text(value)).encode("utf-8")).hexdigest()


def _hash_arrow(values: Any, *, runtime: RuleRuntime) -> pa.Array:
    if not isinstance(values, pa.Array):
        raise TypeError("hash(): the vectorised form takes a column")
    if pa.types.is_integer(values.type):
        values = pc.cast(values, pa.string())
    if not pa.types.is_string(values.type):
        raise TypeError(f"hash(): no vectorised form for {values.type}")
    if len(values) == 0:
        return pa.array([], pa.string())  # (the planner's probe: no salt needed)
    salt = runtime.salt.encode("utf-8")
    sha = hashlib.sha256
    out = [None if v is None else sha(salt + v.encode("utf-8")).hexdigest() for v in values.to_pylist()]
    return pa.array(out, pa.string())


salted_hash.arrow = _hash_arrow  # type: ignore[attr-defined]
salted_hash.returns = "text"  # type: ignore[attr-defined]


def coalesce(*values: Any) -> Any:
    """The first argument that is not None (None when all are)."""
    for value in values:
        if value is not None:
            return value
    return None


def _coalesce_arrow(*values: Any) -> pa.Array:
    if not values or not any(isinstance(v, pa.Array) for v in values):
        raise TypeError("coalesce(): the vectorised form needs a column")
    kinds = {v.type for v in values}
    if len(kinds) != 1:
        raise TypeError("coalesce(): arguments of different types run row by row (Python keeps each one's type)")
    return pc.coalesce(*values)


coalesce.arrow = _coalesce_arrow  # type: ignore[attr-defined]


def cast(value: Any, type_name: str) -> Any:
    """``value`` converted exactly to a logical type (``integer``, ``decimal(10,2)``, ``text``...)."""
    return convert(value, parse_type(type_name))


@pass_context
def now(context: Context) -> dt.datetime:
    """The row's event time (its ``_cdc_ts_ms``, aware UTC): rules are pure, so a replay gives identical output."""
    return _runtime(context).event_time


BUILTINS: dict[str, Callable[..., Any]] = {
    "mask": mask,
    "hash": salted_hash,
    "coalesce": coalesce,
    "cast": cast,
    "now": now,
}
RUNTIME_ARROW = frozenset({_hash_arrow})
"""Arrow variants that take the rule's :class:`RuleRuntime` (as keyword ``runtime``); only built-ins may."""


# --- the registry -------------------------------------------------------------------------------------------------


class FunctionRegistry:
    """Name -> function, for expressions: the built-ins plus custom functions (which may not replace a built-in)."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self._functions: dict[str, Callable[..., Any]] = dict(BUILTINS)
        self._origins: dict[str, str] = {name: "built-in" for name in BUILTINS}
        for name, fn in (functions or {}).items():
            self.register(name, fn, origin="given")

    @classmethod
    def default(cls, module_paths: Sequence[str] = (), *, entry_points: bool = True) -> FunctionRegistry:
        """Built-ins, then the entry-point group ``airflow_provider_cdc.functions``, then ``module_paths``."""
        registry = cls()
        if entry_points:
            registry.load_entry_points()
        for path in module_paths:
            registry.load_module(path)
        return registry

    def register(self, name: str, fn: Callable[..., Any], *, origin: str = "given") -> None:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") or keyword.iskeyword(name) \
                or name in ("and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "row"):
            raise FunctionError(f"function name {name!r} (from {origin}) is not usable in expressions: use a "
                                "name of letters, digits and underscores that does not start with '_'")
        reason = refusal(fn)
        if reason is not None:
            raise FunctionError(f"function {name!r} (from {origin}) may not be exposed to rules: {reason}")
        known = self._origins.get(name)
        if known is not None and self._functions[name] is not fn:
            raise FunctionError(f"function {name!r} from {origin} clashes with {name!r} from {known}; rename one")
        self._functions[name] = fn
        self._origins[name] = origin

    def load_module(self, path: str) -> list[str]:
        """Register the functions of module ``path``; returns their names."""
        try:
            module = importlib.import_module(path)
        except Exception as exc:  # any import-time failure of user code is reported the same way
            raise FunctionError(f"custom function module {path!r} cannot be imported: {type(exc).__name__}: "
                                f"{exc}") from exc
        return self._register_module(module, origin=f"module {path}")

    def load_entry_points(self) -> list[str]:
        """Register what the entry-point group ``airflow_provider_cdc.functions`` names."""
        names: list[str] = []
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            origin = f"entry point {ep.name} = {ep.value}"
            try:
                target = ep.load()
            except Exception as exc:
                raise FunctionError(f"{origin} ({ENTRY_POINT_GROUP}) cannot be loaded: {type(exc).__name__}: "
                                    f"{exc}") from exc
            if isinstance(target, types.ModuleType):
                names += self._register_module(target, origin=origin)
            else:
                self.register(ep.name, target, origin=origin)
                names.append(ep.name)
        return names

    def _register_module(self, module: types.ModuleType, *, origin: str) -> list[str]:
        listed = getattr(module, "CDC_FUNCTIONS", None)
        if listed is not None:
            if not isinstance(listed, Mapping):
                raise FunctionError(f"{origin}: CDC_FUNCTIONS must be a dict of name -> function")
            chosen = dict(listed)
        else:
            chosen = {name: obj for name, obj in vars(module).items()
                      if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isbuiltin(obj))
                      and getattr(obj, "__module__", None) == module.__name__}
        for name, fn in chosen.items():
            self.register(name, fn, origin=origin)
        return list(chosen)

    # --- lookups ---

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self._functions[name]

    def names(self) -> list[str]:
        return sorted(self._functions)

    def items(self) -> Iterable[tuple[str, Callable[..., Any]]]:
        return self._functions.items()

    def origin(self, name: str) -> str:
        return self._origins[name]

    def arrow_variant(self, name: str) -> Callable[..., Any] | None:
        fn = self._functions.get(name)
        variant = getattr(fn, "arrow", None) if fn is not None else None
        return variant if callable(variant) else None

    def key(self) -> tuple[tuple[str, int], ...]:
        """Identifies the functions (one sandbox and compile cache per distinct set). By identity: a cached sandbox
        holds its functions, so an id cannot be reused while its entry lives."""
        return tuple(sorted((name, id(fn)) for name, fn in self._functions.items()))
