"""Schemathesis against the published spec of the live CDC API: whatever the input, no answer is a 500.

Bounded: a few examples per operation, as the admin (who may call every endpoint, writes included: start and stop
only pause and unpause the test's DAG). Each operation's cases come from schemathesis' strategy for it, driven by
Hypothesis directly (schemathesis' own pytest plugin does not run under this pytest)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = [pytest.mark.timeout(600), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

MAX_EXAMPLES = 10


def fuzz(operation, base: str, headers: dict[str, str], errors: list[str]) -> int:
    """Call ``operation`` with up to :data:`MAX_EXAMPLES` generated cases; 5xx answers go to ``errors``. Returns how
    many calls were made."""
    calls = 0

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case) -> None:
        nonlocal calls
        response = case.call(base_url=base, headers=headers, timeout=60)
        calls += 1
        if response.status_code >= 500:
            errors.append(f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: "
                          f"{response.text[:300]}")

    call()
    return calls


def test_no_input_makes_a_server_error(api_server):
    spec = schemathesis.openapi.from_url(f"{api_server.base}/cdc/openapi.json")
    headers = api_server.headers("admin")
    errors: list[str] = []
    called: dict[str, int] = {}
    for result in spec.get_all_operations():
        operation = result.ok()
        called[f"{operation.method.upper()} {operation.path}"] = fuzz(operation, f"{api_server.base}/cdc", headers,
                                                                     errors)
    assert len(called) >= 10 and all(called.values()), called  # every operation of the spec was exercised
    assert not errors, "\n".join(errors[:10])
