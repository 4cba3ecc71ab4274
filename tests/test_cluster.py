"""The cluster files are what Ray and KubeRay expect, and name an entrypoint that exists."""

import functools
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# KubeRay's own CRD file (ray.io_rayjobs.yaml), when at hand: see tests/cluster/rayjob.schema.yaml.
KUBERAY_CRD = os.environ.get("RFGAN_KUBERAY_RAYJOB_CRD")


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


def strict(schema):
    """A Kubernetes structural schema that rejects unknown fields, as `kubectl apply` does by default
    (--validate=strict; the API server alone would drop them). int-or-string is already an anyOf there; the other
    x-kubernetes-* extensions (list keys, CEL rules) are not checked here."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(s) for name, s in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    if "$defs" in out:
        out["$defs"] = {name: strict(s) for name, s in out["$defs"].items()}
    return out


def kuberay_crd_schema():
    crd = yaml.load(Path(KUBERAY_CRD).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1.4 MB
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


@functools.cache
def rayjob_schemas():
    schemas = {"subset": load("tests/cluster/rayjob.schema.yaml")}
    if KUBERAY_CRD:
        schemas["kuberay"] = kuberay_crd_schema()
    return schemas


def schema_errors(job, schema):
    validator = jsonschema.Draft202012Validator(strict(schema))  # the CRD's compiles in milliseconds
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(job)]


def test_kuberay_rayjob_follows_kuberays_schema():
    job = load("cluster/rayjob.yaml")
    for name, schema in rayjob_schemas().items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema_errors(job, schema) == [], name


def set_in(job, path, value):
    *parents, last = path
    node = job
    for key in parents:
        node = node[key]
    node[last] = value


CLUSTER = ("spec", "rayClusterSpec")
HEAD_CONTAINER = (*CLUSTER, "headGroupSpec", "template", "spec", "containers", 0)


@pytest.mark.parametrize(
    "path, value, error",
    [
        ((*CLUSTER, "workerGroupSpecs", 0, "replicas"), "two", "'two' is not of type 'integer'"),
        (("spec", "shutdownAfterJobFinishes"), "yes", "'yes' is not of type 'boolean'"),
        ((*CLUSTER, "authOptions", "mode"), "on", "'on' is not one of ['disabled', 'token']"),
        ((*CLUSTER, "authOption"), {"mode": "token"}, "'authOption' was unexpected"),  # a misspelt field
        ((*HEAD_CONTAINER, "resources", "limits", "memory"), "16GB", "'16GB' does not match"),  # not a quantity
        ((*HEAD_CONTAINER, "name"), None, "None is not of type 'string'"),
    ],
)
def test_kuberay_schema_rejects_a_broken_rayjob(path, value, error):
    job = load("cluster/rayjob.yaml")
    set_in(job, path, value)
    for name, schema in rayjob_schemas().items():
        errors = schema_errors(job, schema)
        assert len(errors) == 1 and error in errors[0], (name, errors)


def test_kuberay_schema_rejects_a_rayjob_without_what_it_requires():
    job = load("cluster/rayjob.yaml")
    del job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"]
    del job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    for name, schema in rayjob_schemas().items():
        assert sorted(schema_errors(job, schema)) == [
            "spec.rayClusterSpec.headGroupSpec.template.spec: 'containers' is a required property",
            "spec.rayClusterSpec.workerGroupSpecs.0: 'minReplicas' is a required property",
        ], name


def resolve(schema, root):
    ref = schema.get("$ref")
    return resolve(root["$defs"][ref.removeprefix("#/$defs/")], root) if ref else schema


def agrees(subset, crd, root, path="openAPIV3Schema"):
    """Whether each field of the subset is in KubeRay's CRD with the same type, enum, pattern and required list."""
    subset = resolve(subset, root)
    for key in ("type", "enum", "pattern", "format", "required"):
        assert subset.get(key) == crd.get(key), (path, key)
    if "anyOf" in subset:
        assert subset["anyOf"] == crd["anyOf"] and crd.get("x-kubernetes-int-or-string"), path
    for name, field in subset.get("properties", {}).items():
        assert name in crd.get("properties", {}), f"{path}.{name} is not in KubeRay's CRD"
        agrees(field, crd["properties"][name], root, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(subset.get(key), dict):
            agrees(subset[key], crd[key], root, f"{path}.{key}")


@pytest.mark.skipif(not KUBERAY_CRD, reason="set RFGAN_KUBERAY_RAYJOB_CRD to KubeRay's ray.io_rayjobs.yaml")
def test_subset_schema_is_the_one_in_kuberays_crd():
    schemas = rayjob_schemas()
    agrees(schemas["subset"], schemas["kuberay"], schemas["subset"])


def entrypoint():
    import importlib.util

    spec = importlib.util.spec_from_file_location("entrypoint", ROOT / "cluster" / "entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def submitted_job_env(monkeypatch, submission_id: str, env_vars: dict[str, str]) -> None:
    """The environment Ray's job supervisor gives a submitted job's driver, made as JobSupervisor.run and
    _get_driver_env_vars make it (ray/dashboard/modules/job/job_supervisor.py): the supervisor's own environment (a
    Ray worker's, with RAY_JOB_ID), less Ray's internal flags, the runtime env's env_vars (set in the supervisor
    actor), and the job config as JSON, whose metadata holds the submission id."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray._private.utils import remove_ray_internal_flags_from_env
    from ray.dashboard.modules.job.common import JOB_ID_METADATA_KEY, JOB_NAME_METADATA_KEY

    runtime_env = {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip", "env_vars": env_vars}
    env = {**os.environ, "RAY_JOB_ID": "02000000", **env_vars}
    remove_ray_internal_flags_from_env(env)
    metadata = {JOB_ID_METADATA_KEY: submission_id, JOB_NAME_METADATA_KEY: submission_id}
    env[RAY_JOB_CONFIG_JSON_ENV_VAR] = json.dumps({"runtime_env": runtime_env, "metadata": metadata})
    for key in set(os.environ) | set(env):
        if key in env:
            monkeypatch.setenv(key, env[key])
        else:
            monkeypatch.delenv(key)


def test_each_submitted_job_gets_a_run_of_its_own_in_shared_storage(monkeypatch):
    job = entrypoint()
    storage = {"RFGAN_STORAGE": "s3://bucket/runs/"}
    for submission_id in ("raysubmit_abc", "raysubmit_xyz"):
        submitted_job_env(monkeypatch, submission_id, storage)
        assert job.job_args(["--epochs", "2"]) == [
            "train",
            "--epochs",
            "2",
            "--out",
            f"s3://bucket/runs/{submission_id}",
        ]
        assert job.submission_id() == submission_id
    # --out in any form argparse takes names the run; so does RFGAN_STORAGE's absence.
    assert job.job_args(["--out", "/mnt/x"]) == ["train", "--out", "/mnt/x"]
    assert job.job_args(["--out=/mnt/x", "--resume"]) == ["train", "--out=/mnt/x", "--resume"]
    assert job.job_args(["--ou", "/mnt/x"]) == ["train", "--ou", "/mnt/x"]
    monkeypatch.delenv("RFGAN_STORAGE")
    assert job.job_args([]) == ["train"]


def test_outside_a_submitted_job_the_entrypoint_names_the_run_by_its_time(monkeypatch):
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    job = entrypoint()
    monkeypatch.delenv(RAY_JOB_CONFIG_JSON_ENV_VAR, raising=False)
    monkeypatch.setenv("RFGAN_STORAGE", "s3://bucket/runs?endpoint_override=127.0.0.1:9000")
    *_, flag, out = job.job_args([])
    assert flag == "--out" and re.fullmatch(r"s3://bucket/runs/job-\d{8}-\d{6}\?endpoint_override=127.0.0.1:9000", out)
    assert job.submission_id() is None
    assert os.access(ROOT / "cluster" / "entrypoint.py", os.R_OK)


def test_deployments_pin_one_ray_one_set_of_libraries_and_one_commit():
    """A job retried on a new cluster, or a node added later, resumes checkpoints with the code and libraries that
    wrote them: no branch, no unpinned library, and the Ray rfgan is tested with everywhere."""
    ours = Version(ray.__version__).base_version
    cfg, job = load("ray_cluster.yaml"), load("cluster/rayjob.yaml")
    images = [cfg["docker"]["image"]] + [
        c["image"]
        for group in [
            job["spec"]["rayClusterSpec"]["headGroupSpec"],
            *job["spec"]["rayClusterSpec"]["workerGroupSpecs"],
        ]
        for c in group["template"]["spec"]["containers"]
    ]
    assert {re.match(r"rayproject/ray:([\d.]+)", i).group(1) for i in images} == {ours}
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ours
    job_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    pins = [Requirement(r) for r in load("cluster/runtime_env.yaml")["pip"]]
    assert pins and all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in pins)
    assert sorted(map(str, pins)) == sorted(map(str, map(Requirement, job_env["pip"])))
    assert "refs/heads" not in job_env["working_dir"] and "YOUR-COMMIT" in job_env["working_dir"]
    installs = [c for c in cfg["setup_commands"] if "pip install" in c and "rfgan" in c]
    assert installs and all("@main" not in c and "YOUR-COMMIT" in c for c in installs)
    # Every node reaches the bucket through its service account, the head and the workers alike.
    groups = [job["spec"]["rayClusterSpec"]["headGroupSpec"], *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    assert all(g["template"]["spec"].get("serviceAccountName") for g in groups)
