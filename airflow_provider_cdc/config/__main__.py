"""``python -m airflow_provider_cdc.config check [DIR]``: validate a config directory before Airflow parses it.

Exit status 0 with a summary when the config loads (each source with its schema policy: mode, default compatibility
level and the levels set per table), 1 with every problem on stderr (``file: key: reason``) when
it does not, so it can gate a CI job or a deploy.

When the config loads, the check also asks each connector factory in use to look at its databases for what
removed sources left behind (a replication slot that retains WAL forever, say) and prints its warnings; the exit
status stays 0. Then it checks the fields that rules read against the table schemas each sink's registry knows
(:mod:`.fields`): a rule reading a column its table lacks is a problem, exit status 1. A database that cannot be
reached is reported and skipped; ``--offline`` skips both looks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from airflow_provider_cdc.config.fields import check_fields
from airflow_provider_cdc.config.loader import CONFIG_DIR_ENV, ConfigError, default_config_dir, load_config
from airflow_provider_cdc.config.models import CdcConfig, describe_policy, mask_url
from airflow_provider_cdc.connectors import registry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_cdc.config", description="Tools for the airflow-provider-cdc config files."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="load a config directory and report every problem in it")
    add_check_arguments(check)
    args = parser.parse_args(argv)
    return run_check(args.directory, online=not args.offline)


def add_check_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument(
        "directory", nargs="?", default=None, help=f"config directory (default: ${CONFIG_DIR_ENV}, else include/config)"
    )
    check.add_argument(
        "--offline", action="store_true",
        help="do not connect to the databases (skips the look for what removed sources left behind there, and the "
             "check of rule fields against the table schemas the sinks know)",
    )


def run_check(directory: str | None, *, online: bool = True) -> int:
    """Load ``directory``; print a summary to stdout (0) or every problem to stderr (1).

    With ``online``, each connector factory's warnings about leftovers follow the summary on stdout (still 0)."""
    try:
        config = load_config(directory)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        where = exc.directory if exc.directory is not None else default_config_dir()
        print(f"{count} problem{'s' if count != 1 else ''} in {where}", file=sys.stderr)
        return 1
    expectations = expectation_problems(config)
    if expectations:
        for line in expectations:
            print(line, file=sys.stderr)
        count = len(expectations)
        print(f"{count} problem{'s' if count != 1 else ''} in {config.directory}", file=sys.stderr)
        return 1
    print(summarize(config))
    if not online:
        return 0
    for line in inspect(config):
        print(line)
    found, notes = check_fields(config)
    for line in notes:
        print(line)
    for line in found:
        print(line, file=sys.stderr)
    if found:
        count = len(found)
        print(f"{count} problem{'s' if count != 1 else ''} with the table schemas the sinks know", file=sys.stderr)
        return 1
    return 0


def expectation_problems(config: CdcConfig) -> list[str]:
    """What only GX can tell about quality.yaml (``expectation:`` names and kwargs): checked here, not at DAG parse,
    because importing GX takes seconds."""
    from airflow_provider_cdc.quality.rules import check_expectations

    return [f"quality.yaml: suites[{i}]: {line}" for i, suite in enumerate(config.suites)
            for line in check_expectations(suite)]


def used_types(config: CdcConfig) -> list[str]:
    """The connector types of the sources and of the sinks they load into, in config order."""
    types = [source.type for source in config.sources]
    types += [config.connector(source.sink).type for source in config.sources]
    return list(dict.fromkeys(types))


def inspect(config: CdcConfig) -> list[str]:
    """Warning lines of each used connector factory's online look (``ConnectorFactory.inspect``).

    The look is advice, never a reason to fail the check: a factory that raises is reported as one warning."""
    lines: list[str] = []
    for connector_type in used_types(config):
        look = registry.factory(connector_type).inspect  # the loader has imported every used factory already
        if look is None:
            continue
        try:
            lines += look(config)
        except Exception as exc:
            lines.append(f"warning: the {connector_type} connector could not look for leftovers "
                         f"({type(exc).__name__}: {' '.join(mask_url(word) for word in str(exc).split())}); skipped")
    return lines


def summarize(config: CdcConfig) -> str:
    lines = [f"config OK: {config.directory}", f"connectors: {len(config.connectors)}"]
    lines.append(f"sources: {len(config.sources)}")
    for source in config.sources:
        lines.append(
            f"  {source.dag_id}: {source.type}, {len(source.tables)} table{'s' if len(source.tables) != 1 else ''}"
            f" -> {source.sink}, schedule {source.schedule}"
        )
        lines.append(f"    schema changes: {describe_policy(config.schema_policy(source.id))}")
    sinks = [config.connector(sink) for sink in dict.fromkeys(source.sink for source in config.sources)]
    lines.append(f"sinks: {len(sinks)}")
    for sink in sinks:
        lines.append(f"  {sink.id}: {sink.type}{_capabilities(sink.type)}")
    lines += [f"rules: {len(config.rules)}", f"suites: {len(config.suites)}"]
    return "\n".join(lines)


def _capabilities(connector_type: str) -> str:
    """``, transactional, merge by key, soft delete`` from the sink's declared capabilities ("" when none)."""
    capabilities = registry.factory(connector_type).capabilities
    if capabilities is None:
        return ""
    words = [
        "one transaction per batch" if capabilities.transactional else "one commit per table and batch",
        "merge by key" if capabilities.merge_by_key else "append-only change log",
        "soft delete" if capabilities.soft_delete else "no soft delete",
    ]
    return ", " + ", ".join(words)


if __name__ == "__main__":
    sys.exit(main())
