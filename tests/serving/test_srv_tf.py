"""The real Wide&Deep SavedModel behind a real gRPC server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from serving_helpers import running, server_config

from protocol import wire
from serving.backends import load_backend
from serving.config import VersionPolicy


@pytest.fixture(scope="module")
def batch(widedeep):
    dense, sparse, _ = widedeep.synthetic_data(2000, seed=3, vocab=100)
    return {"dense": dense, "sparse": sparse}


def test_exported_model_has_the_documented_signature(ctr_repo, batch):
    backend = load_backend(ctr_repo / "ctr" / "1")
    assert backend.signature.describe() == "dense: <f4[?, 13], sparse: <i8[?, 26]"
    assert {n: s.describe() for n, s in backend.signature.outputs.items()} == {
        "ctr": "<f4[?]", "logit": "<f4[?]"}
    out = backend.predict({k: v[:5] for k, v in batch.items()})
    assert ((out["ctr"] > 0) & (out["ctr"] < 1)).all()


def test_2000_candidate_call_is_split_batched_and_matches_the_model(ctr_repo, batch, client_for):
    from dataclasses import replace
    cfg = server_config(ctr_repo, max_batch_size=256, max_enqueued_batches=16,
                        split_requests=True)      # a lone call would run whole
    cfg = replace(cfg, defaults=replace(cfg.defaults, version_policy=VersionPolicy(kind="all")))
    expected = {v: load_backend(ctr_repo / "ctr" / str(v)).predict(batch)["ctr"] for v in (1, 2)}
    with running(cfg) as server:
        c = client_for(server)
        for v in (1, 2):
            resp = c.predict(model="ctr", version=v, inputs=batch, outputs=("ctr",))
            assert resp.results["ctr"].version == v
            np.testing.assert_allclose(resp.outputs()["ctr"], expected[v], rtol=1e-5, atol=1e-6)
        assert not np.allclose(expected[1], expected[2])      # two distinct versions
        latest = c.predict(model="ctr", inputs={k: v[:3] for k, v in batch.items()})
        assert latest.results["ctr"].version == 2
        assert server.status().models["ctr"].batching.batches >= 8   # 2000 / 256


def test_tf_signature_mismatch_names_what_is_expected(ctr_repo, batch, client_for):
    with running(server_config(ctr_repo)) as server:
        c = client_for(server)
        with pytest.raises(grpc.RpcError) as err:
            c.predict(model="ctr", inputs={"dense": batch["dense"][:2],
                                           "sparse": batch["sparse"][:2].astype(np.int32)})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'sparse' is <i4[2, 26] but the signature expects <i8[?, 26]" in \
            err.value.details()
        meta = c.metadata("ctr")["ctr"]
        assert list(meta["versions"]) == ["2"]
        assert meta["versions"]["2"]["signature"]["inputs"]["dense"] == {
            "dtype": "<f4", "shape": [-1, 13]}
        assert wire.decode_response(wire.encode_response(c.predict(
            model="ctr", inputs={k: v[:1] for k, v in batch.items()}))).outputs()["ctr"].shape \
            == (1,)


def test_one_feature_pass_scores_tf_and_python_models_together(ctr_repo, batch, client_for):
    from serving.backends import load_backend as load
    inputs = {k: v[:50] for k, v in batch.items()}
    with running(server_config(ctr_repo)) as server:
        resp = client_for(server).predict(models={"ctr": None, "ctr_lr": None}, inputs=inputs,
                                          outputs=("ctr",))
    assert {m: r.version for m, r in resp.results.items()} == {"ctr": 2, "ctr_lr": 1}
    for model, version in (("ctr", 2), ("ctr_lr", 1)):
        want = load(ctr_repo / model / str(version)).predict(inputs)["ctr"]
        np.testing.assert_allclose(resp.outputs(model)["ctr"], want, rtol=1e-5, atol=1e-6)
