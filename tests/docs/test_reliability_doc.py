"""RELIABILITY.md names, on every line of its tables, the tests that prove it: each named test must exist, so that a
renamed or deleted test cannot leave a guarantee standing without its proof."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| ---") and not line.startswith("| guarantee |")]


def test_every_test_reliability_md_names_exists():
    text = (REPO / "RELIABILITY.md").read_text()
    named = NAMED.findall(text)
    assert len(named) > 50, "RELIABILITY.md should name its tests as `tests/path.py::test_name`"
    missing = [f"{path}::{name}" for path, name in named
               if not (REPO / path).is_file() or not re.search(rf"^(async )?def {name}\(", (REPO / path).read_text(),
                                                               re.MULTILINE)]
    assert missing == [], f"RELIABILITY.md names tests that do not exist: {missing}"


def test_every_row_of_its_tables_names_a_test_or_a_manual_step():
    text = (REPO / "RELIABILITY.md").read_text()
    header = re.compile(r"^\| (condition|not guaranteed|failure|input|guarantee|gap) \|")
    unproved = [row for row in table_rows(text) if not header.match(row)
                and not NAMED.search(row) and "section " not in row and "manual:" not in row]
    assert unproved == [], "rows without a test:\n" + "\n".join(unproved)
