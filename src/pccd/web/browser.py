"""Driving the ``pccd serve`` page in a real, headless browser: a port and a launched chromium.

The page's browser test and its latency benchmark both do this; they share one copy here, in
the package, because it is the one module both can import (a benchmark runs as a script and
must not import the tests, nor they it). The browser is Debian's ``chromium`` package, not
Playwright's own download, which fails on the machines this was built on. Nothing here imports
Playwright: callers pass in the one they started, so the package gains no dependency.
"""

from __future__ import annotations

import shutil
import socket

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # WebGL on the CPU (SwiftShader) for the 3D viewer
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def free_port() -> int:
    """A loopback port nobody listens on, to start the server on before pointing a page at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_chromium(playwright):
    """Debian's chromium, headless, from a started ``playwright.sync_api.sync_playwright()``."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=list(LAUNCH_ARGS)
    )
