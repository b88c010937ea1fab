"""Health plugin: a regression model's output is finite and inside a configured range.

For a model predicting, say, watch time in seconds, an output of -3 or 1e12
on a known input means the model is up but wrong.

Params (``ctx.params`` or ``WEI_PLUGIN_*`` in the agent's config):

- ``model``: the model to call (default ``watch_time``).
- ``output``: the output tensor to check (default: every output).
- ``min`` / ``max``: the accepted range, inclusive (default 0 and 86400).
- ``golden``: the input tensors as a JSON object of nested lists (default :data:`GOLDEN`).
"""

from __future__ import annotations

import json
import math
from typing import Any

GOLDEN: dict[str, Any] = {"features": [[0.3, 12.0, 1.0, 0.0, 4.5, 180.0, 0.72, 3.0]]}
DEFAULT_MIN = 0.0
DEFAULT_MAX = 86400.0


def flatten(value: Any) -> list[float]:
    """Numbers of a nested list or an array (anything with ``tolist``), in order."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [x for item in value for x in flatten(item)]
    return [float(value)]


def check(ctx: Any) -> tuple[bool, str]:
    model = ctx.params.get("model", "watch_time")
    low = float(ctx.params.get("min", DEFAULT_MIN))
    high = float(ctx.params.get("max", DEFAULT_MAX))
    if not low <= high:
        return False, f"misconfigured range: min {low:g} > max {high:g}"
    inputs = json.loads(ctx.params["golden"]) if "golden" in ctx.params else GOLDEN
    outputs = ctx.predict(model, inputs)
    names = [ctx.params["output"]] if "output" in ctx.params else sorted(outputs)
    if not names:
        return False, f"{model}: the golden sample produced no outputs"
    for name in names:
        if name not in outputs:
            return False, f"{model}: no output {name!r} (got {sorted(outputs)})"
        values = flatten(outputs[name])
        if not values:
            return False, f"{model}/{name}: empty output for the golden sample"
        for v in values:
            if not math.isfinite(v):
                return False, f"{model}/{name}: non-finite output {v!r}"
            if not low <= v <= high:
                return False, f"{model}/{name}: output {v:g} outside [{low:g}, {high:g}]"
    return True, f"{model}: outputs finite and in [{low:g}, {high:g}]"
