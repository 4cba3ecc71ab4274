"""What a Ray cluster must offer a run before it starts: paths that every node reaches, and a CPU for Ray Data's reads.

Checked by the driver once it is connected and before it writes anything, so that what would otherwise fail on
another node after an epoch of training (and then again on every retry) is refused in seconds with what to change:
- a local `--out` on a cluster of several nodes: Train's rank 0 writes the checkpoints from whichever node holds it;
- a local `--data` whose training split streams through Ray Data: its read tasks run on any node (a split the driver
  reads, perf.driver_read_mb, is read on the driver's node only, so a local path is fine for it);
- Train workers that take every CPU the cluster has or can grow to while Ray Data streams: its read tasks then wait
  for a CPU forever (Ray Data says "The job may hang forever", and it does);
- GPU workers on a cluster without enough GPUs: Ray Train retries its worker group's start forever;
- storage that this shell reaches and Ray's processes do not: they take their settings (an S3 endpoint, keys, a
  region) from the environment their node was started in, not from the driver's, and Ray Train's controller died
  in its constructor with a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

from rfgan import storage
from rfgan.config import Config
from rfgan.errors import ConfigError, UsageError


def autoscaler_maximum() -> dict[str, float] | None:
    """The most of each resource the cluster's autoscaler may grow it to, where the autoscaler publishes it (Ray's
    autoscaler v2, the default of `ray up`); None otherwise (`ray start` by hand, a local Ray, an autoscaler that
    does not publish it). Read where Ray Train reads it for its own worker-group check (ray.train.v2's WorkerGroup),
    from Ray's private state API: there is no public one."""
    from ray._private.state import state

    return state.get_max_resources_from_cluster_config()


def grown(now: Mapping[str, float], most: Mapping[str, float] | None) -> dict[str, float] | None:
    """The larger of a cluster's resources now and the autoscaler's maximum, per resource; None without a maximum."""
    if not most:
        return None
    return {k: max(now.get(k, 0), most.get(k, 0)) for k in {*now, *most}}


def cluster_shape() -> tuple[int, dict[str, float] | None]:
    """(nodes alive now, counting an autoscaling cluster as several; the most of each resource the cluster has or may
    grow to, None when that cannot be known: no published maximum and no CPU yet, as a cluster that starts empty and
    is grown by an autoscaler that does not publish its maximum)."""
    import ray

    now = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    most = grown(now, autoscaler_maximum())
    if most is not None:
        return max(nodes, 2), most
    return nodes, dict(now) if now.get("CPU", 0) > 0 else None


def check_paths(paths: Mapping[str, str], nodes: int) -> None:
    """Refuse a local path among `paths` ({flag: path}, those the cluster's other nodes must reach) when the cluster
    has (or may grow to) more than one node."""
    if nodes <= 1:
        return
    for flag, path in paths.items():
        if not storage.is_remote(path):
            raise UsageError(
                f"{flag} {path} is a path on this machine, but the cluster has or may add other nodes, which cannot "
                "see it; give a URI that every node reaches (s3://bucket/..., gs://...), or file:///... for a "
                "filesystem that every node mounts at the same place."
            )


def check_read_cpus(cfg: Config, capacity: Mapping[str, float] | None, streams: bool, split_mb: float) -> None:
    """Refuse Train workers that leave no CPU for Ray Data's read tasks while the training split `streams`, on a
    cluster of `capacity` (None: not known, nothing to check against)."""
    if not streams or capacity is None:
        return
    r = cfg.run
    need, cpus = r.workers * r.cpus_per_worker, capacity.get("CPU", 0.0)
    if cpus - need < 1:
        raise ConfigError(
            f"run.workers={r.workers} x run.cpus_per_worker={r.cpus_per_worker:g} take {need:g} of the cluster's "
            f"{cpus:g} CPUs, and Ray Data's reads of the training split need one more (the run would wait for it "
            "forever); lower --cpus-per-worker or --workers, add a node, or let the driver read the split: "
            f"--set perf.driver_read_mb={int(split_mb) + 1} (it is {split_mb:.0f} MB as read)."
        )


def check_gpus(cfg: Config, capacity: Mapping[str, float] | None) -> None:
    """Refuse GPU workers on a cluster that has, and can grow to, fewer GPUs than they take (None: not known).
    Otherwise Ray Train waits for them and retries "worker group startup timed out" forever (a best_config.json of
    a GPU sweep used on a CPU machine carries run.use_gpu=true)."""
    r = cfg.run
    if not r.use_gpu or capacity is None:
        return
    need, gpus = r.workers * r.gpus_per_worker, capacity.get("GPU", 0.0)
    if gpus < need:
        raise ConfigError(
            f"run.use_gpu with run.workers={r.workers} x run.gpus_per_worker={r.gpus_per_worker:g} takes {need:g} "
            f"GPU(s), but the Ray cluster has {gpus:g} and cannot grow to more; train on CPUs with "
            "--set run.use_gpu=false, use fewer --workers, or give --address of a cluster with GPUs."
        )


def on_every_node(func, *args, timeout_s: float) -> tuple[dict, list[str]]:
    """Run the Ray remote function `func(*args)` (0 CPUs, no retries) pinned to every node Ray lists as alive, in
    parallel. ({finished ref: node}, ids of the nodes whose call had not finished at `timeout_s`, cancelled)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    calls = {
        func.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args): n
        for n in ray.nodes()
        if n["Alive"]
    }
    if not calls:
        return {}, []
    ready, unfinished = ray.wait(list(calls), num_returns=len(calls), timeout=timeout_s)
    for ref in unfinished:
        ray.cancel(ref)
    return {ref: calls[ref] for ref in ready}, [calls[ref]["NodeID"] for ref in unfinished]


def check_reached(paths: Mapping[str, str], timeout_s: float = 120.0) -> None:
    """Refuse a URI among `paths` ({flag: path}) that Ray's processes on a node alive now cannot list (one probe
    task per node, in parallel). A node that does not answer within `timeout_s`, or goes away meanwhile, is not
    judged: Train does not place ranks on a node that is gone."""
    remote = {flag: path for flag, path in paths.items() if storage.is_remote(path)}
    if not remote:
        return
    import ray

    @ray.remote(num_cpus=0, max_retries=0)
    def reach(paths: dict[str, str]) -> dict[str, str]:
        failed = {}
        for flag, path in paths.items():
            try:
                storage.file_sizes(path)
            except Exception as e:  # whatever the filesystem raises: it is the reason to show
                failed[flag] = f"{type(e).__name__}: {' '.join(str(e).split())}"
        return failed

    answered, _ = on_every_node(reach, remote, timeout_s=timeout_s)
    for ref, node in answered.items():
        try:
            failed = ray.get(ref)
        except ray.exceptions.RayError:
            continue
        for flag, why in failed.items():
            raise UsageError(
                f"{flag} {remote[flag]}: Ray's processes on the node at {node['NodeManagerAddress']} cannot "
                f"reach it ({why}); they take their storage settings (endpoint, "
                "keys, region: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) from the environment their node was started "
                "in, not from this shell's: start the nodes (`ray start`) with them set, or give them to the job "
                "(`ray job submit --runtime-env`)."
            )


def check_cluster(cfg: Config, data: str, outs: Mapping[str, str], streams: bool, split_mb: float) -> None:
    """The checks on the connected cluster: `outs` ({flag: path}) are written from any node, `data` is read from
    any node only when the training split `streams` through Ray Data."""
    nodes, capacity = cluster_shape()
    check_paths({**({"--data": data} if streams else {}), **outs}, nodes)
    check_read_cpus(cfg, capacity, streams, split_mb)
    check_gpus(cfg, capacity)
    check_reached({"--data": data, **outs})
