"""Every code sample of docs/*.md is tested here, and every link resolves.

- A ```python block under ``<!-- example: <file> [<tag>] -->`` is the code of that file: between its
  ``# [START <tag>]`` and ``# [END <tag>]`` markers, or (without a tag) lines of the file as they stand. The example
  DAGs are run by tests/examples and tests/e2e. Any other ```python block runs here as it is.
- Each line of a ```bash block is a command this test knows how to check, and checks: an ``AIRFLOW_CONN_*``
  Connection (the driver URL it resolves to is the ```text block after it), ``CDC_STAGING_URL``, ``airflow
  connections add``, ``airflow dags test`` of an example DAG, ``pip install`` of an extra, and
  ``python -m airflow_provider_cdc`` commands (parsed by the command's own parser).
- A ```text block is a driver URL (after a bash block of Connections) or an output named by
  ``<!-- output: <name> -->``, made again here.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import shlex
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!-- (example|output): (\S+)(?: (\S+))? -->$")


@dataclasses.dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    marker: tuple[str, str, str | None] | None

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(previous.strip())
        found.append(Block(page, index + 1, opening.group(1), "\n".join(lines[index + 1:end]) + "\n",
                           marker.groups() if marker else None))
        index = end + 1
    return found


BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def ids(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


def test_the_docs_have_code_samples_of_each_kind():
    languages = {block.language for block in BLOCKS}
    assert {"python", "bash", "text"} <= languages and languages <= {"python", "bash", "text"}, languages
    assert [page.name for page in PAGES] == ["changelog.md", "configuration.md", "connections.md", "index.md",
                                             "operators.md"]


# --- python -------------------------------------------------------------------------------------------------------


def between_markers(text: str, tag: str) -> str:
    start, end = f"# [START {tag}]\n", f"# [END {tag}]"
    assert start in text and end in text, f"no {tag} markers"
    return text.split(start, 1)[1].split(end, 1)[0]


def contains_lines(text: str, snippet: str) -> bool:
    """Whether ``snippet``'s lines stand in ``text`` one after another, at any one indentation."""
    wanted = textwrap.dedent(snippet).splitlines()
    lines = text.splitlines()
    return any(textwrap.dedent("\n".join(lines[i:i + len(wanted)])).splitlines() == wanted
               for i in range(len(lines) - len(wanted) + 1))


PYTHON = [block for block in BLOCKS if block.language == "python"]
FROM_EXAMPLES = [block for block in PYTHON if block.marker and block.marker[0] == "example"]
RUN_HERE = [block for block in PYTHON if not block.marker]


@pytest.mark.parametrize("block", FROM_EXAMPLES, ids=ids(FROM_EXAMPLES))
def test_a_sample_from_an_example_is_that_examples_code(block: Block):
    assert block.marker is not None
    _, path, tag = block.marker
    text = (REPO / path).read_text(encoding="utf-8")
    if tag:
        assert textwrap.dedent(between_markers(text, tag)) == block.code, f"{block.where} differs from {path} {tag}"
    else:
        assert contains_lines(text, block.code), f"{block.where}: these lines are not in {path} as they stand"


@pytest.mark.parametrize("block", RUN_HERE, ids=ids(RUN_HERE))
def test_a_sample_of_its_own_runs(block: Block):
    namespace: dict[str, object] = {"__name__": f"docs_sample_{block.line}"}
    exec(compile(block.code, block.where, "exec"), namespace)  # the documentation's own code


def test_the_dag_samples_build_their_dags():
    from airflow.sdk import DAG

    dags: dict[str, DAG] = {}
    for block in RUN_HERE:
        namespace: dict[str, object] = {"__name__": "docs_sample"}
        exec(compile(block.code, block.where, "exec"), namespace)
        dags.update({value.dag_id: value for value in namespace.values() if isinstance(value, DAG)})
    assert sorted(dags) == ["cdc_shop_counts", "cdc_shop_quarantine_replay"]
    assert [t.task_id for t in dags["cdc_shop_counts"].topological_sort()] == ["capture", "changes_seen"]
    replay = dags["cdc_shop_quarantine_replay"].task_dict["replay"]
    assert (replay.source_id, replay.table, replay.rule) == ("shop", "{{ params.table }}", "{{ params.rule }}")


def test_the_operator_guide_shows_every_operator_the_provider_registers():
    import importlib

    from airflow.sdk import BaseOperator

    from airflow_provider_cdc.get_provider_info import get_provider_info

    guide = (DOCS / "operators.md").read_text(encoding="utf-8")
    info = get_provider_info()
    classes = [name for section in ("operators", "sensors") for entry in info[section]
               for module in entry["python-modules"]
               for name, value in vars(importlib.import_module(module)).items()
               if isinstance(value, type) and issubclass(value, BaseOperator) and value.__module__ == module
               and not name.startswith("_")]
    classes += [path.rpartition(".")[2] for path in info["notifications"]]
    assert len(classes) >= 9
    missing = [name for name in classes if not re.search(rf"^#+ .*`{name}`", guide, re.MULTILINE)]
    assert missing == [], f"operators.md has no how-to heading for {missing}"


# --- bash ---------------------------------------------------------------------------------------------------------

BASH = [block for block in BLOCKS if block.language == "bash"]
CONNECTOR_OF = {"postgres": "postgresql", "mysql": "mysql", "mongo": "mongodb"}


def example_dag_ids() -> set[str]:
    from airflow.dag_processing.dagbag import DagBag

    return set(DagBag(dag_folder=str(REPO / "dags" / "examples")).dag_ids)


def extras() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return set(parser["options.extras_require"])


def text_after(block: Block) -> Block | None:
    later = [other for other in BLOCKS if other.page == block.page and other.line > block.line]
    return later[0] if later and later[0].language == "text" else None


@pytest.mark.parametrize("block", BASH, ids=ids(BASH))
def test_each_command_of_a_bash_sample_is_checked(block: Block, monkeypatch, tmp_path):
    from airflow.models.connection import Connection
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cdc.__main__ import build_parser
    from airflow_provider_cdc.hooks.cdc import connection_dsn

    monkeypatch.setenv("CDC_CONFIG_DIR", str(tmp_path))
    urls: list[str] = []
    for line in block.code.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = shlex.split(line)
        if words[0] == "export" and words[1].startswith("AIRFLOW_CONN_"):
            name, _, value = words[1].partition("=")
            monkeypatch.setenv(name, value)
            conn = Connection.from_json(value, conn_id=name[13:].lower())
            assert conn.conn_type in (*CONNECTOR_OF, "aws"), line
            if conn.conn_type in CONNECTOR_OF:
                urls.append(connection_dsn(conn.conn_id, CONNECTOR_OF[conn.conn_type]))
        elif words[0] == "export" and words[1].startswith("CDC_STAGING_URL="):
            path = ObjectStoragePath(words[1].partition("=")[2])
            assert path.protocol == "s3" and path.conn_id, line
            assert Connection.get_connection_from_secrets(path.conn_id).conn_type == "aws", line
        elif words[:3] == ["airflow", "connections", "add"]:
            assert words[4] == "--conn-uri", line
            monkeypatch.setenv(f"AIRFLOW_CONN_{words[3].upper()}", words[5])
            conn = Connection(conn_id=words[3], uri=words[5])
            assert connection_dsn(words[3], CONNECTOR_OF[conn.conn_type]).startswith("postgresql://"), line
        elif words[:3] == ["airflow", "dags", "test"]:
            assert words[3] in example_dag_ids(), f"{line}: not a DAG of dags/examples"
        elif words[:2] == ["pip", "install"]:
            package, _, extra = words[2].partition("[")
            assert package == "airflow-provider-cdc" and extra.rstrip("]") in extras(), line
        elif words[:3] == ["python", "-m", "airflow_provider_cdc"]:
            build_parser().parse_args(words[3:])
        else:
            pytest.fail(f"{block.where}: no check for the command {line!r}: add one to this test")
    if urls:
        shown = text_after(block)
        assert shown is not None, f"{block.where}: the driver URL should follow in a text block"
        assert shown.code.splitlines() == urls


# --- text ---------------------------------------------------------------------------------------------------------

TEXT = [block for block in BLOCKS if block.language == "text"]


def notifier_output() -> str:
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_provider_cdc.notifiers import failure_message
    from airflow_provider_cdc.pipeline import TablesHeldError

    class Commit:
        task_id = "commit"
        source_id = "notified_shop"

    try:
        try:
            raise TablesHeldError("notified_shop", {"public.orders": "retyped"})
        except TablesHeldError as exc:
            raise AirflowFailException(str(exc)) from exc
    except AirflowFailException as failed:
        exception = failed
    context = {"dag": DAG("cdc_notified_shop", schedule=None), "task": Commit(), "exception": exception,
               "run_id": "manual__2024-06-01T10:00:00+00:00"}
    return failure_message(context) + "\n"


OUTPUTS = {"CdcFailureNotifier": notifier_output}


@pytest.mark.parametrize("block", TEXT, ids=ids(TEXT))
def test_each_text_sample_is_made_again(block: Block):
    if block.marker and block.marker[0] == "output":
        assert block.code == OUTPUTS[block.marker[1]](), f"{block.where} is not what {block.marker[1]} says"
        return
    before = [other for other in BLOCKS if other.page == block.page and other.line < block.line]
    assert before and before[-1].language == "bash" and "AIRFLOW_CONN_" in before[-1].code, (
        f"{block.where}: a text block shows a driver URL after its Connections, or an <!-- output: ... -->")


# --- links --------------------------------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors_of(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercased, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_link_resolves(page: Path):
    broken = []
    text = page.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors_of(resolved)):
            broken.append(target)
    assert broken == []


def test_the_provider_info_links_to_headings_that_exist():
    from airflow_provider_cdc.get_provider_info import get_provider_info

    for used in get_provider_info()["connection-types-used"]:
        path, _, anchor = used["how-to-guide"].lstrip("/").partition("#")
        assert anchor in anchors_of(REPO / path), used


def test_json_in_the_samples_is_valid():
    for block in BASH:
        for found in re.findall(r"'(\{.*\})'", block.code):
            json.loads(found)
