"""Fixtures of the cluster lane (tests/cluster; `pytest -m cluster`, in a process of its own), loaded by conftest.py:
several Ray nodes on this machine and an S3 endpoint on 127.0.0.1, from real parts.

- Nodes: ray.cluster_utils.Cluster, a head with no CPUs (as in ray_cluster.yaml and the KubeRay manifest) and worker
  nodes of 2 logical CPUs each, so placement, node ids and the loss of a node are Ray's own.
- Object storage: moto's S3 server, reached only through AWS_ENDPOINT_URL and dummy keys (the variables pyarrow and
  boto read), so no code path knows it is a test endpoint. Set before the nodes start: every Ray process inherits them.
"""

import logging
import os
import socket

import pytest

BUCKET = "rfgan"
WORKER_CPUS = 2
# Ray declares a node dead after this many failed health checks, one a second (its defaults: 5, every 3 s, each
# waiting up to 10 s). The lane loses a node in five tests and waits each time until Ray knows it is gone, as rfgan's
# restart does; with the defaults that wait was most of each test. Read by Ray's processes from their environment.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "3000",
    "RAY_health_check_failure_threshold": "3",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    """The bucket's URI, s3://rfgan, on a local S3-protocol server."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "rfgan-test",
        "AWS_SECRET_ACCESS_KEY": "rfgan-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups for credentials or region
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """A 0-CPU head and two worker nodes, this process its driver. Tests that remove a node add one back."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.fail("the cluster lane needs a process of its own: run it as `pytest -m cluster`")
    # With its dashboard, as clusters have: Ray Train's PlacementGroupCleaner asks the state API (which the dashboard
    # serves) whether a controller is gone, and without it the worker groups' CPUs of controllers that ended
    # ungracefully (a run that failed on a lost node) stayed reserved, and the lane's next runs waited for ever.
    head = {
        "num_cpus": 0,
        "include_dashboard": True,
        "dashboard_port": free_port(),
        "dashboard_agent_listen_port": free_port(),
    }
    os.environ.update(FAST_HEALTH_CHECKS)
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(2):
        cluster.add_node(num_cpus=WORKER_CPUS)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def worker_nodes(cluster) -> list:
    return [n for n in cluster.list_all_nodes() if n is not cluster.head_node]
