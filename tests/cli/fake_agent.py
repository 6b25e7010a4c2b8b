"""A stand-in for a running agent: an HTTP server in a thread that answers /status with a given document."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def fake_agent(doc: dict[str, Any]) -> Iterator[str]:
    """Serve ``doc`` at /status on 127.0.0.1; yields the HOST:PORT to give to ``--listen``."""
    body = json.dumps(doc).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/status":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def agent_doc(root: str, *, simulate: bool) -> dict[str, Any]:
    return {
        "simulate": simulate,
        "root": root,
        "ready": True,
        "inventory": None,
        "subsystems": {"cdi": {"phase": "running", "reason": "spec up to date (live)"}},
        "last_plans": {},
    }
