"""`multus-provisioner demo`, the README's main job, run as a user runs it, from a shell that holds
another deployment's configuration: the demo ignores it, says so, and every chapter reaches its
expected state, `verify` included (on the simulated tier: two pods on two nodes, each with
Whereabouts' IPPool entry; the kernel side is not checked there). The real tier's run is
tests/test_demo_real.py."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

# What a user's shell may hold from working with a deployed controller or another sandbox.
FOREIGN = {"MULTUS_PROVISIONER_COLLECTION_PREFIX": "someone_elses_",
           "MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS": "projects/elsewhere/topics/nad-requests",
           "MULTUS_PROVISIONER_NODE_POOL_TEMPLATE": "not json",
           "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9"}


@pytest.mark.timeout(900)
def test_the_demo_ignores_a_foreign_configuration_and_passes_with_verify(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "multus-provisioner"
    # a user's shell: what this test process holds of its own stacks left out, the foreign ones put in
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MULTUS_PROVISIONER_", "FIRESTORE_EMULATOR",
                                                                      "PUBSUB_EMULATOR", "CLOUDSDK_"))
              and k != "GOOGLE_CLOUD_PROJECT"}, **FOREIGN}
    text = subprocess.run([str(cli), "demo", "--state-dir", str(tmp_path / "text"), "--timeout", "300"],
                          capture_output=True, text=True, timeout=800, check=False, env=env)
    assert text.returncode == 0, f"exit {text.returncode}\n{text.stdout[-3000:]}\n{text.stderr[-3000:]}"
    assert ("ignoring 4 variable(s) from your environment that would configure the controller or point it "
            "elsewhere: FIRESTORE_EMULATOR_HOST, MULTUS_PROVISIONER_COLLECTION_PREFIX") in text.stdout
    assert "someone_elses_" not in text.stdout  # names only: a value may be private
    assert "kernel: not checked" in text.stdout and "demo passed" in text.stdout

    run = subprocess.run([str(cli), "demo", "--json", "--state-dir", str(tmp_path / "json"), "--timeout", "300"],
                         capture_output=True, text=True, timeout=800, check=False, env=env)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    summary = json.loads(run.stdout)
    assert summary["ok"] and summary["nad"] == "APPLIED" and "layer2" not in summary
    verify = summary["verify"]
    assert verify["ok"] and verify["state"] == "VERIFIED", verify
    first, second = verify["datapath"]["pods"]
    assert first["node"] != second["node"]
    for pod in (first, second):
        assert ipaddress.ip_address(pod["net1"][0]) in ipaddress.ip_network(summary["range"])
        assert pod["ippool"]["ip"] == pod["net1"][0] and pod["kernel"] is None
    assert verify["datapath"]["reach"] == {"from": first["pod"], "to": second["net1"][0], "checked": False}
