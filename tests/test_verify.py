"""The verification pod and the reading of Multus' network-status (pure parts)."""

from __future__ import annotations

from shared.flows.verify import NETWORKS_ANNOTATION, check_network_status, verify_pod_manifest


def test_net1_inside_the_range_passes_and_names_the_address():
    status = [{"name": "gke-pod-network", "interface": "eth0", "ips": ["10.4.0.5"], "default": True},
              {"name": "default/data-plane", "interface": "net1", "ips": ["172.16.1.7"]}]
    assert check_network_status(status, "172.16.1.0/24") == (True, "net1 got 172.16.1.7, inside 172.16.1.0/24")


def test_failures_say_what_was_seen():
    eth0 = {"interface": "eth0", "ips": ["10.4.0.5"]}
    ok, why = check_network_status([eth0], "172.16.1.0/24")
    assert not ok and "no net1" in why and "eth0" in why
    ok, why = check_network_status([eth0, {"interface": "net1", "ips": []}], "172.16.1.0/24")
    assert not ok and "no IP" in why
    ok, why = check_network_status([eth0, {"interface": "net1", "ips": ["10.9.9.9", "junk"]}], "172.16.1.0/24")
    assert not ok and "outside 172.16.1.0/24" in why


def test_the_pod_is_locked_down_and_lands_on_the_multus_pool():
    pod = verify_pod_manifest("mp-verify-x-abc123", "apps", "x", "multus-pool")
    assert pod["metadata"]["annotations"] == {NETWORKS_ANNOTATION: "apps/x"}
    assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-nodepool": "multus-pool"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    c = pod["spec"]["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "nodeSelector" not in verify_pod_manifest("p", "default", "x", None)["spec"]
