"""The server's refusals of a caller's mistakes: the right code, a message naming the limit,
and never a message too long for gRPC's metadata limit (issue 10, part 3)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from serving_helpers import running, server_config, write_python_model, x

from serving.errors import MAX_STATUS_BYTES, status_message


def sent_size(text: str) -> int:
    """Bytes of ``text`` as gRPC sends a status message (percent-encoded UTF-8)."""
    return sum(1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode("utf-8", "surrogatepass"))
               for ch in text)


@pytest.fixture
def repo(tmp_path):
    write_python_model(tmp_path, "aff", 1)
    return tmp_path


def test_a_request_over_the_row_limit_is_invalid_argument_naming_the_limit(repo, client_for):
    """Before: RESOURCE_EXHAUSTED "batch queue full: 0 rows queued + 9 requested", on an empty
    queue, which a client retries elsewhere and counts against the pod."""
    with running(server_config(repo, max_batch_size=4, max_enqueued_batches=2)) as server:
        c = client_for(server)
        with pytest.raises(grpc.RpcError) as err:
            c.predict(model="aff", inputs={"x": x(9)})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details()
        assert "9 rows" in details and "limit of 8 rows" in details and "queue full" not in details, details
        assert "max_enqueued_batches 2 x max_batch_size 4" in details
        out = c.predict(model="aff", inputs={"x": x(8)}).outputs()  # at the limit: served
        np.testing.assert_array_equal(out["y"], x(8) * 2 + 1)


@pytest.mark.parametrize("name", ["o" * 20_000, "é" * 4_000])
def test_a_long_error_text_reaches_the_caller_cut_with_a_marker(repo, client_for, name):
    """Before: RESOURCE_EXHAUSTED "received metadata size exceeds hard limit", the real message lost."""
    with running(server_config(repo)) as server:
        c = client_for(server)  # a plain channel: gRPC's default metadata limits
        with pytest.raises(grpc.RpcError) as err:
            c.predict(model="aff", inputs={"x": x(1)}, outputs=[name])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details()
        assert details.startswith("model 'aff': unknown outputs") and details.endswith(" more characters)")
        assert sent_size(details) <= MAX_STATUS_BYTES


@pytest.mark.parametrize("text", ["", "short", "a" * 4096, "a" * 4097, "%" * 2000, "é" * 700, "😀" * 400,
                                  "x" * 1_000_000, "bad \ud800 surrogate"])
def test_status_message_fits_the_budget_and_says_what_it_cut(text):
    out = status_message(text)
    assert sent_size(out) <= MAX_STATUS_BYTES
    out.encode("utf-8")  # always encodable: a lone surrogate becomes "?"
    text = text.replace("\ud800", "?")
    if sent_size(text) <= MAX_STATUS_BYTES:
        assert out == text
    else:
        kept = out[: out.rindex("... (")]
        assert text.startswith(kept)
        assert out.endswith(f"... ({len(text) - len(kept)} more characters)")
