"""``wei-serve`` as a real process: serves, drains on SIGTERM with exit 0, errors in one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_helpers import AFFINE_MODEL, REPO, Client, write_python_model, x

from protocol import wire


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "serving.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serves_then_drains_on_sigterm_and_exits_zero(tmp_path):
    write_python_model(tmp_path, "aff", 1)
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[batching]\nmax_batch_size = 16\n")
    proc = start("--models", str(tmp_path), "--host", "127.0.0.1", "--port", "0",
                 "--status-port", "-1", "--config", str(cfg), "--num-batch-threads", "1")
    try:
        line = proc.stdout.readline()
        m = re.match(r"wei-serve: serving 1 model\(s\) on 127\.0\.0\.1:(\d+)$", line.strip())
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        client = Client(int(m.group(1)))
        np.testing.assert_array_equal(
            client.predict(model="aff", inputs={"x": x(2)}).outputs()["y"], x(2) * 2 + 1)
        assert client.metadata()["aff"]["batching"]["max_batch_size"] == 16
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "drained" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_errors_are_one_line_and_exit_nonzero(tmp_path):
    for args, needle in [
        (["--models", str(tmp_path / "missing")], "not a directory"),
        (["--models", str(tmp_path), "--config", str(tmp_path / "nope.toml")],
         "cannot read config"),
        (["--models", str(tmp_path), "--max-batch-size", "0", "--port", "0"],
         "argument --max-batch-size: expected an integer >= 1, got '0'"),
        (["--models", str(tmp_path), "--port", "70000"],      # was bound as port 4464
         "argument --port: expected a port in 0..65535 (0 picks a free one), got '70000'"),
        (["--models", str(tmp_path), "--version-policy", "newest"], "bad version policy"),
    ]:
        proc = start(*args)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("wei-serve: error:"), err
        assert needle in lines[0] and "Traceback" not in err


# A model that blocks the request marked 42 on two FIFOs: opening "entered" for
# writing returns once the test opens it for reading (so the test knows the call
# is inside the model), and reading "gate" returns once the test writes it.
FIFO_MODEL = AFFINE_MODEL.replace("    def predict(self, inputs):\n", """    def predict(self, inputs):
        if inputs["x"][0, 0] == 42:
            with open(FIFOS + "/entered", "w") as f:
                f.write("in")
            with open(FIFOS + "/gate") as f:
                f.read()
""")


@pytest.fixture
def gated_server(tmp_path):
    fifos = tmp_path / "fifos"
    fifos.mkdir()
    for name in ("entered", "gate"):
        os.mkfifo(fifos / name)
    write_python_model(tmp_path / "models", "aff", 1,
                       source=f"SCALE = 2.0\nFIFOS = {str(fifos)!r}\n" + FIFO_MODEL)
    proc = start("--models", str(tmp_path / "models"), "--host", "127.0.0.1", "--port", "0",
                 "--status-port", "-1", "--grace-s", "60")
    line = proc.stdout.readline()
    port = int(line.rsplit(":", 1)[1])
    client = Client(port)
    call = client._predict.future(wire.encode_request(wire.PredictRequest(
        model="aff", inputs={"x": x(1, start=42)})))
    with open(fifos / "entered") as f:          # returns once the call is inside the model
        assert f.read() == "in"
    watch = health_pb2_grpc.HealthStub(client.channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=60)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    proc.send_signal(signal.SIGTERM)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING   # draining
    yield proc, client, call, fifos
    client.close()
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sigterm_finishes_in_flight_calls_refuses_new_ones_and_exits_zero(gated_server):
    proc, client, call, fifos = gated_server
    with pytest.raises(grpc.RpcError) as err:
        client.predict(model="aff", inputs={"x": x(1)})
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with open(fifos / "gate", "w") as f:       # let the in-flight call finish
        f.write("go")
    out = wire.decode_response(call.result(30)).outputs()["y"]
    np.testing.assert_array_equal(out, x(1, start=42) * 2 + 1)
    assert proc.wait(30) == 0


def test_second_signal_forces_exit(gated_server):
    proc, client, call, fifos = gated_server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 1
    assert "second signal" in proc.stderr.read()
    with pytest.raises(grpc.RpcError):
        call.result(30)
