#!/usr/bin/env python3
"""Run a private MariaDB from the machine's ``mariadbd``, set up as a CDC source: row binlog with full images and
full row metadata, GTIDs, on 127.0.0.1 and a free TCP port, with its own temporary data directory.

The machine's own MariaDB server is left alone (it usually runs without a binlog). Debian's ``mariadb-server``
package provides ``mariadbd`` and ``mariadb-install-db``; ``make test`` installs it when it is missing and we are
root.

Usage as a module::

    with PrivateMariaDB("/tmp/mdb") as server:
        print(server.url("shop"))

Usage as a command::

    python scripts/private_mariadb.py start --datadir .state/mariadb --port 53306
    python scripts/private_mariadb.py stop --datadir .state/mariadb
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # server_process.py beside this file
from server_process import HOST, free_port, process_alive, stop_pid

LOG_NAME = "server.log"
PID_NAME = "mariadbd.pid"
SOCKET_NAME = "mariadbd.sock"
PORT_NAME = "port"

# What a CDC source needs (ROW, FULL images, FULL metadata: column names in every table map event) plus what makes
# a throwaway test server fast (no durability).
SOURCE_SETTINGS = [
    "--log-bin=mysql-bin",
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
    "--server-id=1",
    "--local-infile=1",
    "--max-allowed-packet=512M",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--skip-name-resolve",
    "--max-connections=500",
]
FAST_SETTINGS = [
    "--innodb-flush-log-at-trx-commit=2",
    "--sync-binlog=0",
    "--innodb-doublewrite=0",
    "--innodb-buffer-pool-size=256M",
    "--innodb-log-file-size=256M",
]


class PrivateMariaDBError(RuntimeError):
    """The private server could not be prepared, started or stopped."""


def find_binary(*names: str) -> str:
    for name in names:
        for folder in (None, "/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
            found = shutil.which(name, path=folder) if folder else shutil.which(name)
            if found:
                return found
    raise PrivateMariaDBError(
        f"{' / '.join(names)} not found: install MariaDB's server (Debian: apt-get install mariadb-server)"
    )


class PrivateMariaDB:
    """A MariaDB server with its own data directory, set up as a CDC source (see the module docstring).

    ``port=None`` reuses the port of a server already running on ``datadir``, else picks a free one.
    """

    def __init__(self, datadir: str | os.PathLike[str], port: int | None = None, *, fast: bool = True,
                 start_timeout: float = 60.0, extra_args: list[str] | None = None) -> None:
        self.datadir = Path(datadir).expanduser().resolve()
        self.port = port
        self.fast = fast
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args or [])
        self.log_file = self.datadir / LOG_NAME
        self._process: subprocess.Popen[bytes] | None = None

    # -- public API ------------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    def url(self, database: str = "") -> str:
        if self.port is None:
            raise PrivateMariaDBError("the server has no port yet; call start() first")
        return f"mysql://root@{HOST}:{self.port}/{database}"

    @property
    def tmpdir(self) -> Path:
        """A temporary directory of its own: servers set up side by side must not share /tmp's temporary tables."""
        return self.datadir.parent / f"{self.datadir.name}.tmp"

    @property
    def pid_file(self) -> Path:
        return self.datadir / PID_NAME

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if process_alive(pid) else None

    def start(self) -> PrivateMariaDB:
        """Initialise the data directory if new, start the server (unless it runs) and wait for connections."""
        if self.running_pid() is not None:
            self.port = int((self.datadir / PORT_NAME).read_text())
            self._wait_until_ready()
            return self
        self.datadir.mkdir(parents=True, exist_ok=True)
        if not (self.datadir / "mysql").is_dir():
            self._install_db()
        if self.port is None:
            self.port = free_port()
        (self.datadir / PORT_NAME).write_text(str(self.port))
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        args = [
            find_binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={self.datadir}", "--user=root",
            f"--port={self.port}", f"--bind-address={HOST}", f"--socket={self.datadir / SOCKET_NAME}",
            f"--pid-file={self.pid_file}", f"--log-error={self.log_file}", f"--tmpdir={self.tmpdir}",
            *SOURCE_SETTINGS,
            *(FAST_SETTINGS if self.fast else []), *self.extra_args,
        ]
        if os.geteuid() != 0:
            args.remove("--user=root")
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait_until_ready()
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server running on this data directory (SIGTERM, or SIGKILL when ``kill``); a no-op otherwise."""
        pid = self.running_pid()
        if pid is None and self._process is not None and self._process.poll() is None:
            pid = self._process.pid
        if pid is None:
            return
        stop_pid(pid, self._process, kill=kill)
        self._process = None

    def __enter__(self) -> PrivateMariaDB:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PrivateMariaDB(datadir={str(self.datadir)!r}, port={self.port})"

    # -- internals -------------------------------------------------------------------------------------------

    def _install_db(self) -> None:
        # ``normal`` root authentication: root@localhost/127.0.0.1 without a password, reachable over TCP.
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        args = [find_binary("mariadb-install-db", "mysql_install_db"), "--no-defaults", f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal", "--skip-test-db", f"--tmpdir={self.tmpdir}"]
        if os.geteuid() == 0:
            args.append("--user=root")
        result = subprocess.run(args, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise PrivateMariaDBError(f"mariadb-install-db failed ({result.returncode}): "
                                      f"{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def _wait_until_ready(self) -> None:
        import pymysql

        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise PrivateMariaDBError(f"mariadbd exited with {self._process.returncode}:\n{self._log_tail()}")
            try:
                pymysql.connect(host=HOST, port=self.port, user="root", connect_timeout=2).close()
                return
            except pymysql.err.MySQLError as exc:
                last = exc
                time.sleep(0.2)
        raise PrivateMariaDBError(f"mariadbd did not accept connections in {self.start_timeout:.0f} s ({last}):\n"
                                  f"{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="initialise (if new) and start a server; prints its URL")
    start.add_argument("--datadir", required=True)
    start.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    stop = commands.add_parser("stop", help="stop the server running on a data directory")
    stop.add_argument("--datadir", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(PrivateMariaDB(args.datadir, args.port).start().url())
        else:
            PrivateMariaDB(args.datadir).stop()
    except PrivateMariaDBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
