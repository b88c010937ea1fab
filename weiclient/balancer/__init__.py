"""Client-side load balancing: pure objects over membership snapshots and per-endpoint load.

The transport layer uses :class:`Balancer` (``update``, ``pick``,
``on_start``, ``on_finish``, ``scatter``, ``stats``), :class:`RetryBudget`
(``deposit``, ``try_withdraw``) and :func:`build_policy` /
:func:`policy_from_spec` to turn a service config's ``balancer`` section into
a :class:`Policy`. No module here does I/O or reads a clock.
"""

from .balancer import Balancer
from .candidates import Candidates, Endpoint, ModelVersion, View, WeightTable
from .delay import JsedConfig, LeastOutstandingConfig
from .hashing import HashConfig, key_hash
from .metric import PeakEwma
from .orca_wrr import OrcaWrrConfig
from .outlier import OutlierDetection
from .policies import DEFAULT_POLICY, POLICIES, Policy, RandomConfig, build_policy, policy_from_spec, valid_knobs
from .prequal import PrequalConfig
from .retry_budget import RetryBudget, RetryBudgetConfig
from .scatter import Shard, gather, plan_shards, split_sizes
from .selectors import P2CConfig, WrrConfig
from .state import EndpointState, ServerLoad
from .stats import BalancerStats, EndpointStats
from .subset import RateMeter, SubsetConfig, Subsetter
from .weights import SlowStart
from .zones import Locality, ZoneConfig, ZonePlan

__all__ = [
    "DEFAULT_POLICY", "POLICIES", "Balancer", "BalancerStats", "Candidates", "Endpoint", "EndpointState",
    "EndpointStats", "HashConfig", "JsedConfig", "LeastOutstandingConfig", "Locality", "ModelVersion",
    "OrcaWrrConfig", "OutlierDetection", "P2CConfig", "PeakEwma", "Policy", "PrequalConfig", "RandomConfig",
    "RateMeter", "RetryBudget", "RetryBudgetConfig", "ServerLoad", "Shard", "SlowStart", "SubsetConfig", "Subsetter",
    "View", "WeightTable", "WrrConfig", "ZoneConfig", "ZonePlan", "build_policy",
    "gather", "key_hash", "plan_shards", "policy_from_spec", "split_sizes", "valid_knobs",
]
