"""The registry at work in half a minute, on a real ZooKeeper started here.

    .venv/bin/python examples/registry_demo.py            # one ZooKeeper node
    .venv/bin/python examples/registry_demo.py --ensemble # three, a quorum
    .venv/bin/python examples/registry_demo.py --fast     # no pauses (smoke test)

Four serving pods (8-, 16- and 32-core CPU pods and a GPU pod), each with its
own ZooKeeper session, register WARMING at a low weight and ramp to SERVING
at a weight proportional to capacity; one pod's weight drops, one drains and
leaves, one has its session expired by the server and comes back by itself
while the watcher's mass-loss protection keeps it in the membership; then a
traffic split is set. A live table shows what a client's MembershipWatcher
sees. Everything is checked as it goes: the script exits 1 if the registry
misbehaves, 0 with a one-line summary otherwise.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from kazoo.client import KazooClient
from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from registry.membership import MembershipSnapshot, Protection
from registry.publisher import Publisher
from registry.records import Capacity, InstanceRecord, State
from registry.service_config import ConfigSnapshot, ConfigStore, ConfigWatcher
from registry.testing import ZooKeeperEnsemble, expire_session
from registry.watcher import MembershipWatcher, WatcherConfig
from registry.zk import ZkSettings, connect

SERVICE = "ctr"
WAIT_S = 20.0
# Demo setting: hold a loss of more than 25% of routable members (default 50%)
# so that one expired session out of three is enough to show the protection.
PROTECTION = Protection(max_loss_fraction=0.25, hold_s=10.0)


@dataclass(frozen=True)
class Pod:
    id: str
    port: int
    capacity: Capacity
    full_weight: float
    zone: str


PODS = [
    Pod("cpu8-a", 8501, Capacity(cpu_cores=8), 8.0, "z1"),
    Pod("cpu16-b", 8502, Capacity(cpu_cores=16), 16.0, "z1"),
    Pod("cpu32-c", 8503, Capacity(cpu_cores=32), 32.0, "z2"),
    Pod("gpu-t4-d", 8504, Capacity(cpu_cores=8, gpu_model="T4", gpu_count=1), 48.0, "z2"),
]


class View:
    """What the live display shows: the watcher's latest snapshot, the config, the step."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.snapshot: MembershipSnapshot | None = None
        self.config: ConfigSnapshot | None = None
        self.step = "starting"
        self.versions = 0

    def on_snapshot(self, snap: MembershipSnapshot) -> None:  # watcher thread
        self.snapshot = snap
        self.versions += 1
        self.console.print(Text(f"    watcher v{snap.version}: {snap.reason}", style="dim"))

    def on_config(self, snap: ConfigSnapshot) -> None:  # config watcher thread
        self.config = snap

    def say(self, step: str) -> None:
        self.step = step
        self.console.print(Text(f"» {step}", style="bold"))

    def render(self) -> Group:
        snap = self.snapshot
        table = Table("id", "endpoint", "weight", "state", "enabled", "models", "zone",
                      title=f"service {SERVICE!r} as a client's MembershipWatcher sees it")
        if snap is not None:
            for r in snap:
                state = Text(r.state.value + (" (held)" if r.id in snap.held else ""),
                             style={"SERVING": "green", "WARMING": "yellow"}.get(r.state.value, "red"))
                models = " ".join(f"{m}:{','.join(map(str, vs))}" for m, vs in r.models.items())
                table.add_row(r.id, r.endpoint, f"{r.weight:g}", state, "yes" if r.enabled else "no",
                              models, r.zone)
            table.caption = f"snapshot v{snap.version}{' STALE' if snap.stale else ''} · {snap.reason}"
        cfg = self.config
        if cfg is None or not cfg.present:
            config = "config: none (defaults: p2c_jsed, no splits)"
        else:
            splits = "; ".join(f"{m} " + " ".join(f"v{v}={s:g}%" for v, s in split.items())
                               for m, split in cfg.config.splits.items())
            config = f"config v{cfg.version}: balancer {cfg.config.balancer.policy}, split {splits or 'none'}"
        return Group(table, Text(config), Text(f"step: {self.step}", style="bold"))


class Demo:
    def __init__(self, ensemble: ZooKeeperEnsemble, view: View, pause: Callable[[float], None]) -> None:
        self.ensemble = ensemble
        self.view = view
        self.pause = pause
        self.settings = ZkSettings(hosts=ensemble.hosts, session_timeout_s=4.0)
        self.clients: list[KazooClient] = []
        self.pubs: dict[str, Publisher] = {}
        self.watcher: MembershipWatcher | None = None
        self.config_watcher: ConfigWatcher | None = None
        self.expiry = "not run"

    def client(self) -> KazooClient:
        c = connect(self.settings)
        self.clients.append(c)
        return c

    def wait(self, what: str, predicate: Callable[[MembershipSnapshot], bool]) -> MembershipSnapshot:
        assert self.watcher is not None
        try:
            return self.watcher.wait_for(predicate, timeout=WAIT_S)
        except TimeoutError as e:
            raise DemoFailed(f"{what}: {e}") from None

    def weights(self, expected: dict[str, float], state: State | None = None) -> MembershipSnapshot:
        def ok(s: MembershipSnapshot) -> bool:
            return all((r := s.get(i)) is not None and r.weight == w and (state is None or r.state is state)
                       for i, w in expected.items())
        return self.wait(f"weights {expected}", ok)

    # -- the story -------------------------------------------------------------------

    def run(self) -> None:
        wc = self.client()
        self.watcher = MembershipWatcher(wc, SERVICE, config=WatcherConfig(protection=PROTECTION))
        self.watcher.subscribe(self.view.on_snapshot)
        self.watcher.start()
        self.config_watcher = ConfigWatcher(wc, SERVICE)
        self.config_watcher.subscribe(self.view.on_config)
        self.config_watcher.start()
        self.register_and_ramp()
        self.change_weight()
        self.drain_and_leave()
        self.expire_one_session()
        self.set_split(wc)
        self.shut_down()

    def register_and_ramp(self) -> None:
        self.view.say("4 pods register: WARMING, weight 1 (slow start)")
        for pod in PODS:
            rec = InstanceRecord(service=SERVICE, id=pod.id, address="127.0.0.1", port=pod.port, weight=1.0,
                                 capacity=pod.capacity, state=State.WARMING, zone=pod.zone,
                                 models={"ctr": (12, 13)})
            self.pubs[pod.id] = Publisher(self.client(), rec)
            self.pubs[pod.id].register(timeout=None)
        self.weights({p.id: 1.0 for p in PODS}, State.WARMING)
        self.pause(2.5)
        for fraction in (0.25, 0.5, 1.0):
            state = State.SERVING if fraction == 1.0 else State.WARMING
            self.view.say(f"ramp: weight = {fraction:.0%} of capacity (8/16/32 cores, T4 GPU = 48)"
                          + (", now SERVING" if state is State.SERVING else ""))
            for pod in PODS:
                self.pubs[pod.id].update(weight=pod.full_weight * fraction, state=state)
            self.weights({p.id: p.full_weight * fraction for p in PODS}, state)
            self.pause(2.0)

    def change_weight(self) -> None:
        self.view.say("cpu16-b: latency above target, its agent lowers the weight 16 -> 10")
        self.pubs["cpu16-b"].update(weight=10.0)
        self.weights({"cpu16-b": 10.0})
        self.pause(2.5)

    def drain_and_leave(self) -> None:
        self.view.say("cpu8-a: SIGTERM, drains (enabled=false, weight 0) then deregisters")
        self.pubs["cpu8-a"].drain()
        self.wait("cpu8-a draining", lambda s: (r := s.get("cpu8-a")) is not None and not r.enabled)
        self.pause(2.5)
        self.pubs.pop("cpu8-a").close()
        snap = self.wait("cpu8-a gone", lambda s: s.get("cpu8-a") is None)
        if snap.held:
            raise DemoFailed(f"a drained pod was held back: {sorted(snap.held)}")
        self.pause(2.0)

    def expire_one_session(self) -> None:
        pod = "gpu-t4-d"
        pub = self.pubs[pod]
        assert self.watcher is not None
        missing: list[int] = []
        held: list[int] = []

        def check(s: MembershipSnapshot) -> None:
            if s.get(pod) is None:
                missing.append(s.version)
            if pod in s.held:
                held.append(s.version)

        unsubscribe = self.watcher.subscribe(check)
        self.view.say(f"{pod}: ZooKeeper expires its session (server side); its node is deleted")
        expire_session(pub._client, self.ensemble.hosts)  # noqa: SLF001 - the pod's own client
        if not pub.wait_synced(timeout=WAIT_S):
            raise DemoFailed(f"{pod} did not re-register after its session expired")
        self.wait(f"{pod} back and no longer held", lambda s: s.get(pod) is not None and not s.held)
        unsubscribe()
        if missing:
            raise DemoFailed(f"{pod} vanished from the membership in v{missing}: protection did not hold it")
        how = (f"held by mass-loss protection in v{held[0]}" if held
               else "re-registered before the watcher looked")
        self.expiry = f"session expiry survived ({how})"
        self.view.say(f"{pod}: re-registered under a new session by itself; clients never lost it ({how})")
        self.pause(3.0)

    def set_split(self, client: KazooClient) -> None:
        self.view.say("canary: ConfigStore.set_split(ctr, ctr, {12: 90, 13: 10})")
        ConfigStore(client).set_split(SERVICE, "ctr", {12: 90, 13: 10})
        assert self.config_watcher is not None
        try:
            snap = self.config_watcher.wait_for(lambda c: c.present and "ctr" in c.config.splits,
                                                timeout=WAIT_S)
        except TimeoutError as e:
            raise DemoFailed(str(e)) from None
        rng = random.Random(7)
        draws = [snap.config.pick_version("ctr", rng.random()) for _ in range(10_000)]
        share12 = draws.count(12) / len(draws)
        self.view.say(f"clients see the split within a watch round-trip: 10,000 picks -> "
                      f"v12 {share12:.1%}, v13 {1 - share12:.1%}")
        self.pause(3.0)

    def shut_down(self) -> None:
        self.view.say("scale down: every pod drains, then deregisters (graceful: never held back)")
        for pub in self.pubs.values():
            pub.drain()
        self.wait("all drained", lambda s: not s.routable())
        for pub in self.pubs.values():
            pub.close()
        self.wait("all gone", lambda s: len(s) == 0 and not s.held)
        self.pause(1.5)

    def close(self) -> None:
        for pub in self.pubs.values():
            pub.close()
        for w in (self.watcher, self.config_watcher):
            if w is not None:
                w.close()
        for c in self.clients:
            c.stop()
            c.close()


class DemoFailed(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="no pauses (for the smoke test)")
    parser.add_argument("--ensemble", action="store_true", help="three ZooKeeper servers instead of one")
    args = parser.parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    # Registry warnings go to the console; kazoo's own connection chatter (expected
    # here: a session is expired on purpose) only when it is an error.
    logging.basicConfig(level=logging.WARNING, handlers=[RichHandler(console=console, show_path=False)])
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    view = View(console)
    started = time.monotonic()
    size = 3 if args.ensemble else 1

    def pause(seconds: float) -> None:
        time.sleep(0.0 if args.fast else seconds)

    ensemble = ZooKeeperEnsemble(size)
    console.print(f"starting {size} ZooKeeper server(s) ...")
    ensemble.start()
    console.print(f"ZooKeeper: {ensemble.hosts} (data {ensemble.members[0].directory.parent})")
    demo = Demo(ensemble, view, pause)
    error = ""
    try:
        with Live(get_renderable=view.render, console=console, refresh_per_second=8):
            demo.run()
        if not console.is_terminal:
            console.line()  # Live ends its last frame without one in a file or a pipe
    except DemoFailed as e:
        error = str(e)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        demo.close()
        ensemble.stop()
    left = [m.myid for m in ensemble.members if m.running]
    if left:
        error = error or f"ZooKeeper members {left} still running"
    if error:
        console.print(f"demo FAILED: {error}")
        return 1
    console.print(f"demo ok: {len(PODS)} pods registered and ramped, 1 weight change, 1 drain, "
                  f"{demo.expiry}, split ctr 12=90/13=10, {view.versions} snapshot versions in "
                  f"{time.monotonic() - started:.1f}s; ZooKeeper stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
