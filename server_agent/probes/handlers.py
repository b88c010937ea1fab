"""Probe handlers with Kubernetes semantics: exec, HTTP GET and TCP socket.

Each is a small object whose ``check(timeout)`` performs one attempt and
returns a :class:`ProbeResult`; nothing escapes it (a handler that raised
would take the probe loop with it). The gRPC handler lives in
:mod:`server_agent.probes.grpc_health` so that importing these does not load
grpc.

Kubernetes' rules kept here: exec succeeds on exit status 0; HTTP succeeds on
200 <= status < 400 (redirects are not followed: a 3xx is already success);
HTTPS does not verify the certificate (kubelet does not either); TCP
succeeds once the connection opens.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence

from .._proc import first_line, run_bounded
from ..errors import ConfigError
from .result import ProbeResult, Timer

__all__ = ["ExecHandler", "HttpGetHandler", "TcpSocketHandler", "describe_os_error"]

MAX_BODY = 10 * 1024
"""Bytes of an HTTP body read for the failure reason (kubelet reads 10 KiB)."""


def describe_os_error(e: BaseException) -> str:
    """A short reason for a socket-level failure a person can act on."""
    if isinstance(e, socket.gaierror):
        return f"DNS lookup failed: {e.strerror or e}"
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}"


class ExecHandler:
    """Runs ``command`` (an argv, no shell); exit status 0 is success.

    The reason on failure is the exit status and the first line of output, so
    ``cat /tmp/healthy`` failing reads "exit 1: cat: /tmp/healthy: No such file".
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(command, str) or not command or not all(isinstance(a, str) for a in command):
            raise ConfigError("exec.command", "a non-empty list of strings (an argv, not a shell line)", command)
        self.command = tuple(command)
        self._env = env
        self._cwd = cwd
        self._clock = clock

    def check(self, timeout: float) -> ProbeResult:
        timer = Timer(self._clock)
        try:
            done = run_bounded(self.command, timeout, env=self._env, cwd=self._cwd)
        except Exception as e:  # run_bounded does not raise; this guards the invariant
            return timer.fail(f"exec failed: {type(e).__name__}: {e}")
        if done.returncode is None:
            return timer.fail(done.error)
        line = first_line(done.stdout, done.stderr)
        if done.returncode == 0:
            return timer.ok(line)
        return timer.fail(f"exit {done.returncode}" + (f": {line}" if line else ""))

    def __repr__(self) -> str:
        return f"<ExecHandler {' '.join(self.command)!r}>"


class HttpGetHandler:
    """``GET scheme://host:port/path``; a status in [200, 400) is success."""

    def __init__(
        self,
        *,
        port: int,
        host: str = "127.0.0.1",
        path: str = "/",
        scheme: str = "HTTP",
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError("httpGet.port", "an integer port in 1..65535", port)
        if scheme.upper() not in ("HTTP", "HTTPS"):
            raise ConfigError("httpGet.scheme", "HTTP or HTTPS", scheme)
        if not path.startswith("/"):
            raise ConfigError("httpGet.path", "a path starting with '/'", path)
        self.host, self.port, self.path, self.scheme = host, port, path, scheme.upper()
        # kubelet sends its own User-Agent; ours names the agent so server logs can tell.
        self._headers = {"User-Agent": "wei-server-agent", "Accept": "*/*", **(headers or {})}
        self._clock = clock

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "HTTPS":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def check(self, timeout: float) -> ProbeResult:
        timer = Timer(self._clock)
        # ``timeout`` bounds each socket operation (connect, each read); a server
        # that trickles bytes could stretch the total, which a loopback probe
        # does not meet in practice and kubelet tolerates the same way.
        conn = self._connection(timeout)
        try:
            conn.request("GET", self.path, headers=self._headers)
            resp = conn.getresponse()
            body = resp.read(MAX_BODY)
            status = resp.status
        except (OSError, http.client.HTTPException) as e:
            return timer.fail(f"GET {self._url()}: {describe_os_error(e)}")
        except Exception as e:  # never let a probe raise
            return timer.fail(f"GET {self._url()}: {type(e).__name__}: {e}")
        finally:
            conn.close()
        line = first_line(body.decode("utf-8", errors="replace"))
        if 200 <= status < 400:
            return timer.ok(f"HTTP {status}")
        return timer.fail(f"GET {self._url()}: HTTP {status}" + (f": {line}" if line else ""))

    def _url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme.lower()}://{host}:{self.port}{self.path}"

    def __repr__(self) -> str:
        return f"<HttpGetHandler {self._url()}>"


class TcpSocketHandler:
    """Opens a TCP connection to ``host:port`` and closes it; success once it opens."""

    def __init__(self, *, port: int, host: str = "127.0.0.1", clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError("tcpSocket.port", "an integer port in 1..65535", port)
        self.host, self.port = host, port
        self._clock = clock

    def check(self, timeout: float) -> ProbeResult:
        timer = Timer(self._clock)
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout):
                pass
        except Exception as e:
            return timer.fail(f"connect {self.host}:{self.port}: {describe_os_error(e)}")
        return timer.ok()

    def __repr__(self) -> str:
        return f"<TcpSocketHandler {self.host}:{self.port}>"
