"""The driver's checks of a cluster before a run starts (rfgan.run.cluster_checks), on the cluster's shape as Ray
reports it; tests/cluster runs them against a real multi-node Ray."""

import pytest

from rfgan.config import preset
from rfgan.errors import ConfigError, UsageError
from rfgan.run.cluster_checks import check_paths, check_read_cpus


def test_one_node_takes_any_path():
    check_paths({"--data": "data/x", "--out": "runs/x"}, nodes=1)


@pytest.mark.parametrize("flag,path", [("--out", "runs/x"), ("--out", "/abs/runs/x"), ("--data", "data/x")])
def test_several_nodes_refuse_a_local_path_naming_it_and_the_way_out(flag, path):
    with pytest.raises(UsageError) as e:
        check_paths({"--data": "s3://b/data", "--out": "s3://b/runs/x", flag: path}, nodes=3)
    message = str(e.value)
    assert f"{flag} {path} is a path on this machine" in message and "s3://" in message and "file:///" in message
    assert "\n" not in message


def test_several_nodes_take_uris_and_shared_mounts():
    check_paths({"--data": "gs://b/data", "--out": "file:///mnt/shared/runs/x"}, nodes=3)


def test_workers_leaving_no_cpu_for_streamed_reads_are_refused_with_what_to_change():
    cfg = preset("tiny").with_overrides({"run.workers": 2, "run.cpus_per_worker": 2.0})
    with pytest.raises(ConfigError) as e:
        check_read_cpus(cfg, {"CPU": 4.0}, streams=True, split_mb=700.0)
    message = str(e.value)
    assert "take 4 of the cluster's 4 CPUs" in message and "perf.driver_read_mb=701" in message
    check_read_cpus(cfg, {"CPU": 5.0}, streams=True, split_mb=700.0)  # one CPU left for the reads
    check_read_cpus(cfg, {"CPU": 4.0}, streams=False, split_mb=1.0)  # the driver reads it: no read tasks


def test_gpu_workers_on_a_cluster_without_enough_gpus_are_refused_with_the_way_out():
    from rfgan.run.cluster_checks import check_gpus

    gpu = preset("tiny").with_overrides({"run.use_gpu": True, "run.workers": 2})
    with pytest.raises(ConfigError) as e:
        check_gpus(gpu, {"CPU": 16.0})  # a best_config.json of a GPU sweep on a CPU machine
    message = str(e.value)
    assert "takes 2 GPU(s), but the Ray cluster has 0" in message and "--set run.use_gpu=false" in message
    with pytest.raises(ConfigError, match="has 1 and cannot grow"):
        check_gpus(gpu, {"CPU": 16.0, "GPU": 1.0})
    check_gpus(gpu, {"CPU": 16.0, "GPU": 2.0})
    check_gpus(gpu, None)  # a cluster that may grow by an unknown amount: Ray waits for the autoscaler
    check_gpus(preset("tiny"), {"CPU": 16.0})  # CPU workers


def test_storage_that_rays_processes_cannot_reach_is_refused_naming_the_node_and_the_way_out(ray_session, monkeypatch):
    """The session's Ray started before this S3 endpoint was set in this process's environment, as nodes started
    before (or without) the shell's AWS settings: its processes look for the bucket on AWS itself."""
    import boto3
    from cluster_fixtures import free_port
    from moto.server import ThreadedMotoServer

    from rfgan import storage
    from rfgan.run.cluster_checks import check_reached

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for key, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "rfgan-test",
            "AWS_SECRET_ACCESS_KEY": "rfgan-test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="reached")
        assert storage.file_sizes("s3://reached/runs") == {}  # this process reaches it
        with pytest.raises(UsageError) as e:
            check_reached({"--data": "data/local", "--out": "s3://reached/runs/x"})
        message = str(e.value)
        assert message.startswith("--out s3://reached/runs/x: Ray's processes on the node at ") and "\n" not in message
        assert "cannot reach it (" in message and "AWS_ENDPOINT_URL" in message and "ray start" in message
    finally:
        server.stop()
