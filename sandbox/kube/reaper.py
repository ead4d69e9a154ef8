"""`python -m sandbox.kube.reaper OWNER_PID`: when OWNER_PID ends, remove what it left running.

The real tier's control planes (`sandbox.kube.real`) and UML guests (`sandbox.kube.uml`) are
process groups of their own, so they outlive an owner that is killed without a chance to stop
them (SIGKILL, a test worker ended by its timeout, a CI run cut short). Each owner starts one
reaper, detached in its own session; it polls the owner's pid and, once it is gone, runs both
sweeps, which end the groups and remove the namespaces and directories of owners that no longer
exist. An owner that stops cleanly leaves nothing for it to find.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

_started: set[int] = set()
_lock = threading.Lock()


def ensure_reaper() -> None:
    """Start this process's reaper once (a no-op after the first call in a process)."""
    pid = os.getpid()
    with _lock:
        if pid in _started:
            return
        _started.add(pid)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.Popen([sys.executable, "-m", "sandbox.kube.reaper", str(pid)], cwd=root,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (not yet reaped by its parent) is gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m sandbox.kube.reaper OWNER_PID", file=sys.stderr)
        return 2
    owner = int(argv[0])
    while alive(owner):
        time.sleep(1.0)
    from sandbox.kube import real, uml

    real.sweep()
    uml.sweep()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
