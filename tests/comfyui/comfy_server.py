"""A real ComfyUI server in a subprocess: start, wait for /object_info, queue prompts, follow
/history, read outputs, stop. Standard library only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


class ComfyError(RuntimeError):
    """A prompt ComfyUI rejected or failed to run; the message carries ComfyUI's own words."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfy_path: Path, dirs: dict[str, Path], extra_paths_yaml: Path, python: str = sys.executable):
        self.comfy_path = Path(comfy_path)
        self.dirs = dirs  # output, input, temp, user
        self.extra_paths_yaml = extra_paths_yaml
        self.python = python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = dirs["user"].parent / "comfyui-server.log"
        self.proc: subprocess.Popen | None = None
        self._object_info: dict | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 240.0) -> "ComfyServer":
        cmd = [
            self.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--disable-metadata",
            "--database-url",
            "sqlite:///:memory:",
            "--extra-model-paths-config",
            str(self.extra_paths_yaml),
            "--output-directory",
            str(self.dirs["output"]),
            "--input-directory",
            str(self.dirs["input"]),
            "--temp-directory",
            str(self.dirs["temp"]),
            "--user-directory",
            str(self.dirs["user"]),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_path, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} while starting.\n{self.log_tail()}")
            try:
                self._object_info = self._get("/object_info")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ComfyError(f"ComfyUI did not answer /object_info within {timeout:.0f} s.\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    # -- logs ---------------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 60) -> str:
        return "---- ComfyUI log (tail) ----\n" + "\n".join(self.log_text().splitlines()[-n:])

    # -- HTTP ---------------------------------------------------------------------------------
    def _get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def _post(self, path: str, payload: dict):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            raise ComfyError(f"POST {path} -> HTTP {e.code}: {_pretty(body)}") from None

    @property
    def object_info(self) -> dict:
        if self._object_info is None:
            self._object_info = self._get("/object_info")
        return self._object_info

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queue an API-format prompt, wait for it, return its outputs by node id.

        Raises ComfyError with ComfyUI's validation or execution error (and the log tail).
        """
        queued = self._post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if queued.get("node_errors"):
            raise ComfyError(f"prompt rejected: {_pretty(queued['node_errors'])}")
        pid = queued["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI died while running the prompt.\n{self.log_tail()}")
            hist = self._get(f"/history/{pid}")
            entry = hist.get(pid)  # appears once the prompt has finished, either way
            if entry:
                status = entry.get("status", {})
                if status.get("status_str") != "success":
                    errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
                    msg = "; ".join(
                        f"{e.get('node_type')} (node {e.get('node_id')}): {e.get('exception_type')}: "
                        f"{e.get('exception_message')}"
                        for e in errors
                    ) or _pretty(status)
                    raise ComfyError(f"prompt failed: {msg}\n{self.log_tail(30)}")
                return entry["outputs"]
            time.sleep(0.25)
        raise ComfyError(f"prompt {pid} did not finish within {timeout:.0f} s.\n{self.log_tail()}")

    def output_file(self, item: dict) -> Path:
        """Path of an output entry ({"filename", "subfolder", "type"})."""
        folder = {"output": self.dirs["output"], "temp": self.dirs["temp"], "input": self.dirs["input"]}[item["type"]]
        return folder / item.get("subfolder", "") / item["filename"]


def run_in_comfy(comfy_path: Path, script: Path, *args: str, timeout: float = 900) -> str:
    """Run one of our helper scripts with ComfyUI importable (cwd = the tree); fail with its output."""
    proc = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=comfy_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=""),
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"{script.name} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _pretty(obj) -> str:
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError:
            return obj
    return json.dumps(obj, indent=1)[:4000]
