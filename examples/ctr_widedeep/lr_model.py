"""A logistic-regression CTR model for the Python backend (copied to ``{version}/model.py``).

Same signature as the Wide&Deep model, so both can answer one multi-model
call: ``dense`` float32 [batch, 13], ``sparse`` int64 [batch, 26] ->
``ctr`` float32 [batch]. Weights live beside this file in ``weights.npz``
(``w_dense`` [13], ``w_sparse`` [26, vocab], ``bias`` []).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.backends.signature import Signature, spec

SIGNATURE = Signature(inputs={"dense": spec("<f4", [None, 13]), "sparse": spec("<i8", [None, 26])},
                      outputs={"ctr": spec("<f4", [None]), "logit": spec("<f4", [None])})


class LogisticRegression:
    signature = SIGNATURE

    def __init__(self, w_dense: np.ndarray, w_sparse: np.ndarray, bias: float) -> None:
        self.w_dense, self.w_sparse, self.bias = w_dense, w_sparse, bias
        self._fields = np.arange(w_sparse.shape[0])

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.log1p(np.maximum(inputs["dense"], 0))
        ids = np.mod(inputs["sparse"], self.w_sparse.shape[1])
        logit = x @ self.w_dense + self.w_sparse[self._fields, ids].sum(axis=1) + self.bias
        logit = logit.astype(np.float32)
        return {"ctr": 1 / (1 + np.exp(-logit)), "logit": logit}


def load(path: Path) -> LogisticRegression:
    w = np.load(path / "weights.npz")
    return LogisticRegression(w["w_dense"], w["w_sparse"], float(w["bias"]))
