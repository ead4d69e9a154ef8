"""Verification: does a pod on this NAD really get `net1` with an address in range?

The procedure's step 7 done by the controller: start a short-lived, locked-down pause pod with
the networks annotation on the Multus node pool, read the `k8s.v1.cni.cncf.io/network-status`
annotation that Multus writes, check `net1`'s address against the NAD's range, delete the pod.
A failure says why (no net1, an address outside the range, or the pod's last Events).

Reconcile lists verify pods only when one can exist (`may_have_verify_pod`): a NAD record says a
verification started and was not swept. That is a request with `verify` in flight (its claim is
written before the pod is created), or the record's `verifyPod` marker: written before the pod
by `multus-provisioner verify` and the rollout gate (which claim nothing), and kept by every path
when the pod could not be deleted; reconcile's sweep removes it once no pod of that NAD is left.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.core import decisions, logs
from shared.core.errors import Permanent, Rejected, RejectionKind, Transient
from shared.core.refs import ClusterRef
from shared.flows.context import Context, Outcome
from shared.ports import DELETE, text_field

VERIFY_IMAGE = "registry.k8s.io/pause:3.9"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
VERIFY_SELECTOR = "multus-provisioner.io/purpose=verify"
# When the pod's check is over (unix seconds): after it, reconcile deletes a pod still there.
VERIFY_UNTIL_ANNOTATION = "multus-provisioner.io/verify-until"
VERIFY_GRACE_SECONDS = 60.0
VERIFY_TIMEOUT_SECONDS = 30.0  # how long a verification waits for net1
DELETE_ATTEMPTS = 4
# A NAD record's field saying a verify pod of this NAD may exist (see the module's docstring).
VERIFY_POD_FIELD = "verifyPod"


@dataclass(frozen=True)
class Verification:
    """What a verification saw, and the pod it could not delete (None: it is gone)."""

    ok: bool
    detail: str
    left: dict[str, Any] | None = None  # {"pod", "namespace", "until"}: the record keeps it for the sweep


def verify_deadline(timeout: float, now: float | None = None) -> float:
    """When a verification started now is over (unix seconds): its pod's annotation, and the marker's."""
    return (time.time() if now is None else now) + timeout + VERIFY_GRACE_SECONDS


def run_verification(kube: Any, namespace: str, nad_name: str, cidr: str | None, *, pool: str | None,
                     cluster: str = "", timeout: float = 30.0) -> Verification:
    """What was seen. The pod is deleted whatever happens (`left` names it when it could not be)."""
    digest = hashlib.sha256(f"{namespace}/{nad_name}/{time.time_ns()}".encode()).hexdigest()[:6]
    pod_name = f"mp-verify-{nad_name[:40]}-{digest}"
    manifest = verify_pod_manifest(pod_name, namespace, nad_name, pool)
    until = verify_deadline(timeout)
    manifest["metadata"]["annotations"][VERIFY_UNTIL_ANNOTATION] = f"{until:.0f}"
    kube.create_pod(manifest)
    ok, detail = False, ""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = kube.pod_network_status(namespace, pod_name)
            if status:
                ok, detail = check_network_status(status, cidr)
                break
            time.sleep(0.2)
        else:
            events = kube.pod_events(namespace, pod_name)
            why = "; ".join(e.get("message", "") for e in events[-3:]) or "no network-status annotation"
            detail = f"pod {pod_name} got no net1 within {timeout:.0f}s: {why}"
    finally:
        removed = delete_verify_pod(kube, namespace, pod_name, cluster=cluster)
    left = None if removed else {"pod": pod_name, "namespace": namespace, "until": round(until)}
    return Verification(ok, detail, left)


def _applied_state(cur: Mapping[str, object], state: str) -> dict[str, object]:
    """The record's applied part with the state a verification found (nothing without one)."""
    applied = cur.get("applied")
    return {"applied": {**applied, "state": state}} if isinstance(applied, dict) else {}


def may_have_verify_pod(doc: Mapping[str, Any]) -> bool:
    """A verify pod of this NAD can exist: a request with `verify` is in flight (its worker is
    checking, or died while checking), or the record's marker says one started or was left."""
    if isinstance(doc.get(VERIFY_POD_FIELD), Mapping):
        return True
    last_value = doc.get("lastRequest")
    last: Mapping[str, Any] = last_value if isinstance(last_value, Mapping) else {}
    body_value = last.get("request")
    body: Mapping[str, Any] = body_value if isinstance(body_value, Mapping) else {}
    return doc.get("state") in decisions.NAD_IN_FLIGHT and bool(body.get("verify"))


def mark_verifying(store: Any, ref: ClusterRef, namespace: str, name: str, *, event_id: str,
                   timeout: float) -> None:
    """Before a verification that claims nothing (the CLI, the rollout gate) starts its pod: the
    record says a pod may exist until the check is over, so reconcile looks for it if need be."""
    store.put_nad(ref, namespace, name, event_id=event_id, step="verify-start", state="", fields={},
                  derive=lambda cur: {"state": cur.get("state"),
                                      VERIFY_POD_FIELD: {"until": round(verify_deadline(timeout))}},
                  expect_states=tuple(decisions.NAD_LIVE), history=False)


def clear_verifying(store: Any, ref: ClusterRef, namespace: str, name: str, *, event_id: str) -> bool:
    """The record's marker removed: its verification is over and no pod of it is left."""
    return bool(store.put_nad(ref, namespace, name, event_id=event_id, step="verify-swept", state="", fields={},
                              derive=lambda cur: {"state": cur.get("state"), VERIFY_POD_FIELD: DELETE},
                              expect_states=tuple(set(decisions.NAD_COUNTED + decisions.NAD_SETTLED)), history=False))


def marker_fields(result: Verification) -> dict[str, Any]:
    """The marker after a verification: gone with its pod, or naming the pod left behind."""
    return {VERIFY_POD_FIELD: result.left if result.left is not None else DELETE}


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
        if doc is None or doc.get("state") not in decisions.NAD_LIVE:
            state = doc.get("state") if doc else "unknown"
            raise Rejected(f"NAD {namespace}/{name} on {ref.path} is {state}; only APPLIED NADs can be verified",
                           kind=RejectionKind.NOT_APPLIED, cluster=ref)
        from shared.core import nad as nadlib

        body = doc.get("request")
        if not isinstance(body, dict):
            raise Rejected(f"NAD {namespace}/{name} on {ref.path} was adopted from the cluster and has no request "
                           "to verify against; send a request for it first", kind=RejectionKind.NOT_APPLIED,
                           cluster=ref)
        req = nadlib.parse_request(dict(body))
        kube = self.ctx.kube_for(ref)
        mark_verifying(store, ref, namespace, name, event_id=event_id, timeout=VERIFY_TIMEOUT_SECONDS)
        result = self.check(kube, req, text_field(doc, "range") or None, ref)
        ok, detail = result.ok, result.detail
        state = decisions.NAD_VERIFIED if ok else decisions.NAD_APPLIED
        store.put_nad(ref, namespace, name, event_id=event_id, step="verify-nad", state=state,
                      fields={"verification": {"ok": ok, "message": detail}, **marker_fields(result)},
                      derive=lambda cur: _applied_state(cur, state),
                      outcome="ok" if ok else "failed", message=f"{namespace}/{name}: verify: {detail}",
                      ledger_key=f"{event_id}~verify~{namespace}~{name}")
        return Outcome("done" if ok else "failed", detail, ref.path, state)

    def check(self, kube: Any, req: Any, cidr: str | None, ref: ClusterRef) -> Verification:
        """Run the pod check for `req` on its cluster's Multus node pool."""
        rec = self.ctx.store.get_cluster(ref)
        pool = rec.workflow.node_pool.name if rec and rec.workflow.node_pool else None
        return run_verification(kube, req.namespace, req.name, cidr, pool=pool, cluster=ref.path,
                                timeout=VERIFY_TIMEOUT_SECONDS)


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
