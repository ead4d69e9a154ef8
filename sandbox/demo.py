"""`multus-provisioner demo`: the whole procedure, end to end, offline, in under a minute.

The story, told with a progress display:
1. the sandbox starts (emulators, GKE and cluster APIs, the four functions behind push subscriptions);
2. a NAD is requested *before* its cluster exists (it waits as PENDING);
3. an opted-in cluster is created through the GKE API; the controller prechecks it, creates the node
   pool with the additional networks, reacts to that pool's audit event, installs Multus + Whereabouts;
4. an ineligible cluster that existed before the controller (no event for it) is adopted by a
   reconcile tick: it ends INELIGIBLE with findings and their fixes;
5. the early NAD is applied once the cluster is READY; a sample pod gets `net1` from the range;
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
    import grpc
    from google.cloud import container_v1
    from google.cloud.container_v1.services.cluster_manager.transports import ClusterManagerGrpcTransport

    from sandbox.stack import DEFAULT_SCENARIO, Stack
    from shared.cli_online import publish_request
    from shared.refs import ClusterRef
    from shared.settings import Settings
    from shared.store import Store

    p = Progress(quiet=args.json)
    scenario = Path(args.scenario) if args.scenario else DEFAULT_SCENARIO
    from sandbox.gke.realism import Realism

    # Calm until the controller copes with GKE's ordinary day (issue 11); the lead flips this to None.
    stack = Stack(scenario=scenario, state_dir=Path(args.state_dir), progress=p.step, realism=Realism.calm())
    summary: dict[str, Any] = {}
    try:
        env = stack.start()
        p.ok(f"sandbox up: GKE {env['MULTUS_PROVISIONER_GKE_ENDPOINT']}, Firestore "
             f"{env['FIRESTORE_EMULATOR_HOST']}, Pub/Sub {env['PUBSUB_EMULATOR_HOST']}, 4 functions")
        import os

        os.environ.update(env)
        settings = Settings.from_env()
        store = Store(settings)
        project, location = stack.project, "us-central1"
        eligible = ClusterRef(project, location, "demo-eligible")
        legacy = ClusterRef(project, location, "demo-legacy")
        channel = grpc.insecure_channel(env["MULTUS_PROVISIONER_GKE_ENDPOINT"])
        gke = container_v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(channel=channel))

        p.step(f"requesting NAD {EARLY_NAD['namespace']}/{EARLY_NAD['name']} on {eligible.cluster} "
               "before the cluster exists")
        publish_request({**EARLY_NAD, "cluster": eligible.path}, env["MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS"])
        doc = _wait(lambda: store.get_nad(eligible, EARLY_NAD["namespace"], EARLY_NAD["name"]), args.timeout)
        if doc and doc.get("state") == "PENDING":
            p.ok(f"NAD recorded as PENDING: {doc.get('message', '')}")
        else:
            p.fail(f"early NAD not PENDING: {doc and doc.get('state')}")

        p.step(f"creating opted-in cluster {eligible.cluster} through the GKE API")
        parent = f"projects/{project}/locations/{location}"
        from sandbox.gke.server import cluster_message

        gke.create_cluster(parent=parent, cluster=cluster_message(stack.gke.cluster_spec(eligible.cluster)))
        p.step(f"{legacy.cluster} already exists without a workflow: a reconcile tick adopts it")
        stack.publish("reconcile", b"{}")

        seen: dict[str, str] = {}

        def watch(ref: ClusterRef, want: str) -> Any:
            rec = store.get_cluster(ref)
            state = rec.state if rec else None
            if state and seen.get(ref.cluster) != state:
                seen[ref.cluster] = state
                p.say("->", f"{ref.cluster}: {state}")
            return rec if state in (want, "FAILED") else None

        rec = _wait(lambda: watch(legacy, "INELIGIBLE"), args.timeout)
        if rec and rec.state == "INELIGIBLE":
            p.ok(f"{legacy.cluster} is INELIGIBLE; findings:")
            for f in rec.data.get("findings") or []:
                if f.get("severity") == "error":
                    p.say("  ", f"{f['id']}: {f['message']}  (fix: {f['fix']})")
        else:
            p.fail(f"{legacy.cluster} did not become INELIGIBLE (state {rec and rec.state})")

        rec = _wait(lambda: watch(eligible, "READY"), args.timeout)
        if rec and rec.state == "READY":
            pool = rec.data.get("nodePool") or {}
            p.ok(f"{eligible.cluster} READY: bundle {rec.data.get('bundleVersion')}, node pool "
                 f"{pool.get('name')} ({pool.get('secondaryPodRange')} = {pool.get('cidr')})")
        else:
            p.fail(f"{eligible.cluster} did not become READY (state {rec and rec.state}; "
                   f"last error {rec and rec.data.get('lastError')})")

        doc = _wait(lambda: (lambda n: n if n and n.get("state") != "PENDING" else None)(
            store.get_nad(eligible, EARLY_NAD["namespace"], EARLY_NAD["name"])), args.timeout)
        nad_range = doc.get("range") if doc else None
        if doc and doc.get("state") == "APPLIED":
            p.ok(f"early NAD applied with range {nad_range}")
        else:
            p.fail(f"early NAD not applied: {doc and doc.get('state')} {doc and doc.get('message')}")

        ip = _sample_pod(stack, eligible.cluster, p, nad_range, args.timeout)
        summary = {"clusters": {eligible.cluster: rec.state if rec else None,
                                legacy.cluster: (store.get_cluster(legacy) or rec).state},
                   "nad": doc.get("state") if doc else None, "range": nad_range, "podIp": ip}
        _print_trail(store, eligible, p)
        _print_objects(stack, eligible.cluster, p)
        channel.close()
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
