"""Headless Chromium (Debian's `chromium` package) driven by Playwright for Python: the page tests, the
browser benchmark and the README screenshots use this one launcher. No browser is downloaded: Playwright is
pointed at the system binary (`executable_path`); `playwright install` is never needed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")
# With these, headless Chromium offers a WebGPU adapter on SwiftShader (Vulkan emulated on the CPU): the
# WebGPU code path runs and can be checked, but its speed says nothing about a real GPU.
WEBGPU_SOFTWARE_FLAGS = ("--enable-unsafe-webgpu", "--enable-unsafe-swiftshader", "--use-webgpu-adapter=swiftshader")
# A fake camera (a test pattern) for the webcam path.
FAKE_CAMERA_FLAGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


class BrowserMissing(RuntimeError):
    """No Chromium binary or no Playwright; the message says how to install them."""


def chromium_path() -> str:
    """MOUAADNET_CHROMIUM, else Debian's /usr/bin/chromium, else `chromium` on PATH."""
    for candidate in (os.environ.get("MOUAADNET_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise BrowserMissing("no Chromium found: `apt-get install -y chromium` (Debian) or set MOUAADNET_CHROMIUM")


@contextmanager
def playwright() -> Iterator:
    """A Playwright driver (sync API). One per thread: launch several browsers from it with ``launch``."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserMissing("Playwright for Python is missing: pip install -e '.[test]'") from None
    with sync_playwright() as pw:
        yield pw


def launch(pw, extra_flags: tuple[str, ...] | list[str] = ()):
    """Start Debian's Chromium headless with ``CHROMIUM_FLAGS`` + ``extra_flags``."""
    return pw.chromium.launch(executable_path=chromium_path(), headless=True, args=[*CHROMIUM_FLAGS, *extra_flags])


@contextmanager
def chromium(extra_flags: tuple[str, ...] | list[str] = (), pw=None) -> Iterator:
    """A headless Chromium (Playwright Browser), closed on exit; ``pw``: an open ``playwright()`` to reuse."""
    if pw is None:
        with playwright() as own:
            browser = launch(own, extra_flags)
            try:
                yield browser
            finally:
                browser.close()
        return
    browser = launch(pw, extra_flags)
    try:
        yield browser
    finally:
        browser.close()


def open_page(browser, url: str, viewport: tuple[int, int] = (1280, 800), timeout_s: float = 120.0):
    """A new page at ``url`` whose console errors and uncaught exceptions are collected in ``page.errors``."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.set_default_timeout(timeout_s * 1000)
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(f"pageerror: {error}"))
    page.on("console", lambda msg: page.errors.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.goto(url)
    return page
