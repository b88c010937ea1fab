"""The model server's local HTTP endpoints for the sidecar agent (JSON; loopback by default).

``GET /status`` -> 200, the :class:`~protocol.status.StatusDoc` as JSON (its
schema is documented in :mod:`protocol.status`); ``GET /healthz`` -> 200
while the process is up; ``GET /readyz`` -> 200 when ready, 503 otherwise;
``GET /metrics`` -> Prometheus text exposition. ``/v2/...`` (GET and POST)
goes to ``v2``, the Open Inference Protocol's REST routes (see
:mod:`serving.oip_rest`), when given.

The endpoint knows nothing of the server: it is given callables (the status
document, readiness, the metrics exposition, the ``/v2`` routes), so the
HTTP shell and the gRPC server do not import each other. HTTP/1.1 with
keep-alive (an OIP client keeps its connection); an idle connection is
closed after :data:`IDLE_TIMEOUT_S`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from protocol.status import StatusDoc

__all__ = ["HttpRequest", "HttpResponse", "StatusHttp"]

IDLE_TIMEOUT_S = 60.0


@dataclass(frozen=True, kw_only=True)
class HttpRequest:
    method: str
    path: str                      # without the query string
    headers: Mapping[str, str]     # as sent; look names up case-insensitively (``get``)
    body: bytes = b""


@dataclass(frozen=True, kw_only=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class StatusHttp:
    """``/status /healthz /readyz /metrics`` (and ``/v2``) on ``host:port`` (0 picks a free port: see :attr:`port`).

    ``max_body_bytes`` bounds a request body (413 beyond it)."""

    def __init__(self, host: str, port: int, *, status: Callable[[], StatusDoc], ready: Callable[[], bool],
                 metrics: Callable[[], bytes], v2: Callable[[HttpRequest], HttpResponse] | None = None,
                 max_body_bytes: int = 64 * 1024 * 1024) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IDLE_TIMEOUT_S

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: with Nagle's algorithm the body would wait
                # for the client's delayed ACK of the headers (40 ms on Linux) on a kept-alive connection
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if v2 is not None and (path == "/v2" or path.startswith("/v2/")):
                    self._answer(v2(HttpRequest(method="GET", path=path, headers=self.headers)))
                elif path == "/status":
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
                    self._send(404, "text/plain", b"try /status, /healthz, /readyz, /metrics, /v2\n")

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    length = -1
                if length < 0 or length > max_body_bytes:
                    self.close_connection = True   # the body is not read: the connection cannot be reused
                    self._send(413 if length > 0 else 400, "application/json",
                               b'{"error":"Content-Length must be a byte count of at most %d"}' % max_body_bytes)
                    return
                body = self.rfile.read(length)
                if v2 is not None and path.startswith("/v2/"):
                    self._answer(v2(HttpRequest(method="POST", path=path, headers=self.headers, body=body)))
                else:
                    self._send(405 if path in ("/status", "/healthz", "/readyz", "/metrics") else 404,
                               "text/plain", b"POST is for /v2/models/{name}/infer\n")

            def _answer(self, r: HttpResponse) -> None:
                self._send(r.status, r.content_type, r.body, r.headers)

            def _send(self, code: int, ctype: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._httpd = _Server((host, port), Handler)
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="status-http",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop listening and end every open connection (a kept-alive one gets no further answer)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.end_connections()


class _Server(ThreadingHTTPServer):
    """Remembers its open connections, so that closing it ends kept-alive ones too."""

    daemon_threads = True

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def end_connections(self) -> None:
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
