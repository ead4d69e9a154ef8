"""The real CNI data path of a sandbox cluster: real Multus, IPVLAN and Whereabouts in a UML guest.

It stands beside the simulated CNI (`cni.SimulatedCni`) behind the same interface (`add`,
`delete`), chosen per server (`KubeApiServer.use_real_cni()`); the simulated one stays the fast
default. Inside one guest per cluster (`uml.Guest`):

- the node's files where a GKE node keeps them (guest overlays of /etc, /var, /opt): the plugin
  binaries in /opt/cni/bin (symlinks to the pinned builds, `sandbox.gobuild`), the primary
  network's conflist `gke-pod-network` (ptp + host-local, standing in for GKE's own), Whereabouts'
  flat file and kubeconfig in /etc/cni/net.d/whereabouts.d/ as its install container writes them,
  and the kubelet's kubeconfig at /var/lib/kubelet/kubeconfig. The Multus configuration is the
  cluster's `kube-system/multus-cni-config` ConfigMap, read at each ADD (what the controller's
  bundle applied), written to /etc/cni/net.d/00-multus.conf and given to Multus as is.
- each node a network namespace with `eth0` on the primary network (a bridge in the guest's root
  namespace, routed to the API server's forwarder) and `eth1` on its pool's additional
  subnetwork: a Linux bridge in a namespace of its own per pool, so IPVLAN L2 between nodes
  crosses a shared segment;
- each pod a network namespace; ADD runs `/opt/cni/bin/multus` in the node's namespace with the
  kubelet's environment (CNI_ARGS with the pod's namespace, name, sandbox id and uid). Multus GETs
  the pod and the NADs, runs ptp and IPVLAN + Whereabouts, and writes `network-status` itself
  (a pods/status update); Whereabouts records the address in its IPPool in that cluster.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import threading
import time
from pathlib import Path
from typing import Any

import sandbox.gobuild as gobuild
from sandbox.kube.cni import NETWORK_STATUS, CniError
from sandbox.kube.uml import Guest, GuestError

PRIMARY_BRIDGE, PRIMARY_GATEWAY, PRIMARY_NET = "prim0", "10.0.1.1", "10.0.1.0/24"
POD_NET = "10.104.0.0/16"
BIN = "/opt/cni/bin"
NETD = "/etc/cni/net.d"
WB_DIR = f"{NETD}/whereabouts.d"
KUBELET_KUBECONFIG = "/var/lib/kubelet/kubeconfig"
PLUGINS = {"cni-plugins": ("ipvlan", "loopback", "ptp", "host-local")}
WHEREABOUTS_COMPONENTS = {"v0.7.0": "whereabouts", "v0.8.0": "whereabouts-0.8"}


def sandbox_id(uid: str) -> str:
    """The pod's sandbox (container) id: 64 hex digits, stable for the pod (as the simulated CNI's)."""
    return hashlib.sha256(uid.encode()).hexdigest()


def _cni_error(out: dict[str, Any]) -> str:
    """A plugin's error as the kubelet logs it: the CNI error JSON's `msg` (and `details`)."""
    text = str(out.get("stdout") or "").strip()
    try:
        err = json.loads(text)
        if isinstance(err, dict) and err.get("msg"):
            return str(err["msg"]) + (f": {err['details']}" if err.get("details") else "")
    except ValueError:
        pass
    return (text or str(out.get("stderr") or "").strip() or f"exit {out.get('rc')}")[-2000:]


class RealCni:
    """Real Multus/IPVLAN/Whereabouts for one sandbox API server (`server`: a started KubeApiServer)."""

    real = True

    def __init__(self, server: Any, whereabouts: str = "v0.7.0", guest: Guest | None = None) -> None:
        self.server = server
        self.whereabouts = whereabouts
        self.guest = guest or Guest()
        self._own_guest = guest is None
        self._lock = threading.RLock()
        self._nodes: dict[str, dict[str, str]] = {}
        self._subnets: dict[str, str] = {}
        self._pods: dict[str, dict[str, str]] = {}  # uid -> {node, netns, cid, namespace, name}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------ lifecycle
    def start(self) -> RealCni:
        binaries = {name: gobuild.binary(comp, name) for comp, names in PLUGINS.items() for name in names}
        binaries["multus"] = gobuild.binary("multus", "multus")
        binaries["whereabouts"] = gobuild.binary(WHEREABOUTS_COMPONENTS[self.whereabouts], "whereabouts")
        if self._own_guest:
            self.guest.start()
        self.timings["guest_boot"] = self.guest.boot_seconds
        port = int(self.server.url.rsplit(":", 1)[1])
        host = self.guest.forward(port, route=PRIMARY_NET)
        g = self.guest
        g.check(["mkdir", "-p", BIN, WB_DIR, str(Path(KUBELET_KUBECONFIG).parent)])
        for name, path in binaries.items():
            g.check(["ln", "-sf", str(path), f"{BIN}/{name}"])
        kubeconfig = self.server.kubeconfig()
        cluster = kubeconfig["clusters"][0]["cluster"]
        cluster["server"] = f"https://{host}:{port}"
        cluster["tls-server-name"] = "localhost"  # the server's certificate names 127.0.0.1 and localhost
        for ctx in kubeconfig["contexts"]:
            ctx["context"]["namespace"] = "kube-system"  # Whereabouts keeps its pools in its own namespace
        kubeconfig_text = json.dumps(kubeconfig, indent=2) + "\n"
        g.write({
            KUBELET_KUBECONFIG: kubeconfig_text,
            f"{WB_DIR}/whereabouts.kubeconfig": kubeconfig_text,
            f"{WB_DIR}/whereabouts.conf": json.dumps({
                "datastore": "kubernetes", "kubernetes": {"kubeconfig": f"{WB_DIR}/whereabouts.kubeconfig"}},
                indent=2) + "\n",
            f"{NETD}/10-gke-ptp.conflist": json.dumps({
                "cniVersion": "0.3.1", "name": "gke-pod-network",
                "plugins": [{"type": "ptp", "mtu": 1460, "ipam": {
                    "type": "host-local", "ranges": [[{"subnet": POD_NET}]], "routes": [{"dst": "0.0.0.0/0"}]}}]},
                indent=2) + "\n",
        })
        g.check(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        g.check(["ip", "link", "add", PRIMARY_BRIDGE, "type", "bridge"])
        g.check(["ip", "addr", "add", f"{PRIMARY_GATEWAY}/24", "dev", PRIMARY_BRIDGE])
        g.check(["ip", "link", "set", PRIMARY_BRIDGE, "up"])
        return self

    def stop(self) -> None:
        if self._own_guest:
            self.guest.stop()

    # ------------------------------------------------------------ nodes and subnetworks
    def _subnet(self, pool: str) -> str:
        with self._lock:
            if pool not in self._subnets:
                ns = f"sub-{len(self._subnets) + 1}"
                self.guest.check(["ip", "netns", "add", ns])
                self.guest.check(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
                self.guest.check(["ip", "-n", ns, "link", "set", "br0", "up"])
                self._subnets[pool] = ns
            return self._subnets[pool]

    def ensure_node(self, node: str) -> dict[str, str]:
        """The node's namespace, eth0 on the primary network and eth1 on its pool's subnetwork."""
        with self._lock:
            if node in self._nodes:
                return self._nodes[node]
            obj = self.server.store.get(("", "nodes", "", node)) or {}
            labels = (obj.get("metadata") or {}).get("labels") or {}
            pool = labels.get("cloud.google.com/gke-nodepool", "default-pool")
            addr = next((a["address"] for a in (obj.get("status") or {}).get("addresses") or []
                         if a.get("type") == "InternalIP"), "")
            index = len(self._nodes) + 1
            if not addr or ipaddress.ip_address(addr) not in ipaddress.ip_network(PRIMARY_NET):
                addr = str(ipaddress.ip_network(PRIMARY_NET).network_address + 1 + index)
            ns = f"node-{index}"
            sub = self._subnet(pool)
            g = self.guest
            g.check(["ip", "netns", "add", ns])
            g.check(["ip", "-n", ns, "link", "set", "lo", "up"])
            g.check(["ip", "link", "add", f"p{index}", "type", "veth", "peer", "name", "eth0", "netns", ns])
            g.check(["ip", "link", "set", f"p{index}", "master", PRIMARY_BRIDGE, "up"])
            g.check(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            g.check(["ip", "-n", ns, "link", "set", "eth0", "up"])
            g.check(["ip", "-n", ns, "route", "add", "default", "via", PRIMARY_GATEWAY])
            g.check(["ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", f"s{index}", "netns", sub])
            g.check(["ip", "-n", sub, "link", "set", f"s{index}", "master", "br0", "up"])
            g.check(["ip", "-n", ns, "link", "set", "eth1", "up"])
            self._nodes[node] = {"netns": ns, "pool": pool, "subnet": sub, "address": addr}
            return self._nodes[node]

    # ------------------------------------------------------------ CNI
    def multus_config(self) -> dict[str, Any]:
        cm = self.server.store.get(("", "configmaps", "kube-system", "multus-cni-config"))
        text = ((cm or {}).get("data") or {}).get("cni-conf.json")
        if not text:
            raise CniError("multus: no kube-system/multus-cni-config ConfigMap (the bundle is not applied)")
        try:
            conf = json.loads(text)
        except ValueError as e:
            raise CniError(f"multus: kube-system/multus-cni-config is not JSON: {e}")
        return conf

    def _env(self, command: str, pod: dict[str, Any], cid: str, netns: str) -> dict[str, str]:
        md = pod["metadata"]
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{netns}",
                "CNI_IFNAME": "eth0", "CNI_PATH": BIN,
                "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={md['namespace']};K8S_POD_NAME={md['name']};"
                             f"K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID={md['uid']}")}

    def add(self, pod: dict[str, Any], node: str) -> dict[str, Any]:
        """CNI ADD through the real Multus on `node`; the pod's network-status and eth0 address.

        Raises CniError with Multus's message when the ADD fails (after the DEL the kubelet runs)."""
        md = pod["metadata"]
        uid = md["uid"]
        conf = self.multus_config()
        text = json.dumps(conf)
        node_info = self.ensure_node(node)
        cid = sandbox_id(uid)
        netns = f"pod-{cid[:12]}"
        g = self.guest
        g.write({f"{NETD}/00-multus.conf": text + "\n"})
        g.check(["ip", "netns", "add", netns])
        g.check(["ip", "-n", netns, "link", "set", "lo", "up"])
        with self._lock:
            self._pods[uid] = {"node": node, "node_netns": node_info["netns"], "netns": netns, "cid": cid,
                               "namespace": md["namespace"], "name": md["name"], "conf": text}
        started = time.monotonic()
        out = g.exec(["ip", "netns", "exec", node_info["netns"], f"{BIN}/multus"],
                     env=self._env("ADD", pod, cid, netns), stdin=text, timeout=90)
        self.timings["last_add"] = time.monotonic() - started
        if out.get("rc") != 0:
            message = _cni_error(out)
            self.delete(pod)
            raise CniError(message)
        try:
            result = json.loads(out.get("stdout") or "{}")
        except ValueError:
            result = {}
        eth0 = next((str(ip.get("address", "")).split("/")[0] for ip in result.get("ips") or []), "")
        return {"result": result, "eth0": eth0, "netns": netns, "node_netns": node_info["netns"], "cid": cid}

    def delete(self, pod: dict[str, Any]) -> None:
        """CNI DEL through Multus (it frees the Whereabouts address), then the pod's namespace."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            info = self._pods.pop(uid, None)
        if info is None:
            return
        try:
            self.guest.exec(["ip", "netns", "exec", info["node_netns"], f"{BIN}/multus"],
                            env=self._env("DEL", pod, info["cid"], info["netns"]), stdin=info["conf"], timeout=90)
            self.guest.exec(["ip", "netns", "del", info["netns"]])
        except (OSError, GuestError):
            pass  # the guest is gone: nothing of it is left to free

    def try_config(self, config: dict[str, Any], node: str, tag: str) -> tuple[bool, str]:
        """ADD then DEL of a NAD's config (a conflist) straight through its plugins, in a throwaway
        pod namespace on `node`, as Multus would delegate: (ADD accepted, the plugin's message)."""
        node_info = self.ensure_node(node)
        cid = hashlib.sha256(f"try-{tag}".encode()).hexdigest()
        netns = f"try-{cid[:12]}"
        g = self.guest
        plugins = config.get("plugins") if isinstance(config.get("plugins"), list) else [config]
        g.check(["ip", "netns", "add", netns])
        try:
            base = {"CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "net1",
                    "CNI_PATH": BIN,
                    "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={netns}"}
            ok, message, added = True, "", []
            prev: Any = None
            for plugin in plugins:
                conf = {"cniVersion": config.get("cniVersion"), "name": config.get("name"), **plugin}
                if prev is not None:
                    conf["prevResult"] = prev
                out = g.exec(["ip", "netns", "exec", node_info["netns"], f"{BIN}/{plugin.get('type')}"],
                             env={**base, "CNI_COMMAND": "ADD"}, stdin=json.dumps(conf), timeout=60)
                if out.get("rc") != 0:
                    ok, message = False, _cni_error(out)
                    break
                added.append(conf)
                prev = json.loads(out.get("stdout") or "{}")
            for conf in reversed(added if ok else [*added, *plugins[len(added):len(added) + 1]]):
                conf = {"cniVersion": config.get("cniVersion"), "name": config.get("name"), **conf}
                g.exec(["ip", "netns", "exec", node_info["netns"], f"{BIN}/{conf.get('type')}"],
                       env={**base, "CNI_COMMAND": "DEL"}, stdin=json.dumps(conf), timeout=60)
            return ok, message
        finally:
            g.exec(["ip", "netns", "del", netns])

    # ------------------------------------------------------------ looking at a pod
    def pod_info(self, uid: str) -> dict[str, str] | None:
        with self._lock:
            info = self._pods.get(uid)
            return dict(info) if info else None

    def addresses(self, uid: str, ifname: str = "net1") -> list[dict[str, Any]]:
        """`ip -j addr show IFNAME` inside the pod's namespace, as the kernel shows it."""
        info = self.pod_info(uid)
        if info is None:
            return []
        out = self.guest.exec(["ip", "-n", info["netns"], "-j", "addr", "show", "dev", ifname])
        if out.get("rc") != 0:
            return []
        return json.loads(out.get("stdout") or "[]")

    def ping(self, uid: str, address: str, ifname: str = "net1", count: int = 3) -> dict[str, Any]:
        """ICMP from the pod's namespace over `ifname`, then ARP: does the peer answer on layer 2?"""
        info = self.pod_info(uid)
        if info is None:
            return {"icmp": False, "arp": False, "detail": "no such pod on the real path"}
        icmp = self.guest.exec(["ip", "netns", "exec", info["netns"], "ping", "-c", str(count), "-W", "2", "-I",
                                ifname, address], timeout=30)
        arp = self.guest.exec(["ip", "netns", "exec", info["netns"], "arping", "-c", "2", "-w", "5", "-I", ifname,
                               address], timeout=30)
        return {"icmp": icmp.get("rc") == 0, "arp": arp.get("rc") == 0,
                "detail": (icmp.get("stdout") or icmp.get("stderr") or "").strip().splitlines()[-2:]}


def network_status(pod: dict[str, Any]) -> list[dict[str, Any]]:
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(NETWORK_STATUS)
    try:
        return json.loads(text) if text else []
    except ValueError:
        return []
