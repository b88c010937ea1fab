"""Each handler against a real local thing: processes, an HTTP server, a TCP listener, a gRPC server."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer as _ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server_agent.errors import ConfigError
from server_agent.probes import ExecHandler, Handler, HttpGetHandler, TcpSocketHandler
from server_agent.probes.grpc_health import GrpcHandler

SHORT = 0.3  # the timeout under test; every hang below is bounded by it




class ThreadingHTTPServer(_ThreadingHTTPServer):
    """The probe's client hangs up on the slow handlers on purpose; don't print their tracebacks."""

    def handle_error(self, request, client_address) -> None:
        pass

def closed_port() -> int:
    """A port nothing listens on: bound, then closed (the kernel will refuse connections)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- exec ------------------------------------------------------------------------------


def test_exec_exit_status_decides():
    assert ExecHandler(["true"]).check(1.0).ok
    res = ExecHandler(["false"]).check(1.0)
    assert not res.ok and res.reason == "exit 1"


def test_exec_reason_is_the_first_line_of_output():
    res = ExecHandler(["sh", "-c", "echo; echo 'db unreachable' >&2; exit 3"]).check(1.0)
    assert not res.ok and res.reason == "exit 3: db unreachable"
    assert ExecHandler(["echo", "fine"]).check(1.0).reason == "fine"


def test_exec_timeout_kills_the_whole_group():
    # The shell's background sleep would hold the pipes open for 30 s if only sh were killed.
    start = time.monotonic()
    res = ExecHandler(["sh", "-c", "sleep 30 & sleep 30"]).check(SHORT)
    assert not res.ok and res.reason == f"timed out after {SHORT:g}s"
    assert time.monotonic() - start < 3.0
    assert SHORT <= res.latency < 3.0


def test_exec_missing_command_is_a_failure_not_an_exception():
    res = ExecHandler(["/nonexistent/healthcheck"]).check(1.0)
    assert not res.ok and "command not found" in res.reason


def test_exec_rejects_a_shell_string():
    with pytest.raises(ConfigError, match="argv"):
        ExecHandler("cat /tmp/healthy")  # type: ignore[arg-type]


# -- HTTP ------------------------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[tuple[int, threading.Event]]:
    release = threading.Event()

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/hang":
                release.wait(10)  # held until the test ends; the probe's timeout is what's tested
            code = {"/ok": 200, "/fail": 500, "/redirect": 302, "/missing": 404}.get(self.path, 200)
            body = b"database connection lost\nmore detail\n" if code == 500 else b"ok\n"
            self.send_response(code)
            if code == 302:
                self.send_header("Location", "http://elsewhere.invalid/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield srv.server_address[1], release
    release.set()
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("path,ok,reason", [
    ("/ok", True, "HTTP 200"),
    ("/redirect", True, "HTTP 302"),  # 3xx is success; not followed
    ("/fail", False, "HTTP 500: database connection lost"),
    ("/missing", False, "HTTP 404: ok"),
])
def test_http_status_decides(http_server, path, ok, reason):
    port, _ = http_server
    res = HttpGetHandler(port=port, path=path).check(1.0)
    assert res.ok is ok and res.reason.endswith(reason), res.reason


def test_http_hanging_server_times_out(http_server):
    port, _ = http_server
    start = time.monotonic()
    res = HttpGetHandler(port=port, path="/hang").check(SHORT)
    assert not res.ok and "timed out" in res.reason and f":{port}/hang" in res.reason
    assert time.monotonic() - start < 3.0


def test_http_refused_and_dns_errors_are_failures():
    res = HttpGetHandler(port=closed_port(), path="/healthz").check(1.0)
    assert not res.ok and "connection refused" in res.reason
    res = HttpGetHandler(host="no-such-host.invalid", port=80).check(2.0)
    assert not res.ok and "DNS lookup failed" in res.reason


def test_http_config_is_validated():
    with pytest.raises(ConfigError):
        HttpGetHandler(port=0)
    with pytest.raises(ConfigError):
        HttpGetHandler(port=80, path="healthz")
    with pytest.raises(ConfigError):
        HttpGetHandler(port=80, scheme="ftp")


# -- TCP -------------------------------------------------------------------------------


def test_tcp_open_and_closed_ports():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert TcpSocketHandler(port=listener.getsockname()[1]).check(1.0).ok
    res = TcpSocketHandler(port=closed_port()).check(1.0)
    assert not res.ok and res.reason.endswith("connection refused")
    res = TcpSocketHandler(host="no-such-host.invalid", port=80).check(2.0)
    assert not res.ok and "DNS lookup failed" in res.reason


# -- gRPC ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def test_grpc_serving_and_not_serving(grpc_health_server):
    target, servicer = grpc_health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("ctr", health_pb2.HealthCheckResponse.NOT_SERVING)
    res = GrpcHandler(target).check(2.0)
    assert res.ok and res.reason == "SERVING"
    res = GrpcHandler(target, service="ctr").check(2.0)
    assert not res.ok and res.reason.endswith("service 'ctr': NOT_SERVING")
    servicer.set("ctr", health_pb2.HealthCheckResponse.SERVING)
    assert GrpcHandler(target, service="ctr").check(2.0).ok
    res = GrpcHandler(target, service="nope").check(2.0)
    assert not res.ok and "NOT_FOUND" in res.reason


def test_grpc_nothing_listening_is_unavailable():
    res = GrpcHandler(f"127.0.0.1:{closed_port()}").check(1.0)
    assert not res.ok and "UNAVAILABLE" in res.reason


def test_grpc_silent_server_hits_the_deadline():
    # Accepts TCP and never speaks HTTP/2: the check must end at its timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        start = time.monotonic()
        res = GrpcHandler(f"127.0.0.1:{listener.getsockname()[1]}").check(SHORT)
        assert not res.ok and "DEADLINE_EXCEEDED" in res.reason
        assert time.monotonic() - start < 3.0


def test_every_handler_is_a_handler():
    for h in (ExecHandler(["true"]), HttpGetHandler(port=1), TcpSocketHandler(port=1), GrpcHandler("x:1")):
        assert isinstance(h, Handler)


def test_exec_uses_the_given_environment():
    res = ExecHandler(["sh", "-c", 'test "$PROBE_MODE" = deep'], env={"PROBE_MODE": "deep", "PATH": "/usr/bin:/bin"})
    assert res.check(1.0).ok


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_accepts_a_self_signed_certificate(tmp_path):
    """kubelet does not verify the server's certificate; neither do we."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=pod", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=30)

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        res = HttpGetHandler(port=srv.server_address[1], scheme="HTTPS", path="/readyz").check(2.0)
        assert res.ok and res.reason == "HTTP 204"
        res = HttpGetHandler(port=srv.server_address[1], scheme="HTTP").check(2.0)  # plain HTTP to a TLS port
        assert not res.ok
    finally:
        srv.shutdown()
        srv.server_close()
