"""Example custom functions: how a module of rule functions looks (and what the tests load by module path).

Load it with ``FunctionRegistry.default(module_paths=["airflow_provider_cdc.transform.examples"])`` (or list the
module under the ``airflow_provider_cdc.functions`` entry-point group of a package). Then::

    expression: "{{ email_domain(email) }}"      # vectorised: it declares an Arrow variant
    expression: "{{ name | initials }}"          # row by row

``CDC_FUNCTIONS`` names what the module exposes; without it, every public function defined here would be.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def email_domain(email: str | None) -> str | None:
    """The part of an e-mail address after its last ``@`` (None when there is none)."""
    if email is None:
        return None
    head, at, tail = email.rpartition("@")
    return tail if at else None


def _email_domain_arrow(emails: Any) -> pa.Array:
    """The same over a text column: the regex takes what follows the last ``@``; no ``@`` gives NULL, as above."""
    if not isinstance(emails, pa.Array) or not pa.types.is_string(emails.type):
        raise TypeError("email_domain(): the vectorised form takes a text column")
    matched = pc.extract_regex(emails, r"@(?P<domain>[^@]*)\z")
    domains = pc.struct_field(matched, [0])
    return pc.if_else(pc.is_valid(matched), domains, pa.scalar(None, pa.string()))


email_domain.arrow = _email_domain_arrow  # type: ignore[attr-defined]
email_domain.returns = "text"  # type: ignore[attr-defined]


def initials(name: str | None) -> str | None:
    """``Ada Lovelace`` -> ``A.L.``: the first letter of each word, upper-cased (row by row only)."""
    if name is None:
        return None
    return "".join(f"{word[0].upper()}." for word in name.split())


CDC_FUNCTIONS = {"email_domain": email_domain, "initials": initials}
