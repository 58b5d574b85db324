"""Start a real voice-search server in a subprocess on a free localhost port (tests, benchmarks, replays)."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.settings import REPO_ROOT

STARTUP_TIMEOUT_S = 180
"""Loading the model, Silero VAD and the beam decoder takes seconds; a loaded CI machine more."""


@dataclass(frozen=True)
class Server:
    url: str
    db_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(state_dir: Path, log_name: str = "server.log", **settings: str) -> Iterator[Server]:
    """Start `uvicorn serving.app:create_app_from_env` with `VOICE_SEARCH_*` settings; stop it after.
    Replicas may share `state_dir`, each with a log of its own."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    db_path = state_dir / "events.sqlite3"
    env = os.environ | {"VOICE_SEARCH_DB_PATH": str(db_path), "VOICE_SEARCH_LOG_LEVEL": "INFO",
                        "VOICE_SEARCH_PORT": str(port)}  # fmt: skip
    env |= {f"VOICE_SEARCH_{k.upper()}": v for k, v in settings.items()}
    log_path = state_dir / log_name
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "serving.app:create_app_from_env",
                "--port",
                str(port),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", db_path, process, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        stop_process(process, timeout_s=30)


def stop_process(process: "subprocess.Popen[bytes]", timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s` (a dead one is left as is)."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {STARTUP_TIMEOUT_S} s:\n{server.log()}")
