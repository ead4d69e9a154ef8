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
from dataclasses import dataclass, replace
from typing import Any

from shared.core import decisions, logs, ranges
from shared.core.errors import Permanent, Rejected, RejectionKind, Transient
from shared.core.ranges import Allocation
from shared.core.records import NadRecord, VerificationNote, VerifyPodMarker
from shared.core.refs import ClusterRef
from shared.core.settings import VERIFY_TIMEOUT_MAX_SECONDS
from shared.flows.context import Context, Outcome
from shared.ports import DataPathPort, PodDataPath, Reach, StorePort

# Pinned by digest (the multi-arch index of pause 3.9, as registry.k8s.io serves it): a tag can be
# moved under us, a digest cannot. The bundle's images are pinned the same way (shared/core/multus.py).
VERIFY_IMAGE = "registry.k8s.io/pause:3.9@sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097"
POOL_LABEL = "cloud.google.com/gke-nodepool"  # GKE's label naming a node's pool
HOSTNAME_LABEL = "kubernetes.io/hostname"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
VERIFY_SELECTOR = "multus-provisioner.io/purpose=verify"
# When the pod's check is over (unix seconds): after it, reconcile deletes a pod still there.
VERIFY_UNTIL_ANNOTATION = "multus-provisioner.io/verify-until"
VERIFY_GRACE_SECONDS = 60.0
# A verification's pods, the first and its peer, each wait up to the configured timeout
# (`Settings.verify_timeout_seconds`): a marker written without the settings at hand lasts the longest.
VERIFY_WINDOW_SECONDS = 2 * VERIFY_TIMEOUT_MAX_SECONDS
DELETE_ATTEMPTS = 4


@dataclass(frozen=True)
class PodCheck:
    """One verify pod as seen from the API (node, Multus's report, Whereabouts' IPPool) and, where
    a probe can look, from its node's kernel."""

    name: str
    node: str
    uid: str
    reported: tuple[str, ...]  # net1's addresses in Multus's network-status
    allocation: Allocation | None  # Whereabouts' IPPool entry for this pod
    pool: str  # the IPPool that holds it
    kernel: PodDataPath | None  # net1 as the kernel shows it; None: not checked

    def to_dict(self) -> dict[str, Any]:
        return {"pod": self.name, "node": self.node, "uid": self.uid, "net1": list(self.reported),
                "ippool": ({"pool": self.pool, "ip": self.allocation.ip, "podref": self.allocation.podref,
                            "containerId": self.allocation.container_id} if self.allocation else None),
                "kernel": ({"netns": self.kernel.netns, "net1": list(self.kernel.addresses)}
                           if self.kernel is not None else None)}


@dataclass(frozen=True)
class Verification:
    """What a verification saw, and the pod it could not delete (None: it is gone)."""

    ok: bool
    detail: str
    left: VerifyPodMarker | None = None  # the pod it could not delete: the record keeps it for the sweep
    pods: tuple[PodCheck, ...] = ()
    peer: str = ""  # why there is no peer pod, when there is none
    reach: Reach | None = None  # the first pod to the peer's net1; None: not checked (or no peer)

    def report(self) -> dict[str, Any]:
        """The JSON the CLI prints under `datapath` (docs/CLI.md)."""
        out: dict[str, Any] = {"pods": [p.to_dict() for p in self.pods]}
        if len(self.pods) > 1 and self.pods[1].reported:
            target = self.pods[1].reported[0]
            out["reach"] = ({"from": self.pods[0].name, "to": target, "icmp": self.reach.icmp,
                             "arp": self.reach.arp, "checked": True} if self.reach is not None
                            else {"from": self.pods[0].name, "to": target, "checked": False})
        else:
            out["reach"] = None
        if self.peer:
            out["peer"] = self.peer
        return out


def verify_deadline(timeout: float, now: float | None = None) -> float:
    """When a verification started now is over (unix seconds): its pod's annotation, and the marker's."""
    return (time.time() if now is None else now) + timeout + VERIFY_GRACE_SECONDS


def run_verification(kube: Any, namespace: str, nad_name: str, cidr: str | None, *, pool: str | None,
                     cluster: str = "", timeout: float = 30.0, peer: bool = False,
                     datapath: DataPathPort | None = None, ref: ClusterRef | None = None) -> Verification:
    """What was seen. The pods are deleted whatever happens (`left` names one that could not be).

    With `peer`, and where the pool has another ready node, a second pod goes to that node: the
    seed's reason for IPVLAN L2 is that pods on different nodes reach each other directly on the
    shared segment. `datapath` (with `ref`) looks at both pods' net1 in the kernel and pings the
    peer from the first pod; without it the data path is reported as not checked.
    """
    digest = hashlib.sha256(f"{namespace}/{nad_name}/{time.time_ns()}".encode()).hexdigest()[:6]
    until = verify_deadline(timeout * (2 if peer else 1))
    made: list[str] = []
    checks: list[PodCheck] = []
    ok, detail, why_no_peer, reach = False, "", "", None
    try:
        first = f"mp-verify-{nad_name[:40]}-{digest}"
        ok, detail, status = _start_and_check(kube, namespace, nad_name, cidr, first, pool, None, until, timeout,
                                              made)
        node, uid = _placed(kube, namespace, first)
        peer_node = ""
        if ok and peer:
            others = [n for n in _ready_pool_nodes(kube, pool) if n != node]
            if not others:
                why_no_peer = f"pool {pool or '(any)'} has no other ready node than {node}: no peer pod"
            else:
                peer_node = others[0]
        pods = [(first, node, uid, status)]
        if peer_node:
            second = f"mp-verify-{nad_name[:36]}-{digest}-peer"
            peer_ok, peer_detail, peer_status = _start_and_check(kube, namespace, nad_name, cidr, second, pool,
                                                                 peer_node, until, timeout, made)
            pods.append((second, *_placed(kube, namespace, second), peer_status))
            if not peer_ok:
                ok, detail = False, f"peer pod on {peer_node}: {peer_detail}"
            else:
                detail = f"{detail}; peer on {peer_node}: {peer_detail}"
        checks = _pod_checks(kube, pods, namespace, datapath, ref)
        ok, detail, reach = _judge(ok, detail, checks, datapath, ref)
    finally:
        left = None
        for name in made:
            if not delete_verify_pod(kube, namespace, name, cluster=cluster) and left is None:
                left = VerifyPodMarker(round(until), name, namespace)
    return Verification(ok, detail, left, tuple(checks), why_no_peer, reach)


def _start_and_check(kube: Any, namespace: str, nad_name: str, cidr: str | None, pod_name: str, pool: str | None,
                     node: str | None, until: float, timeout: float,
                     made: list[str]) -> tuple[bool, str, list[dict[str, Any]] | None]:
    """Create one verify pod and wait for Multus's network-status; (ok, why, the status)."""
    manifest = verify_pod_manifest(pod_name, namespace, nad_name, pool, node=node)
    manifest["metadata"]["annotations"][VERIFY_UNTIL_ANNOTATION] = f"{until:.0f}"
    kube.create_pod(manifest)
    made.append(pod_name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = kube.pod_network_status(namespace, pod_name)
        if status:
            ok, detail = check_network_status(status, cidr)
            return ok, detail, status
        time.sleep(0.2)
    events = kube.pod_events(namespace, pod_name)
    why = "; ".join(e.get("message", "") for e in events[-3:]) or "no network-status annotation"
    return False, f"pod {pod_name} got no net1 within {timeout:.0f}s: {why}", None


def _placed(kube: Any, namespace: str, pod_name: str) -> tuple[str, str]:
    """The pod's node and uid (the uid names its sandbox on the node)."""
    pod = kube.get_pod(namespace, pod_name) or {}
    return str((pod.get("spec") or {}).get("nodeName") or ""), str((pod.get("metadata") or {}).get("uid") or "")


def _ready_pool_nodes(kube: Any, pool: str | None) -> list[str]:
    """The pool's schedulable, Ready nodes, by name (the peer goes to one the first pod is not on)."""
    out = []
    for node in kube.list("v1", "Node"):
        md, spec = node.get("metadata") or {}, node.get("spec") or {}
        if pool and (md.get("labels") or {}).get(POOL_LABEL) != pool:
            continue
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (node.get("status") or {}).get("conditions") or [])
        if ready and not spec.get("unschedulable"):
            out.append(str(md.get("name") or ""))
    return sorted(n for n in out if n)


def _net1(status: list[dict[str, Any]] | None) -> tuple[str, ...]:
    nets = [s for s in status or [] if s.get("interface") == "net1"]
    return tuple(str(ip) for ip in (nets[0].get("ips") or [])) if nets else ()


def _pod_checks(kube: Any, pods: list[tuple[str, str, str, list[dict[str, Any]] | None]], namespace: str,
                datapath: DataPathPort | None, ref: ClusterRef | None) -> list[PodCheck]:
    """Each pod's IPPool allocation (one LIST of the IPPools) and, with a probe, its kernel's net1."""
    pools = kube.list_ippools() if any(status for *_, status in pods) else []
    found = ranges.allocations(pools)
    out = []
    for name, node, uid, status in pods:
        mine = [(pool, a) for pool, a in found if a.podref == f"{namespace}/{name}"]
        kernel = None
        if datapath is not None and ref is not None and status is not None and uid:
            kernel = datapath.observe(ref, uid, "net1")
        out.append(PodCheck(name, node, uid, _net1(status), mine[0][1] if mine else None, mine[0][0] if mine else "",
                            kernel))
    return out


def _judge(ok: bool, detail: str, checks: list[PodCheck], datapath: DataPathPort | None,
           ref: ClusterRef | None) -> tuple[bool, str, Reach | None]:
    """The API's verdict, then what the IPPool and the kernel add: the reported address must be
    Whereabouts' allocation and the kernel's, two pods must not share one, and the first must
    reach the peer over net1."""
    if not ok:
        return ok, detail, None
    for c in checks:
        ip = c.reported[0] if c.reported else ""
        if c.allocation is not None and c.allocation.ip != ip:
            return False, f"{c.name}: Multus reports {ip} but Whereabouts allocated {c.allocation.ip}", None
        if c.kernel is not None and ip not in {a.split("/")[0] for a in c.kernel.addresses}:
            shown = ", ".join(c.kernel.addresses) or "none"
            return False, f"{c.name}: Multus reports {ip} but the kernel shows {shown} on net1", None
    if len(checks) > 1 and checks[0].reported[:1] == checks[1].reported[:1]:
        return False, f"both pods got {checks[0].reported[0]}: the address is handed out twice", None
    if len(checks) < 2 or datapath is None or ref is None:
        return ok, detail, None
    target = checks[1].reported[0]
    reach = datapath.reach(ref, checks[0].uid, target, "net1") if checks[0].uid else None
    if reach is None:
        return ok, f"{detail}; reachability not checked", None
    if reach.icmp and reach.arp:
        return True, f"{detail}; {checks[0].name} reaches {target} over net1 (ICMP and ARP answered)", reach
    return False, (f"{checks[0].name} does not reach the peer's {target} over net1 (ICMP "
                   f"{'ok' if reach.icmp else 'no answer'}, ARP {'ok' if reach.arp else 'no answer'})"
                   f"{': ' + reach.detail if reach.detail else ''}"), reach


def may_have_verify_pod(rec: NadRecord) -> bool:
    """A verify pod of this NAD can exist: a request with `verify` is in flight (its worker is
    checking, or died while checking), or the record's marker says one started or was left."""
    if rec.verify_pod is not None:
        return True
    last = rec.last_request
    body = last.request if last is not None and last.request is not None else {}
    return rec.state in decisions.NAD_IN_FLIGHT and bool(body.get("verify"))


def mark_verifying(store: StorePort, ref: ClusterRef, namespace: str, name: str, *, event_id: str,
                   timeout: float) -> None:
    """Before a verification that claims nothing (the CLI, the rollout gate) starts its pod: the
    record says a pod may exist until the check is over, so reconcile looks for it if need be."""
    marker = VerifyPodMarker(round(verify_deadline(timeout)))
    store.put_nad(ref, namespace, name, event_id=event_id, step="verify-start",
                  change=lambda cur: replace(cur, verify_pod=marker),
                  expect_states=tuple(decisions.NAD_LIVE), history=False)


def clear_verifying(store: StorePort, ref: ClusterRef, namespace: str, name: str, *, event_id: str) -> bool:
    """The record's marker removed: its verification is over and no pod of it is left."""
    return store.put_nad(ref, namespace, name, event_id=event_id, step="verify-swept",
                         change=lambda cur: replace(cur, verify_pod=None),
                         expect_states=tuple(set(decisions.NAD_COUNTED + decisions.NAD_SETTLED)), history=False)


def marker_of(result: Verification) -> VerifyPodMarker | None:
    """The marker after a verification: gone with its pod (None), or naming the pod left behind."""
    return result.left


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
        rec = store.get_nad(ref, namespace, name)
        if rec is None or rec.state not in decisions.NAD_LIVE:
            state = (rec.state or "") if rec else "unknown"
            raise Rejected(f"NAD {namespace}/{name} on {ref.path} is {state}; only APPLIED NADs can be verified",
                           kind=RejectionKind.NOT_APPLIED, cluster=ref)
        from shared.core import nad as nadlib

        if rec.request is None:
            raise Rejected(f"NAD {namespace}/{name} on {ref.path} was adopted from the cluster and has no request "
                           "to verify against; send a request for it first", kind=RejectionKind.NOT_APPLIED,
                           cluster=ref)
        req = nadlib.parse_request(dict(rec.request))
        kube = self.ctx.kube_for(ref)
        mark_verifying(store, ref, namespace, name, event_id=event_id,
                       timeout=2 * self.ctx.settings.verify_timeout_seconds)
        result = self.check(kube, req, rec.range or None, ref)
        ok, detail = result.ok, result.detail
        state = decisions.NAD_VERIFIED if ok else decisions.NAD_APPLIED

        def verified(cur: NadRecord) -> NadRecord:
            applied = replace(cur.applied, state=state) if cur.applied is not None else None
            return replace(cur, state=state, message=f"{namespace}/{name}: verify: {detail}", applied=applied,
                           verification=VerificationNote(ok, detail), verify_pod=marker_of(result))

        store.put_nad(ref, namespace, name, event_id=event_id, step="verify-nad", change=verified,
                      outcome="ok" if ok else "failed", ledger_key=f"{event_id}~verify~{namespace}~{name}")
        return Outcome("done" if ok else "failed", detail, ref.path, state, {"datapath": result.report()})

    def check(self, kube: Any, req: Any, cidr: str | None, ref: ClusterRef) -> Verification:
        """Run the pod check for `req` on its cluster's Multus node pool."""
        rec = self.ctx.store.get_cluster(ref)
        pool = rec.workflow.node_pool.name if rec and rec.workflow.node_pool else None
        return run_verification(kube, req.namespace, req.name, cidr, pool=pool, cluster=ref.path,
                                timeout=self.ctx.settings.verify_timeout_seconds, peer=True,
                                datapath=self.ctx.datapath, ref=ref)


def verify_pod_manifest(pod_name: str, namespace: str, nad_name: str, pool: str | None, *,
                        node: str | None = None) -> dict[str, Any]:
    """A pause pod on the Multus node pool, locked down: it only has to receive an address.
    `node` pins a peer pod to another node through the scheduler (the hostname label), so it
    meets the taints and resources a user's pod would."""
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
    selector = {**({POOL_LABEL: pool} if pool else {}), **({HOSTNAME_LABEL: node} if node else {})}
    if selector:
        spec["nodeSelector"] = selector
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
