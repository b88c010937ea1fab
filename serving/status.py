"""The local status endpoint for the sidecar agent (HTTP, JSON; loopback by default).

``GET /status`` -> 200, JSON::

    {"phase": "serving", "ready": true, "draining": false, "port": 8500,
     "in_flight": 3,
     "models": {"ctr": {
         "versions": {"2": {"state": "AVAILABLE", "in_flight": 3, "queue_rows": 40}},
         "ready": true, "in_flight": 3, "queue_rows": 40,
         "latency_ms": {"p50": 2.1, "p90": 3.4, "p99": 6.0, "ewma": 2.4},
         "batching": {"batch_fill": 0.6, "batches": 812, "rows": 51234,
                      "batch_size_limit": 256, "queue_delay_ms": 0.8},
         "capacity": {"rows_per_s": 41000.0, "max_batch_size": 256.0}}},
     "load_failures": {"ctr/3": "why version 3 did not load"}}

``GET /healthz`` -> 200 while the process is up; ``GET /readyz`` -> 200 when
ready, 503 otherwise; ``GET /metrics`` -> Prometheus text exposition.
Latencies are measured inside the server (queue + model), per model, over the
last 2,048 requests of the newest version.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from serving.server import ModelServer


class StatusServer:
    def __init__(self, server: ModelServer, host: str, port: int) -> None:
        model_server = server

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/status":
                    self._send(200, "application/json",
                               json.dumps(model_server.status()).encode())
                elif path == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                elif path == "/readyz":
                    ready = model_server.ready
                    self._send(200 if ready else 503, "text/plain",
                               b"ready\n" if ready else b"not ready\n")
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, model_server.metrics.exposition())
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
