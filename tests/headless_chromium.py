"""Debian's headless Chromium for the UI tests: find it, render a page (DOM dump or screenshot), and check that a
screenshot is a real picture. A missing Chromium skips locally and FAILS in CI (``require_server``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import zlib
from contextlib import ExitStack, suppress
from pathlib import Path

from conftest import require_server


def chromium_binary() -> str:
    """Debian's chromium (scripts/ensure_chromium.sh installs it); CDC_TEST_CHROMIUM names another."""
    for candidate in (os.environ.get("CDC_TEST_CHROMIUM"), "chromium", "chromium-browser"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    require_server("chromium", "no chromium on PATH (run `bash scripts/ensure_chromium.sh` as root)")
    raise AssertionError("unreachable")


def run_chromium(binary: str, profile: Path, url: str, *mode: str, timeout: float = 120) -> bytes:
    """One headless Chromium call (``--screenshot=...`` or ``--dump-dom``); its stdout. Its own process group, killed
    on timeout."""
    cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--no-first-run", "--disable-extensions", "--disable-background-networking",
           f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=20000", *mode, url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish within {timeout:.0f}s: {' '.join(cmd)}") from None
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
    return out


def png_colours(data: bytes, limit: int = 10_000) -> tuple[int, int, int]:
    """(width, height, distinct pixel colours up to ``limit``) of a PNG: Pillow when the venv has it, else this
    decoder of what Chromium writes (8-bit RGB/RGBA, not interlaced)."""
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        import io

        image = Image.open(io.BytesIO(data)).convert("RGBA")
        return image.width, image.height, len(image.getcolors(maxcolors=limit) or ()) or limit
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, chunk = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour_type, interlace = header[8], header[9], header[12]
    assert depth == 8 and colour_type in (2, 6) and not interlace, f"unexpected PNG format {tuple(header[8:13])}"
    bpp = 4 if colour_type == 6 else 3
    raw, stride = zlib.decompress(bytes(idat)), width * bpp
    previous, colours = bytearray(stride), set()
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif kind == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, previous))
        elif kind == 3:
            for i in range(stride):
                row[i] = (row[i] + ((row[i - bpp] if i >= bpp else 0) + previous[i]) // 2) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a, b = (row[i - bpp] if i >= bpp else 0), previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if len(colours) < limit:
            colours.update(bytes(row[i:i + bpp]) for i in range(0, stride, bpp))
        previous = row
    return width, height, min(len(colours), limit)


class DevToolsPage:
    """A page in headless Chromium driven through the DevTools protocol (``--remote-debugging-port``): what a user
    does with the mouse, as JavaScript evaluated in the page (``evaluate``), and waits for what the page shows
    (``wait_for``). Debian's ``chromium`` is enough: no driver, no browser download."""

    def __init__(self, binary: str, profile: Path, url: str, *, timeout: float = 60) -> None:
        import json
        import re
        import time
        import urllib.request

        from websockets.sync.client import connect

        self._json = json
        self.timeout = timeout
        cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-extensions", "--disable-background-networking",
               f"--user-data-dir={profile}", "--window-size=1600,1000", "--remote-debugging-port=0", url]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        port = None
        deadline = time.monotonic() + timeout
        assert self._proc.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = self._proc.stderr.readline().decode(errors="replace")
            if not line and self._proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self._proc.returncode} before DevTools listened")
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = int(found.group(1)) if found else None
        assert port, "chromium did not open its DevTools port"
        page = None
        while page is None and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as answer:
                page = next((t for t in json.load(answer) if t.get("type") == "page"), None)
            if page is None:
                time.sleep(0.2)
        assert page, "chromium has no page target"
        self._stack = ExitStack()
        self._ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None,
                                                     open_timeout=timeout))
        self._id = 0

    def evaluate(self, expression: str) -> object:
        """The value of ``expression`` in the page (awaited when it is a promise)."""
        self._id += 1
        self._ws.send(self._json.dumps({"id": self._id, "method": "Runtime.evaluate", "params": {
            "expression": expression, "returnByValue": True, "awaitPromise": True}}))
        while True:
            message = self._json.loads(self._ws.recv(timeout=self.timeout))
            if message.get("id") == self._id:
                break
        result = message.get("result", {})
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str) -> None:
        """Until ``expression`` is true in the page, or fail saying ``what`` was awaited."""
        import time

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"Boolean({expression})"):
                return
            time.sleep(0.25)
        raise AssertionError(f"the page did not show {what} within {self.timeout:.0f}s; its text: "
                             f"{str(self.evaluate('document.body.innerText'))[-2000:]}")

    def close(self) -> None:
        with suppress(Exception):
            self._stack.close()
        with suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()

    def __enter__(self) -> DevToolsPage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
