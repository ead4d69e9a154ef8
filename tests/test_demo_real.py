"""`multus-provisioner demo --kube real`, run as a user runs it: every step reaches its expected state
on a real kube-apiserver, and the sample pod and a peer pod on another node of the pool get `net1`
from real Whereabouts and reach each other over IPVLAN layer 2 (the seed's last step)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real


# The demo waits for GKE's own operation after each create (retried through Pub/Sub's backoff) and
# starts two real control planes and data paths: under a full suite on two cores it can take minutes.
@pytest.mark.timeout(1200)
def test_the_demo_on_the_real_tier_ends_with_two_pods_reaching_each_other_over_layer2(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "multus-provisioner"
    # As from a user's shell: nothing of another stack this test process may have exported (a
    # collection prefix, topics, emulator hosts) reaches the demo.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MULTUS_PROVISIONER_", "FIRESTORE_EMULATOR", "PUBSUB_EMULATOR", "CLOUDSDK_"))
           and k != "GOOGLE_CLOUD_PROJECT"}
    run = subprocess.run([str(cli), "demo", "--kube", "real", "--json", "--state-dir", str(tmp_path / "demo"),
                          "--timeout", "300"], capture_output=True, text=True, timeout=1100, check=False, env=env)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    summary = json.loads(run.stdout)
    assert summary["ok"] and not summary["failures"]
    assert summary["nad"] == "APPLIED"
    layer2 = summary["layer2"]
    sample, peer = layer2["sample-pod"], layer2["peer-pod"]
    assert sample["node"] != peer["node"] and sample["netns"] != peer["netns"]
    nad_range = ipaddress.ip_network(summary["range"])
    kernel = [ipaddress.ip_interface(a) for a in sample["net1"] + peer["net1"]]
    assert len(kernel) == 2 and all(a.ip in nad_range for a in kernel) and kernel[0].ip != kernel[1].ip
    assert str(kernel[0].ip) == summary["podIp"]  # the kernel's address is the one network-status reports
    assert layer2["reach"] == {"from": "sample-pod", "to": str(kernel[1].ip), "icmp": True, "arp": True}

    # `multus-provisioner verify` in the demo: its own pod and a peer on another node, each with
    # Multus's net1, Whereabouts' IPPool entry and the kernel's net1 (all one address), and the
    # first reaching the second over IPVLAN L2
    verify = summary["verify"]
    assert verify["ok"] and verify["state"] == "VERIFIED", verify
    first, second = verify["datapath"]["pods"]
    assert first["node"] != second["node"] and first["kernel"]["netns"] != second["kernel"]["netns"]
    for pod in (first, second):
        ip = pod["net1"][0]
        assert ipaddress.ip_address(ip) in nad_range
        assert pod["ippool"]["ip"] == ip and pod["ippool"]["podref"] == f"default/{pod['pod']}"
        assert [str(ipaddress.ip_interface(a).ip) for a in pod["kernel"]["net1"]] == [ip]
    assert verify["datapath"]["reach"] == {"from": first["pod"], "to": second["net1"][0], "icmp": True, "arp": True,
                                           "checked": True}
