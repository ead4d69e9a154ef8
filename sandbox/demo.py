"""`multus-provisioner demo`: the whole procedure, end to end, offline, in under a minute.

The story, told with a progress display:
1. the sandbox starts (emulators, GKE and cluster APIs, the four functions behind push subscriptions);
2. a NAD is requested *before* its cluster exists (it waits as PENDING);
3. an opted-in cluster is created through the GKE API; the controller prechecks it, creates the node
   pool with the additional networks, reacts to that pool's audit event, installs Multus + Whereabouts;
4. an ineligible cluster that existed before the controller (no event for it) is adopted by a
   reconcile tick: it ends INELIGIBLE with findings and their fixes;
5. the early NAD is applied once the cluster is READY; a sample pod gets `net1` from the range;
   with `--kube real`, from real Multus and Whereabouts, and a peer pod on another node of the pool
   reaches it over IPVLAN layer 2 (the kernel's addresses and ICMP/ARP from inside the pods);
6. the Firestore audit trail and the objects in the cluster are printed.
Exit 0 only if every milestone reached its expected state.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EARLY_NAD = {"name": "data-plane", "namespace": "default"}


@dataclass
class Progress:
    started: float = field(default_factory=time.monotonic)
    failures: list[str] = field(default_factory=list)
    quiet: bool = False

    def say(self, mark: str, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.started:5.1f}s] {mark} {text}", flush=True)

    def step(self, text: str) -> None:
        self.say("..", text)

    def ok(self, text: str) -> None:
        self.say("OK", text)

    def fail(self, text: str) -> None:
        self.failures.append(text)
        self.say("!!", text)


def _wait(predicate: Any, timeout: float, poll: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(poll)


def run_demo(args: argparse.Namespace) -> int:
    """Play the story on a fresh sandbox; exit 0 only if every chapter reached its expected state."""
    from sandbox.stack import DEFAULT_SCENARIO, Stack

    p = Progress(quiet=args.json)
    inherited = _drop_inherited_configuration()
    if inherited:
        p.say("  ", f"ignoring {len(inherited)} variable(s) from your environment that would configure the "
                    f"controller or point it elsewhere: {', '.join(inherited)}")
    scenario = Path(args.scenario) if args.scenario else DEFAULT_SCENARIO
    # realism None: the scenario's (the default scenario is realistic: GKE on an ordinary day).
    stack = Stack(scenario=scenario, state_dir=Path(args.state_dir), progress=p.step, realism=None,
                  kube=getattr(args, "kube", "sim"))
    summary: dict[str, Any] = {}
    try:
        story = _Story(stack, p, args.timeout)
        summary = story.play()
    except Exception as e:  # the demo must say what broke, then stop everything
        p.fail(f"{type(e).__name__}: {e}")
    finally:
        p.step("stopping the sandbox")
        stack.stop()
    elapsed = time.monotonic() - p.started
    summary.update({"ok": not p.failures, "failures": p.failures, "seconds": round(elapsed, 1)})
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    elif p.failures:
        print(f"\ndemo FAILED after {elapsed:.1f}s:\n  - " + "\n  - ".join(p.failures))
    else:
        print(f"\ndemo passed in {elapsed:.1f}s: every step reached its expected state.")
    return 0 if not p.failures else 1


# What a shell may hold that would make the demo's functions read another deployment's configuration
# (a collection prefix, topics, a node-pool template) or talk to other emulators.
_INHERITED = ("MULTUS_PROVISIONER_", "FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "CLOUDSDK_CONFIG",
              "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT")
_KEPT = ("MULTUS_PROVISIONER_CACHE",)  # where the real tier's builds are (sandbox/gobuild.py), not configuration


def _drop_inherited_configuration() -> list[str]:
    """The demo plays a fixed story on its own sandbox: drop what the caller's shell would inject
    into its functions, and say so (their names only: values may be private)."""
    import os

    names = sorted(k for k in os.environ if k.startswith(_INHERITED) and k not in _KEPT)
    for k in names:
        del os.environ[k]
    return names


class _Story:
    """The chapters of the demo, in order, against one started stack. Each waits for an end state
    (never for "no longer the previous state"), then judges it."""

    def __init__(self, stack: Any, p: Progress, timeout: float) -> None:
        self.stack, self.p, self.timeout = stack, p, timeout
        self.seen: dict[str, str] = {}

    def play(self) -> dict[str, Any]:
        import os

        import grpc
        from google.cloud import container_v1
        from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport

        from shared.adapters.store import Store
        from shared.core.refs import ClusterRef
        from shared.core.settings import Settings

        env = self.stack.start()
        self.p.ok(f"sandbox up: GKE {env['MULTUS_PROVISIONER_GKE_ENDPOINT']}, Firestore "
                  f"{env['FIRESTORE_EMULATOR_HOST']}, Pub/Sub {env['PUBSUB_EMULATOR_HOST']}, 4 functions")
        os.environ.update(env)
        self.env = env
        self.store = Store(Settings.from_env())
        project, location = self.stack.project, "us-central1"
        eligible = ClusterRef(project, location, "demo-eligible")
        legacy = ClusterRef(project, location, "demo-legacy")
        channel = grpc.insecure_channel(env["MULTUS_PROVISIONER_GKE_ENDPOINT"])
        try:
            gke = container_v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))
            self.request_early_nad(eligible)
            self.create_clusters(gke, eligible, legacy)
            legacy_rec = self.legacy_is_ineligible(legacy)
            rec = self.eligible_is_ready(eligible)
            doc = self.early_nad_applied(eligible)
            nad_range = doc.get("range") if doc else None
            ip = _sample_pod(self.stack, eligible.cluster, self.p, nad_range, self.timeout)
            peers = _peer_on_layer2(self.stack, eligible.cluster, self.p, nad_range, self.timeout) if ip else None
            verified = self.verify_nad(eligible) if doc and doc.get("state") == "APPLIED" else None
            _print_trail(self.store, eligible, self.p)
            _print_objects(self.stack, eligible.cluster, self.p)
        finally:
            channel.close()
        return {"clusters": {eligible.cluster: rec.state if rec else None,
                             legacy.cluster: legacy_rec.state if legacy_rec else None},
                "nad": doc.get("state") if doc else None, "range": nad_range, "podIp": ip,
                **({"layer2": peers} if peers is not None else {}),
                **({"verify": verified} if verified is not None else {})}

    def verify_nad(self, eligible: Any) -> dict[str, Any]:
        """`multus-provisioner verify` on the early NAD: its pod and a peer on another node, each one's
        node, net1 as Multus reported it, Whereabouts' IPPool entry and (real tier) the kernel's net1,
        and whether the two reach each other over net1."""
        import uuid

        from multus_cli.online import print_datapath
        from shared.app import Controller
        from shared.core.settings import Settings

        ns, name = EARLY_NAD["namespace"], EARLY_NAD["name"]
        self.p.step(f"multus-provisioner verify {eligible.cluster} {ns}/{name}")
        out = Controller(Settings.from_env(self.env), store=self.store).verify(
            eligible, ns, name, event_id=f"demo-verify-{uuid.uuid4().hex[:12]}")
        report = out.details.get("datapath")
        if out.status == "done":
            self.p.ok(f"{ns}/{name}: {out.state}: {out.message}")
        else:
            self.p.fail(f"verify {ns}/{name}: {out.state}: {out.message}")
        if not self.p.quiet:
            print_datapath(report)
        return {"ok": out.status == "done", "state": out.state, "message": out.message, "datapath": report}

    def request_early_nad(self, eligible: Any) -> None:
        from multus_cli.online import publish_request

        self.p.step(f"requesting NAD {EARLY_NAD['namespace']}/{EARLY_NAD['name']} on {eligible.cluster} "
                    "before the cluster exists")
        publish_request({**EARLY_NAD, "cluster": eligible.path}, self.env["MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS"],
                        env=self.env)
        doc = _wait(lambda: _record(self.store.get_nad(eligible, EARLY_NAD["namespace"], EARLY_NAD["name"])),
                    self.timeout)
        if doc and doc.get("state") == "PENDING":
            self.p.ok(f"NAD recorded as PENDING: {doc.get('message', '')}")
        else:
            self.p.fail(f"early NAD not PENDING: {doc and doc.get('state')}")

    def create_clusters(self, gke: Any, eligible: Any, legacy: Any) -> None:
        from sandbox.gke.server import cluster_message

        self.p.step(f"creating opted-in cluster {eligible.cluster} through the GKE API")
        parent = f"projects/{eligible.project}/locations/{eligible.location}"
        gke.create_cluster(parent=parent, cluster=cluster_message(self.stack.gke.cluster_spec(eligible.cluster)))
        self.p.step(f"{legacy.cluster} already exists without a workflow: a reconcile tick adopts it")
        self.stack.publish("reconcile", b"{}")

    def watch(self, ref: Any, want: str) -> Any:
        rec = self.store.get_cluster(ref)
        state = rec.state if rec else None
        if state and self.seen.get(ref.cluster) != state:
            self.seen[ref.cluster] = state
            self.p.say("->", f"{ref.cluster}: {state}")
        return rec if state in (want, "FAILED") else None

    def legacy_is_ineligible(self, legacy: Any) -> Any:
        rec = _wait(lambda: self.watch(legacy, "INELIGIBLE"), self.timeout)
        if rec and rec.state == "INELIGIBLE":
            self.p.ok(f"{legacy.cluster} is INELIGIBLE; findings:")
            for f in rec.data.get("findings") or []:
                if f.get("severity") == "error":
                    self.p.say("  ", f"{f['id']}: {f['message']}  (fix: {f['fix']})")
        else:
            self.p.fail(f"{legacy.cluster} did not become INELIGIBLE (state {rec and rec.state})")
        return rec

    def eligible_is_ready(self, eligible: Any) -> Any:
        rec = _wait(lambda: self.watch(eligible, "READY"), self.timeout)
        if rec and rec.state == "READY":
            pool = rec.data.get("nodePool") or {}
            self.p.ok(f"{eligible.cluster} READY: bundle {rec.data.get('bundleVersion')}, node pool "
                      f"{pool.get('name')} ({pool.get('secondaryPodRange')} = {pool.get('cidr')})")
        else:
            self.p.fail(f"{eligible.cluster} did not become READY (state {rec and rec.state}; "
                        f"last error {rec and rec.data.get('lastError')})")
        return rec

    def early_nad_applied(self, eligible: Any) -> Any:
        from shared.core.decisions import NAD_SETTLED

        # Wait for the request's outcome (PENDING and APPLYING are on the way to it), then judge it.
        doc = _wait(lambda: (lambda n: n if n and n.get("state") in NAD_SETTLED else None)(
            _record(self.store.get_nad(eligible, EARLY_NAD["namespace"], EARLY_NAD["name"]))), self.timeout)
        if doc and doc.get("state") == "APPLIED":
            self.p.ok(f"early NAD applied with range {doc.get('range')}")
        else:
            self.p.fail(f"early NAD not applied: {doc and doc.get('state')} {doc and doc.get('message')}")
        return doc


def _record(rec: Any) -> dict[str, Any] | None:
    """A NAD record as the demo shows it: the document as stored."""
    return dict(rec.data) if rec is not None else None


def _sample_pod(stack: Any, cluster: str, p: Progress, nad_range: str | None, timeout: float) -> str | None:
    """Attach a pod the way a user would: the networks annotation, nothing else."""
    from kubernetes import client as k8s
    from kubernetes import config as kconfig

    kubeconfig = Path(stack.env["MULTUS_PROVISIONER_KUBECONFIG_DIR"]) / f"{cluster}.yaml"
    api = kconfig.new_client_from_config(config_file=str(kubeconfig))
    core = k8s.CoreV1Api(api)
    name = "sample-pod"
    p.step(f"creating pod default/{name} with k8s.v1.cni.cncf.io/networks: default/{EARLY_NAD['name']}")
    core.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": {"k8s.v1.cni.cncf.io/networks": f"default/{EARLY_NAD['name']}"}},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]},
    })

    def status() -> Any:
        pod = core.read_namespaced_pod(name, "default")
        raw = (pod.metadata.annotations or {}).get("k8s.v1.cni.cncf.io/network-status")
        return json.loads(raw) if raw else None

    nets = _wait(status, timeout)
    api.close()
    if not nets:
        p.fail("sample pod got no network-status")
        return None
    for n in nets:
        p.say("  ", f"{n.get('interface')}: {', '.join(n.get('ips') or [])}  ({n.get('name')})")
    net1 = [n for n in nets if n.get("interface") == "net1"]
    ip = (net1[0].get("ips") or [None])[0] if net1 else None
    if ip and nad_range and ipaddress.ip_address(ip) in ipaddress.ip_network(nad_range):
        p.ok(f"sample pod has net1 = {ip}, inside {nad_range}")
    else:
        p.fail(f"sample pod net1 = {ip}, expected an address in {nad_range}")
    return ip


def _peer_on_layer2(stack: Any, cluster: str, p: Progress, nad_range: str | None,
                    timeout: float) -> dict[str, Any] | None:
    """On the real data path: a peer pod on another node of the sample pod's pool, both pods' net1
    as the kernel shows it, Whereabouts' allocations, and ICMP and ARP between them over net1."""
    server = stack.kube_server(cluster)
    cni = getattr(server, "real_cni", None)
    if cni is None:
        return None  # the simulated CNI: no kernel to ask
    from kubernetes import client as k8s
    from kubernetes import config as kconfig

    kubeconfig = Path(stack.env["MULTUS_PROVISIONER_KUBECONFIG_DIR"]) / f"{cluster}.yaml"
    api = kconfig.new_client_from_config(config_file=str(kubeconfig))
    core = k8s.CoreV1Api(api)
    sample = core.read_namespaced_pod("sample-pod", "default")
    pool = core.read_node(sample.spec.node_name).metadata.labels.get("cloud.google.com/gke-nodepool", "")
    others = [n.metadata.name for n in core.list_node(label_selector=f"cloud.google.com/gke-nodepool={pool}").items
              if n.metadata.name != sample.spec.node_name]
    if not others:
        p.say("  ", f"pool {pool} has one node: no peer on another node to reach")
        api.close()
        return {"peer": None}
    p.step(f"creating pod default/peer-pod on {others[0]} (another node of pool {pool}) on the same NAD")
    core.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "peer-pod",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": f"default/{EARLY_NAD['name']}"}},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": others[0]},
                 "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]},
    })
    peer = _wait(lambda: (lambda q: q if (q.metadata.annotations or {}).get("k8s.v1.cni.cncf.io/network-status")
                          else None)(core.read_namespaced_pod("peer-pod", "default")), timeout)
    api.close()
    if peer is None:
        p.fail("peer pod got no network-status")
        return {"peer": None}
    report: dict[str, Any] = {}
    for pod in (sample, peer):
        kernel = [a for link in cni.addresses(pod.metadata.uid) for a in link.get("addr_info") or []
                  if a.get("family") == "inet"]
        info = cni.pod_info(pod.metadata.uid) or {}
        report[pod.metadata.name] = {"node": pod.spec.node_name, "netns": info.get("netns"),
                                     "net1": [f"{a['local']}/{a['prefixlen']}" for a in kernel]}
        p.say("  ", f"{pod.metadata.name} on {pod.spec.node_name}, netns {info.get('netns')}: net1 "
                    f"{', '.join(report[pod.metadata.name]['net1']) or '(none)'} (from the kernel)")
    target = (report["peer-pod"]["net1"] or [""])[0].split("/")[0]
    reach = cni.ping(sample.metadata.uid, target) if target else {"icmp": False, "arp": False}
    report["reach"] = {"from": "sample-pod", "to": target, "icmp": reach["icmp"], "arp": reach["arp"]}
    inside = bool(target and nad_range and ipaddress.ip_address(target) in ipaddress.ip_network(nad_range))
    if reach["icmp"] and reach["arp"] and inside:
        p.ok(f"sample-pod reaches peer-pod {target} over net1 (IPVLAN L2: ICMP and ARP answered)")
    else:
        p.fail(f"sample-pod does not reach peer-pod {target or '(no address)'} over net1: {reach}")
    return report


def _print_trail(store: Any, ref: Any, p: Progress) -> None:
    if p.quiet:
        return
    entries, _ = store.history(ref, page_size=100)
    print(f"\nFirestore audit trail of {ref.path} (clusters/{ref.doc_id}/history):")
    for h in entries:
        at = h.get("at")
        stamp = at.strftime("%H:%M:%S.%f")[:-3] if hasattr(at, "strftime") else str(at)
        print(f"  {stamp}  {h.get('state', ''):<19} {h.get('step', ''):<17} {h.get('outcome', ''):<7} "
              f"{h.get('message', '')}")


def _print_objects(stack: Any, cluster: str, p: Progress) -> None:
    if p.quiet:
        return
    kubeconfig = Path(stack.env["MULTUS_PROVISIONER_KUBECONFIG_DIR"]) / f"{cluster}.yaml"
    kubectl = shutil.which("kubectl.1.33") or shutil.which("kubectl")
    print(f"\nObjects in {cluster} (kubeconfig {kubeconfig}):")
    if kubectl:
        import subprocess

        out = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "get",
                              "crd,clusterrole,clusterrolebinding,configmap,serviceaccount,daemonset,"
                              "network-attachment-definitions,pods", "-A"],
                             capture_output=True, text=True, timeout=30, check=False)
        print(out.stdout or out.stderr, file=sys.stdout)
        return
    print("  (kubectl not found; `kubectl --kubeconfig ... get ...` shows them)")
