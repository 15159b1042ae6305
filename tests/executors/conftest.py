"""A real two-node Ray cluster on loopback, started once for the session: 1 CPU per node, no dashboard,
a small object store. The test process is its driver; every test ends the actors it started."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Ray otherwise names a node by the address it would use to reach the internet, and rewrites a loopback
# address given to `ray.init` into it; this keeps every node, the driver and the subprocesses on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80 * 2**20}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    cluster.add_node(**NODE)
    ray.init(address=cluster.address, namespace="coe", log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
