"""Custom functions that try to hand templates the operating system (the sandbox tests load this module)."""

from __future__ import annotations

import os
import subprocess
from os import getcwd  # noqa: F401 - imported names must not become rule functions


class Holder:
    """An innocent-looking object with the os module as an attribute."""

    def __init__(self) -> None:
        self.os = os
        self.run = subprocess.run
        self.label = "holder"


def leak_os():
    return os


def leak_subprocess():
    return subprocess


def leak_popen():
    return subprocess.Popen


def leak_system():
    return os.system


def holder():
    return Holder()


def leak_eval():
    return eval


def leak_open():
    return open


def leak_globals():
    return leak_os.__globals__


def _private():
    return os
