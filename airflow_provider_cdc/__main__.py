"""``python -m airflow_provider_cdc <command>``: the provider's command line.

- ``config check [DIR]``: validate a config directory (the same check as ``python -m airflow_provider_cdc.config``);
- ``resnapshot <source_id> [--table T ...]``: the whole recovery after a lost position, in one step;
- ``schema versions|accept|check``: the schema registry, and the way out for a table held after a schema change
  (:mod:`airflow_provider_cdc.schema_commands`);
- ``quarantine list|replay <source_id>``: the changes a rule refused, and their replay, exactly once, after the rule
  is fixed (:mod:`airflow_provider_cdc.quarantine_commands`).

The config directory defaults to ``$CDC_CONFIG_DIR``, else ``include/config``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "python -m airflow_provider_cdc"


def build_parser() -> argparse.ArgumentParser:
    from airflow_provider_cdc import quarantine_commands, resnapshot, schema_commands
    from airflow_provider_cdc.config.__main__ import add_check_arguments

    parser = argparse.ArgumentParser(prog=PROG, description="Change data capture for Airflow: commands.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    config = commands.add_parser("config", help="the config files")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="command")
    check = config_commands.add_parser("check", help="load a config directory and report every problem in it")
    add_check_arguments(check)

    again = commands.add_parser(
        "resnapshot",
        help="re-snapshot a source (or some of its tables) after a lost position, in one step",
        description="The whole recovery after a lost position, in one step: without --table, drop what holds the "
        "old position at the source (a replication slot, say), forget the source's ledger rows, truncate its sink "
        "tables, purge its staged batches and store a fresh position with the snapshot pending; with --table, "
        "re-snapshot only those tables while the others keep streaming. See the README, section Re-snapshot.",
    )
    resnapshot.add_arguments(again)

    schema = commands.add_parser(
        "schema",
        help="the schema registry: versions, accept a held schema change, check a schema",
        description="The schema registry of the sources' tables (it lives in each sink, beside the ledger): list "
        "the versions, accept a held schema change (the held changes are replayed, exactly once), or check an Avro "
        "schema against a subject. See the README, section Schema changes.",
    )
    schema_commands.add_arguments(schema)

    quarantine = commands.add_parser(
        "quarantine",
        help="the quarantined changes of a source: list them, replay them after fixing a rule",
        description="The changes a stage refused (a rule whose expression failed), kept in the sink's "
        "_cdc_quarantine: list them, or replay them through the current rules once a rule is fixed (exactly once). "
        "See the README, section Transformations.",
    )
    quarantine_commands.add_arguments(quarantine)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        from airflow_provider_cdc.config.__main__ import run_check

        return run_check(args.directory, online=not args.offline)
    if args.command == "schema":
        from airflow_provider_cdc import schema_commands

        return schema_commands.run(args)
    if args.command == "quarantine":
        from airflow_provider_cdc import quarantine_commands

        return quarantine_commands.run(args)
    from airflow_provider_cdc import resnapshot

    return resnapshot.run(args)


if __name__ == "__main__":
    sys.exit(main())
