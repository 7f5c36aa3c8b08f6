"""``python -m airflow_provider_cdc.config check [DIR]``: validate a config directory before Airflow parses it.

Exit status 0 with a summary when the config loads, 1 with every problem on stderr (``file: key: reason``) when
it does not, so it can gate a CI job or a deploy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from airflow_provider_cdc.config.loader import CONFIG_DIR_ENV, ConfigError, default_config_dir, load_config
from airflow_provider_cdc.config.models import CdcConfig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_cdc.config", description="Tools for the airflow-provider-cdc config files."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="load a config directory and report every problem in it")
    check.add_argument(
        "directory", nargs="?", default=None, help=f"config directory (default: ${CONFIG_DIR_ENV}, else include/config)"
    )
    args = parser.parse_args(argv)
    return run_check(args.directory)


def run_check(directory: str | None) -> int:
    """Load ``directory``; print a summary to stdout (0) or every problem to stderr (1)."""
    try:
        config = load_config(directory)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        where = exc.directory if exc.directory is not None else default_config_dir()
        print(f"{count} problem{'s' if count != 1 else ''} in {where}", file=sys.stderr)
        return 1
    print(summarize(config))
    return 0


def summarize(config: CdcConfig) -> str:
    lines = [f"config OK: {config.directory}", f"connectors: {len(config.connectors)}"]
    lines.append(f"sources: {len(config.sources)}")
    for source in config.sources:
        lines.append(
            f"  {source.dag_id}: {source.type}, {len(source.tables)} table{'s' if len(source.tables) != 1 else ''}"
            f" -> {source.sink}, schedule {source.schedule}"
        )
    lines += [f"rules: {len(config.rules)}", f"suites: {len(config.suites)}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
