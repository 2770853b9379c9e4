"""The course in a real browser: headless Chromium on JupyterLab and on the website, offline.

* JupyterLab is started on a loopback port with the arguments ``make lab`` gives it (read from
  the Makefile's ``LAB_ARGS``), in isolated Jupyter folders; Chromium opens the server's default
  URL, which must land on lesson 0; a cell is added and run, and its output read back from the
  page. The lesson file is never saved (autosave is off; the test checks the bytes).
* Lesson 3.1's explorer (``dinolab.widgets.explore``) is run in JupyterLab with the cells it needs;
  the ipywidgets slider renders, and moving it with the keyboard (End) makes the kernel redraw:
  the figure's PNG data URI changes and the readout shows the new value.
* Every page of the course website (``browser.lesson_site``) is loaded over a loopback HTTP
  server: figures decoded, math typeset by the local MathJax (its output elements present, no
  MathJax error).
* Every request the pages make is recorded; any that would leave the machine is refused and
  fails the test.

Screenshots: ``build/screenshots/lab_lesson0.png``, ``lab_explorer_before.png`` /
``lab_explorer_after.png``, ``book_<page>.png``. Skipped, with the reason, where Chromium or
Playwright's client is missing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from browser import REPO, chromium_or_skip, lesson_site, open_page, screenshot

LESSON = "course/00_welcome.ipynb"
START_TIMEOUT_S = 90
# Cell i of the open notebook (JupyterLab numbers its cells' elements), and a figure in an output.
CELL = '.jp-NotebookPanel .jp-Notebook .jp-Cell[data-windowed-list-index="{}"]'
FIGURE = '.jp-OutputArea-output img[src^="data:image/png"]'


def _lab_args() -> list[str]:
    """The arguments ``make lab`` passes to ``jupyter lab`` (the Makefile's LAB_ARGS)."""
    m = re.search(r"^LAB_ARGS\s*:?=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "the Makefile defines no LAB_ARGS for make lab"
    return shlex.split(m.group(1))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_lab(tmp: Path) -> tuple[subprocess.Popen, str, str, Path]:
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        (tmp / sub).mkdir()
        env[var] = str(tmp / sub)
    env.pop("MPLBACKEND", None)  # as make lab: figures inline
    # No autosave (running a cell must not write course/), no news or update checks.
    settings = tmp / "user-settings"
    for plugin, values in (
        ("@jupyterlab/docmanager-extension/plugin", {"autosave": False}),
        ("@jupyterlab/apputils-extension/notification",
         {"fetchNews": "false", "checkForUpdates": False}),
    ):
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    log = tmp / "lab.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", *_lab_args(),
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
         "--ServerApp.allow_root=True", f"--LabApp.user_settings_dir={settings}",
         f"--LabApp.workspaces_dir={tmp / 'workspaces'}"],
        cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
            return proc, base, token, log
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    proc.terminate()
    raise AssertionError(f"jupyter lab did not answer on {base}: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


@contextlib.contextmanager
def _lab_session(tmp: Path, lesson: str):
    """JupyterLab started as ``make lab`` starts it, yielding ``(base, token, lesson_bytes)``;
    afterwards the lesson's file must be byte for byte what it was (else restored, and the test
    fails)."""
    before = (REPO / lesson).read_bytes()
    proc, base, token, log_file = _start_lab(tmp)
    try:
        yield base, token, before
    finally:
        _stop(proc)
        if (REPO / lesson).read_bytes() != before:
            (REPO / lesson).write_bytes(before)
            pytest.fail(f"the browser session wrote {lesson} (restored); log: {log_file}")


def _open_notebook(page, n_cells: int):
    """Wait until the notebook the page opened has all its ``n_cells`` cells attached (JupyterLab
    adds them in batches) and its kernel is idle; return ``cell(i)``, the locator of cell i."""
    page.wait_for_function(
        "n => document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell').length >= n",
        arg=n_cells, timeout=60_000)
    # The indicator says idle before the kernel starts too; the kernel's own state is the server's.
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        sessions = page.request.get(page.url.split("/lab/")[0] + "/api/sessions").json()
        if any(s["kernel"]["execution_state"] == "idle" for s in sessions):
            break
        assert time.monotonic() < deadline, f"no idle kernel: {sessions}"
        time.sleep(0.5)
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
    return lambda i: page.locator(CELL.format(i))


def _run_cells(page, cell, indices: list[int], timeout_ms: int = 120_000) -> None:
    """Run the code cells ``indices`` in order as a person does: select each (click its prompt,
    command mode) and press Ctrl+Enter; wait until each has an execution count and no error."""
    for i in indices:
        cell(i).locator(".jp-InputPrompt").click()
        page.keyboard.press("Escape")
        page.keyboard.press("Control+Enter")
    for i in indices:
        cell(i).locator(".jp-InputPrompt", has_text=re.compile(r"\[\d+\]")).wait_for(
            timeout=timeout_ms)
        # JupyterLab shows a traceback as stderr; warnings are stderr too, but name no error.
        errors = cell(i).locator('[data-mime-type="application/vnd.jupyter.stderr"]',
                                 has_text=re.compile(r"Traceback|\w+Error\b"))
        assert errors.count() == 0, f"cell {i} failed: {errors.first.inner_text()[-2000:]}"


def test_lab_opens_lesson_0_and_runs_a_cell(tmp_path: Path) -> None:
    executable = chromium_or_skip()
    with _lab_session(tmp_path, LESSON) as (base, token, before):
        with open_page(executable) as (page, log):
            # The server's default URL (what `make lab` opens) is lesson 0.
            page.goto(f"{base}/?token={token}")
            page.wait_for_url(re.compile(r"/lab/tree/course/00_welcome\.ipynb"), timeout=60_000)
            # Every cell attached and the kernel idle by the server's account (the indicator
            # says idle before the kernel exists; typing then went nowhere, once in a while).
            cell = _open_notebook(page, len(json.loads(before)["cells"]))
            # exercises/ is inside the server's root now (it was a 404 when rooted at course/).
            listing = page.request.get(f"{base}/api/contents/exercises?token={token}")
            assert listing.ok, f"exercises/ not served: {listing.status}"
            # A new cell under the title, run with Shift+Enter.
            cell(0).locator(".jp-InputPrompt").click()
            page.keyboard.press("Escape")
            page.keyboard.press("b")
            page.keyboard.press("Enter")
            page.keyboard.type(
                "import os, sys, dinolab; print('ran in', os.path.basename(os.getcwd()), "
                "'with dinolab', dinolab.__version__, 'from', sys.executable)")
            page.keyboard.press("Shift+Enter")
            output = page.locator(".jp-OutputArea-output", has_text="ran in course with dinolab")
            output.first.wait_for(timeout=90_000)
            text = output.first.inner_text()
            from dinolab import __version__

            assert f"with dinolab {__version__} from {sys.executable}" in text, text
            screenshot(page, "lab_lesson0")
        assert not log.remote, f"JupyterLab's page asked for remote URLs: {log.remote[:10]}"
        assert any(u.startswith(base) for u in log.urls)


EXPLORER_LESSON = "course/03_1_student_teacher.ipynb"
EXPLORER_CELL = 11  # "Turn the knob: the momentum and its horizon", one slider m0
EXPLORER_NEEDS = (1, 2)  # the parameters cell and the imports cell


def test_explorer_slider_redraws_in_jupyterlab(tmp_path: Path) -> None:
    """Lesson 3.1's explorer in JupyterLab: the widget renders, moving its slider with the
    keyboard replaces the figure (the PNG's data URI changes). Nothing is saved."""
    executable = chromium_or_skip()
    with _lab_session(tmp_path, EXPLORER_LESSON) as (base, token, before):
        with open_page(executable) as (page, log):
            page.goto(f"{base}/lab/tree/{EXPLORER_LESSON}?token={token}")
            source = json.loads(before)["cells"]
            assert "explorer" in source[EXPLORER_CELL]["metadata"].get("tags", []), (
                f"cell {EXPLORER_CELL} of {EXPLORER_LESSON} is no longer the explorer")
            cells = _open_notebook(page, len(source))
            _run_cells(page, cells, [*EXPLORER_NEEDS, EXPLORER_CELL])
            explorer = cells(EXPLORER_CELL)
            handle = explorer.locator(".jupyter-widgets .widget-slider .noUi-handle")
            handle.wait_for(timeout=90_000)
            image = explorer.locator(FIGURE)
            image.first.wait_for(timeout=30_000)
            assert image.count() == 1, f"{image.count()} figures in the explorer's output"
            readout = explorer.locator(".widget-readout")
            assert readout.inner_text().strip() == "0.996", readout.inner_text()
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]',
                                   timeout=60_000)
            first = image.get_attribute("src")
            handle.scroll_into_view_if_needed()  # the figure above it is in view too
            screenshot(page, "lab_explorer_before")

            handle.focus()
            page.keyboard.press("End")  # m0: 0.996 -> 0.999, one change, one redraw
            page.wait_for_function(
                """([selector, old]) => {
                    const img = document.querySelector(selector);
                    return img !== null && img.src !== old && img.complete
                        && img.naturalWidth > 0;
                }""",
                arg=[f"{CELL.format(EXPLORER_CELL)} {FIGURE}", first], timeout=30_000,
            )
            assert readout.inner_text().strip() == "0.999", readout.inner_text()
            second = image.get_attribute("src")
            assert second != first
            assert explorer.locator(".widget-html", has_text="redraw failed").count() == 0
            handle.scroll_into_view_if_needed()  # the figure above it is in view too
            screenshot(page, "lab_explorer_after")
        assert not log.remote, f"JupyterLab's page asked for remote URLs: {log.remote[:10]}"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
        pass


@pytest.fixture(scope="module")
def served_site(tmp_path_factory: pytest.TempPathFactory):
    chromium_or_skip()  # before building the site: a machine without Chromium skips at once
    site = lesson_site(tmp_path_factory.mktemp("site"))
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_every_website_page_renders_with_figures_and_math(served_site) -> None:
    executable = chromium_or_skip()
    site, base = served_site
    pages = ["index.html", *sorted(p.name for p in site.glob("*.html") if p.name != "index.html")]
    with open_page(executable) as (page, log):
        for name in pages:
            page.goto(f"{base}/{name}")
            page.wait_for_selector('html[data-mathjax="done"]', state="attached", timeout=60_000)
            typeset = page.locator(".MathJax, .MathJax_Display").count()
            errors = page.locator(".MathJax_Error, merror").count()
            assert typeset > 0, f"{name}: no typeset math (no MathJax output element)"
            assert errors == 0, f"{name}: {errors} MathJax errors"
            executed = "without its outputs" not in page.content()
            if executed and name != "index.html":
                sizes = page.eval_on_selector_all(
                    'img[src^="data:image/png"]', "imgs => imgs.map(i => i.naturalWidth)")
                assert sizes and all(w > 0 for w in sizes), f"{name}: figures {sizes}"
            screenshot(page, f"book_{Path(name).stem}")
        page.goto(f"{base}/index.html")
        screenshot(page, "book_index_full", full_page=True)
    assert not log.remote, f"the website asked for remote URLs: {log.remote[:10]}"
    # MathJax probes for its TeX fonts (not in the local copy; about:blank is its font-loading
    # probe) and then uses the STIX web fonts it ships, which must load.
    failed = [u for u in log.failed
              if u != "about:blank" and "/mathjax/fonts/HTML-CSS/TeX/" not in u]
    assert not failed, f"requests that failed: {failed[:10]}"
    assert any("/mathjax/fonts/HTML-CSS/STIX-Web/woff/" in u for u in log.urls), (
        "MathJax loaded none of its STIX web fonts")
    assert all(u.startswith(base) or u.startswith("data:") for u in log.urls), log.urls[:10]
