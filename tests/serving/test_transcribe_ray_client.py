"""`voice-search transcribe --ray ray://HOST:PORT`: a real Ray head started with `ray start`, reached
through Ray Client from a separate `voice-search` process, as a user outside the cluster does.

Its own module, so that the head runs only while these tests do: a `ray.init()` without an address
elsewhere in the suite would otherwise find this head and join it.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.cli import EXIT_SOME_FAILED
from tests.signals import REPO, SAMPLES_DIR

EXE = Path(sys.executable).with_name("voice-search")
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    # The kernel's ephemeral range, outside Ray's default worker ports (10002-19999).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, head: subprocess.Popen[bytes], log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert head.poll() is None, (
            f"ray start exited before its client server listened:\n{log.read_text()[-3000:]}"
        )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"the Ray Client server did not listen on {port} within {timeout_s} s")


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster's token, as an operator would hand it out: Ray 2.60 turns token authentication on
    for `ray start` when a token exists."""
    path = tmp_path_factory.mktemp("raytoken") / "auth_token"
    path.write_text(secrets.token_hex(32))
    return path


@pytest.fixture(scope="module")
def client_address(tmp_path_factory: pytest.TempPathFactory, token: Path) -> Iterator[str]:
    """A one-node cluster with 2 CPUs and a Ray Client server; stopped with its `ray start`."""
    log = tmp_path_factory.mktemp("rayhead") / "ray-start.log"
    # Ray's sockets live under its temp folder and a socket's path may not pass 107 bytes: pytest's
    # own folders under xdist (/tmp/pytest-of-root/pytest-N/popen-gw0/...) were too deep.
    temp = Path(tempfile.mkdtemp(prefix="rayhead-"))
    client_port = _free_port()
    # Not RAY_AUTH_MODE=token here: with it set, Ray 2.60's client server fails to start the
    # per-client server it forks; the token file alone turns authentication on. gRPC's fork
    # handlers off: with them, that per-client server died at start in 1 of 3 runs ("epoll_wait
    # error: Bad file descriptor" after "skipping fork() handlers"); without them 4 of 4 started.
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(token), "GRPC_ENABLE_FORK_SUPPORT": "0"}
    env.pop("RAY_AUTH_MODE", None)
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        head = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", f"--port={_free_port()}",
             f"--ray-client-server-port={client_port}", "--num-cpus=2", "--include-dashboard=false",
             f"--temp-dir={temp}"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_for_port(client_port, head, log)
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        head.send_signal(signal.SIGTERM)  # `--block` stops every process it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _transcribe(argv: list[str], output: Path, token: Path) -> subprocess.CompletedProcess[str]:
    # What the README asks of a user outside the cluster: token mode and the cluster's token.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    return subprocess.run(
        [str(EXE), "transcribe", *argv, "--format", "csv", "--output", str(output), "--quiet"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_a_ray_client_run_writes_what_the_plain_cli_writes(
    client_address: str, token: Path, tmp_path: Path
) -> None:
    # Relative paths, as a user types them: the cluster's processes do not share our working
    # directory, so the command must resolve them before sending them, and print them as given.
    # The bundled model, whose transcripts do not hinge on the float sums' thread count (CSV
    # rounds the confidences); a random tiny model's near-ties do.
    inputs = [str((SAMPLES_DIR / "manifest.jsonl").relative_to(REPO)), "missing.wav"]
    plain = _transcribe(inputs, tmp_path / "plain.csv", token)
    remote = _transcribe([*inputs, "--ray", client_address], tmp_path / "ray.csv", token)

    assert plain.returncode == EXIT_SOME_FAILED, plain.stderr
    assert remote.returncode == EXIT_SOME_FAILED, remote.stderr
    text = (tmp_path / "ray.csv").read_text(encoding="utf-8")
    assert text == (tmp_path / "plain.csv").read_text(encoding="utf-8")
    rows = text.splitlines()
    assert len(rows) == 6  # the header, the four clips, the missing file
    assert rows[1].startswith("data/samples/arctic_a0001.flac,")
    assert rows[5].startswith("missing.wav,,") and "UndecodableAudioError" in rows[5]
    assert "Traceback" not in remote.stderr
