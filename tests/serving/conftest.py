"""Fixtures for the serving tests: a real exported TF model and real gRPC clients."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from serving_helpers import REPO, Client

from serving.server import ModelServer


@pytest.fixture(scope="session")
def widedeep():
    pytest.importorskip("tensorflow", reason="the TF extra is not installed (pip install .[tf])")
    if str(REPO) not in sys.path:      # examples/ is not an installed package
        sys.path.insert(0, str(REPO))
    return importlib.import_module("examples.ctr_widedeep.widedeep")


@pytest.fixture(scope="session")
def ctr_repo(tmp_path_factory, widedeep) -> Path:
    """ctr/{1,2}: the example Wide&Deep model, tiny and briefly trained; ctr_lr/1: the LR."""
    root = tmp_path_factory.mktemp("tf_models")
    spec = widedeep.ModelSpec(vocab=100, emb_dim=4, hidden=(16,))
    widedeep.export(root / "ctr", 1, spec=spec, steps=20)
    widedeep.export(root / "ctr", 2, spec=spec, steps=40)
    importlib.import_module("examples.ctr_widedeep.lr").export_lr(root / "ctr_lr", 1,
                                                                   vocab=100, steps=20)
    return root


@pytest.fixture
def client_for():
    clients: list[Client] = []

    def make(server: ModelServer) -> Client:
        clients.append(Client(server.port))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


