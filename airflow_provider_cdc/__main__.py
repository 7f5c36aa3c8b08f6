"""``python -m airflow_provider_cdc <command>``: the provider's command line.

- ``config check [DIR]``: validate a config directory (the same check as ``python -m airflow_provider_cdc.config``);
- ``resnapshot <source_id> [--table T ...]``: the whole recovery after a lost position, in one step.

The config directory defaults to ``$CDC_CONFIG_DIR``, else ``include/config``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "python -m airflow_provider_cdc"


def build_parser() -> argparse.ArgumentParser:
    from airflow_provider_cdc import resnapshot
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        from airflow_provider_cdc.config.__main__ import run_check

        return run_check(args.directory, online=not args.offline)
    from airflow_provider_cdc import resnapshot

    return resnapshot.run(args)


if __name__ == "__main__":
    sys.exit(main())
