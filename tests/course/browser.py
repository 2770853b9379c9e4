"""Helpers for the real-browser tests: headless Chromium driven by Playwright, kept offline.

Chromium is the system's (Debian's ``chromium`` package, which ``make install`` installs where
it can); Playwright's own browser download is never used, its client is pointed at the binary
with ``executable_path``. :func:`chromium_or_skip` skips a test with the reason when either is
missing. :func:`open_page` gives a page whose every request is recorded and, unless it goes to
the loopback interface or is a ``file:``/``data:``/``blob:`` URL, refused, so a test can assert
that nothing left the machine (``log.remote`` is empty).

Reused by other browser tests (a widget test moves a slider with the same helpers)::

    from browser import chromium_or_skip, open_page, screenshot

    def test_something(tmp_path):
        executable = chromium_or_skip()
        with open_page(executable) as (page, log):
            page.goto("file:///.../build/book/index.html")
            screenshot(page, "something")
        assert not log.remote, log.remote
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "build" / "screenshots"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
LOCAL_SCHEMES = {"file", "data", "blob", "about", "chrome-extension", "devtools"}
# Flags that keep Chromium from phoning home (updates, sync, safe browsing, ...) and work as
# root in a container; without the networking ones it tries Google's hosts at every start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--metrics-recording-only",
]


def find_chromium() -> str | None:
    """Path of a Chromium binary: ``$DINOLAB_CHROMIUM``, else chromium on the PATH."""
    explicit = os.environ.get("DINOLAB_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_or_skip() -> str:
    """The Chromium binary to drive, or skip the test saying what is missing and how to get it."""
    try:
        import playwright.sync_api  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("playwright's Python client is not installed (pip install -e '.[dev]')")
    executable = find_chromium()
    if executable is None and os.environ.get("DINOLAB_CHROMIUM"):
        pytest.skip(f"DINOLAB_CHROMIUM={os.environ['DINOLAB_CHROMIUM']} is not a file")
    if executable is None:
        pytest.skip(
            "no Chromium on this machine: `make install` installs Debian's chromium where it "
            "runs as root with apt-get; else install it (apt-get install chromium) or set "
            "DINOLAB_CHROMIUM to a Chromium/Chrome binary"
        )
    return executable


def is_local(url: str) -> bool:
    """Whether a request to ``url`` stays on this machine."""
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (
        parts.scheme in {"http", "https", "ws", "wss"} and (parts.hostname or "") in LOCAL_HOSTS
    )


@dataclass
class RequestLog:
    """Every URL the page asked for, and those that would have left the machine (refused)."""

    urls: list[str] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


def _record_websocket(log: RequestLog, url: str) -> None:
    # Playwright's route() does not see websockets: record them here.
    log.urls.append(url)
    if not is_local(url):
        log.remote.append(url)


@contextmanager
def open_page(
    executable: str, viewport: tuple[int, int] = (1280, 900)
) -> Iterator[tuple[object, RequestLog]]:
    """A fresh headless Chromium page (no profile, no cache) and the log of its requests."""
    from playwright.sync_api import sync_playwright

    log = RequestLog()

    def route(r) -> None:
        url = r.request.url
        log.urls.append(url)
        if is_local(url):
            r.continue_()
        else:
            log.remote.append(url)
            r.abort("blockedbyclient")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": viewport[0], "height": viewport[1]}, service_workers="block"
            )
            context.route("**/*", route)
            page = context.new_page()
            page.on("requestfailed", lambda req: log.failed.append(req.url))
            page.on("websocket", lambda ws: _record_websocket(log, ws.url))
            page.on(
                "console",
                lambda msg: log.console_errors.append(msg.text) if msg.type == "error" else None,
            )
            yield page, log
            context.close()
        finally:
            browser.close()


def screenshot(page, name: str, full_page: bool = False) -> Path:
    """Save a PNG of the page as ``build/screenshots/<name>.png`` for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


_SITE: dict[str, Path] = {}


def lesson_site(tmp_root: Path) -> Path:
    """A course website built once per test process under ``tmp_root``: every lesson has a
    page; lesson 0 is executed first (about 15 s), so its page has outputs and figures, and the
    others are rendered as committed (no outputs). ``$DINOLAB_BOOK=build/book`` tests that
    already built site instead (``make book``: every lesson executed).
    """
    if "site" in _SITE:
        return _SITE["site"]
    given = os.environ.get("DINOLAB_BOOK")
    if given:
        site = Path(given).resolve()
        assert (site / "index.html").is_file(), f"DINOLAB_BOOK={given} holds no index.html"
    else:
        from dinolab.book import build_book
        from dinolab.course_runner import run_lesson

        executed = tmp_root / "executed"
        result = run_lesson(REPO / "course" / "00_welcome.ipynb", executed, timeout=600)
        assert result.ok, f"lesson 0 failed when run for the test site: {result.error}"
        site = tmp_root / "book"
        build_book(REPO / "course", site, executed, execute=False, log=lambda line: None)
    _SITE["site"] = site
    return site
