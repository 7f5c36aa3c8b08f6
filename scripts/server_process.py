"""What the private servers of the tests and the demo share (``embedded_pg.py``, ``private_mariadb.py``,
``private_mongod.py``): free ports, whether a process lives, and stopping one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``port`` now (connections in TIME_WAIT do not count, as for servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line[stat_line.rindex(")") + 2:].split()[0] != "Z"


def stop_pid(pid: int, process: subprocess.Popen[bytes] | None = None, *, kill: bool = False,
             timeout: float = 60.0) -> None:
    """SIGTERM (SIGKILL when ``kill``) ``pid`` and wait for it to end, SIGKILL after ``timeout``; ``process`` is our
    Popen of it, if we started it (reaped, so that it leaves no zombie)."""
    os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_alive(pid):
        if process is not None:
            process.poll()
        time.sleep(0.05)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.wait(timeout=10)
