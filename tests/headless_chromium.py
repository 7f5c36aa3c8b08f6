"""Debian's headless Chromium for the UI tests: find it, render a page (DOM dump or screenshot), and check that a
screenshot is a real picture. A missing Chromium skips locally and FAILS in CI (``require_server``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import zlib
from contextlib import suppress
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
