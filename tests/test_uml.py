"""The UML guest's housekeeping: names unique to their sandbox, and a sweep of what a dead one left."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from sandbox.kube import uml
from tests.realnet import require_netns


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_sweep_removes_what_a_dead_sandbox_left_and_nothing_else() -> None:
    require_netns()
    child = subprocess.Popen(["true"])
    child.wait()
    dead = child.pid  # a process of this checkout's kind that no longer exists
    mine = f"{uml.PREFIX}-{os.getpid()}-swept"  # a live owner: kept
    stale = f"{uml.PREFIX}-{dead}-7"
    for name in (stale, mine):
        subprocess.run(["ip", "netns", "add", name], check=True)
    stale_dir = Path(tempfile.mkdtemp(prefix=f"{uml.PREFIX}-{dead}-7-"))
    try:
        removed = uml.sweep()
        assert stale in removed and str(stale_dir) in removed
        assert stale not in _netns() and mine in _netns()
        assert not stale_dir.exists()
    finally:
        for name in (stale, mine):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _mine() -> set[str]:
    """This process's namespaces: another test worker's guests come and go meanwhile."""
    return {n for n in _netns() if n.startswith(f"{uml.PREFIX}-{os.getpid()}-")}


def test_a_guest_leaves_nothing_behind() -> None:
    require_netns()
    before = _mine()
    with uml.Guest() as guest:
        assert guest.netns in _netns()
        assert guest.netns.startswith(f"{uml.PREFIX}-{os.getpid()}-")
        # the guest's root is the host's file system, but what it writes under /etc stays in the guest
        guest.write({"/etc/cni/net.d/probe.conf": "{}"})
        assert guest.check(["cat", "/etc/cni/net.d/probe.conf"]) == "{}"
        assert not Path("/etc/cni/net.d/probe.conf").exists()
        workdir = guest.workdir
    assert _mine() == before
    assert not workdir.exists()
