"""Benchmarks on the sandbox stack, through the real functions (`make bench`).

    .venv/bin/python -m scripts.bench [--quick] [--json] [--write-doc]
    .venv/bin/python -m scripts.bench --nad-invariants [REQUESTS]   # the long NAD invariant run

Measures (issue 8): cold start (import time of functions/main.py against a bare
`import functions_framework`, and process start to first event handled); NAD throughput end to
end with 8 concurrent deliveries (HTTP push to on_nad_request until its 2xx; each applies a NAD
on a READY cluster and records it in Firestore) and through Pub/Sub push; economy (Firestore RPCs
per event, counted by the store's gRPC interceptor around the real entry point; cluster-API
requests counted at the sandbox API server, per NAD and per bundle install, next to `kubectl
apply` of the same bundle); scale (the per-event figures with 10 and 1,000 cluster documents
seeded in Firestore); memory (peak RSS of the on_nad_request worker under the throughput load);
the reconcile sweep (issue 14): a second stack whose GKE sandbox holds 1,000 clusters (a generated
scenario) on a handful of shared Kubernetes API servers (`Stack(kube_server_pool=N)`), with READY
cluster documents seeded in Firestore; the scheduled tick is handed to the reconcile entry point
in this process (its Firestore RPCs counted), fans out one scoped reconcile per cluster on the
stack's Pub/Sub topic, and the wall time runs until the reconcile function (functions-framework,
fed by the push subscription) has logged the last cluster's outcome. The same at 10 clusters
gives the per-cluster figures side by side.

Everything binds 127.0.0.1; every process started here is stopped before the script exits.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "BENCHMARKS.md"
KUBECTL = Path("/usr/lib/google-cloud-sdk/bin/kubectl.1.33")
LOCATION = "us-central1"
OPTED_IN = {"multus-provisioner": "enabled"}
CONCURRENCY = 8
NAD_PATH_PART = "/network-attachment-definitions/"


@dataclass(frozen=True)
class Row:
    section: str
    figure: str
    value: str
    target: str = ""
    met: bool | None = None
    note: str = ""


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# 1. Cold start
# --------------------------------------------------------------------------------------------

_IMPORT_FF = "import time; t = time.perf_counter(); import functions_framework; " \
             "print(time.perf_counter() - t)"
_IMPORT_MAIN = (
    "import sys, time, importlib.util; sys.path.insert(0, {repo!r}); t = time.perf_counter(); "
    "spec = importlib.util.spec_from_file_location('main', {src!r}); m = importlib.util.module_from_spec(spec); "
    "sys.modules['main'] = m; spec.loader.exec_module(m); d = time.perf_counter() - t; "
    "heavy = sorted({{'.'.join(n.split('.')[:3 if n.startswith('google.') else 1]) for n in sys.modules "
    "if n.startswith(('google.cloud.firestore', 'google.cloud.pubsub', 'google.cloud.container', "
    "'google.api_core', 'kubernetes', 'grpc'))}}); "
    "print(d, ','.join(heavy))"
)


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=str(REPO), timeout=120).stdout.strip()


def import_times(n: int) -> tuple[float, float, str]:
    """Median import time of functions_framework alone and of functions/main.py (the way
    functions-framework loads a source file), alternating fresh processes to share any drift."""
    ff, main, heavy = [], [], ""
    code_main = _IMPORT_MAIN.format(repo=str(REPO), src=str(REPO / "functions" / "main.py"))
    _python(_IMPORT_FF)  # warm the OS file cache for both
    _python(code_main)
    for _ in range(n):
        ff.append(float(_python(_IMPORT_FF)))
        seconds, _, heavy = _python(code_main).partition(" ")
        main.append(float(seconds))
    return statistics.median(ff), statistics.median(main), heavy


def _function_env(stack: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MULTUS_PROVISIONER_")}
    env.update(stack.env)
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "THREADS": "8"})
    return env


@contextlib.contextmanager
def function_process(stack: Any, target: str, log_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    from sandbox.stack import _stop_group, free_port

    port = free_port()
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", target, "--signature-type", "cloudevent",
             "--source", str(REPO / "functions" / "main.py"), "--host", "127.0.0.1", "--port", str(port)],
            cwd=str(REPO), env=_function_env(stack), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc, f"http://127.0.0.1:{port}/"
    finally:
        _stop_group(proc)


def _listening(url: str) -> bool:
    import socket

    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
        return True
    return False


# The requester's ID token every NAD request carries (issue 24), set once the stack runs:
# the figures include its verification, as production's do.
SIGNED: dict[str, str] = {}


def envelope(payload: bytes, message_id: str) -> dict[str, Any]:
    return {"message": {"data": base64.b64encode(payload).decode(), "messageId": message_id,
                        "publishTime": datetime.now(UTC).isoformat(), "attributes": dict(SIGNED)},
            "subscription": "projects/multus-sandbox/subscriptions/bench"}


# The bench's clusters get a /16 behind the pool's secondary range (`bench_scenario`), so every NAD
# can have a /28 of its own: a NAD's master must be the pool's NIC (eth1), so ranges that never
# overlap are what keeps every request an apply, as on a real cluster with many NADs.
BENCH_POD_RANGE = "172.16.0.0/16"
# The /28s are handed out from here up: the first sixteen lie in 172.16.1.0/24, the secondary range
# of the clusters the per-event figures build in process (`per_event`).
FIRST_NAD_RANGE = "172.16.1.0"
_RANGES: dict[tuple[str, str, int], str] = {}
_RANGES_LOCK = threading.Lock()


def nad_payload(ref: Any, i: int, tag: str) -> bytes:
    """A distinct NAD per request (name and a /28 of its own); the same (cluster, tag, i) gives the
    same body again (a duplicate delivery)."""
    import ipaddress

    with _RANGES_LOCK:
        key = (ref.path, tag, i)
        if key not in _RANGES:
            n = sum(1 for k in _RANGES if k[0] == ref.path)
            _RANGES[key] = str(ipaddress.ip_network((int(ipaddress.ip_address(FIRST_NAD_RANGE)) + 16 * n, 28)))
        cidr = _RANGES[key]
    return json.dumps({"cluster": ref.path, "name": f"{tag}-{i}", "range": cidr}).encode()


def bench_scenario(path: Path) -> Path:
    """The default scenario with the pool's secondary range widened to BENCH_POD_RANGE."""
    from sandbox.stack import DEFAULT_SCENARIO

    text = DEFAULT_SCENARIO.read_text()
    old = "multus-pods: 172.16.1.0/24"
    if old not in text:
        raise SystemExit(f"{DEFAULT_SCENARIO} no longer names {old!r}: update bench_scenario")
    path.write_text(text.replace(old, f"multus-pods: {BENCH_POD_RANGE}"))
    return path


def cold_starts(stack: Any, ref: Any, runs: int, logs: Path) -> dict[str, float]:
    """Process start -> listening -> first event handled (2xx) -> a second (warm) event."""
    import requests

    listen, first, warm = [], [], []
    for r in range(runs):
        tag = f"cold{r}"
        t0 = time.perf_counter()
        with function_process(stack, "on_nad_request", logs / f"cold-{r}.log") as (proc, url):
            while not _listening(url):
                if proc.poll() is not None:
                    raise RuntimeError(f"cold-start function exited: {(logs / f'cold-{r}.log').read_text()[-2000:]}")
                time.sleep(0.005)
            t1 = time.perf_counter()
            status = requests.post(url, json=envelope(nad_payload(ref, 0, tag), f"{tag}-a"), timeout=60).status_code
            t2 = time.perf_counter()
            assert status == 200, status
            requests.post(url, json=envelope(nad_payload(ref, 1, tag), f"{tag}-b"), timeout=60)
            t3 = time.perf_counter()
        listen.append(t1 - t0)
        first.append(t2 - t0)
        warm.append(t3 - t2)
    return {"listen": statistics.median(listen), "first": statistics.median(first),
            "first_event": statistics.median(first) - statistics.median(listen), "warm": statistics.median(warm)}


# --------------------------------------------------------------------------------------------
# Clusters
# --------------------------------------------------------------------------------------------

def make_ready(stack: Any, store: Any, names: list[str], timeout: float = 90.0) -> list[Any]:
    from sandbox.gke.scenario import NodePoolSpec
    from shared.core.refs import ClusterRef

    for name in names:
        stack.gke.create_cluster(name, wait=False, labels=OPTED_IN,
                                 node_pools=(NodePoolSpec("default-pool", node_count=1),))
    refs = [ClusterRef(stack.project, LOCATION, n) for n in names]
    deadline = time.monotonic() + timeout
    for ref in refs:
        while True:
            rec = store.get_cluster(ref)
            if rec is not None and rec.state == "READY" and not rec.data.get("lease"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ref.cluster} is {rec and rec.state}, not READY: "
                                   f"{rec and rec.data.get('lastError')}")
            time.sleep(0.2)
    return refs


def stats_total(stack: Any, refs: list[Any]) -> Counter:
    out: Counter = Counter()
    for ref in refs:
        out.update(stack.kube_server(ref.cluster).stats.snapshot())
    return out


# --------------------------------------------------------------------------------------------
# 2. Throughput and 5. memory
# --------------------------------------------------------------------------------------------

def _worker_pids(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            out += [int(x) for x in text]
    return out


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 once it is gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])
    return 0


def _group_ticks(groups: set[int]) -> int:
    """CPU ticks of every process whose process group is one of `groups` (an emulator's launcher and its JVM)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) in groups:
                total += int(fields[11]) + int(fields[12])
    return total


def _machine_ticks() -> int:
    """Busy CPU ticks of the whole machine (every core): user, nice, system, irq, softirq, steal."""
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in cpu[:8])
    return user + nice + system + irq + softirq + steal


def cpu_sample(worker: int, emulators: set[int]) -> dict[str, int]:
    return {"worker": _ticks(worker), "bench": _ticks(os.getpid()), "emulators": _group_ticks(emulators),
            "machine": _machine_ticks()}


def cpu_shares(before: dict[str, int], after: dict[str, int], wall: float) -> dict[str, float]:
    """CPU used during the load, in cores (CPU seconds per wall second), by who used it."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {k: (after[k] - before[k]) / tick / wall for k in before}
    used["rest"] = max(0.0, used["machine"] - used["worker"] - used["bench"] - used["emulators"])
    return used


def _py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen | None:
    """Sample the function worker while it serves the load (`--profile`; py-spy from PyPI)."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        log("--profile: py-spy is not installed in this virtualenv (pip install py-spy)")
        return None
    return subprocess.Popen([str(exe), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                             "--format", "raw", "--rate", "200", "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def top_frames(raw: Path, limit: int = 12) -> list[tuple[str, float]]:
    """Inclusive share of samples per function (file:function) from py-spy's collapsed stacks."""
    counts: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = {f.split(" (")[0] + " " + f.split(" (", 1)[1].split(":")[0].rsplit("/", 1)[-1]
                  for f in stack.split(";") if " (" in f}
        for f in frames:
            counts[f] += int(n)
    return [(f, c / total) for f, c in counts.most_common(limit)] if total else []


def throughput(stack: Any, refs: list[Any], n: int, tag: str, profile: Path | None = None) -> dict[str, Any]:
    import requests

    url = stack.function_urls["on_nad_request"]
    local = threading.local()

    def post(i: int) -> tuple[int, float]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        ref = refs[i % len(refs)]
        t = time.perf_counter()
        status = session.post(url, json=envelope(nad_payload(ref, i, tag), f"{tag}-{i}"), timeout=120).status_code
        return status, time.perf_counter() - t

    with ThreadPoolExecutor(CONCURRENCY) as pool:  # warm: one event per cluster (kube clients cached)
        list(pool.map(post, range(len(refs))))
    before = stats_total(stack, refs)
    arbiter = stack._procs["on_nad_request"].pid
    spy = _py_spy(_worker_pids(arbiter)[0], profile, n / 60) if profile else None
    emulators = set(getattr(stack.emulators, "pids", []) or [])
    cpu_before = cpu_sample(_worker_pids(arbiter)[0], emulators)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(post, range(len(refs), len(refs) + n)))
    wall = time.perf_counter() - t0
    cpu = cpu_shares(cpu_before, cpu_sample(_worker_pids(arbiter)[0], emulators), wall)
    profiled: list[tuple[str, float]] = []
    if spy is not None and profile is not None:
        _, err = spy.communicate(timeout=120)
        if profile.exists():
            ours = ("store.py", "cluster.py", "nad.py", "reconcile.py", "kube.py", "decisions.py", "events.py",
                    "policy.py")
            profiled = [(f, x) for f, x in top_frames(profile, 1000)
                        if f.endswith(ours) and "Interceptor" not in f and "wrapper" not in f][:8]
        else:
            log(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
    diff = stats_total(stack, refs) - before
    statuses = Counter(s for s, _ in results)
    lat = sorted(x for _, x in results)
    workers = _worker_pids(arbiter)
    hwm = max([_status_kib(p, "VmHWM") for p in workers] or [0])
    return {"n": n, "wall": wall, "rate": n / wall, "p50": lat[len(lat) // 2],
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "statuses": dict(statuses),
            "kube_requests": sum(diff.values()), "kube_by_verb": dict(Counter(v for (v, _), c in diff.items()
                                                                              for _ in range(c))),
            "worker_peak_rss_mib": hwm / 1024, "arbiter_rss_mib": _status_kib(arbiter, "VmRSS") / 1024,
            "profile": profiled, "cpu": cpu}


def pubsub_throughput(stack: Any, store: Any, ref: Any, n: int, tag: str, timeout: float = 120.0) -> dict[str, Any]:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    t0 = time.perf_counter()
    futures = [publisher.publish(stack.topic_path("nad-requests"), nad_payload(ref, i, tag), **SIGNED)
               for i in range(n)]
    for f in futures:
        f.result(timeout=60)
    published = time.perf_counter() - t0
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = sum(1 for r in store.list_nads(ref, fields=("state",))
                   if r.name.startswith(f"{tag}-") and r.state == "APPLIED")
        if done >= n:
            break
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    with contextlib.suppress(Exception):
        publisher.stop()
    return {"n": n, "recorded": done, "wall": wall, "rate": done / wall, "publish_seconds": published}


def emulator_alone(store: Any, n: int, tag: str) -> dict[str, Any]:
    """The Firestore emulator alone under a NAD apply's call pattern, with no function around it:
    CONCURRENCY threads each run, per request, one batched read of three documents, a create
    (the claim), a projected list of a cluster's NAD collection and an update preconditioned on the
    create's update time (the record): the same 4 RPCs. The rate bounds what the function can
    reach through this emulator on this machine."""
    col = store.client.collection(store.settings.collection("emulator-alone"))
    clusters = [col.document(f"c{i}") for i in range(8)]
    for c in clusters:
        c.set({"state": "READY"})

    def one(i: int) -> None:
        cluster = clusters[i % len(clusters)]
        nad = cluster.collection("nads").document(f"{tag}-{i}")
        list(store.client.get_all([cluster, col.document(f"ledger-{tag}-{i}"), nad]))
        created = nad.create({"state": "APPLYING", "master": f"m{i}", "range": "172.16.1.0/28", "claimOrder": str(i)})
        store._listed(cluster, "nads", ["state", "master", "range", "claimOrder"])  # as `Store.list_nads` lists
        batch = store.client.batch()
        batch.update(nad, {"state": "APPLIED"}, option=store.client.write_option(last_update_time=created.update_time))
        batch.create(col.document(f"ledger-{tag}-{i}"), {"at": 1})
        batch.commit()

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(CONCURRENCY)))  # warm the channel
        t0 = time.perf_counter()
        list(pool.map(one, range(CONCURRENCY, CONCURRENCY + n)))
        wall = time.perf_counter() - t0
    return {"n": n, "wall": wall, "rate": n / wall}


# --------------------------------------------------------------------------------------------
# 3/4. Economy and scale, counted around the real entry points (in this process)
# --------------------------------------------------------------------------------------------

class InProcess:
    """functions/main.py loaded here with the stack's environment: the entry points are the
    same objects functions-framework calls; the store's interceptor counts this thread's RPCs."""

    def __init__(self, stack: Any) -> None:
        import importlib.util

        os.environ.update(stack.env)
        spec = importlib.util.spec_from_file_location("bench_main", REPO / "functions" / "main.py")
        assert spec and spec.loader
        self.main = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.main)
        self.stack = stack
        self.log = io.StringIO()

    def deliver(self, fn: str, payload: bytes, message_id: str, refs: list[Any]) -> dict[str, Any]:
        from cloudevents.http import CloudEvent

        ce = CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "id": message_id,
                         "source": "//pubsub.googleapis.com/projects/multus-sandbox/topics/bench"},
                        envelope(payload, message_id))
        store = self.main._controller().store
        before = stats_total(self.stack, refs)
        t = time.perf_counter()
        with store.count_rpcs() as tally, contextlib.redirect_stdout(self.log):  # its structured log lines
            getattr(self.main, fn)(ce)
        seconds = time.perf_counter() - t
        diff = stats_total(self.stack, refs) - before
        return {"rpcs": tally.total, "by_method": dict(tally.by_method), "kube": sum(diff.values()),
                "kube_detail": {f"{v} {p}": c for (v, p), c in diff.items()}, "ms": seconds * 1000}


def audit_entry(ref: Any, method: str, *, first: bool, last: bool, pool: str | None = None) -> bytes:
    labels = {"project_id": ref.project, "location": ref.location, "cluster_name": ref.cluster}
    if pool:
        labels["nodepool_name"] = pool
    return json.dumps({
        "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                         "serviceName": "container.googleapis.com",
                         "methodName": f"google.container.v1.ClusterManager.{method}"},
        "resource": {"type": "gke_nodepool" if pool else "gke_cluster", "labels": labels},
        "operation": {"id": f"op-{uuid.uuid4().hex[:8]}", "first": first, "last": last}}).encode()


def per_event(ip: InProcess, ref: Any, tag: str) -> dict[str, dict[str, Any]]:
    """The per-event figures on a READY cluster (warm instance: policy and kube client cached)."""
    out: dict[str, dict[str, Any]] = {}
    ip.deliver("on_nad_request", nad_payload(ref, 0, tag + "w"), f"{tag}-warm", [ref])
    out["NAD request applied"] = ip.deliver("on_nad_request", nad_payload(ref, 1, tag), f"{tag}-nad", [ref])
    out["NAD request, duplicate delivery"] = ip.deliver("on_nad_request", nad_payload(ref, 1, tag), f"{tag}-nad", [ref])
    bad = json.dumps({"cluster": ref.path, "name": f"{tag}-bad", "range": "172.16.1.5/24"}).encode()
    out["NAD request rejected (invalid)"] = ip.deliver("on_nad_request", bad, f"{tag}-bad", [ref])
    out["NAD request rejected (overlap)"] = ip.deliver(
        "on_nad_request", json.dumps({"cluster": ref.path, "name": f"{tag}-ov",
                                      "range": json.loads(nad_payload(ref, 1, tag))["range"]}).encode(),
        f"{tag}-ov", [ref])
    out["audit: other service (ignored)"] = ip.deliver(
        "on_cluster_event", json.dumps({"protoPayload": {"serviceName": "compute.googleapis.com"}}).encode(),
        f"{tag}-other", [ref])
    out["audit: CreateNodePool first entry (note)"] = ip.deliver(
        "on_node_pool_event", audit_entry(ref, "CreateNodePool", first=True, last=False, pool="extra"),
        f"{tag}-note", [ref])
    # Once to settle what the NAD requests above changed (pool use), then the measured run: a
    # READY cluster in sync, the case of nearly every scheduled reconcile.
    ip.deliver("reconcile", json.dumps({"cluster": ref.path}).encode(), f"{tag}-settle", [ref])
    out["reconcile of one READY cluster (drift check)"] = ip.deliver(
        "reconcile", json.dumps({"cluster": ref.path}).encode(), f"{tag}-rec", [ref])
    return out


def lifecycle(ip: InProcess, stack: Any, store: Any, name: str) -> dict[str, dict[str, Any]]:
    """Create a cluster with its audit entries held, then hand each to the entry point here."""
    from sandbox.gke.scenario import NodePoolSpec
    from shared.core.refs import ClusterRef

    ref = ClusterRef(stack.project, LOCATION, name)
    out: dict[str, dict[str, Any]] = {}
    stack.hold_audit()
    try:
        stack.gke.create_cluster(name, wait=False, labels=OPTED_IN,
                                 node_pools=(NodePoolSpec("default-pool", node_count=1),))
        stack.gke.wait_idle(30)
        for i, entry in enumerate(stack.take_audit()):
            which = "last" if entry.get("operation", {}).get("last") else "first"
            out[f"audit: CreateCluster {which} entry"] = ip.deliver(
                "on_cluster_event", json.dumps(entry).encode(), f"life-{name}-c{i}", [ref])
        stack.gke.wait_idle(30)
        for i, entry in enumerate(stack.take_audit()):
            which = "last" if entry.get("operation", {}).get("last") else "first"
            key = f"audit: CreateNodePool {which} entry" + (" (bundle install)" if which == "last" else "")
            out[key] = ip.deliver("on_node_pool_event", json.dumps(entry).encode(), f"life-{name}-p{i}", [ref])
    finally:
        stack.take_audit(release=True)
    rec = store.get_cluster(ref)
    assert rec is not None and rec.state == "READY", rec and rec.state
    return out


def seed_clusters(store: Any, project: str, start: int, count: int) -> None:
    """Cluster documents written directly (batched), shaped like READY records."""
    now = datetime.now(UTC)
    col = store.client.collection(store.settings.collection("clusters"))
    batch, pending = store.client.batch(), 0
    for i in range(start, start + count):
        name = f"seed-{i:05d}"
        doc_id = f"{project}~{LOCATION}~{name}"
        batch.set(col.document(doc_id), {
            "project": project, "location": LOCATION, "cluster": name,
            "path": f"projects/{project}/locations/{LOCATION}/clusters/{name}", "state": "READY",
            "stateSince": now, "updatedAt": now, "createdAt": now, "attempts": 0,
            "nodePool": {"name": "multus-pool", "cidr": "172.16.1.0/24"}})
        pending += 1
        if pending == 400:
            batch.commit()
            batch, pending = store.client.batch(), 0
    if pending:
        batch.commit()


# --------------------------------------------------------------------------------------------
# 6. The reconcile sweep: tick -> last cluster reconciled, at 10 and 1,000 clusters
# --------------------------------------------------------------------------------------------

SWEEP_SIZES = (10, 1000)
SWEEP_SERVERS = 5
SWEEP_TARGET_S = 600.0  # the scheduler's period (infra: reconcile_schedule every 10 minutes)


def sweep_scenario(path: Path, n: int) -> None:
    """A GKE world of `n` eligible clusters with a multi-network pool, none opted in by label (the
    tick then publishes exactly one message per tracked READY cluster, no adoptions)."""
    import yaml

    pool = {"name": "multus-pool", "node_count": 1, "machine_type": "e2-standard-4",
            "additional_node_networks": [{"network": "multus-vpc", "subnetwork": "multus-subnet"}],
            "additional_pod_networks": [{"subnetwork": "multus-subnet", "secondary_pod_range": "multus-pods",
                                         "max_pods_per_node": 8}]}
    doc = {"project": "multus-sandbox", "realism": "calm", "location": LOCATION,
           "subnetworks": [{"network": "multus-vpc", "subnetwork": "multus-subnet", "region": LOCATION,
                            "primary_range": "10.0.1.0/24", "secondary_ranges": {"multus-pods": "172.16.1.0/24"}}],
           "clusters": [{"name": f"sweep-{i:04d}", "location": LOCATION, "version": "1.30", "dataplane_v2": True,
                         "ip_alias": True, "multi_networking": True, "labels": {"team": "bench"},
                         "node_pools": [{"name": "default-pool", "node_count": 1}, pool]} for i in range(n)]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def seed_sweep(store: Any, project: str, start: int, count: int, bundle: Any, rollout: dict[str, Any]) -> None:
    """READY documents for sweep-START.. as the install leaves them (bundle, node pool, rollout)."""
    now = datetime.now(UTC)
    col = store.client.collection(store.settings.collection("clusters"))
    batch, pending = store.client.batch(), 0
    for i in range(start, start + count):
        name = f"sweep-{i:04d}"
        batch.set(col.document(f"{project}~{LOCATION}~{name}"), {
            "project": project, "location": LOCATION, "cluster": name,
            "path": f"projects/{project}/locations/{LOCATION}/clusters/{name}", "state": "READY",
            "stateSince": now, "updatedAt": now, "createdAt": now, "attempts": 0, "bundleVersion": bundle.version,
            "rollout": rollout, "nodePool": {"name": "multus-pool", "subnetwork": "multus-subnet",
                                             "secondaryPodRange": "multus-pods", "cidr": "172.16.1.0/24",
                                             "maxPodsPerNode": 8}})
        pending += 1
        if pending == 400:
            batch.commit()
            batch, pending = store.client.batch(), 0
    if pending:
        batch.commit()


def _reconciled(log_path: Path, offset: int) -> tuple[int, int]:
    """(scoped reconciles logged done, failed ones) in the reconcile function's log after `offset`."""
    done = failed = 0
    with open(log_path, "rb") as f:
        f.seek(offset)
        for line in f.read().decode("utf-8", "replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("function") != "reconcile" or "1 tracked" not in str(entry.get("message", "")):
                continue
            if "errors 0" in entry["message"]:
                done += 1
            else:
                failed += 1
    return done, failed


def sweep(tmp: Path, sizes: tuple[int, ...] = SWEEP_SIZES, servers: int = SWEEP_SERVERS,
          timeout: float = 1800.0) -> dict[str, Any]:
    from sandbox.gke.realism import Realism
    from sandbox.stack import Stack
    from shared.adapters.kube import Kube
    from shared.adapters.store import Store
    from shared.core.multus import load_bundle
    from shared.core.settings import Settings
    from shared.flows.cluster import rollout_fields

    scenario = tmp / "sweep.yaml"
    sweep_scenario(scenario, max(sizes))
    extra = {"MULTUS_PROVISIONER_COLLECTION_PREFIX": f"sweep{uuid.uuid4().hex[:6]}_"}
    out: dict[str, Any] = {"servers": servers, "runs": {}}
    log(f"sweep: a GKE sandbox of {max(sizes)} clusters on {servers} shared Kubernetes API servers")
    with Stack(scenario=scenario, state_dir=tmp / "sweep", operation_delay=0.2, crd_delay=0.1, rollout_delay=0.2,
               extra_env=extra, realism=Realism.calm(), kube_server_pool=servers, ack_deadline_seconds=60) as stack:
        from kubernetes import config as kconfig

        bundle = load_bundle()
        shared = list({id(x): x for x in stack.kube_servers.values()}.values())
        firsts = {id(stack.kube_servers[n]): n for n in sorted(stack.kube_servers, reverse=True)}
        rollout = None
        for server in shared:  # the bundle, installed once per shared server
            kube = Kube(kconfig.new_client_from_config(
                config_file=f"{stack.env['MULTUS_PROVISIONER_KUBECONFIG_DIR']}/{firsts[id(server)]}.yaml"))
            kube.apply([o for o in bundle.objects if o["kind"] == "CustomResourceDefinition"])
            kube.wait_established(bundle.crd_names, timeout=30, poll=0.05)
            kube.apply([o for o in bundle.objects if o["kind"] != "CustomResourceDefinition"])
            deadline = time.monotonic() + 30
            while not kube.daemonset_rollout(*bundle.daemonset).complete and time.monotonic() < deadline:
                time.sleep(0.1)
            rollout = rollout_fields(kube.daemonset_rollout(*bundle.daemonset))
        store = Store(Settings.from_env(stack.env))
        ip = InProcess(stack)
        log_path = stack.state_dir / "logs" / "reconcile.log"
        have = 0
        for n in sizes:
            seed_sweep(store, stack.project, have, n - have, bundle, rollout or {})
            have = n
            offset = log_path.stat().st_size if log_path.exists() else 0
            kube_before = sum(x.stats.total for x in shared)
            # ListClusters only: the fanned-out reconciles' GetCluster calls may already run in parallel
            gke_before = stack.gke.calls.get("ListClusters", 0)
            log(f"sweep of {n} clusters: the tick, then {n} scoped reconciles through Pub/Sub push")
            t0 = time.perf_counter()
            tick = ip.deliver("reconcile", b"{}", f"sweep-tick-{n}-{uuid.uuid4().hex[:6]}", [])
            gke_tick = stack.gke.calls.get("ListClusters", 0) - gke_before
            done = failed = 0
            while time.perf_counter() - t0 < timeout:
                done, failed = _reconciled(log_path, offset)
                if done + failed >= n:
                    break
                time.sleep(0.25)
            wall = time.perf_counter() - t0
            kube_requests = sum(x.stats.total for x in shared) - kube_before
            out["runs"][str(n)] = {"clusters": n, "wall_s": wall, "done": done, "failed": failed,
                                   "tick_ms": tick["ms"], "tick_rpcs": tick["rpcs"],
                                   "tick_by_method": tick["by_method"],
                                   "tick_gke_calls": gke_tick, "published": n,
                                   "kube_requests": kube_requests}
            log(f"sweep of {n}: {wall:.1f} s, {done} done, {failed} failed, {kube_requests} cluster requests")
    return out


# --------------------------------------------------------------------------------------------
# kubectl against a fresh sandbox cluster
# --------------------------------------------------------------------------------------------

def kubectl_apply(server_side: bool, tmp: Path) -> dict[str, Any]:
    from sandbox.kube import KubeApiServer
    from shared.core.multus import load_bundle

    bundle = tmp / "bundle.yaml"
    bundle.write_text(load_bundle().to_yaml())
    home = tmp / f"home-{uuid.uuid4().hex[:6]}"  # a cold discovery cache, as on a fresh machine
    home.mkdir()
    with KubeApiServer(token=uuid.uuid4().hex, nodes=2, crd_delay=0.1, rollout_delay=0.2, name="kubectl") as server:
        kubeconfig = server.write_kubeconfig(home / "kubeconfig")
        server.stats.reset()
        args = [str(KUBECTL), "apply", *(["--server-side"] if server_side else []), "-f", str(bundle)]
        p = subprocess.run(args, env={"PATH": os.environ.get("PATH", ""), "HOME": str(home),
                                      "KUBECONFIG": kubeconfig}, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"kubectl apply failed: {p.stderr[-2000:]}")
        return {"total": server.stats.total, "by_verb": server.stats.by_verb()}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def run(quick: bool, profile: Path | None = None) -> dict[str, Any]:
    from sandbox.stack import Stack
    from shared.adapters.store import Store
    from shared.core.multus import load_bundle
    from shared.core.settings import Settings

    res: dict[str, Any] = {"quick": quick, "loadavg": os.getloadavg()[0]}
    n_import = 5 if quick else 15
    log(f"import times, {n_import} fresh processes each")
    ff, main, heavy = import_times(n_import)
    res["import"] = {"functions_framework": ff, "main": main, "ratio": main / ff, "heavy_modules": heavy}

    bundle = load_bundle()
    res["bundle"] = {"objects": len(bundle.objects), "crds": len(bundle.crd_names)}
    with tempfile.TemporaryDirectory(prefix="multus-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if KUBECTL.exists():
            log("kubectl apply (client-side and server-side) against fresh sandbox clusters")
            res["kubectl"] = {"client-side": kubectl_apply(False, tmp), "server-side": kubectl_apply(True, tmp)}
        log("starting the sandbox stack")
        extra = {"MULTUS_PROVISIONER_COLLECTION_PREFIX": f"bench{uuid.uuid4().hex[:6]}_",
                 "MULTUS_PROVISIONER_MAX_NADS_PER_CLUSTER": "1000"}
        from sandbox.gke.realism import Realism

        # Calm on purpose: the figures are the controller's own costs; GKE's own operation after each
        # create (seconds of sandbox wall time, retried around) would be added to every one of them.
        with Stack(scenario=bench_scenario(tmp / "bench.yaml"), state_dir=tmp / "stack", operation_delay=0.2,
                   crd_delay=0.1, rollout_delay=0.2, extra_env=extra, realism=Realism.calm()) as stack:
            SIGNED.update(stack.requester_attributes())
            store = Store(Settings.from_env(stack.env))
            names = [f"bench-{i}" for i in range(8)]
            log(f"creating {len(names)} READY clusters through the functions")
            refs = make_ready(stack, store, names)
            installs = [store.get_cluster(r).data.get("installRequests") for r in refs]
            res["install_via_functions"] = installs

            ip = InProcess(stack)
            log("cluster lifecycle, audit entries handed to the entry points in this process")
            res["lifecycle"] = lifecycle(ip, stack, store, "bench-life")

            runs = 1 if quick else 3
            log(f"cold start to first event, {runs} run(s)")
            res["cold"] = cold_starts(stack, refs[0], runs, tmp)

            n = 120 if quick else 480
            log(f"throughput: {n} NAD requests, {CONCURRENCY} concurrent HTTP pushes")
            res["throughput"] = throughput(stack, refs, n, "tp", profile)
            m = 40 if quick else 160
            log(f"throughput through Pub/Sub push: {m} published")
            res["pubsub"] = pubsub_throughput(stack, store, refs[1], m, "ps")
            log(f"the Firestore emulator alone: {n} NAD-apply call patterns, {CONCURRENCY} concurrent")
            res["emulator_alone"] = emulator_alone(store, n, "ea")

            log("per-event figures at scale (10 and 1,000 cluster documents)")
            scale: dict[str, Any] = {}
            base = len(store.list_clusters())
            for target in (10, 1000):
                have = len(store.list_clusters())
                if have < target:
                    seed_clusters(store, stack.project, have, target - have)
                scale[str(target)] = {"clusters": len(store.list_clusters()),
                                      "events": per_event(ip, refs[2], f"s{target}")}
            res["scale"] = scale
            res["scale_base_clusters"] = base
        res["sweep"] = sweep(tmp, (10, 100) if quick else SWEEP_SIZES)
    return res


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def rows(res: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    imp = res["import"]
    out.append(Row("cold start", "import functions_framework (median)", f"{imp['functions_framework'] * 1000:.0f} ms"))
    out.append(Row("cold start", "import functions/main.py (median)", f"{imp['main'] * 1000:.0f} ms",
                   note="SDKs loaded at import: " + (imp["heavy_modules"] or "none")))
    out.append(Row("cold start", "ratio main / functions_framework", f"{imp['ratio']:.2f}", "<= 1.10",
                   imp["ratio"] <= 1.10))
    cold = res["cold"]
    out.append(Row("cold start", "process start -> listening", f"{cold['listen'] * 1000:.0f} ms"))
    out.append(Row("cold start", "process start -> first event handled (2xx)", f"{cold['first'] * 1000:.0f} ms",
                   note=f"first event itself {cold['first_event'] * 1000:.0f} ms (lazy SDK imports, clients, "
                        f"GKE lookup); next event {cold['warm'] * 1000:.0f} ms"))
    tp = res["throughput"]
    ok = {str(k): v for k, v in tp["statuses"].items()}.get("200", 0) == tp["n"]  # int keys, or str from --json
    out.append(Row("throughput", f"NAD requests/s, HTTP push, {CONCURRENCY} concurrent ({tp['n']} requests)",
                   f"{tp['rate']:.1f}/s", ">= 50/s", tp["rate"] >= 50 and ok,
                   note="" if ok else f"statuses {tp['statuses']}"))
    out.append(Row("throughput", "latency p50 / p99", f"{tp['p50'] * 1000:.0f} / {tp['p99'] * 1000:.0f} ms"))
    cpu = tp.get("cpu")
    if cpu:
        out.append(Row("throughput", "CPU used during the load, in cores (of 2)", f"{cpu['machine']:.2f}",
                       note=f"function worker {cpu['worker']:.2f}, benchmark process (load generator and the "
                            f"sandbox's Kubernetes and GKE API servers, in-process) {cpu['bench']:.2f}, emulators "
                            f"(Firestore, Pub/Sub JVMs) {cpu['emulators']:.2f}, everything else on the machine "
                            f"{cpu['rest']:.2f}"))
    ea = res.get("emulator_alone")
    if ea:
        out.append(Row("throughput", f"the Firestore emulator alone: a NAD apply's 4 Firestore calls, {CONCURRENCY} "
                                     f"concurrent ({ea['n']} times)", f"{ea['rate']:.1f}/s",
                       note="no function, no cluster API: what this emulator on this machine allows"))
    ps = res["pubsub"]
    out.append(Row("throughput", f"NAD requests/s through Pub/Sub push ({ps['n']} published)",
                   f"{ps['rate']:.1f}/s", note=f"{ps['recorded']}/{ps['n']} APPLIED in {ps['wall']:.1f} s"))
    per_nad = tp["kube_requests"] / tp["n"]
    # 2: the LIST of the cluster's NADs (overlap and limit count what is really there, with or
    # without a record: issue 12; what it finds under the request's name is the check that the
    # object is the controller's, never someone else's: issue 24) and the server-side apply
    out.append(Row("economy", "cluster-API requests per NAD", f"{per_nad:.2f}", "2", per_nad == 2,
                   note=", ".join(f"{k} {v}" for k, v in sorted(tp["kube_by_verb"].items()))))
    life = res["lifecycle"]
    install = next((v for k, v in life.items() if "bundle install" in k), None)
    if install:
        detail = Counter()
        for key, count in install["kube_detail"].items():
            verb, path = key.split(" ", 1)
            kind = ("CRD poll" if verb == "GET" and "customresourcedefinitions" in path else
                    "rollout poll" if verb == "GET" and "daemonsets" in path else f"{verb}")
            detail[kind] += count
        objects = res["bundle"]["objects"]
        polls = detail.get("CRD poll", 0)
        applies = detail.get("PATCH", 0)
        met = applies == objects and install["kube"] == objects + polls + detail.get("rollout poll", 0)
        out.append(Row("economy", "cluster-API requests per bundle install", str(install["kube"]),
                       f"{objects} objects + CRD polls", met,
                       note=", ".join(f"{k} {v}" for k, v in sorted(detail.items())) + " (rollout polls report "
                            "progress; the seed's kubectl apply does not wait)"))
    for mode, k in (res.get("kubectl") or {}).items():
        out.append(Row("economy", f"kubectl 1.33 apply {'--server-side ' if mode == 'server-side' else ''}-f bundle",
                       str(k["total"]), note=", ".join(f"{v} {c}" for v, c in sorted(k["by_verb"].items()))
                       + " (cold discovery cache)"))
    for key, fig in life.items():
        out.append(Row("economy", f"Firestore RPCs: {key}", str(fig["rpcs"]),
                       note=_methods(fig) + (f"; cluster API {fig['kube']}" if fig["kube"] else "")))
    scale = res["scale"]
    small, big = scale["10"]["events"], scale["1000"]["events"]
    for key in small:
        a, b = small[key], big[key]
        same = a["rpcs"] == b["rpcs"] and a["kube"] == b["kube"]
        out.append(Row("scale", f"{key}: RPCs / cluster API / ms at {scale['10']['clusters']} vs "
                                f"{scale['1000']['clusters']} clusters",
                       f"{a['rpcs']}/{a['kube']}/{a['ms']:.0f} vs {b['rpcs']}/{b['kube']}/{b['ms']:.0f}",
                       "no growth", same, note=_methods(b)))
    out += economy_rows(res)
    out += sweep_rows(res.get("sweep"))
    rss = tp["worker_peak_rss_mib"]
    out.append(Row("memory", "peak RSS of the on_nad_request worker under the throughput load", f"{rss:.0f} MiB",
                   "<= 200 MiB", 0 < rss <= 200, note=f"gunicorn arbiter {tp['arbiter_rss_mib']:.0f} MiB"))
    return out


WRITE_METHODS = ("Commit", "BeginTransaction", "BatchWrite", "Rollback")
RECONCILE_EVENT = "reconcile of one READY cluster (drift check)"


def figures(res: dict[str, Any]) -> dict[str, Any]:
    """Issue 21's figures from one run's results (this bench's, or an older one's `--json`)."""
    events = res["scale"][max(res["scale"], key=int)]["events"]
    rec = events[RECONCILE_EVENT]
    writes = sum(rec["by_method"].get(m, 0) for m in WRITE_METHODS)
    return {"reconcile_writes": writes, "reconcile_reads": rec["rpcs"] - writes, "drift_requests": rec["kube"],
            "nad_rpcs": events["NAD request applied"]["rpcs"], "nad_rate": res["throughput"]["rate"],
            "import_ratio": res["import"]["ratio"]}


# (figure, key, format, target text, met) for the rows of issue 21 and the before/after table
ECONOMY = (
    ("in-sync reconcile of a READY cluster: Firestore writes", "reconcile_writes", "{:d}", "0", lambda v: v == 0),
    ("in-sync reconcile of a READY cluster: Firestore reads", "reconcile_reads", "{:d}", "<= 4", lambda v: v <= 4),
    ("in-sync reconcile (drift check): cluster requests", "drift_requests", "{:d}", "8", lambda v: v == 8),
    ("NAD request applied: Firestore RPCs", "nad_rpcs", "{:d}", "<= 4", lambda v: v <= 4),
    (f"NAD requests/s, HTTP push, {CONCURRENCY} concurrent", "nad_rate", "{:.1f}/s", ">= 50/s", lambda v: v >= 50),
    ("cold import: main / functions_framework", "import_ratio", "{:.2f}", "<= 1.10", lambda v: v <= 1.10),
)


def economy_rows(res: dict[str, Any]) -> list[Row]:
    """Issue 21: what an in-sync reconcile and a NAD apply cost, at the larger scale."""
    fig = figures(res)
    rec = res["scale"][max(res["scale"], key=int)]["events"][RECONCILE_EVENT]
    notes = {"reconcile_writes": _methods(rec), "reconcile_reads": "no claim, ledger or history entry when in sync",
             "drift_requests": "6 bundle kinds, the managed NADs, Whereabouts' IPPools; verify pods only when a "
                               "record says one can exist"}
    return [Row("economy", name, fmt.format(fig[key]), target, met(fig[key]), notes.get(key, ""))
            for name, key, fmt, target, met in ECONOMY[:4]]


def compare_rows(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str, str, bool]]:
    """(figure, before, after, target, met after) for each figure of issue 21."""
    a, b = figures(after), figures(before)
    return [(name, fmt.format(b[key]), fmt.format(a[key]), target, met(a[key]))
            for name, key, fmt, target, met in ECONOMY]


def run_baseline(base: str, quick: bool) -> dict[str, Any]:
    """This bench as it was at commit `base`, on the same machine in the same invocation: the
    tree exported with `git archive` to a temporary directory and run there with this virtualenv."""
    with tempfile.TemporaryDirectory(prefix="multus-bench-base-") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", base], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        log(f"baseline: the bench of {base} in {tmp}")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        p = subprocess.run([sys.executable, "-m", "scripts.bench", "--json", *(["--quick"] if quick else [])],
                           cwd=tmp, env=env, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"the baseline bench failed ({p.returncode}): {p.stderr[-3000:]}")
        return json.loads(p.stdout)["results"]


def compare_table(base: str, head: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    lines = [f"| figure | before ({base}) | after ({head}) | target | met |", "|---|---|---|---|---|"]
    for name, b, a, target, met in compare_rows(before, after):
        lines.append(f"| {name} | {b} | {a} | {target} | {'yes' if met else '**MISSED**'} |")
    return "\n".join(lines)


def sweep_rows(sw: dict[str, Any] | None) -> list[Row]:
    if not sw:
        return []
    runs = sw["runs"]
    small, big = runs[min(runs, key=int)], runs[max(runs, key=int)]
    n = big["clusters"]
    out = [Row("scale", f"reconcile sweep of {n:,} clusters: tick -> last cluster reconciled",
               f"{big['wall_s']:.0f} s", f"<= {SWEEP_TARGET_S:.0f} s (the scheduler period)",
               big["wall_s"] <= SWEEP_TARGET_S and big["done"] == n,
               note=f"{big['done']} reconciled, {big['failed']} with errors; {sw['servers']} shared Kubernetes API "
                    f"servers; one reconcile function process (8 threads) fed by Pub/Sub push; the tick itself "
                    f"{big['tick_ms']:.0f} ms")]

    def per(run: dict[str, Any]) -> str:
        c = run["clusters"]
        return (f"{run['wall_s'] * 1000 / c:.0f} ms / {run['kube_requests'] / c:.1f} / "
                f"{run['tick_rpcs'] / c:.2f} + {run['published'] / c:.0f} + {run['tick_gke_calls'] / c:.3f}")

    same = abs(small["kube_requests"] / small["clusters"] - big["kube_requests"] / big["clusters"]) < 0.5
    out.append(Row("scale", f"reconcile sweep per cluster at {small['clusters']} vs {n:,} clusters: wall / cluster "
                            "requests / tick's Firestore RPCs + publishes + GKE calls",
                   f"{per(small)} vs {per(big)}", "cluster requests: no growth", same,
                   note=f"tick RPCs {small['tick_rpcs']} vs {big['tick_rpcs']} "
                        f"({', '.join(f'{k} {v}' for k, v in sorted(big['tick_by_method'].items()))}); "
                        f"wall per cluster falls with size: the sweep's invocations overlap"))
    return out


def _methods(fig: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(fig["by_method"].items())) or "none"


def table(rs: list[Row]) -> str:
    lines = ["| | figure | value | target | met | note |", "|---|---|---|---|---|---|"]
    for r in rs:
        met = "" if r.met is None else ("yes" if r.met else "**MISSED**")
        lines.append(f"| {r.section} | {r.figure} | {r.value} | {r.target} | {met} | {r.note} |")
    return "\n".join(lines)


def machine() -> str:
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}{', ' + cpu if cpu else ''}), "
            f"{mem} memory, Python {platform.python_version()}, {platform.system()} {platform.release()}")


def write_doc(rs: list[Row], res: dict[str, Any], notes: str, comparison: str = "") -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        "# Benchmarks",
        "",
        f"Latest run: {when}{' (--quick)' if res['quick'] else ''}, `make bench` (`scripts/bench.py`).",
        f"Machine: {machine()}. The sandbox stack (Firestore and Pub/Sub emulators, GKE and Kubernetes API "
        "servers, four functions-framework processes) runs on the same machine as the load"
        + (f"; the 1-minute load average was already {res['loadavg']:.1f} when the run started (other "
           "work on the machine), which slows every wall-clock figure." if res.get("loadavg", 0) >= 1 else "."),
        "",
        "How each figure is measured is in the docstring of `scripts/bench.py`: HTTP figures go through "
        "functions-framework exactly as a Pub/Sub push does; Firestore RPCs are counted by the store's gRPC "
        "interceptor around the real entry points loaded in the benchmark process; cluster-API requests are "
        "counted by the sandbox API server.",
        "",
        table(rs),
        "",
        *([comparison, ""] if comparison else []),
        "## Notes",
        "",
        notes,
        "",
    ])
    DOC.write_text(text)


def closing_notes(rs: list[Row], res: dict[str, Any]) -> str:
    missed = [r for r in rs if r.met is False]
    lines = []
    if not missed:
        lines.append("- Every target was met in this run.")
    for r in missed:
        why = throughput_why(res) if r.section == "throughput" else ""
        lines.append(f"- Missed: {r.figure} = {r.value} (target {r.target}). {why or WHY.get(r.section, '')}")
    tp = res["throughput"]
    lines.append(f"- Throughput: {tp['n']} requests in {tp['wall']:.1f} s; each applied request is one read of "
                 "the cluster, the ledger and its NAD document together, the claim of that document (a commit "
                 "preconditioned on the read's update time), one projected list of the cluster's other NADs "
                 "(state, master, range, claim; ListDocuments, one message) for the overlap and limit checks and, "
                 "at the same time, one LIST of the cluster's NADs (which is also the check that the object is "
                 "the controller's), then one server-side apply, and the record (a commit preconditioned on the "
                 "claim's update time: any write in between, such as an earlier overlapping claim turning this "
                 "one away, fails it and the record is decided again on a fresh read): 4 Firestore RPCs, 2 "
                 "cluster requests, no "
                 "transaction locks. The NAD list grows with the NADs of that one cluster (bounded by the "
                 "policy's maxNadsPerCluster), never with the number of clusters (scale rows). The figure varies "
                 "by about ±10% between runs on this shared 2-core machine.")
    ea = res.get("emulator_alone")
    if ea:
        lines.append(f"- The Firestore emulator alone, driven with the same 4 calls per request by "
                     f"{CONCURRENCY} threads of this process (no function, no HTTP, no cluster API), managed "
                     f"{ea['rate']:.1f} requests/s: an upper bound for the function on this emulator and machine.")
    if tp.get("profile"):
        lines.append("- Where the worker's time goes under the throughput load (py-spy, share of samples that "
                     "include the function, project code only): "
                     + "; ".join(f"`{f}` {share:.0%}" for f, share in tp["profile"])
                     + ". The sampler itself costs CPU on this machine: the throughput of a profiled run is lower.")
    lines.append("- History of this figure (same command): 49.8/s when the overlap check read whole NAD documents; "
                 "60.7/s with a projection; 38.4/s once concurrent requests were made safe with a transactional "
                 "claim (9 RPCs); about 52/s with lock-free compare-and-set NAD records (6 RPCs); 32.4/s on "
                 "2026-12-01 after the merges (6 RPCs, 2 cluster requests); 40.7/s with 4 RPCs (issue 21); then "
                 "(issue 21, point 3) the sandbox's cluster API server answers without Nagle's algorithm, as "
                 "kube-apiserver does (every PATCH had waited 40 ms for a delayed ACK), the NAD query is decoded "
                 "without DocumentSnapshot copies (half the worker's CPU at tens of NADs per cluster), the "
                 "query and the cluster's LIST are made at the same time, and the record's commit sends only "
                 "the fields that change (40.4/s); then (2026-12-04) the other NADs are read by one unary "
                 "ListDocuments instead of a streamed RunQuery (gRPC's Python client handed each of tens of "
                 "documents from its polling thread to the caller: 5-8 ms of CPU per request at 60 NADs, 1.5 ms "
                 "now; the emulator alone went from 81 to over 140 call patterns/s), and of their applied part "
                 "and claim only master and range (nested projection); the cluster's LIST of every NAD "
                 "replaces the apply's ownership GET (2 cluster requests, was 3); the first read is decoded "
                 "from the raw answers; a verified ID token is not verified again while its key is published.")
    lines.append("- The drift check of a reconcile builds a fresh cluster client (GKE lookup, TLS) and LISTs each "
                 "bundle kind once (6), the managed NADs and Whereabouts' IPPools: 8 cluster requests (12 before "
                 "issue 14, one GET per object; 9 before issue 21, when the verify pods were listed on every run: "
                 "now only when a NAD record says a verification started and was not swept); the pods are listed "
                 "too when some address is handed out (stale allocations).")
    lines.append("- In-sync reconcile (issue 21): the scoped reconcile of a READY cluster reads its record, the "
                 "rollout document and its NAD records (whole, one query), compares them with the cluster, and "
                 "returns: no claim, no ledger entry, no history entry. Only a difference (a missing object, a "
                 "drifted NAD, a waiting NAD, a leftover verify pod, a new rollout or pool-use figure) claims the "
                 "cluster, and the comparison is made again under the claim before anything is changed. Before: "
                 "11 RPCs, 3 of them commits (claim, lease release, ledger) on every run of every cluster.")
    sw = res.get("sweep")
    if sw:
        big = sw["runs"][max(sw["runs"], key=int)]
        lines.append(f"- Reconcile sweep: the scheduled tick reads the tracked clusters (one query), lists the "
                     f"project's clusters (one GKE call per project), drives the bundle rollout a step and publishes "
                     f"one scoped reconcile per cluster in batches of 100; every cluster is then its own invocation "
                     f"under its own ledger key. {big['clusters']:,} clusters took {big['wall_s']:.0f} s here with one "
                     f"function process on 2 shared cores; in production the reconcile function scales out to "
                     f"`reconcile_max_instances` (default 20) instances.")
    lines.append("- Pub/Sub push throughput is bounded by the emulator's push delivery, not by the function: "
                 "compare with the direct HTTP figure.")
    lines.append("- `kubectl apply` spends most of its requests on discovery (cold cache) and, client-side, on a "
                 "GET before each create; the controller needs one PATCH per object plus the CRD polls before "
                 "the objects that depend on them, and then reports the DaemonSet rollout.")
    return "\n".join(lines)


WHY = {
    "throughput": "The machine has 2 cores shared by the emulators (Java), the sandbox's API servers, the "
                  "load generator, the function and other engineers' work: the row 'CPU used during the load' "
                  "says who used them. The Firestore emulator alone, driven with the same 4 calls per request, "
                  "goes several times faster (its row), so the emulator is not the limit; the cores are. More "
                  "instances (Cloud Run scales out; one instance here) do not help on one shared machine.",
    "memory": "Most of it is the google-cloud-firestore/grpc and kubernetes SDKs; the deployed memory "
              "setting keeps headroom above it.",
    "cold start": "The entry module imports only functions_framework; the shared modules come with the first event.",
    "economy": "",
    "scale": "",
}


def throughput_why(res: dict[str, Any]) -> str:
    """Where a request's time went, from this run's figures: the emulator's share (the same calls
    alone, at the same concurrency) and who used the two cores during the load."""
    tp, ea, cpu = res["throughput"], res.get("emulator_alone"), res["throughput"].get("cpu")
    if not ea or not cpu:
        return ""
    per_request, emulator = CONCURRENCY / tp["rate"] * 1000, CONCURRENCY / ea["rate"] * 1000
    worker_ms = cpu["worker"] / tp["rate"] * 1000
    return (f"With {CONCURRENCY} requests in flight, each took {per_request:.0f} ms on average; the Firestore "
            f"emulator alone spends {emulator:.0f} ms on the same 4 calls at the same concurrency "
            f"({ea['rate']:.1f}/s), so the emulator is about {emulator / per_request:.0%} of a request and not the "
            f"whole limit. The function worker used {cpu['worker']:.2f} of the 2 cores ({worker_ms:.0f} ms of CPU "
            f"per request), the emulators {cpu['emulators']:.2f}, other work on the machine {cpu['rest']:.2f}; the "
            f"rest of a request is its two cluster requests and waiting for a core (the worker's Python "
            f"threads run one at a time). What would close the gap: less CPU per request in the worker (the "
            f"encoding of its two commits, the decoding of the records list and of the cluster's NAD LIST, the "
            f"last two growing with the NADs of the cluster), or a machine not shared with other work.")


def _dirty() -> bool:
    """Uncommitted changes to anything but this bench's own output (docs/BENCHMARKS.md)."""
    out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                         capture_output=True, text=True, check=False).stdout
    return any(line[3:].strip() != str(DOC.relative_to(REPO)) for line in out.splitlines() if line.strip())


def nad_invariants(requests: int) -> int:
    """The long run of the NAD invariants: the same test, more requests (its own servers)."""
    if requests < 1:
        log("--nad-invariants: expected a positive number of requests")
        return 2
    env = {**os.environ, "NAD_INVARIANT_STEPS": str(requests)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_nad_invariants.py"]
    return subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and requests (about a minute)")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON instead of a table")
    parser.add_argument("--write-doc", action="store_true", help=f"write the results to {DOC.relative_to(REPO)}")
    parser.add_argument("--profile", type=Path, metavar="RAW",
                        help="sample the on_nad_request worker with py-spy during the throughput run; "
                             "collapsed stacks to RAW, the top functions in the notes")
    parser.add_argument("--compare", metavar="COMMIT",
                        help="run this bench as it was at COMMIT first (an exported tree, same machine, same "
                             "invocation), then this one, and print issue 21's figures before and after")
    parser.add_argument("--nad-invariants", type=int, metavar="REQUESTS", nargs="?", const=2000,
                        help="instead: the NAD invariant test (tests/test_nad_invariants.py) with this many "
                             "requests (default 2000); NAD_INVARIANT_SEED replays a seed")
    args = parser.parse_args(argv)
    if args.nad_invariants is not None:
        return nad_invariants(args.nad_invariants)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup of every `with`
    before = run_baseline(args.compare, args.quick) if args.compare else None
    res = run(args.quick, args.profile.resolve() if args.profile else None)
    rs = rows(res)
    comparison = ""
    if before is not None:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip() or "HEAD"
        base = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.compare], capture_output=True,
                              text=True, check=False).stdout.strip() or args.compare
        comparison = ("## Before and after, in the same invocation\n\n"
                      f"`python -m scripts.bench --compare {args.compare}`: the bench of {base} (exported, same "
                      f"virtualenv) ran first, then this tree ({head}{' with uncommitted changes' if _dirty() else ''})"
                      ".\n\n" + compare_table(base, head, before, res))
    if args.json:
        sys.stdout.write(json.dumps({"results": res, "rows": [asdict(r) for r in rs]}, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(table(rs) + "\n")
    if comparison:
        sys.stdout.write("\n" + comparison + "\n")
    if args.write_doc:
        write_doc(rs, res, closing_notes(rs, res), comparison)
        log(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
