"""A real Jupyter server serves the course: list it over REST and run a lesson in its kernel.

The server runs on a free loopback port with a random token, in isolated Jupyter config,
data and runtime folders, so only the virtual environment's ``python3`` kernel is visible.
The lesson's cells go to the kernel over the server's websocket, as JupyterLab sends them.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest
import websocket

REPO = Path(__file__).resolve().parents[2]
LESSON = "course/00_welcome.ipynb"
START_TIMEOUT_S = 60
CELL_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        for var, sub in (
            ("JUPYTER_CONFIG_DIR", "config"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("IPYTHONDIR", "ipython"),
        ):
            (tmp / sub).mkdir()
            env[var] = str(tmp / sub)
        env["MPLBACKEND"] = "Agg"
        self.log = open(tmp / "server.log", "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                "--ServerApp.open_browser=False",
                "--ServerApp.allow_root=True",  # CI containers often run as root
                f"--ServerApp.root_dir={REPO}",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.logfile = tmp / "server.log"

    def request(self, method: str, path: str, body: dict | None = None) -> dict | list | None:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"token {self.token}")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.request("GET", "/api/status")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise AssertionError(
            f"jupyter server did not answer on {self.base} within {START_TIMEOUT_S} s; "
            f"log:\n{self.logfile.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        try:
            self.request("POST", "/api/shutdown")
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        finally:
            self.log.close()


def _execute(ws: websocket.WebSocket, session: str, code: str) -> tuple[dict, list[dict]]:
    """Send one execute_request on the shell channel; return its reply and iopub outputs."""
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "test",
                    "session": session,
                    "date": datetime.now(UTC).isoformat(),
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    reply: dict | None = None
    outputs: list[dict] = []
    idle = False
    deadline = time.monotonic() + CELL_TIMEOUT_S
    while reply is None or not idle:
        ws.settimeout(max(deadline - time.monotonic(), 1))
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if msg["channel"] == "shell" and kind == "execute_reply":
            reply = msg["content"]
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
        elif kind in {"stream", "display_data", "execute_result", "error"}:
            outputs.append({"type": kind, **msg["content"]})
    return reply, outputs


@pytest.mark.notebooks
def test_server_lists_course_and_runs_a_lesson_in_its_kernel(tmp_path: Path) -> None:
    server = _Server(tmp_path)
    try:
        server.wait_ready()
        # The token is required: a request without it is refused.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.base + "/api/contents/course", timeout=30)
        assert refused.value.code in (401, 403)

        listing = server.request("GET", "/api/contents/course")
        names = sorted(item["name"] for item in listing["content"])
        assert "00_welcome.ipynb" in names and "README.md" in names, names
        served = server.request("GET", f"/api/contents/{LESSON}")
        assert served["type"] == "notebook"

        session = server.request(
            "POST",
            "/api/sessions",
            {"path": LESSON, "type": "notebook", "name": "", "kernel": {"name": "python3"}},
        )
        kernel_id = session["kernel"]["id"]
        assert any(k["id"] == kernel_id for k in server.request("GET", "/api/kernels"))
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?token={server.token}",
            timeout=60,
        )
        try:
            client_session = uuid.uuid4().hex
            reply, outputs = _execute(
                ws, client_session, "import os, sys; print(sys.executable); print(os.getcwd())"
            )
            assert reply["status"] == "ok"
            printed = "".join(o.get("text", "") for o in outputs).split()
            assert Path(printed[0]).absolute() == Path(sys.executable).absolute(), (
                f"the server's python3 kernel runs {printed[0]}, not {sys.executable}"
            )
            assert Path(printed[1]).resolve() == (REPO / "course").resolve()

            nb = nbformat.read(REPO / LESSON, as_version=4)
            figures = 0
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                reply, outputs = _execute(ws, client_session, cell.source)
                errors = [o for o in outputs if o["type"] == "error"]
                assert reply["status"] == "ok" and not errors, (
                    f"{LESSON} cell {index} failed in the server's kernel: "
                    f"{[(e['ename'], e['evalue']) for e in errors] or reply}"
                )
                figures += sum("image/png" in o.get("data", {}) for o in outputs)
            assert figures >= 1, f"{LESSON} showed no figure through the server's kernel"
        finally:
            ws.close()
        server.request("DELETE", f"/api/sessions/{session['id']}")
        assert not any(k["id"] == kernel_id for k in server.request("GET", "/api/kernels"))
    finally:
        server.stop()
    assert server.proc.returncode is not None
