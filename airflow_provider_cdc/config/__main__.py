"""``python -m airflow_provider_cdc.config check [DIR]``: validate a config directory before Airflow parses it.

Exit status 0 with a summary when the config loads, 1 with every problem on stderr (``file: key: reason``) when
it does not, so it can gate a CI job or a deploy.

When the config loads, the check also looks at each PostgreSQL source database for replication slots of sources
that are no longer configured (they retain WAL forever) and prints a warning with the SQL that drops each one;
the exit status stays 0. A database that cannot be reached is reported and skipped; ``--offline`` skips the look.
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
    add_check_arguments(check)
    args = parser.parse_args(argv)
    return run_check(args.directory, slots=not args.offline)


def add_check_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument(
        "directory", nargs="?", default=None, help=f"config directory (default: ${CONFIG_DIR_ENV}, else include/config)"
    )
    check.add_argument(
        "--offline", action="store_true",
        help="do not connect to the source databases (skips the look for leftover replication slots)",
    )


def run_check(directory: str | None, *, slots: bool = True) -> int:
    """Load ``directory``; print a summary to stdout (0) or every problem to stderr (1).

    With ``slots``, warnings about leftover replication slots follow the summary on stdout (still 0)."""
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
    if slots:
        from airflow_provider_cdc.config.slots import find_leftover_slots

        for line in find_leftover_slots(config).lines():
            print(line)
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
