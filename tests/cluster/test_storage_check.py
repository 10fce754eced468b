"""A node-local --storage path is refused up front on a cluster that spans several hosts
(orchestrator.store.store.check_storage_for_cluster), with fake `ray.nodes()` lists and mount tables."""

from __future__ import annotations

import pytest

from orchestrator.store.store import (
    SHARED_STORAGE_ENV,
    Store,
    StoreError,
    check_storage_for_cluster,
    mount_fs_type,
)

MOUNTS = """\
overlay / overlay rw,relatime 0 0
/dev/sda1 /tmp ext4 rw,relatime 0 0
nfs-server:/export /mnt/shared nfs4 rw,vers=4.1 0 0
"""


def node(host: str, alive: bool = True, node_id: str = "") -> dict:
    return {"NodeID": node_id or f"id-{host}", "NodeManagerAddress": host, "Alive": alive}


TWO_HOSTS = [node("10.0.0.1"), node("10.0.0.2")]


class FakeStore:
    """What the check reads of a Store, for paths that need not exist here."""

    def __init__(self, base: str, is_local: bool = True):
        self.base, self.is_local = base, is_local


def test_mount_fs_type_takes_the_longest_mount_point():
    assert mount_fs_type("/mnt/shared/hsjp/store", MOUNTS) == "nfs4"
    assert mount_fs_type("/mnt/sharedx", MOUNTS) == "overlay"  # a prefix of the name is not a mount
    assert mount_fs_type("/tmp/x", MOUNTS) == "ext4"


def test_local_path_on_several_hosts_is_refused_naming_the_path(monkeypatch):
    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)
    with pytest.raises(StoreError, match=r"/tmp/hsjp-store .*2 hosts \(10\.0\.0\.1, 10\.0\.0\.2\)"):
        check_storage_for_cluster(FakeStore("/tmp/hsjp-store"), TWO_HOSTS, mounts_text=MOUNTS)


@pytest.mark.parametrize(
    "nodes",
    [
        [node("10.0.0.1")],  # one node
        [node("10.0.0.1", node_id="a"), node("10.0.0.1", node_id="b")],  # several nodes, one host
        [node("10.0.0.1"), node("10.0.0.2", alive=False)],  # the other host is gone
    ],
    ids=["one-node", "one-host", "dead-node"],
)
def test_local_path_on_one_host_passes(nodes, monkeypatch):
    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)
    check_storage_for_cluster(FakeStore("/tmp/hsjp-store"), nodes, mounts_text=MOUNTS)


def test_shared_filesystem_uri_or_declared_path_passes(monkeypatch):
    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)
    check_storage_for_cluster(FakeStore("/mnt/shared/hsjp"), TWO_HOSTS, mounts_text=MOUNTS)  # nfs4
    check_storage_for_cluster(FakeStore("hsjp", is_local=False), TWO_HOSTS, mounts_text=MOUNTS)  # s3://
    check_storage_for_cluster(FakeStore("/tmp/x"), TWO_HOSTS, shared=True, mounts_text=MOUNTS)
    monkeypatch.setenv(SHARED_STORAGE_ENV, "1")
    check_storage_for_cluster(FakeStore("/tmp/x"), TWO_HOSTS, mounts_text=MOUNTS)


def test_a_real_local_store_is_refused_on_two_hosts(tmp_path, monkeypatch):
    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)
    store = Store(tmp_path / "store")
    with pytest.raises(StoreError, match=str(tmp_path / "store")):
        check_storage_for_cluster(store, TWO_HOSTS, mounts_text=f"/dev/sda1 / ext4 rw 0 0\n{MOUNTS}")
