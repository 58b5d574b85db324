"""A real HTTP server on localhost that keeps every JSON body POSTed to it (alarm webhooks)."""

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


@dataclass
class Webhook:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)

    def alarms(self, rule: str) -> list[dict[str, Any]]:
        return [r["alarm"] for r in self.received if r.get("alarm", {}).get("rule") == rule]


@contextmanager
def webhook_server() -> Iterator[Webhook]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Webhook(f"http://127.0.0.1:{server.server_port}/alerts", received)
    finally:
        server.shutdown()
