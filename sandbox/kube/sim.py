"""The simulated cluster behind a sandbox API server: what controllers and kubelets would do.

- CRDs: `NamesAccepted` at once, `Established` after `crd_delay` (then their resources are served).
- DaemonSets: the controller observes a new generation after one step, then pods become
  updated/ready node by node (at most `maxUnavailable` down during an update) over about
  `rollout_delay`; status fields as the DaemonSet controller reports them.
- Nodes: Node objects; adding or removing nodes re-targets every DaemonSet.
- Pods: scheduled round-robin on Ready nodes, started after `pod_delay`. When Multus is
  installed (a DaemonSet running a `multus` image with at least one ready pod, as on a real
  cluster where the annotation is otherwise ignored), the `k8s.v1.cni.cncf.io/networks`
  annotation is honoured: IPs from each NAD's Whereabouts range, written to
  `k8s.v1.cni.cncf.io/network-status`; a missing NAD or an exhausted range leaves the pod
  Pending with a `FailedCreatePodSandBox` Event, retried as the kubelet does.
- Whereabouts' storage: every net address handed out is recorded in a real `IPPool` object
  (`whereabouts.cni.cncf.io/v1alpha1`, namespace of the Whereabouts DaemonSet, name from the
  range, `spec.allocations` keyed by the offset from the range's first address, each with the
  pod's `podref` and its sandbox `id`), as Whereabouts' kubernetes storage writes it. A deleted
  pod's allocations are freed `ippool_release_delay` seconds later, as Whereabouts' reconciler
  (ip-control-loop) cleans up; until then they are stale, and the address stays taken.
- Images: the kubelet cannot pull an image whose tag contains `-broken`; DaemonSet pods of that
  generation report `ImagePullBackOff` and never become ready, so the rollout stalls.
(docs/SANDBOX_KUBE.md has the sources.)
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import secrets
import threading
import uuid
from typing import Any

from sandbox.kube.api import Api, Hooks
from sandbox.kube.cni import NETWORK_STATUS, NETWORKS, CniError, Ipam, parse_ipam, parse_networks
from sandbox.kube.meta import now
from sandbox.kube.scheduler import Scheduler
from sandbox.kube.store import Key
from sandbox.kube.types import ResourceType

POD_RETRY = 1.0
NODE_CIDR = ipaddress.ip_network("10.104.0.0/14")
IPPOOL_GROUP, IPPOOL_PLURAL = "whereabouts.cni.cncf.io", "ippools"
WHEREABOUTS_NAMESPACE = "kube-system"  # the DaemonSet's namespace (WHEREABOUTS_NAMESPACE env)
IPPOOL_RELEASE_DELAY = 1.0


class Sim(Hooks):
    def __init__(self, api: Api, scheduler: Scheduler, *, crd_delay: float, rollout_delay: float,
                 pod_delay: float, ippool_release_delay: float = IPPOOL_RELEASE_DELAY) -> None:
        self.api = api
        self.ippool_release_delay = ippool_release_delay
        self.store = api.store
        self.sched = scheduler
        self.crd_delay = crd_delay
        self.rollout_delay = rollout_delay
        self.pod_delay = pod_delay
        self.ipam = Ipam()
        self._lock = threading.RLock()
        self._ds_pods: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._ds_ticking: set[tuple[str, str]] = set()
        self._pod_ips: dict[str, Any] = {}
        self._next_pod_ip = 0
        self._rr = 0
        self._pending: set[Key] = set()
        self._retry_scheduled = False
        # The real data path (sandbox.kube.realcni.RealCni) when the server uses it; None = simulated.
        self.real_cni: Any = None
        self._inflight: set[Key] = set()

    # ------------------------------------------------------------ store helpers
    def _mutate(self, key: Key, fn) -> dict[str, Any] | None:
        with self.store.lock:
            obj = self.store.get(key)
            if obj is None:
                return None
            before = copy.deepcopy(obj)
            fn(obj)
            if obj == before:
                return obj
            return self.store.put(key, obj)

    def event(self, obj: dict[str, Any], kind: str, etype: str, reason: str, message: str,
              component: str, host: str = "") -> None:
        md = obj["metadata"]
        ns = md.get("namespace") or "default"
        t = now()
        with self.store.lock:
            for ev in self.store.items("", "events", ns):
                io = ev.get("involvedObject") or {}
                if io.get("uid") == md.get("uid") and ev.get("reason") == reason and ev.get("message") == message:
                    ev["count"] = ev.get("count", 1) + 1
                    ev["lastTimestamp"] = t
                    self.store.put(("", "events", ns, ev["metadata"]["name"]), ev)
                    return
            name = f"{md['name']}.{secrets.token_hex(8)}"
            self.store.put(("", "events", ns, name), {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()), "creationTimestamp": t},
                "involvedObject": {"kind": kind, "namespace": md.get("namespace", ""), "name": md["name"],
                                   "uid": md.get("uid", ""), "apiVersion": obj.get("apiVersion", "v1"),
                                   "resourceVersion": md.get("resourceVersion", "")},
                "reason": reason, "message": message, "type": etype, "count": 1,
                "firstTimestamp": t, "lastTimestamp": t, "eventTime": None,
                "source": {"component": component, **({"host": host} if host else {})},
                "reportingComponent": component, "reportingInstance": host,
            })

    # ------------------------------------------------------------ hooks
    def prepare(self, rt: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        if rt.kind == "CustomResourceDefinition":
            names = copy.deepcopy((new.get("spec") or {}).get("names") or {})
            names.setdefault("singular", names.get("kind", "").lower())
            names.setdefault("listKind", names.get("kind", "") + "List")
            st = new.setdefault("status", {})
            conds = [c for c in st.get("conditions") or [] if c.get("type") != "NamesAccepted"]
            accepted = next((c for c in st.get("conditions") or [] if c.get("type") == "NamesAccepted"), None)
            conds.insert(0, accepted or {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                                         "message": "no conflicts found", "lastTransitionTime": now()})
            st["conditions"] = conds
            st["acceptedNames"] = names
            stored = [v["name"] for v in (new.get("spec") or {}).get("versions") or [] if v.get("storage")]
            st["storedVersions"] = sorted(set(st.get("storedVersions") or []) | set(stored))
        elif rt.kind == "DaemonSet" and old is None:
            new["status"] = {"currentNumberScheduled": 0, "desiredNumberScheduled": 0, "numberMisscheduled": 0,
                             "numberReady": 0}
        elif rt.kind == "Pod" and old is None:
            spec = new.setdefault("spec", {})
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("dnsPolicy", "ClusterFirst")
            spec.setdefault("schedulerName", "default-scheduler")
            node = spec.get("nodeName") or self._pick_node(spec.get("nodeSelector") or {})
            conds = []
            if node:
                spec["nodeName"] = node
                conds.append({"type": "PodScheduled", "status": "True", "lastTransitionTime": now()})
            else:
                conds.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                              "message": self._unschedulable(spec.get("nodeSelector") or {}),
                              "lastTransitionTime": now()})
            new["status"] = {"phase": "Pending", "conditions": conds, "qosClass": "BestEffort"}
        elif rt.kind == "Node" and old is None:
            new.setdefault("status", _node_status(len(self.store.items("", "nodes"))))

    def written(self, rt: ResourceType, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if rt.kind == "CustomResourceDefinition" and new is not None and not _established(new):
            name = new["metadata"]["name"]
            self.sched.call_later(self.crd_delay, lambda: self._establish(name))
        elif rt.kind == "DaemonSet":
            md = (new or old or {}).get("metadata") or {}
            ident = (md.get("namespace", ""), md.get("name", ""))
            if new is None:
                with self._lock:
                    self._ds_pods.pop(ident, None)
                self.retry_pending()
            elif old is None or (old["metadata"].get("generation") != new["metadata"].get("generation")):
                self.kick_ds(ident)
        elif rt.kind == "Pod":
            if new is None:
                uid = (old or {}).get("metadata", {}).get("uid", "")
                with self._lock:
                    self._pending.discard(self.api.key(rt, old["metadata"]["namespace"], old["metadata"]["name"]))
                    self._pod_ips.pop(uid, None)
                podref = f"{old['metadata']['namespace']}/{old['metadata']['name']}"
                if self.real_cni is not None:  # the kubelet's CNI DEL: real Whereabouts frees the address
                    gone = copy.deepcopy(old)
                    threading.Thread(target=self.real_cni.delete, args=(gone,), daemon=True).start()
                else:
                    self.sched.call_later(self.ippool_release_delay, lambda: self._release(uid, podref))
            elif old is None:
                key = self.api.key(rt, new["metadata"]["namespace"], new["metadata"]["name"])
                if new["spec"].get("nodeName"):
                    self.event(new, "Pod", "Normal", "Scheduled",
                               f"Successfully assigned {key[2]}/{key[3]} to {new['spec']['nodeName']}",
                               "default-scheduler")
                self.sched.call_later(self.pod_delay, lambda: self._start_pod(key))
        elif rt.kind == "Node":
            self.nodes_changed()
        elif rt.kind == "NetworkAttachmentDefinition":
            self.retry_pending()

    # ------------------------------------------------------------ CRDs
    def _establish(self, name: str) -> None:
        def fn(crd: dict[str, Any]) -> None:
            st = crd.setdefault("status", {})
            conds = [c for c in st.get("conditions") or [] if c.get("type") != "Established"]
            conds.append({"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                          "message": "the initial names have been accepted", "lastTransitionTime": now()})
            st["conditions"] = conds
        if self._mutate(("apiextensions.k8s.io", "customresourcedefinitions", "", name), fn) is not None:
            self.api.refresh_crd_types()

    # ------------------------------------------------------------ nodes
    def _ready_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.store.items("", "nodes")
                if not (n.get("spec") or {}).get("unschedulable")]

    def _pick_node(self, selector: dict[str, str] | None = None) -> str | None:
        """Round-robin over the ready nodes whose labels match the pod's `nodeSelector` (the
        scheduler's NodeAffinity filter; a pod no node matches stays Pending, Unschedulable)."""
        nodes = [n for n in self._ready_nodes()
                 if all(((n.get("metadata") or {}).get("labels") or {}).get(k) == v
                        for k, v in (selector or {}).items())]
        if not nodes:
            return None
        with self._lock:
            self._rr += 1
            return nodes[self._rr % len(nodes)]["metadata"]["name"]

    def _unschedulable(self, selector: dict[str, str]) -> str:
        """The scheduler's message for a pod no node takes (its wording, kube-scheduler 1.33)."""
        total = len(self.store.items("", "nodes"))
        if total == 0:
            return "no nodes available to schedule pods"
        ready = self._ready_nodes()
        parts = []
        if selector and ready:
            parts.append(f"{len(ready)} node(s) didn't match Pod's node affinity/selector")
        if total - len(ready):
            parts.append(f"{total - len(ready)} node(s) were unschedulable")
        # kube-scheduler then reports its PostFilter (preemption), which cannot help a selector either
        return (f"0/{total} nodes are available: {', '.join(parts)}. preemption: 0/{total} nodes are available: "
                f"{total} Preemption is not helpful for scheduling.")

    def nodes_changed(self) -> None:
        for ds in self.store.items("apps", "daemonsets"):
            self.kick_ds((ds["metadata"]["namespace"], ds["metadata"]["name"]))
        self.retry_pending()

    # ------------------------------------------------------------ DaemonSets
    def kick_ds(self, ident: tuple[str, str]) -> None:
        with self._lock:
            if ident in self._ds_ticking:
                return
            self._ds_ticking.add(ident)
        self.sched.call_later(self._ds_step(), lambda: self._ds_tick(ident))

    def _ds_step(self) -> float:
        return max(0.01, self.rollout_delay / (len(self.store.items("", "nodes")) + 1))

    def _ds_tick(self, ident: tuple[str, str]) -> None:
        key = ("apps", "daemonsets", ident[0], ident[1])
        done = True
        with self.store.lock, self._lock:
            ds = self.store.get(key)
            if ds is None:
                self._ds_ticking.discard(ident)
                return
            gen = ds["metadata"].get("generation", 1)
            sel = ((ds.get("spec") or {}).get("template") or {}).get("spec", {}).get("nodeSelector") or {}
            targets = {n["metadata"]["name"] for n in self.store.items("", "nodes")
                       if all((n["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items())}
            pods = self._ds_pods.setdefault(ident, {})
            status = ds.get("status") or {}
            batch = _max_unavailable(ds, len(targets))
            for node in [n for n in pods if n not in targets]:
                del pods[node]
            broken = broken_images(ds)
            before = {n: dict(p) for n, p in pods.items()}
            if status.get("observedGeneration") != gen:
                status["observedGeneration"] = gen
                for node in targets - set(pods):
                    pods[node] = {"gen": gen, "ready": False}
                done = False
            else:
                for node in sorted(targets - set(pods)):
                    pods[node] = {"gen": gen, "ready": False}
                waiting = sorted(n for n, p in pods.items() if p["gen"] == gen and not p["ready"])
                for node in waiting[:0 if broken else batch]:  # the kubelet cannot pull a -broken image
                    pods[node]["ready"] = True
                # Old pods that are not available go first and cost nothing of the budget, as the
                # DaemonSet controller's rolling update does (a stalled bad rollout can be replaced).
                for node in sorted(n for n, p in pods.items() if p["gen"] != gen and not p["ready"]):
                    pods[node] = {"gen": gen, "ready": False}
                unavailable = sum(1 for p in pods.values() if not p["ready"])
                old = sorted(n for n, p in pods.items() if p["gen"] != gen)
                for node in old[:max(0, batch - unavailable)]:
                    pods[node] = {"gen": gen, "ready": False}
                done = all(p["gen"] == gen and p["ready"] for p in pods.values()) and set(pods) == targets
            ready = sum(1 for p in pods.values() if p["ready"])
            updated = sum(1 for p in pods.values() if p["gen"] == gen)
            new_status = {"currentNumberScheduled": len(pods), "desiredNumberScheduled": len(targets),
                          "numberMisscheduled": 0, "numberReady": ready, "observedGeneration": gen}
            if updated:
                new_status["updatedNumberScheduled"] = updated
            if ready:
                new_status["numberAvailable"] = ready
            if len(targets) - ready > 0:
                new_status["numberUnavailable"] = len(targets) - ready
            stalled = bool(broken) and not done and pods == before and ds.get("status") == new_status
            if ds.get("status") != new_status:
                ds["status"] = new_status
                self.store.put(key, ds)
            stuck = sorted(n for n, p in pods.items() if broken and p["gen"] == gen and not p["ready"])
            self._image_pull_pods(ds, stuck, broken)
            if done or stalled:  # a stalled rollout moves again when the DaemonSet changes
                self._ds_ticking.discard(ident)
        if done:
            self.retry_pending()
        elif not stalled:
            self.sched.call_later(self._ds_step(), lambda: self._ds_tick(ident))

    def _image_pull_pods(self, ds: dict[str, Any], nodes: list[str], broken: list[str]) -> None:
        """Pod objects for the DaemonSet's pods that cannot pull their image (ImagePullBackOff);
        the others stay internal. Pods of a node that no longer has a stuck pod are deleted."""
        md = ds["metadata"]
        ns, owner = md["namespace"], md["name"]
        tpl = (ds.get("spec") or {}).get("template") or {}
        wanted = {f"{owner}-{_short(owner + n)}": n for n in nodes}
        for pod in self.store.items("", "pods", ns):
            refs = pod["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == md.get("uid") for r in refs) and pod["metadata"]["name"] not in wanted:
                self.store.delete(("", "pods", ns, pod["metadata"]["name"]))
        for name, node in wanted.items():
            if self.store.get(("", "pods", ns, name)) is not None:
                continue
            t = now()
            spec = copy.deepcopy(tpl.get("spec") or {})
            spec["nodeName"] = node

            def waiting(c: dict[str, Any]) -> dict[str, Any]:
                image = c.get("image", "")
                bad = image in broken
                state = ({"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}}
                         if bad else {"waiting": {"reason": "PodInitializing"}})
                return {"name": c.get("name", ""), "image": image, "imageID": "", "ready": False,
                        "started": False, "restartCount": 0, "state": state}
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()), "creationTimestamp": t,
                                "generateName": f"{owner}-", "labels": dict((tpl.get("metadata") or {}).get("labels")
                                                                            or {}),
                                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": owner,
                                                     "uid": md.get("uid", ""), "controller": True,
                                                     "blockOwnerDeletion": True}]},
                   "spec": spec,
                   "status": {"phase": "Pending", "hostIP": _node_ip(node, self.store), "startTime": t,
                              "qosClass": "Burstable",
                              "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                                             {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                                              "lastTransitionTime": t}],
                              "initContainerStatuses": [waiting(c) for c in spec.get("initContainers") or []],
                              "containerStatuses": [waiting(c) for c in spec.get("containers") or []]}}
            stored = self.store.put(("", "pods", ns, name), pod)
            for image in broken:
                self.event(stored, "Pod", "Normal", "Pulling", f'Pulling image "{image}"', "kubelet", node)
                self.event(stored, "Pod", "Warning", "Failed",
                           f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and '
                           f'unpack image "{image}": failed to resolve reference "{image}": {image}: not found',
                           "kubelet", node)
                self.event(stored, "Pod", "Warning", "Failed", "Error: ErrImagePull", "kubelet", node)
                self.event(stored, "Pod", "Normal", "BackOff", f'Back-off pulling image "{image}"', "kubelet", node)
                self.event(stored, "Pod", "Warning", "Failed", "Error: ImagePullBackOff", "kubelet", node)

    # ------------------------------------------------------------ pods and the CNI
    def multus_ready(self) -> bool:
        for ds in self.store.items("apps", "daemonsets"):
            spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
            images = [c.get("image", "") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])]
            if any("multus" in i for i in images) and (ds.get("status") or {}).get("numberReady", 0) >= 1:
                return True
        return False

    def retry_pending(self) -> None:
        with self._lock:
            if self._retry_scheduled or not self._pending:
                return
            self._retry_scheduled = True

        def run() -> None:
            with self._lock:
                self._retry_scheduled = False
                keys = list(self._pending)
            for k in keys:
                self._start_pod(k)
        self.sched.call_later(0.0, run)

    def _start_pod(self, key: Key) -> None:
        with self.store.lock:
            pod = self.store.get(key)
            if pod is None or (pod.get("status") or {}).get("phase") != "Pending":
                with self._lock:
                    self._pending.discard(key)
                return
            original = copy.deepcopy(pod)
            md, spec = pod["metadata"], pod.setdefault("spec", {})
            node = spec.get("nodeName")
            if not node:
                node = self._pick_node(spec.get("nodeSelector") or {})
                if node is None:
                    self._park(key)
                    return
                spec["nodeName"] = node
                pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True",
                                                "lastTransitionTime": now()}]
            uid = md["uid"]
            if self.real_cni is not None and self.multus_ready():
                if pod != original:
                    self.store.put(key, pod)
                with self._lock:
                    if key in self._inflight:
                        return
                    self._inflight.add(key)
                threading.Thread(target=self._real_add, args=(key, node), daemon=True,
                                 name=f"cni-add-{key[3]}").start()
                return
            try:
                interfaces = self._setup_network(pod, uid)
            except CniError as e:
                self.ipam.release(uid)  # a failed ADD is followed by a DEL: nothing stays allocated
                self._drop_allocations(f"{md['namespace']}/{md['name']}")
                stored = self.store.put(key, pod) if pod != original else pod
                self.event(stored, "Pod", "Warning", "FailedCreatePodSandBox",
                           f'Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup '
                           f'network for sandbox "{uid.replace("-", "")}": plugin type="multus" '
                           f'name="multus-cni-network" failed (add): [{key[2]}/{key[3]}/{uid}:{e}', "kubelet", node)
                self._park(key)
                return
            t = now()
            if interfaces is not None:
                pod.setdefault("metadata", {}).setdefault("annotations", {})[NETWORK_STATUS] = json.dumps(
                    interfaces, indent=4)
            pod["status"] = self._running_status(pod, node, str(self._pod_ips[uid]), t)
            stored = self.store.put(key, pod)
            with self._lock:
                self._pending.discard(key)
        for i in interfaces or []:
            self.event(stored, "Pod", "Normal", "AddedInterface",
                       f"Add {i['interface']} [{', '.join(i['ips'])}] from {i['name']}", "multus", node)
        for c in spec.get("containers") or []:
            self.event(stored, "Pod", "Normal", "Started", f"Started container {c.get('name', '')}", "kubelet", node)

    def _running_status(self, pod: dict[str, Any], node: str, eth0: str, t: str) -> dict[str, Any]:
        return {
            "phase": "Running", "hostIP": _node_ip(node, self.store), "podIP": eth0,
            "podIPs": [{"ip": eth0}], "startTime": t, "qosClass": "BestEffort",
            "conditions": [{"type": c, "status": "True", "lastTransitionTime": t}
                           for c in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "containerStatuses": [{
                "name": c.get("name", ""), "image": c.get("image", ""), "imageID": "", "ready": True,
                "started": True, "restartCount": 0, "containerID": "containerd://" + secrets.token_hex(32),
                "state": {"running": {"startedAt": t}}} for c in (pod.get("spec") or {}).get("containers") or []],
        }

    def _real_add(self, key: Key, node: str) -> None:
        """The kubelet's CNI ADD on the real data path, outside the store lock: Multus and
        Whereabouts call this server back (GET pod and NAD, IPPool, Lease, pods/status)."""
        from sandbox.kube.uml import GuestError

        with self.store.lock:
            pod = copy.deepcopy(self.store.get(key))
        try:
            if pod is None:
                return
            try:
                out = self.real_cni.add(pod, node)
            except (CniError, GuestError, OSError) as e:
                with self.store.lock:
                    cur = self.store.get(key)
                    if cur is not None and cur["metadata"]["uid"] == pod["metadata"]["uid"]:
                        uid = pod["metadata"]["uid"]
                        self.event(cur, "Pod", "Warning", "FailedCreatePodSandBox",
                                   f'Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup '
                                   f'network for sandbox "{uid.replace("-", "")}": plugin type="multus" '
                                   f'name="multus-cni-network" failed (add): {e}', "kubelet", node)
                        self._park(key)
                return
            with self.store.lock:
                cur = self.store.get(key)
                alive = cur is not None and cur["metadata"]["uid"] == pod["metadata"]["uid"]
                if alive:
                    cur = copy.deepcopy(cur)
                    cur["status"] = self._running_status(cur, node, out["eth0"], now())
                    stored = self.store.put(key, cur)
                    with self._lock:
                        self._pending.discard(key)
            if not alive:
                self.real_cni.delete(pod)
                return
            status = json.loads((stored["metadata"].get("annotations") or {}).get(NETWORK_STATUS) or "[]")
            for i in status:
                if not i.get("default"):
                    self.event(stored, "Pod", "Normal", "AddedInterface",
                               f"Add {i.get('interface')} [{', '.join(i.get('ips') or [])}] from {i.get('name')}",
                               "multus", node)
            for c in stored["spec"].get("containers") or []:
                self.event(stored, "Pod", "Normal", "Started", f"Started container {c.get('name', '')}",
                           "kubelet", node)
        finally:
            with self._lock:
                self._inflight.discard(key)

    # ------------------------------------------------------------ Whereabouts' IPPool objects
    def _release(self, uid: str, podref: str) -> None:
        """Whereabouts' reconciler: drop a deleted pod's allocations from the IPPools, free the IPs."""
        self._drop_allocations(podref)
        if self.ipam.release(uid):
            self.retry_pending()

    def _drop_allocations(self, podref: str) -> None:
        with self.store.lock:
            for pool in self.store.items(IPPOOL_GROUP, IPPOOL_PLURAL):
                allocs = (pool.get("spec") or {}).get("allocations") or {}
                keep = {k: a for k, a in allocs.items() if a.get("podref") != podref}
                if keep != allocs:
                    pool["spec"]["allocations"] = keep
                    self.store.put((IPPOOL_GROUP, IPPOOL_PLURAL, pool["metadata"]["namespace"],
                                    pool["metadata"]["name"]), pool)

    def _record_allocation(self, rng: Any, ip: Any, podref: str, uid: str) -> None:
        """Write the allocation into the range's IPPool (created on first use), as Whereabouts does."""
        name = ippool_name(rng)
        key = (IPPOOL_GROUP, IPPOOL_PLURAL, WHEREABOUTS_NAMESPACE, name)
        with self.store.lock:
            pool = self.store.get(key) or {
                "apiVersion": f"{IPPOOL_GROUP}/v1alpha1", "kind": "IPPool",
                "metadata": {"name": name, "namespace": WHEREABOUTS_NAMESPACE, "uid": str(uuid.uuid4()),
                             "creationTimestamp": now(), "generation": 1},
                "spec": {"range": str(rng.network), "allocations": {}}}
            offset = int(ip) - int(rng.network.network_address)
            pool["spec"].setdefault("allocations", {})[str(offset)] = {
                "id": sandbox_id(uid), "podref": podref}  # v0.7.0 writes no ifname (v0.8.0 adds it)
            self.store.put(key, pool)

    def _park(self, key: Key) -> None:
        with self._lock:
            self._pending.add(key)
        self.sched.call_later(POD_RETRY, lambda: self._start_pod(key))

    def _setup_network(self, pod: dict[str, Any], uid: str) -> list[dict[str, Any]] | None:
        """Allocate eth0 and the Multus interfaces; None when Multus is not installed."""
        md = pod["metadata"]
        with self._lock:
            if uid not in self._pod_ips:
                self._next_pod_ip += 1
                self._pod_ips[uid] = NODE_CIDR.network_address + self._next_pod_ip + 1
            eth0 = self._pod_ips[uid]
        if not self.multus_ready():
            return None
        status = [{"name": "gke-pod-network", "interface": "eth0", "ips": [str(eth0)], "mac": _mac(),
                   "default": True, "dns": {}, "gateway": ["\u003cnil\u003e"]}]
        text = (md.get("annotations") or {}).get(NETWORKS, "")
        for n, sel in enumerate(parse_networks(text, md["namespace"]), start=1):
            nad = self.store.get(("k8s.cni.cncf.io", "network-attachment-definitions", sel.namespace, sel.name))
            if nad is None:
                raise CniError(
                    f"{md['name']}]: error loading k8s delegates k8s args: TryLoadPodDelegates: error in getting k8s "
                    f"network for pod: GetNetworkDelegates: failed getting the delegate: getKubernetesDelegate: "
                    f"cannot find a network-attachment-definition ({sel.name}) in namespace ({sel.namespace}): "
                    f'network-attachment-definitions.k8s.cni.cncf.io "{sel.name}" not found')
            rng = parse_ipam((nad.get("spec") or {}).get("config"), sel.ref)
            ip = self.ipam.allocate(rng, uid, sel.ref)
            self._record_allocation(rng, ip, f"{md['namespace']}/{md['name']}", uid)
            status.append({"name": sel.ref, "interface": sel.interface or f"net{n}",
                           "ips": [str(ip)], "mac": _mac(), "dns": {}})
        return status


def broken_images(ds: dict[str, Any]) -> list[str]:
    """The template's images whose tag contains `-broken`: the sandbox's registry has no such tag."""
    spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    out = []
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        image = str(c.get("image", ""))
        name = image.split("@", 1)[0].rsplit("/", 1)[-1]
        if ":" in name and "-broken" in name.split(":", 1)[1] and image not in out:
            out.append(image)
    return out


def _short(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:5]


def ippool_name(rng: Any) -> str:
    """Whereabouts' IPPool name: the range with `/` (and IPv6 `:`) as `-`, after the network_name."""
    text = str(rng.network)
    if text.split("/")[0].endswith(":"):
        text = text.replace("/", "0/", 1)
    text = text.replace(":", "-").replace("/", "-")
    return f"{rng.network_name}-{text}" if rng.network_name else text


def sandbox_id(uid: str) -> str:
    """A pod sandbox (container) id: 64 hex digits, stable for the pod."""
    import hashlib

    return hashlib.sha256(uid.encode()).hexdigest()


def _established(crd: dict[str, Any]) -> bool:
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (crd.get("status") or {}).get("conditions") or [])


def _max_unavailable(ds: dict[str, Any], n: int) -> int:
    ru = (((ds.get("spec") or {}).get("updateStrategy") or {}).get("rollingUpdate") or {})
    v = ru.get("maxUnavailable", 1)
    if isinstance(v, str) and v.endswith("%"):
        try:
            v = math.floor(n * int(v[:-1]) / 100)
        except ValueError:
            v = 1
    return max(1, int(v) if isinstance(v, int) else 1)


def _mac() -> str:
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _node_status(index: int) -> dict[str, Any]:
    t = now()
    return {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "kubelet is posting ready status", "lastHeartbeatTime": t,
                        "lastTransitionTime": t}],
        "addresses": [{"type": "InternalIP", "address": f"10.0.1.{index + 2}"}],
        "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
        "allocatable": {"cpu": "3920m", "memory": "13Gi", "pods": "110"},
        "nodeInfo": {"kubeletVersion": "v1.30.5-gke.1014001", "kubeProxyVersion": "v1.30.5-gke.1014001",
                     "containerRuntimeVersion": "containerd://1.7.22", "operatingSystem": "linux",
                     "architecture": "amd64", "osImage": "Container-Optimized OS from Google",
                     "kernelVersion": "6.1.100+", "bootID": str(uuid.uuid4()), "machineID": uuid.uuid4().hex,
                     "systemUUID": str(uuid.uuid4())},
    }


def _node_ip(node: str, store) -> str:
    n = store.get(("", "nodes", "", node)) or {}
    for a in (n.get("status") or {}).get("addresses") or []:
        if a.get("type") == "InternalIP":
            return a["address"]
    return ""
