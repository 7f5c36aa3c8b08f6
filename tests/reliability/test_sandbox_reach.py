"""The Jinja sandbox cannot reach the file system, the network or the environment, observed from outside.

``tests/transform/test_sandbox.py`` proves each refusal by its message; here the other side is watched: a secret in an
environment variable, a secret in a file, and a listening socket. Every expression below tries to read, write or
connect through what a rule can name (the globals, the built-in functions and filters of the production registry, the
row, Jinja's own tags). Afterwards no rendered value, row failure or problem holds a secret, no file was written and
no connection arrived; and each attempt was refused (a problem or a row failure), never silently rendered empty.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from transform.util import USERS, rules, table_of

from airflow_provider_cdc.transform import FunctionRegistry

ENV_SECRET = "env-secret-5b1d8c"
FILE_SECRET = "file-secret-93e0aa"
ROW = {"id": "1", "email": "ann@example.com", "phone": "555-0100", "price": "1.00", "tax": "0.10", "status": "a"}

# {file}, {marker}, {port} and {env} are filled in per test run.
ATTEMPTS = [
    # the environment
    "{{ environ }}", "{{ env['{env}'] }}", "{{ os.environ['{env}'] }}", "{{ self._TemplateReference__context }}",
    "{{ dict.mro()[1] | attr('__subclasses__') }}", "{{ range.__self__ }}", "{{ (range | attr('__self__')) }}",
    "{{ mask | attr('__globals__') }}", "{{ hash | attr('__globals__') }}", "{{ cast | attr('__module__') }}",
    "{{ row | attr('__class__') }}", "{{ email | attr('__class__') | attr('__mro__') }}",
    "{{ config }}", "{{ request }}", "{{ settings }}", "{{ lipsum }}", "{{ cycler }}", "{{ namespace }}",
    # the file system
    "{% include '{file}' %}", "{% import '{file}' as f %}{{ f }}", "{% extends '{file}' %}",
    "{{ open('{file}').read() }}", "{{ '{file}' | file }}", "{{ dict(x=1) | attr('__init__') }}",
    "{{ ''.join | attr('__self__') }}", "{{ range(1) | attr('__iter__') }}",
    "{{ '{file}' | attr('__class__') }}", "{{ now() | attr('__class__') }}",
    # writing and the network
    "{{ open('{marker}', 'w').write('x') }}", "{{ __import__('os').system('touch {marker}') }}",
    "{{ __import__('socket').create_connection(('127.0.0.1', {port})) }}",
    "{{ __import__('urllib.request').urlopen('http://127.0.0.1:{port}/') }}",
]


@pytest.fixture
def listener():
    """A socket listening on localhost: any connection from a rule would be waiting in its accept queue."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def render(expression: str) -> list[str]:
    """Everything a rule's evaluation gives back: its problems, its row failures and its rendered values."""
    ruleset = rules({"rule_id": "reach", "rule_type": "map", "target_field": "x", "expression": expression},
                    functions=FunctionRegistry.default())
    problems = ruleset.problems() + ruleset.check(USERS)
    if problems:
        return problems
    result = ruleset.apply(table_of(USERS, [("c", ROW)]), USERS)
    assert result.failures, f"{expression!r} rendered {result.table.column('x').to_pylist()} instead of failing"
    return [failure.reason for failure in result.failures] + [str(v) for v in result.table.column("x").to_pylist()]


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_an_expression_reaches_no_file_no_network_and_no_environment(attempt, listener, tmp_path: Path, monkeypatch):
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(FILE_SECRET)
    marker = tmp_path / "written"
    monkeypatch.setenv("CDC_SANDBOX_SECRET", ENV_SECRET)
    expression = (attempt.replace("{file}", str(secret_file)).replace("{marker}", str(marker))
                  .replace("{port}", str(listener.getsockname()[1])).replace("{env}", "CDC_SANDBOX_SECRET"))

    outputs = render(expression)

    assert outputs, "refused without saying why"
    assert not any(ENV_SECRET in out or FILE_SECRET in out for out in outputs), outputs
    assert not marker.exists()
    with pytest.raises(BlockingIOError):  # nothing connected
        listener.accept()
