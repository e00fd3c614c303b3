"""A real headless Chromium (the Debian package) for tests that must see what a person
sees: the rendered DOM and a screenshot, plus a small PNG decoder to check the
screenshot is not one flat colour. Screenshots are kept under ``artifacts/``."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is required (apt-get install chromium; .ci/run installs it)"
    return found


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", *args],
        capture_output=True,
        timeout=120,
        check=True,
    )


def dump_dom(url: str) -> str:
    return _run("--dump-dom", url).stdout.decode()


def screenshot(url: str, name: str, size: str = "1280,2400") -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    _run(f"--window-size={size}", f"--screenshot={out}", url)
    assert out.is_file() and out.stat().st_size > 0
    return out


def png_colours(path: Path, limit: int = 64) -> int:
    """Distinct pixel colours in an 8-bit RGB/RGBA PNG (counting stops at ``limit``)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        row = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, line = row[0], bytearray(row[1:])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        prev = line
        if y % 8 == 0:
            for x in range(0, stride, channels * 4):
                colours.add(bytes(line[x : x + 3]))
            if len(colours) >= limit:
                break
    return len(colours)
