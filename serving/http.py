"""The model server's local HTTP endpoints for the sidecar agent (JSON; loopback by default).

``GET /status`` -> 200, the :class:`~protocol.status.StatusDoc` as JSON (its
schema is documented in :mod:`protocol.status`); ``GET /healthz`` -> 200
while the process is up; ``GET /readyz`` -> 200 when ready, 503 otherwise;
``GET /metrics`` -> Prometheus text exposition.

The endpoint knows nothing of the server: it is given three callables
(the status document, readiness, the metrics exposition), so the HTTP shell
and the gRPC server do not import each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from protocol.status import StatusDoc

__all__ = ["StatusHttp"]


class StatusHttp:
    """``/status /healthz /readyz /metrics`` on ``host:port`` (0 picks a free port: see :attr:`port`)."""

    def __init__(self, host: str, port: int, *, status: Callable[[], StatusDoc], ready: Callable[[], bool],
                 metrics: Callable[[], bytes]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/status":
                    self._send(200, "application/json", status().to_json().encode())
                elif path == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                elif path == "/readyz":
                    is_ready = ready()
                    self._send(200 if is_ready else 503, "text/plain",
                               b"ready\n" if is_ready else b"not ready\n")
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, metrics())
                else:
                    self._send(404, "text/plain", b"try /status, /healthz, /readyz, /metrics\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="status-http",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
