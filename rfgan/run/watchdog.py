"""A local Ray's processes end with the driver that started them, even when the driver is killed (SIGKILL, the OOM
killer, a closed terminal).

Ray ties its GCS and raylet to the driver (the kernel's parent-death signal) and its workers to the raylet, but its
two agents, once they see their raylet gone, report it to the GCS that went with it and wait 60 s (a timeout fixed in
Ray) before they exit: every killed `rfgan train` left two processes behind for a minute. A watchdog process, in a
session of its own, notes the driver's descendants every second and kills those still alive once the driver's end of
a pipe closes, which happens however the driver ends.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Run as `python -c WATCH DRIVER_PID`, reading the driver's pipe on stdin.
WATCH = """
import os, sys, threading
import psutil

driver, me = psutil.Process(int(sys.argv[1])), os.getpid()
gone = threading.Event()
threading.Thread(target=lambda: (sys.stdin.buffer.read(), gone.set()), daemon=True).start()
seen = {}
while not gone.wait(1.0):
    try:
        seen.update((p.pid, p) for p in driver.children(recursive=True) if p.pid != me)
    except psutil.NoSuchProcess:
        break
for p in seen.values():
    try:
        p.kill()  # psutil checks the process is the one it saw (its start time), not a new one with its pid
    except psutil.Error:
        pass
"""

_watching: list[subprocess.Popen] = []


def watch_this_driver() -> None:
    """Start the watchdog of this process's descendants (once per process)."""
    if _watching:
        return
    _watching.append(
        subprocess.Popen(
            [sys.executable, "-c", WATCH, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # neither Ctrl-C to the terminal's group nor a kill of the group reaches it
        )
    )
