"""Reading a WeiClient's own Prometheus counters in tests (``tests/`` is on ``sys.path``)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from weiclient import WeiClient


def counted(name: str, client: WeiClient, **labels: str) -> float:
    """A client counter, summed over the samples with ``client``'s label and ``labels`` (counters
    outlive a client, so tests take deltas)."""
    return sum(s.value for m in REGISTRY.collect() if m.name == name for s in m.samples
               if s.labels.get("client") == client._metrics.name and s.name.endswith("_total")
               and all(s.labels.get(k) == v for k, v in labels.items()))
