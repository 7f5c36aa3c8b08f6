"""Dependency ranges in setup.cfg are pinned sensibly, the environment satisfies them, and pip-audit finds no known
vulnerability in our direct dependencies.

Every requirement needs a lower bound: the oldest version whose API we use. An upper bound is needed where the next
major version is known to break, or is announced to break, what we use: Airflow itself (a minor version is a new
provider API), pydantic (models), psycopg (the driver of every PostgreSQL path), Jinja2 (the sandbox's guarantees),
NumPy, pymongo, mysql-replication (its event API changed in each major), deltalake (its 1.0 broke the writer API),
avro (the compatibility checker) and Great Expectations (its 1.0 rewrote everything). PyArrow has no upper bound on
purpose: it releases a major version every quarter and keeps the APIs we use, so a cap would only hold back fixes.

pip-audit needs PyPI's vulnerability data: where that cannot be reached (an offline runner, or a mirror without the
per-version JSON API) the audit is skipped with the reason, as it proves nothing there.
"""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
import urllib.request
import warnings
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SETUP_CFG = Path(__file__).resolve().parents[2] / "setup.cfg"
NEEDS_UPPER_BOUND = {"apache-airflow", "pydantic", "psycopg", "jinja2", "numpy", "pymongo", "mysql-replication",
                     "deltalake", "avro", "great-expectations"}
RUNTIME_EXTRAS = ("mysql", "mongodb", "openlineage", "delta", "quality", "all")


def requirements(*sections: str) -> list[Requirement]:
    """install_requires, then the named extras, as parsed requirements (comments and blank lines dropped)."""
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    lines = config["options"]["install_requires"].splitlines()
    for extra in sections:
        lines += config["options.extras_require"][extra].splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]


def bounds(requirement: Requirement) -> tuple[bool, bool]:
    operators = {spec.operator for spec in requirement.specifier}
    lower = bool(operators & {">=", ">", "==", "~=", "==="})
    upper = bool(operators & {"<", "<=", "==", "~=", "==="})
    return lower, upper


def test_every_requirement_has_a_lower_bound():
    missing = [str(r) for r in requirements(*RUNTIME_EXTRAS, "test") if not bounds(r)[0]]
    assert missing == [], f"setup.cfg: requirements without a lower bound: {missing}"


def test_a_requirement_whose_next_major_would_break_us_has_an_upper_bound():
    missing = sorted({canonicalize_name(r.name) for r in requirements(*RUNTIME_EXTRAS)
                      if canonicalize_name(r.name) in NEEDS_UPPER_BOUND and not bounds(r)[1]})
    assert missing == [], f"setup.cfg: add an upper bound (the next major version) to {missing}"


def test_the_installed_environment_satisfies_setup_cfg():
    wrong = []
    for requirement in requirements(*RUNTIME_EXTRAS, "test"):
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{requirement}: not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            wrong.append(f"{requirement}: {version} installed")
    assert wrong == []


def test_pip_audit_finds_no_known_vulnerability_in_our_direct_dependencies(record_property):
    try:
        import pip_audit  # noqa: F401 - only whether it is installed
    except ImportError:
        pytest.skip("pip-audit is not installed (pip install pip-audit)")
    probe = f"https://pypi.org/pypi/jinja2/{metadata.version('jinja2')}/json"  # what pip-audit asks per package
    try:
        with urllib.request.urlopen(probe, timeout=10) as response:
            json.load(response)["vulnerabilities"]
    except (OSError, ValueError, KeyError) as exc:
        pytest.skip(f"PyPI's vulnerability data is not reachable from here ({probe}: {exc})")
    proc = subprocess.run([sys.executable, "-m", "pip_audit", "--local", "--format", "json", "--progress-spinner",
                           "off"], capture_output=True, text=True, timeout=300)
    if not proc.stdout.strip():
        pytest.skip(f"pip-audit could not run: {proc.stderr.strip().splitlines()[-1:]}")
    report = json.loads(proc.stdout)
    audited = [dep for dep in report["dependencies"] if "skip_reason" not in dep]
    if not audited:
        reason = next((dep["skip_reason"] for dep in report["dependencies"]), "no dependency listed")
        pytest.skip(f"PyPI's vulnerability data is not reachable from here: {reason}")
    direct = {canonicalize_name(r.name) for r in requirements(*RUNTIME_EXTRAS)}
    found = {f"{dep['name']} {dep['version']}": [v["id"] for v in dep["vulns"]] for dep in audited if dep["vulns"]}
    record_property("pip_audit_findings", json.dumps(found))
    if found:
        warnings.warn(f"pip-audit: known vulnerabilities in the environment: {found}", stacklevel=1)
    ours = {name: ids for name, ids in found.items() if canonicalize_name(name.split()[0]) in direct}
    assert ours == {}, f"known vulnerabilities in direct dependencies: {ours}"
