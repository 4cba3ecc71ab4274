"""The cluster files are what Ray and KubeRay expect, and name an entrypoint that exists."""

import json
import os
import re
from pathlib import Path

import jsonschema
import ray
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

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
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    args = spec["entrypoint"].split()
    assert (ROOT / args[1]).is_file()
    assert "--resume" in args  # a restarted job continues its fixed-name run
    ray.runtime_env.RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))  # Ray's own validation of the fields
    # What KubeRay's operator checks beyond the CRD (ray-operator/controllers/ray/utils/validation.go, v1.7.0).
    assert spec.get("submissionMode", "K8sJobMode") in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    assert spec.get("ttlSecondsAfterFinished", 0) == 0 or spec["shutdownAfterJobFinishes"]
    cluster = spec["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["replicas"] == int(args[args.index("--workers") + 1])  # a GPU pod per Ray Train worker; no autoscaler
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kuberay_rayjob_is_reachable_by_the_operator_and_private_to_people():
    cluster = load("cluster/rayjob.yaml")["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    # The operator submits and polls the job through the head Service, so the dashboard listens beyond localhost
    # (KubeRay's default is 0.0.0.0)...
    assert head["rayStartParams"].get("dashboard-host", "0.0.0.0") == "0.0.0.0"
    # ...and stays private: a ClusterIP Service (no LoadBalancer/NodePort, no ingress) and Ray's token auth, whose
    # token KubeRay generates into a Secret (K8s-delegated auth is unsupported for RayJobs in KubeRay 1.7).
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert cluster["authOptions"]["mode"] == "token" and not cluster["authOptions"].get("enableK8sTokenAuth")
    # Token auth needs Ray >= 2.52.0 (KubeRay's check); the images run that Ray, one rfgan accepts.
    ray_version = Version(cluster["rayVersion"])
    assert ray_version >= Version("2.52.0")
    (ray_requirement,) = re.findall(r'"(ray\[.*?)"', (ROOT / "pyproject.toml").read_text())
    assert ray_version in Requirement(ray_requirement).specifier
    pods = [head["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]
    images = {container["image"] for pod in pods for container in pod["spec"]["containers"]}
    assert all(image.startswith(f"rayproject/ray:{cluster['rayVersion']}-") for image in images)


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
