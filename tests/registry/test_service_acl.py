"""Per-service ZooKeeper credentials on a real ensemble (issue 10, part 5): with a shared writer
credential any holder deletes any pod's node; once each service is provisioned with its own
writer, one service's credential can neither create, change nor delete another's nodes."""

from __future__ import annotations

import pytest
from kazoo.exceptions import NoAuthError

from registry.publisher import Publisher, PublisherConfig
from registry.records import InstanceRecord, State
from registry.watcher import MembershipWatcher
from registry.zk import RegistryPaths, digest_id, provision_service

ADMIN, CTR, RANK = "admin:adm-secret", "ctr-agent:ctr-secret", "rank-agent:rank-secret"


def rec(service: str, i: int = 1) -> InstanceRecord:
    return InstanceRecord(service=service, id=f"pod-{i}", address="127.0.0.1", port=9000 + i, weight=1.0,
                          state=State.SERVING, models={"m": [1]})


def test_a_shared_credential_lets_any_holder_delete_any_pods_node(make_client):
    """What the threat model warns about: the default ACL protects against anonymous writers only."""
    shared = "agents:one-secret"
    pub = Publisher(make_client(auth=shared), rec("ctr"))
    try:
        assert pub.register()
        other_service_agent = make_client(auth=shared)
        other_service_agent.delete(pub.path)
        assert other_service_agent.exists(pub.path) is None
        with pytest.raises(NoAuthError):
            make_client().create(RegistryPaths().instance("ctr", "intruder"), b"{}")  # anonymous: refused
    finally:
        pub.close(timeout=1)


def test_per_service_credentials_cannot_touch_another_services_nodes(make_client):
    admin = make_client(auth=ADMIN)
    paths = RegistryPaths()
    for service, cred in (("ctr", CTR), ("rank", RANK)):
        provision_service(admin, service, writer_id=digest_id(cred), admin_id=digest_id(ADMIN))
    provision_service(admin, "ctr", writer_id=digest_id(CTR), admin_id=digest_id(ADMIN))  # idempotent

    ctr_client, rank_client = make_client(auth=CTR), make_client(auth=RANK)
    ctr_pub, rank_pub = Publisher(ctr_client, rec("ctr")), Publisher(rank_client, rec("rank"))
    reader = MembershipWatcher(make_client(), "ctr").start()  # readers need no credential
    try:
        assert ctr_pub.register() and rank_pub.register()
        reader.wait_for(lambda s: "pod-1" in s.instances)

        for attempt in (lambda: rank_client.delete(ctr_pub.path),
                        lambda: rank_client.set(ctr_pub.path, b"{}"),
                        lambda: rank_client.create(paths.instance("ctr", "pod-9"), b"{}", ephemeral=True),
                        lambda: rank_client.delete(paths.service("ctr"), recursive=True),
                        lambda: ctr_client.delete(rank_pub.path),
                        lambda: ctr_client.create(paths.service("new-service"), b"")):
            with pytest.raises(NoAuthError):
                attempt()
        assert ctr_client.exists(ctr_pub.path) and ctr_client.exists(rank_pub.path)

        ctr_pub.update(weight=3.0)  # its own writer still writes, and a sibling pod registers
        sibling = Publisher(make_client(auth=CTR), rec("ctr", 2))
        assert sibling.register()
        reader.wait_for(lambda s: s.get("pod-1") is not None and s.get("pod-1").weight == 3.0
                        and "pod-2" in s.instances)
        sibling.close()
    finally:
        reader.close()
        ctr_pub.close(timeout=2)
        rank_pub.close(timeout=2)


def test_a_writer_without_a_provisioned_service_says_what_to_do(make_client):
    admin = make_client(auth=ADMIN)
    provision_service(admin, "ctr", writer_id=digest_id(CTR), admin_id=digest_id(ADMIN))
    pub = Publisher(make_client(auth=RANK), rec("rank"),
                    config=PublisherConfig(retry_delay_s=0.05, max_retry_delay_s=0.1))
    try:
        assert not pub.register(timeout=1.0)
        assert pub.stats.failures >= 1 and "NoAuthError" in pub.stats.last_error
        assert "provision_service" in pub.stats.last_error
    finally:
        pub.close(deregister=False)


def test_digest_id_hides_the_password():
    assert digest_id("ctr-agent:ctr-secret").startswith("ctr-agent:")
    assert "ctr-secret" not in digest_id("ctr-agent:ctr-secret")
    with pytest.raises(ValueError, match="credential: expected user:password"):
        digest_id("no-colon")
