"""The fault suite's fixtures: one real cluster for the session (every case leaves it whole again,
and checks that it is whole before it starts), a WeiClient and its steady load per case, and the
table of what each case measured, printed at the end of the run and written as JSON to
``$WEI_FAULTS_REPORT`` when that is set (``bench/faults.py`` reads it)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import pytest
from fault_cluster import ROOT, SERVICE, Cluster
from fault_load import Load

from weiclient import ClientConfig, WeiClient


@dataclass
class Measured:
    case: str
    calls: int
    errors: dict[str, int]
    recovery_s: float | None
    recovery: str                       # what the recovery time measures
    notes: dict[str, float | str] = field(default_factory=dict)


MEASURED: list[Measured] = []


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("faults"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def make_client(cluster: Cluster) -> Iterator[Callable[..., WeiClient]]:
    made: list[WeiClient] = []

    def factory(**overrides: object) -> WeiClient:
        config = ClientConfig(**{"timeout_s": 2.0, **overrides})  # type: ignore[arg-type]
        client = WeiClient(cluster.hosts, SERVICE, root=ROOT, config=config)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


@pytest.fixture
def steady(cluster: Cluster, make_client: Callable[..., WeiClient]) -> Iterator[Callable[..., Load]]:
    """A WeiClient under steady load, started on a whole cluster (every pod SERVING, the client in sync)."""
    loads: list[Load] = []

    def start(**client_config: object) -> Load:
        client = make_client(**client_config)
        cluster.healthy(client)
        load = Load(client)
        loads.append(load)
        load.succeeded(30)  # warm: the client has latencies and every pod has had calls
        return load

    yield start
    for load in loads:
        load.close()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    def add(calls: int, errors: Counter[str] | dict[str, int], recovery_s: float | None, recovery: str,
            **notes: float | str) -> None:
        MEASURED.append(Measured(request.node.name.removeprefix("test_"), calls, dict(errors),
                                 None if recovery_s is None else round(recovery_s, 2), recovery,
                                 {k: round(v, 2) if isinstance(v, float) else v for k, v in notes.items()}))
    return add


def table_lines(rows: list[Measured]) -> list[str]:
    head = f"{'case':<44} {'calls':>6} {'errors':<22} {'recovery':>9}  what recovered"
    lines = [head, "-" * len(head)]
    for m in rows:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(m.errors.items())) or "0"
        rec = "-" if m.recovery_s is None else f"{m.recovery_s:.2f} s"
        notes = "; ".join(f"{k} {v}" for k, v in m.notes.items())
        lines.append(f"{m.case:<44} {m.calls:>6} {errors:<22} {rec:>9}  {m.recovery}"
                     + (f" ({notes})" if notes else ""))
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 - pytest's signature
    if not MEASURED:
        return
    terminalreporter.section("fault cases: errors callers saw, recovery measured")
    for line in table_lines(MEASURED):
        terminalreporter.write_line(line)
    path = os.environ.get("WEI_FAULTS_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump([asdict(m) for m in MEASURED], f, indent=2)
