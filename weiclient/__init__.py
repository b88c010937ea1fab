"""WeiClient: the SDK ranking services embed to call serving pods directly.

    from weiclient import WeiClient
    with WeiClient("zk1:2181,zk2:2181,zk3:2181", "ctr") as client:
        out = client.predict("ctr", {"dense": dense, "cat": cat})

``weiclient.wire`` (the protocol) is imported by the model server too, so the
client itself is loaded lazily on first use of these names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ClientConfig", "HedgingConfig", "RetryConfig", "ScatterConfig", "WeiClient", "errors"]

_LAZY = {
    "WeiClient": ("weiclient.client", "WeiClient"),
    "ClientConfig": ("weiclient.config", "ClientConfig"),
    "HedgingConfig": ("weiclient.config", "HedgingConfig"),
    "RetryConfig": ("weiclient.config", "RetryConfig"),
    "ScatterConfig": ("weiclient.config", "ScatterConfig"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name == "errors":
        import importlib

        return importlib.import_module("weiclient.errors")
    raise AttributeError(f"module 'weiclient' has no attribute {name!r}")
