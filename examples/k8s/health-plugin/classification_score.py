"""Health plugin: a classification model's scores lie in [0, 1] for a golden sample.

A CTR model that answers with NaN or 3.7 is up but broken (a bad export, a
wrong feature transform); the gRPC health check cannot see that, this can.

Params (all optional; ``ctx.params`` or ``WEI_PLUGIN_*`` in the agent's config):

- ``model``: the model to call (default ``ctr``).
- ``output``: the output tensor to check (default: every output).
- ``golden``: the input tensors as a JSON object of nested lists (default:
  :data:`GOLDEN`, one row shaped for ``examples/ctr_widedeep``).
"""

from __future__ import annotations

import json
import math
from typing import Any

GOLDEN: dict[str, Any] = {
    "dense": [[0.0, 1.0, 5.0, 0.0, 1382.0, 4.0, 15.0, 2.0, 181.0, 1.0, 2.0, 0.0, 2.0]],
    "sparse": [[68, 1287, 2904, 1187, 25, 7, 1209, 20, 2, 2734, 1470, 2346, 1040,
                2504, 1405, 2157, 3, 1, 2210, 1, 1, 1880, 16, 2130, 5, 1321]],
}


def flatten(value: Any) -> list[float]:
    """Numbers of a nested list or an array (anything with ``tolist``), in order."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [x for item in value for x in flatten(item)]
    return [float(value)]


def check(ctx: Any) -> tuple[bool, str]:
    model = ctx.params.get("model", "ctr")
    inputs = json.loads(ctx.params["golden"]) if "golden" in ctx.params else GOLDEN
    outputs = ctx.predict(model, inputs)
    names = [ctx.params["output"]] if "output" in ctx.params else sorted(outputs)
    if not names:
        return False, f"{model}: the golden sample produced no outputs"
    checked = 0
    for name in names:
        if name not in outputs:
            return False, f"{model}: no output {name!r} (got {sorted(outputs)})"
        scores = flatten(outputs[name])
        if not scores:
            return False, f"{model}/{name}: empty output for the golden sample"
        bad = [s for s in scores if not (math.isfinite(s) and 0.0 <= s <= 1.0)]
        if bad:
            return False, f"{model}/{name}: {len(bad)} of {len(scores)} scores outside [0, 1], e.g. {bad[0]!r}"
        checked += len(scores)
    return True, f"{model}: {checked} score(s) in [0, 1]"
