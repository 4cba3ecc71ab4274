"""The cluster files are what Ray and KubeRay expect, and name an entrypoint that exists."""

import json
import os
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parent.parent


def load(path):
    return yaml.safe_load((ROOT / path).read_text())


def test_ray_cluster_yaml_follows_rays_own_schema():
    cfg = load("ray_cluster.yaml")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and types["head"]["resources"] == {"CPU": 0}
    gpu = types["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p")) and gpu["min_workers"] < gpu["max_workers"]
    assert any("rfgan" in c and "pip install" in c for c in cfg["setup_commands"])
    # The dashboard is not open to the internet: bound to localhost, and only SSH in the security group.
    assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"])
    ports = {p["FromPort"] for p in cfg["provider"]["security_group"]["IpPermissions"]}
    assert ports == {22}


def test_runtime_env_is_valid_and_uploads_the_repository():
    env = load("cluster/runtime_env.yaml")
    ray.runtime_env.RuntimeEnv(**env)  # Ray's own validation of the fields
    assert env["working_dir"] == "." and ".venv/" in env["excludes"]
    assert env["env_vars"]["RFGAN_STORAGE"].startswith("s3://")


def test_kuberay_rayjob_names_an_existing_entrypoint():
    job = load("cluster/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    script = spec["entrypoint"].split()[1]
    assert (ROOT / script).is_file()
    assert "--resume" in spec["entrypoint"]  # a restarted job continues its fixed-name run
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    yaml.safe_load(spec["runtimeEnvYAML"])


def test_entrypoint_sends_runs_to_shared_storage(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("entrypoint", ROOT / "cluster" / "entrypoint.py")
    entrypoint = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entrypoint)
    monkeypatch.setenv("RFGAN_STORAGE", "s3://bucket/runs/")
    monkeypatch.setenv("RAY_JOB_SUBMISSION_ID", "raysubmit_abc")
    assert entrypoint.job_args(["--epochs", "2"]) == ["train", "--epochs", "2", "--out", "s3://bucket/runs/raysubmit_abc"]
    assert entrypoint.job_args(["--out", "/mnt/x"]) == ["train", "--out", "/mnt/x"]
    monkeypatch.delenv("RFGAN_STORAGE")
    assert entrypoint.job_args([]) == ["train"]
    assert os.access(ROOT / "cluster" / "entrypoint.py", os.R_OK)
