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
from importlib import metadata
from pathlib import Path

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
