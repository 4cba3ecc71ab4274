"""Where the CPU goes while two Ray Train workers are busy: run a command, sample every process's CPU time from /proc
each 0.5 s, and over the intervals in which at least two `RayTrainWorker` processes were busy, print the CPU seconds
of each kind of process (Linux only).

    python benchmarks/cpu_by_process.py rfgan bench --preset tiny --pipeline --data data/synthetic --no-memory

The command's own output goes to /tmp/cpu_by_process.out.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")
KINDS = ("RayTrainWorker", "ray::IDLE", "DatasetManager", "SplitCoordinator", "ReadFiles", "raylet", "gcs_server",
         "TrainController", "DashboardAgent", "dashboard", "log_monitor")  # fmt: skip


def snapshot() -> dict[int, tuple[float, str]]:
    """{pid: (CPU seconds so far, command line)} of every process."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(pid)] = ((int(fields[11]) + int(fields[12])) / HZ, cmd)  # utime + stime
    return out


def kind(cmd: str) -> str:
    return next((k for k in KINDS if k in cmd), cmd.split(" ")[0][:40] or "?")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    with open("/tmp/cpu_by_process.out", "w") as log:
        proc = subprocess.Popen(sys.argv[1:], stdout=log, stderr=subprocess.STDOUT)
        prev, t_prev = snapshot(), time.monotonic()
        totals: collections.Counter[str] = collections.Counter()
        wall = 0.0
        while proc.poll() is None:
            time.sleep(0.5)
            cur, t = snapshot(), time.monotonic()
            used = {pid: cpu - prev.get(pid, (cpu, ""))[0] for pid, (cpu, _) in cur.items()}
            busy = [p for p, (_, cmd) in cur.items() if "RayTrainWorker" in cmd and used[p] > 0.1 * (t - t_prev)]
            if len(busy) >= 2:
                wall += t - t_prev
                for pid, dt in used.items():
                    if dt > 0:
                        totals[kind(cur[pid][1])] += dt
            prev, t_prev = cur, t
    total = sum(totals.values())
    if not wall:
        sys.exit("no interval had two busy RayTrainWorkers")
    print(f"{wall:.1f} s with two busy workers; {total:.1f} CPU-s used = {total / wall:.2f} cores")
    for name, cpu in totals.most_common(15):
        print(f"  {name:30s} {cpu:7.1f} CPU-s  {100 * cpu / total:5.1f} %")


if __name__ == "__main__":
    main()
