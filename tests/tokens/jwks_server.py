"""A tiny local HTTP server that publishes a JWK Set the test can change, and counts its fetches.

Stands in for an external issuer's ``jwks_url`` (a real socket and a real HTTP exchange, so
PyJWT's client code runs as in production). ``serve_jwks()`` returns it started; ``stop()`` ends it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JWKSServer:
    def __init__(self):
        self.jwks: dict = {"keys": []}
        self.fetches = 0
        self.status = 200
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                with owner._lock:
                    owner.fetches += 1
                    body, status = json.dumps(owner.jwks).encode(), owner.status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"

    def publish(self, *jwks: dict) -> None:
        with self._lock:
            self.jwks = {"keys": list(jwks)}

    def start(self) -> "JWKSServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_jwks() -> JWKSServer:
    return JWKSServer().start()
