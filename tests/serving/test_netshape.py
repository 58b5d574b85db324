"""The network-profile mechanism: the link schedule, and a shaping proxy that
carries real bytes unchanged."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from serving.netshape import PROFILES, _Link, shaped


def test_a_link_sends_chunks_one_after_another() -> None:
    link = _Link(kbps=80.0, one_way_s=0.05)  # 10 kB/s
    assert link.arrival(now=0.0, size=1000) == pytest.approx(0.15)  # 0.1 s on the wire + 0.05 s
    # Sent at the same moment, the second chunk waits for the first to leave the link.
    assert link.arrival(now=0.0, size=1000) == pytest.approx(0.25)
    # After the link went idle, a chunk starts at once.
    assert link.arrival(now=10.0, size=1000) == pytest.approx(10.15)


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[::-1])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("profile", ["wifi", "4g"])
def test_the_proxy_carries_real_bytes_unchanged(echo: str, profile: str) -> None:
    payload = bytes(range(256)) * 800  # 200 kB: many chunks each way
    with shaped(echo, PROFILES[profile]) as url:
        assert url != echo
        for _ in range(2):  # a kept-alive connection carries several requests
            response = httpx.post(url + "/echo", content=payload, timeout=60)
            assert response.status_code == 200 and response.content == payload[::-1]
