"""The flow diagram: DOT that Graphviz parses, well-formed Mermaid, and SVG where Graphviz is installed."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import require_server

from airflow_provider_cdc.lineage import GraphvizMissingError, to_dot, to_mermaid, to_svg
from airflow_provider_cdc.lineage import export as export_module
from airflow_provider_cdc.lineage.export import dot_quote, mermaid_id, mermaid_text
from lineage.util import PASSWORD, SCHEMAS, SHOP, USER, WAREHOUSE, col, config, graph, table

# A DOT quoted string (with its escapes), or an unquoted token.
_DOT_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|->|[{}\[\];=]|[^\s{}\[\];="]+')
_ODD = 'we"ird\\name'  # a column name a diagram must quote, not break on


def odd_graph():
    schemas = dict(SCHEMAS)
    schemas[("shop", "public.users")] = table("users", col("id", "integer", pk=True), col("email"), col(_ODD))
    return graph(config(), schemas=schemas)


def dot_structure(text: str) -> tuple[set[str], list[tuple[str, str]]]:
    """The node ids a DOT text declares and its edges, checking that braces and brackets balance outside quotes."""
    tokens = _DOT_TOKEN.findall(text)
    depth = {"{": 0, "[": 0}
    closing = {"}": "{", "]": "["}
    declared: set[str] = set()
    edges: list[tuple[str, str]] = []
    for i, token in enumerate(tokens):
        if token in depth:
            depth[token] += 1
        elif token in closing:
            depth[closing[token]] -= 1
            assert depth[closing[token]] >= 0, f"unbalanced {token} at token {i}"
        elif token == "->":
            edges.append((tokens[i - 1], tokens[i + 1]))
        elif token.startswith('"') and depth["["] == 0 and tokens[i + 1] == "[" and tokens[i - 1] != "->":
            declared.add(token)
    assert depth == {"{": 0, "[": 0}
    return declared, edges


def test_dot_is_well_formed_and_every_edge_node_is_declared():
    text = to_dot(odd_graph())
    assert text.startswith('digraph "lineage" {')
    declared, edges = dot_structure(text)
    assert edges
    for source, target in edges:
        assert source in declared and target in declared, (source, target)
    assert dot_quote(f"{SHOP}.users#{_ODD}") in declared  # quoted once, escapes intact
    assert dot_quote(f"{SHOP}.users#email") + " -> " + dot_quote(f"{WAREHOUSE}.users#masked_email") in text
    assert 'label="mask_email (masked)"' in text
    assert PASSWORD not in text and USER not in text and PASSWORD not in to_mermaid(graph())


def test_dot_without_columns_draws_tables_and_jobs():
    text = to_dot(graph(), columns=False)
    declared, edges = dot_structure(text)
    assert "#" not in "".join(declared)
    assert (dot_quote(f"{SHOP}.users"), dot_quote(f"{WAREHOUSE}.users")) in edges
    assert (dot_quote(f"{SHOP}.users"), dot_quote("task:cdc_shop.capture")) in edges


def test_graphviz_parses_the_dot_and_renders_svg():
    if shutil.which("dot") is None:  # make test installs it when root
        require_server("graphviz", "the dot binary is not installed (Debian: apt-get install graphviz)")
    svg = to_svg(odd_graph())
    assert "<svg" in svg and "masked_email" in svg
    assert "<svg" in to_svg(graph(), columns=False, jobs=False)


def test_svg_without_graphviz_says_what_to_install(monkeypatch):
    monkeypatch.setattr(export_module.shutil, "which", lambda name: None)
    with pytest.raises(GraphvizMissingError, match="apt-get install graphviz"):
        to_svg(graph())


_MERMAID_ID = r"n_[A-Za-z0-9_]+"
_LABEL = r'"[^"]*"'
_MERMAID_LINES = [
    re.compile(rf"^  subgraph ({_MERMAID_ID}) \[{_LABEL}\]$"),
    re.compile(r"^  end$"),
    re.compile(rf"^ {{2,4}}({_MERMAID_ID})(\[{_LABEL}\]|\[\({_LABEL}\)\]|\[\[{_LABEL}\]\]|\{{\{{{_LABEL}\}}\}}"
               rf"|\[/{_LABEL}/\])$"),
    re.compile(rf"^  ({_MERMAID_ID}) (-->|-\.->)(\|{_LABEL}\|)? ({_MERMAID_ID})$"),
    re.compile(r"^  linkStyle [0-9,]+ stroke:#[0-9a-f]{6},stroke-width:2px$"),
]


def test_mermaid_is_well_formed():
    text = to_mermaid(odd_graph())
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    declared: set[str] = set()
    depth = 0
    for line in lines[1:]:
        match = next((m for m in (p.match(line) for p in _MERMAID_LINES) if m), None)
        assert match is not None, f"not a well-formed Mermaid line: {line!r}"
        if line.startswith("  subgraph"):
            depth += 1
            declared.add(match.group(1))
        elif line == "  end":
            depth -= 1
            assert depth >= 0
        elif "linkStyle" in line:
            continue
        elif match.re is _MERMAID_LINES[3]:
            assert match.group(1) in declared and match.group(4) in declared, line
        else:
            declared.add(match.group(1))
    assert depth == 0
    assert mermaid_id(f"{SHOP}.users#email") in declared
    assert f'|{mermaid_text("mask_email (masked)")}|' in text
    assert "#quot;" in text  # the odd column's quote, as an entity inside its quoted label


def test_mermaid_ids_are_stable_unique_and_safe():
    a, b = mermaid_id(f"{SHOP}.users#email"), mermaid_id(f"{SHOP}.users#email2")
    assert a == mermaid_id(f"{SHOP}.users#email") and a != b
    assert re.fullmatch(_MERMAID_ID, mermaid_id("end")) and mermaid_id("end") != "end"
    assert mermaid_id(f"{SHOP}.users#email").startswith("n_") and "shop_public_users_email" in a
