"""Verification: does a pod on this NAD really get `net1` with an address in range?

The procedure's step 7 done by the controller: start a short-lived, locked-down pause pod with
the networks annotation on the Multus node pool, read the `k8s.v1.cni.cncf.io/network-status`
annotation that Multus writes, check `net1`'s address against the NAD's range, delete the pod.
A failure says why (no net1, an address outside the range, or the pod's last Events).
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from typing import Any

from shared.core import decisions as d
from shared.core import logs
from shared.core.errors import Permanent, Rejected, Transient
from shared.core.refs import ClusterRef
from shared.flows.context import Context, Outcome

VERIFY_IMAGE = "registry.k8s.io/pause:3.9"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
VERIFY_SELECTOR = "multus-provisioner.io/purpose=verify"
# When the pod's check is over (unix seconds): after it, reconcile deletes a pod still there.
VERIFY_UNTIL_ANNOTATION = "multus-provisioner.io/verify-until"
VERIFY_GRACE_SECONDS = 60.0
DELETE_ATTEMPTS = 4


def run_verification(kube: Any, namespace: str, nad_name: str, cidr: str | None, *, pool: str | None,
                     cluster: str = "", timeout: float = 30.0) -> tuple[bool, str]:
    """(ok, what was seen). The pod is deleted whatever happens."""
    digest = hashlib.sha256(f"{namespace}/{nad_name}/{time.time_ns()}".encode()).hexdigest()[:6]
    pod_name = f"mp-verify-{nad_name[:40]}-{digest}"
    manifest = verify_pod_manifest(pod_name, namespace, nad_name, pool)
    manifest["metadata"]["annotations"][VERIFY_UNTIL_ANNOTATION] = f"{time.time() + timeout + VERIFY_GRACE_SECONDS:.0f}"
    kube.create_pod(manifest)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = kube.pod_network_status(namespace, pod_name)
            if status:
                return check_network_status(status, cidr)
            time.sleep(0.2)
        events = kube.pod_events(namespace, pod_name)
        why = "; ".join(e.get("message", "") for e in events[-3:]) or "no network-status annotation"
        return False, f"pod {pod_name} got no net1 within {timeout:.0f}s: {why}"
    finally:
        delete_verify_pod(kube, namespace, pod_name, cluster=cluster)


def delete_verify_pod(kube: Any, namespace: str, pod_name: str, *, cluster: str = "",
                      attempts: int = DELETE_ATTEMPTS, pause: float = 0.2) -> bool:
    """Delete a verify pod, retried: a pod left behind keeps a Whereabouts address of the range.
    False after `attempts` failures (reconcile's sweep removes it later, see nad_repair)."""
    for attempt in range(attempts):
        try:
            kube.delete_pod(namespace, pod_name)
            return True
        except (Transient, Permanent) as e:
            logs.warning("could not delete verify pod", cluster=cluster, pod=f"{namespace}/{pod_name}",
                         attempt=attempt + 1, error=str(e))
            if attempt + 1 < attempts:
                time.sleep(pause * 2 ** attempt)
    return False


class VerifyFlow:
    """`multus-provisioner verify` and a request's `verify: true`: the check, recorded on the NAD."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def verify(self, ref: ClusterRef, namespace: str, name: str, event_id: str) -> Outcome:
        """Start a short-lived pod on the NAD, check net1's address, record VERIFIED or why not."""
        store = self.ctx.store
        doc = store.get_nad(ref, namespace, name)
        if doc is None or doc.get("state") not in d.NAD_LIVE:
            state = doc.get("state") if doc else "unknown"
            raise Rejected(f"NAD {namespace}/{name} on {ref.path} is {state}; only APPLIED NADs can be verified",
                           kind="not-applied", cluster=ref)
        from shared.core import nad as nadlib

        if not isinstance(doc.get("request"), dict):
            raise Rejected(f"NAD {namespace}/{name} on {ref.path} was adopted from the cluster and has no request "
                           "to verify against; send a request for it first", kind="not-applied", cluster=ref)
        req = nadlib.parse_request(dict(doc["request"]))
        kube = self.ctx.kube_for(ref)
        ok, detail = self.check(kube, req, doc.get("range"), ref)
        state = d.NAD_VERIFIED if ok else d.NAD_APPLIED
        store.put_nad(ref, namespace, name, event_id=event_id, step="verify-nad", state=state,
                      fields={"verification": {"ok": ok, "message": detail}},
                      derive=lambda cur: ({"applied": {**cur["applied"], "state": state}}
                                          if isinstance(cur.get("applied"), dict) else {}),
                      outcome="ok" if ok else "failed", message=f"{namespace}/{name}: verify: {detail}",
                      ledger_key=f"{event_id}~verify~{namespace}~{name}")
        return Outcome("done" if ok else "failed", detail, ref.path, state)

    def check(self, kube: Any, req: Any, cidr: str | None, ref: ClusterRef) -> tuple[bool, str]:
        """Run the pod check for `req` on its cluster's Multus node pool."""
        rec = self.ctx.store.get_cluster(ref)
        pool = rec.workflow.node_pool.name if rec and rec.workflow.node_pool else None
        return run_verification(kube, req.namespace, req.name, cidr, pool=pool, cluster=ref.path)


def verify_pod_manifest(pod_name: str, namespace: str, nad_name: str, pool: str | None) -> dict[str, Any]:
    """A pause pod on the Multus node pool, locked down: it only has to receive an address."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 0,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65535, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "pause", "image": VERIFY_IMAGE,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
        }],
    }
    if pool:
        spec["nodeSelector"] = {"cloud.google.com/gke-nodepool": pool}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "multus-provisioner",
                                "multus-provisioner.io/purpose": "verify"},
                     "annotations": {NETWORKS_ANNOTATION: f"{namespace}/{nad_name}"}},
        "spec": spec,
    }


def check_network_status(status: list[dict[str, Any]], cidr: str | None) -> tuple[bool, str]:
    nets = [s for s in status if s.get("interface") == "net1"]
    if not nets:
        names = ", ".join(str(s.get("interface")) for s in status)
        return False, f"network-status has no net1 (interfaces: {names})"
    ips = nets[0].get("ips") or []
    if not ips:
        return False, "net1 has no IP address"
    if cidr:
        net = ipaddress.ip_network(cidr, strict=False)
        for ip in ips:
            try:
                if ipaddress.ip_address(ip) in net:
                    return True, f"net1 got {ip}, inside {cidr}"
            except ValueError:
                continue
        return False, f"net1 got {', '.join(ips)}, outside {cidr}"
    return True, f"net1 got {ips[0]}"
