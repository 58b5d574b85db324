"""nginx from Debian in front of the replicas: its configuration, and the process in the foreground.

Why these directives:
- `least_conn`: a replica busy with a long clip gets fewer new requests than one that is idle;
- `proxy_next_upstream error timeout` with `max_fails=1 fail_timeout=5s`: a request that cannot
  reach a replica (refused: the replica is dead or restarting) goes to the next one, and the dead
  one is left alone for 5 s. A POST already sent to a replica that then dies is *not* retried
  (nginx never repeats a non-idempotent request), so the client gets a 502 and no answer: it was
  never acknowledged, and the client may retry it;
- keep-alive to the replicas, so the balancer adds no connection set-up per request;
- the stream (`WS /v1/search/stream`) is upgraded to a WebSocket through to one replica, with the
  client's `Host` (port included) for the replica's origin check, and idle timeouts longer than
  the replica's own `stream_idle_timeout_s`, which closes a silent stream with a reason first.
"""

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.local_server import stop_process

STREAM_IDLE_S = 60
"""nginx's idle limit on a stream's socket, either way: past any replica's own idle timeout."""


class BalancerError(RuntimeError):
    """nginx is missing or would not start."""


def nginx_config(folder: Path, port: int, upstreams: Sequence[str], max_body_bytes: int) -> str:
    """The whole nginx.conf: every path inside `folder`, so it runs beside any system nginx."""
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=5s;" for u in upstreams)
    temp = folder / "tmp"
    # As root, nginx's workers would drop to `nobody`, who cannot write our folder's temp files.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "nginx-error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    client_max_body_size {_body_limit(max_body_bytes)};
    upstream voice_search {{
        least_conn;
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
{_json_errors(max_body_bytes)}
        location = /v1/search/stream {{
            proxy_pass http://voice_search;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_connect_timeout 1s;
            proxy_read_timeout {STREAM_IDLE_S}s;
            proxy_send_timeout {STREAM_IDLE_S}s;
        }}
        location / {{
            proxy_pass http://voice_search;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 1s;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


NGINX_ERRORS = {
    413: ("payload_too_large", "the upload is larger than {limit} bytes"),
    502: ("bad_gateway", "no replica could answer; retry in a moment"),
    504: ("gateway_timeout", "the replica took too long to answer"),
}
"""The errors nginx makes itself (not the replicas' own, which pass through as they are), in the
shape every route answers with (`serving/http_errors.py`): {"error": {"type", "message", "request_id"}}."""


def _body_limit(max_body_bytes: int) -> int:
    """The app's own limit plus room for the multipart envelope: the app answers the exact limit."""
    return max_body_bytes + 1024 * 1024


def _json_errors(max_body_bytes: int) -> str:
    lines = []
    for status, (kind, message) in NGINX_ERRORS.items():
        text = message.format(limit=_body_limit(max_body_bytes))
        body = json.dumps({"error": {"type": kind, "message": text, "request_id": "$request_id"}})
        location = f"location @error_{status} {{ default_type application/json; return {status} '{body}'; }}"
        lines += [f"        error_page {status} = @error_{status};", f"        {location}"]
    return "\n".join(lines)


@dataclass(frozen=True)
class Balancer:
    url: str
    process: "subprocess.Popen[bytes]"
    folder: Path


@contextmanager
def running_nginx(
    folder: Path, port: int, upstreams: Sequence[str], max_body_bytes: int
) -> Iterator[Balancer]:
    """nginx in the foreground on 127.0.0.1:`port`, stopped (gracefully) on exit."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if binary is None:
        raise BalancerError("nginx is not installed: install Debian's `nginx` package (make install does)")
    folder = folder.resolve()  # nginx reads relative paths against its prefix, not our directory
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tmp").mkdir(exist_ok=True)
    config = folder / "nginx.conf"
    config.write_text(nginx_config(folder, port, upstreams, max_body_bytes))
    with (folder / "nginx.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "-c", str(config), "-p", str(folder), "-g", "daemon off;"], stdout=log, stderr=log
        )
    balancer = Balancer(f"http://127.0.0.1:{port}", process, folder)
    try:
        _wait_listening(balancer)
        yield balancer
    finally:
        stop_process(process, timeout_s=10)


def _wait_listening(balancer: Balancer, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if balancer.process.poll() is not None:
            logs = [balancer.folder / name for name in ("nginx-error.log", "nginx.log")]
            log = " ".join(p.read_text(errors="replace")[-2000:] for p in logs if p.is_file())
            raise BalancerError(f"nginx exited with {balancer.process.returncode}: {log}")
        try:
            httpx.get(balancer.url + "/healthz", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return
    raise BalancerError(f"nginx did not listen on {balancer.url} within {timeout_s} s")
