"""What a DDL statement from the binlog does to the captured tables: just enough of MySQL's grammar to follow
them.

The binlog carries DDL as statement text (query events), and row events carry only the columns as they are when
the row was written. Columns have no identity in MySQL (no attnum), so the statement is the only place that tells
a rename (``RENAME COLUMN a TO b``, ``CHANGE a b ...``) from a drop and an add. Tables renamed, dropped, created or
truncated are read here too; everything else (indexes, options, partitions) needs nothing from the stream.

Identifiers may be backquoted (a doubled backquote inside) or bare; comments (``/* */``, ``-- ``, ``#``) and
version comments (``/*!50100 ... */``, whose content MySQL runs) are handled.
"""

from __future__ import annotations

import dataclasses
import re

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<comment>/\*(?!!).*?\*/|--[ \t][^\n]*|\#[^\n]*)
    | (?P<version>/\*!\d*)            # a version comment: its content is SQL
    | (?P<vend>\*/)
    | (?P<quoted>`(?:[^`]|``)*`)
    | (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
    | (?P<word>[^\s`'"(),;.=]+)
    | (?P<punct>[(),;.=])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclasses.dataclass(frozen=True)
class Token:
    text: str
    quoted: bool = False  # an identifier in backquotes: never a keyword

    @property
    def upper(self) -> str:
        return "" if self.quoted else self.text.upper()


def tokenize(statement: str) -> list[Token]:
    tokens: list[Token] = []
    for match in _TOKEN.finditer(statement):
        kind = match.lastgroup
        text = match.group()
        if kind in ("ws", "comment", "version", "vend"):
            continue
        if kind == "quoted":
            tokens.append(Token(text[1:-1].replace("``", "`"), quoted=True))
        else:
            tokens.append(Token(text))
    return tokens


@dataclasses.dataclass
class DdlEffect:
    """What one statement does. Table names are ``(database or None, table)``: None means the session's default
    database (the query event's own)."""

    kind: str  # alter | rename | drop | create | truncate | other
    tables: list[tuple[str | None, str]] = dataclasses.field(default_factory=list)
    # ALTER TABLE: columns renamed (old -> new) and dropped, in statement order; a table renamed to ``new_name``.
    renamed_columns: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    dropped_columns: list[str] = dataclasses.field(default_factory=list)
    # RENAME TABLE a TO b, c TO d (and ALTER TABLE a RENAME TO b): (old, new) pairs in order.
    renamed_tables: list[tuple[tuple[str | None, str], tuple[str | None, str]]] = dataclasses.field(
        default_factory=list)


def _name(tokens: list[Token], i: int) -> tuple[tuple[str | None, str], int]:
    """A possibly qualified name at ``tokens[i]``: ((db, table), index after it)."""
    first = tokens[i].text
    if i + 2 < len(tokens) + 1 and i + 1 < len(tokens) and tokens[i + 1].text == ".":
        return (first, tokens[i + 2].text), i + 3
    return (None, first), i + 1


def _skip(tokens: list[Token], i: int, *words: str) -> int:
    while i < len(tokens) and tokens[i].upper in words:
        i += 1
    return i


def _clauses(tokens: list[Token]) -> list[list[Token]]:
    """Split at top-level commas (not those inside parentheses)."""
    out: list[list[Token]] = [[]]
    depth = 0
    for token in tokens:
        if not token.quoted and token.text == "(":
            depth += 1
        elif not token.quoted and token.text == ")":
            depth -= 1
        if depth == 0 and not token.quoted and token.text == ",":
            out.append([])
            continue
        out[-1].append(token)
    return [c for c in out if c]


_NOT_COLUMNS = {"INDEX", "KEY", "PRIMARY", "FOREIGN", "CONSTRAINT", "CHECK", "PARTITION", "UNIQUE", "FULLTEXT",
                "SPATIAL", "SYSTEM", "PERIOD"}


def _alter_clause(clause: list[Token], effect: DdlEffect) -> None:
    head = clause[0].upper if clause else ""
    if head == "RENAME" and len(clause) >= 2:
        second = clause[1].upper
        if second == "COLUMN" and len(clause) >= 5:
            effect.renamed_columns.append((clause[2].text, clause[4].text))
        elif second in ("INDEX", "KEY"):
            return
        else:
            i = _skip(clause, 1, "TO", "AS")
            if i < len(clause):
                new, _ = _name(clause, i)
                effect.renamed_tables.append((effect.tables[0], new))
    elif head == "CHANGE" and len(clause) >= 3:
        i = _skip(clause, 1, "COLUMN")
        i = _skip(clause, i, "IF")  # CHANGE COLUMN IF EXISTS (MariaDB)
        i = _skip(clause, i, "EXISTS")
        if i + 1 < len(clause) and clause[i].text != clause[i + 1].text:
            effect.renamed_columns.append((clause[i].text, clause[i + 1].text))
    elif head == "DROP" and len(clause) >= 2:
        if clause[1].upper in _NOT_COLUMNS:
            return
        i = _skip(clause, 1, "COLUMN")
        if i < len(clause) and clause[i].upper == "IF":
            i = _skip(clause, i + 1, "EXISTS")
        if i < len(clause):
            effect.dropped_columns.append(clause[i].text)


def parse(statement: str) -> DdlEffect:
    """What ``statement`` does to tables (``kind='other'`` for anything the stream need not follow)."""
    tokens = tokenize(statement)
    words = [t.upper for t in tokens]
    if not tokens:
        return DdlEffect("other")
    try:
        if words[0] == "TRUNCATE":
            i = _skip(tokens, 1, "TABLE")
            name, _ = _name(tokens, i)
            return DdlEffect("truncate", [name])
        if words[0] == "ALTER":
            i = _skip(tokens, 1, "ONLINE", "OFFLINE", "IGNORE")
            if words[i] != "TABLE":
                return DdlEffect("other")
            i = _skip(tokens, i + 1, "IF")
            i = _skip(tokens, i, "EXISTS")
            name, i = _name(tokens, i)
            effect = DdlEffect("alter", [name])
            rest = tokens[i:]
            # WAIT n / NOWAIT come before the clauses on MariaDB
            for clause in _clauses(rest):
                _alter_clause(clause, effect)
            return effect
        if words[0] == "RENAME" and len(words) > 1 and words[1] in ("TABLE", "TABLES"):
            effect = DdlEffect("rename")
            for clause in _clauses(tokens[2:]):
                j = _skip(clause, 0, "IF")
                j = _skip(clause, j, "EXISTS")
                old, j = _name(clause, j)
                j = _skip(clause, j, "WAIT", "NOWAIT")
                if j < len(clause) and clause[j].upper.isdigit():
                    j += 1
                j = _skip(clause, j, "TO")
                new, _ = _name(clause, j)
                effect.renamed_tables.append((old, new))
                effect.tables += [old, new]
            return effect
        if words[0] == "DROP":
            if words[1] != "TABLE":  # DROP TEMPORARY TABLE: a session's own table, never captured
                return DdlEffect("other")
            i = _skip(tokens, 2, "IF")
            i = _skip(tokens, i, "EXISTS")
            effect = DdlEffect("drop")
            for clause in _clauses(tokens[i:]):
                if clause[0].upper in ("RESTRICT", "CASCADE", "WAIT", "NOWAIT"):
                    continue
                name, _ = _name(clause, 0)
                effect.tables.append(name)
            return effect
        if words[0] == "CREATE":
            i = _skip(tokens, 1, "OR", "REPLACE", "TEMPORARY")
            if words[i] != "TABLE" or "TEMPORARY" in words[1:i]:
                return DdlEffect("other")
            i = _skip(tokens, i + 1, "IF")
            i = _skip(tokens, i, "NOT")
            i = _skip(tokens, i, "EXISTS")
            name, _ = _name(tokens, i)
            return DdlEffect("create", [name])
    except IndexError:
        return DdlEffect("other")
    return DdlEffect("other")
