"""WeiClient: the SDK ranking services embed to call serving pods directly.

    from weiclient import WeiClient
    with WeiClient("zk1:2181,zk2:2181,zk3:2181", "ctr") as client:
        out = client.predict("ctr", {"dense": dense, "cat": cat})

The wire protocol it speaks lives in :mod:`protocol`, shared with the model
server and the agent; this package imports only :mod:`registry` and
:mod:`protocol` of ours.
"""

from . import errors
from .client import ClientStats, WeiClient
from .config import ChannelConfig, ClientConfig, HedgingConfig, OverloadConfig, RetryConfig, ScatterConfig
from .throttle import ThrottleConfig

__all__ = [
    "ChannelConfig", "ClientConfig", "ClientStats", "HedgingConfig", "OverloadConfig", "RetryConfig", "ScatterConfig",
    "ThrottleConfig", "WeiClient", "errors",
]
