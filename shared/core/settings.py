"""Configuration from the environment, validated once per process.

Every knob has a sane default so that a deployment needs only its project id. A bad value is
reported with the variable's name, at start-up, rather than as a surprise in the middle of a
step. Policy that operators change often (opt-in label, node pool template, default NADs,
namespaces) can also come from a Firestore `config/policy` document, merged over these values
by the workflow.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.core import names as naming
from shared.core.errors import Problem
from shared.core.names import compute_ref
from shared.core.refs import valid_node_pool_name, valid_project_id

PREFIX = "MULTUS_PROVISIONER_"


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message names the variable."""


_PREFIX_RX = re.compile(r"^[A-Za-z0-9_-]{0,40}$")


@dataclass(frozen=True)
class NodePoolTemplate:
    """What the controller creates when an opted-in cluster has no pool with extra networks."""

    name: str = "multus-pool"
    network: str = ""
    subnetwork: str = ""
    secondary_pod_range: str = ""
    max_pods_per_node: int = 8
    machine_type: str = "e2-standard-4"
    node_count: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str) -> NodePoolTemplate:
        """Decode an operator's template (env JSON or the policy document); every problem named."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
        values: dict[str, Any] = {k: (dict(v) if k == "labels" and isinstance(v, Mapping) else v)
                                  for k, v in data.items()}
        tpl = cls(**values)
        problems = tpl.problems(field=source)
        if problems:
            raise ConfigError("; ".join(str(p) for p in problems))
        return tpl

    def problems(self, *, field: str = "node_pool_template") -> list[Problem]:
        """Every reason this template cannot become a CreateNodePool request, named by field.

        The one validator of a template: settings, the policy document and the GKE adapter all
        ask it, so what is accepted at start-up is exactly what GKE is sent.
        """
        problems: list[Problem] = []

        def check(name: str, ok: bool, why: str) -> None:
            if not ok:
                problems.append(Problem(f"{field}.{name}", why))

        def text(name: str) -> str:
            value = getattr(self, name)
            if not isinstance(value, str):
                problems.append(Problem(f"{field}.{name}", f"expected a string, got {type(value).__name__}"))
                return ""
            if not value and name in ("network", "subnetwork", "secondary_pod_range"):
                problems.append(Problem(f"{field}.{name}", "is required"))
                return ""
            return value

        network, subnetwork = compute_ref(text("network")), compute_ref(text("subnetwork"))
        check("name", valid_node_pool_name(self.name), f"invalid node pool name {self.name!r}")
        if network:
            check("network", bool(naming.GCE_NAME.match(network) or naming.NETWORK_PATH.match(network)),
                  f"{network!r} is not a network name or projects/P/global/networks/N")
        if subnetwork:
            check("subnetwork", bool(naming.GCE_NAME.match(subnetwork) or naming.SUBNET_PATH.match(subnetwork)),
                  f"{subnetwork!r} is not a subnetwork name or projects/P/regions/R/subnetworks/S")
        rng = text("secondary_pod_range")
        if rng:
            check("secondary_pod_range", bool(naming.GCE_NAME.match(rng)), f"{rng!r} is not a secondary range name")
        machine = text("machine_type")
        check("machine_type", bool(naming.MACHINE_TYPE.match(machine)), f"{machine!r} is not a machine type")
        for name, lo, hi in (("max_pods_per_node", 1, 256), ("node_count", 0, 1000)):
            value = getattr(self, name)
            check(name, type(value) is int and lo <= value <= hi,
                  f"expected an integer in {lo}..{hi}, got {value!r}")
        labels = self.labels
        if not isinstance(labels, Mapping):
            problems.append(Problem(f"{field}.labels", "expected a mapping of label key to value"))
        else:
            for k, v in labels.items():
                if not isinstance(k, str) or not naming.LABEL_KEY.match(k):
                    problems.append(Problem(f"{field}.labels", f"invalid label key {k!r}"))
                elif not isinstance(v, str) or not naming.LABEL_VALUE.match(v):
                    problems.append(Problem(f"{field}.labels.{k}", f"invalid label value {v!r}"))
        return problems


VERIFY_TIMEOUT_MAX_SECONDS = 120.0  # the longest `verify` may wait per pod (a verify pod's marker lasts 2x)


@dataclass(frozen=True)
class Settings:
    project: str = ""
    collection_prefix: str = ""
    database: str = "(default)"
    opt_in_label: tuple[str, str] = ("multus-provisioner", "enabled")
    gke_endpoint: str | None = None
    access_token_file: str | None = None
    lease_seconds: int = 120
    api_timeout_seconds: float = 30.0  # per call to Firestore, GKE and cluster APIs (docs/RELIABILITY.md)
    crd_timeout_seconds: float = 60.0
    crd_poll_seconds: float = 0.5
    rollout_wait_seconds: float = 60.0
    ledger_ttl_days: int = 30
    allowed_namespaces: tuple[str, ...] = ()  # empty: any namespace not denied
    denied_namespaces: tuple[str, ...] = ("kube-system",)
    max_nads_per_cluster: int = 32
    max_attempts: int = 5
    # How long a write refused because GKE runs another operation on the cluster is retried. GKE's own
    # operations (node upgrades after a create, auto-upgrades) take minutes, sometimes tens of them.
    busy_wait_seconds: int = 3600
    # A node pool whose creation GKE reports as transiently failed (zone stockout, quota) is deleted
    # and created again after this many seconds, doubled on each further attempt (max_attempts in all).
    node_pool_retry_seconds: int = 60
    node_pool_template: NodePoolTemplate | None = None
    default_nads: tuple[Mapping[str, Any], ...] = ()
    multus_image: str | None = None
    whereabouts_image: str | None = None
    allow_unpinned_images: bool = False
    multus_log_level: str | None = None
    stall_seconds: int = 600
    # How the controller reaches a cluster's control plane (shared/core/endpoints.py):
    # the DNS-based endpoint's certificate is publicly trusted: verified with the system roots unless
    # a CA file is given (the sandbox's public-style CA); `dns_endpoint_address` connects to that
    # address instead of resolving the name (the sandbox never registers it in DNS); `vpc_egress`:
    # the functions have VPC egress (infra var.vpc_connector), so a private endpoint may be dialled.
    dns_endpoint_ca_file: str | None = None
    dns_endpoint_address: str | None = None
    vpc_egress: bool = False
    nad_topic: str = "multus-nad-requests"
    policy_document: bool = True
    # The Firestore database holding `config/policy` (None: `database`). A deployment gives the policy
    # a database of its own, which the runtime may read but not write (infra/firestore.tf).
    policy_database: str | None = None
    # Bundle rollouts (docs/WORKFLOW.md "Bundle rollouts"): canary size when no cluster carries
    # the canary label, wave size ("10" clusters or "25%" of the fleet), how long a cluster may
    # take to pass its health gate.
    rollout_canary: int = 1
    rollout_wave_size: str = "25%"
    rollout_gate_seconds: float = 600.0
    # Projects whose clusters reconcile adopts besides `project` (infra's managed_cluster_projects).
    managed_projects: tuple[str, ...] = ()
    # The reconcile topic (name or projects/P/topics/T): set, the scheduled tick fans out one
    # scoped reconcile per cluster on it; unset, one invocation sweeps every cluster itself.
    reconcile_topic: str | None = None
    fanout_batch: int = 100
    prune_orphans: bool = False  # reconcile deletes managed NADs without a record that conflict (kept in the record)
    # Registries besides the seed's gcr.io/gke-release that the bundle's images may come from
    # (shared/core/multus.py registry_problem); set at deploy time only, never by config/policy.
    allowed_registries: tuple[str, ...] = ()
    # The sandbox's data-path probe (`http://127.0.0.1:PORT`, sandbox/datapath.py): `verify` asks it for
    # each pod's net1 as the kernel shows it and for ICMP/ARP between the pods. Unset (deployed), the
    # data path is reported as not checked: GKE gives the controller no way into a node's namespaces.
    datapath_url: str | None = None
    # How long `verify` waits for each of its pods to get net1 (the first and its peer). GKE nodes
    # set a pod up in seconds; the sandbox's real tier (UML guests, a loaded machine) needs longer.
    verify_timeout_seconds: float = 30.0
    # Verified requesters (docs/NAD_REQUESTS.md "Who may ask"): a NAD request must carry an ID token for one of
    # `requester_audiences`. Off in a Settings built in code (tests, tools); `from_env` (every
    # deployed function) turns it on unless MULTUS_PROVISIONER_REQUESTER_AUTH=off.
    requester_auth: bool = False
    requester_audiences: tuple[str, ...] = ("multus-provisioner",)
    # The sandbox's identity server (tokens and their certificates); never set outside the sandbox:
    # unset, the certificates are Google's.
    sandbox_id_url: str | None = None
    # Requests and audit events naming a project outside `project` + `managed_projects` are refused
    # (on in `from_env`, as requester_auth).
    restrict_projects: bool = False
    # The most clusters one scheduled reconcile tick fans out (or sweeps) per run.
    reconcile_fanout_limit: int = 1000

    def collection(self, name: str) -> str:
        """The Firestore collection name with the deployment's prefix (tests use their own)."""
        return f"{self.collection_prefix}{name}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        r = _EnvReader(env)
        get, integer, number, names, as_json = r.get, r.integer, r.number, r.names, r.as_json
        project = get("PROJECT") or env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCLOUD_PROJECT") or ""
        prefix = get("COLLECTION_PREFIX", "") or ""
        if not _PREFIX_RX.match(prefix):
            raise ConfigError(f"{PREFIX}COLLECTION_PREFIX={prefix!r}: letters, digits, '_' and '-' only, <= 40")
        label = get("OPT_IN_LABEL", "multus-provisioner=enabled") or ""
        key, sep, value = label.partition("=")
        if not sep or not naming.LABEL_KEY.match(key) or not naming.LABEL_VALUE.match(value):
            raise ConfigError(f"{PREFIX}OPT_IN_LABEL={label!r}: expected key=value with a valid label key and value")
        tpl_raw = as_json("NODE_POOL_TEMPLATE")
        template = (NodePoolTemplate.from_mapping(tpl_raw, source=PREFIX + "NODE_POOL_TEMPLATE")
                    if tpl_raw is not None else None)
        nads_raw = as_json("DEFAULT_NADS")
        if nads_raw is not None and (not isinstance(nads_raw, list)
                                     or not all(isinstance(x, dict) for x in nads_raw)):
            raise ConfigError(f"{PREFIX}DEFAULT_NADS: expected a JSON list of NAD request objects")
        level = get("MULTUS_LOG_LEVEL")
        if level is not None and level not in ("debug", "verbose", "error", "panic"):
            raise ConfigError(f"{PREFIX}MULTUS_LOG_LEVEL={level!r}: expected debug, verbose, error or panic")
        wave_size = get("ROLLOUT_WAVE_SIZE", "25%") or "25%"
        from shared.core.errors import Rejected
        from shared.core.waves import WaveSize

        try:
            WaveSize.parse(wave_size)
        except Rejected as e:
            raise ConfigError(f"{PREFIX}ROLLOUT_WAVE_SIZE={wave_size!r}: {e.problems[0].message}") from None
        from shared.core.multus import registry_syntax_problem

        # The images themselves are checked against these where the policy is built (Policy.from_settings),
        # so that a bad one is the handler's ConfigError like every other bundle option.
        registries = tuple(x.strip() for x in (get("ALLOWED_REGISTRIES", "") or "").split(",") if x.strip())
        for item in registries:
            why = registry_syntax_problem(item)
            if why:
                raise ConfigError(f"{PREFIX}ALLOWED_REGISTRIES: {why}")
        gke_endpoint = get("GKE_ENDPOINT")
        if gke_endpoint and not _loopback_endpoint(gke_endpoint):
            # Plain gRPC without credentials is the sandbox's: never towards another machine.
            raise ConfigError(f"{PREFIX}GKE_ENDPOINT={gke_endpoint[:100]!r}: the plaintext endpoint override is "
                              "for the sandbox and takes a loopback address only (127.0.0.1:PORT, [::1]:PORT, "
                              "localhost:PORT); deployed functions use Google's endpoint")
        managed = tuple(x.strip() for x in (get("MANAGED_PROJECTS", "") or "").split(",") if x.strip())
        for item in managed:
            if not valid_project_id(item):
                raise ConfigError(f"{PREFIX}MANAGED_PROJECTS: {item!r} is not a project id")
        return cls(
            project=project,
            collection_prefix=prefix,
            database=get("DATABASE", "(default)") or "(default)",
            opt_in_label=(key, value),
            gke_endpoint=gke_endpoint,
            access_token_file=get("ACCESS_TOKEN_FILE"),
            lease_seconds=integer("LEASE_SECONDS", 120, 5, 3600),
            api_timeout_seconds=number("API_TIMEOUT_SECONDS", 30.0, 0.5, 600),
            crd_timeout_seconds=number("CRD_TIMEOUT_SECONDS", 60.0, 0.1, 600),
            crd_poll_seconds=number("CRD_POLL_SECONDS", 0.5, 0.01, 30),
            rollout_wait_seconds=number("ROLLOUT_WAIT_SECONDS", 60.0, 0, 600),
            ledger_ttl_days=integer("LEDGER_TTL_DAYS", 30, 1, 3650),
            allowed_namespaces=names("ALLOWED_NAMESPACES", ()),
            denied_namespaces=names("DENIED_NAMESPACES", ("kube-system",)),
            max_nads_per_cluster=integer("MAX_NADS_PER_CLUSTER", 32, 1, 1000),
            max_attempts=integer("MAX_ATTEMPTS", 5, 1, 100),
            busy_wait_seconds=integer("BUSY_WAIT_SECONDS", 3600, 0, 86400),
            node_pool_retry_seconds=integer("NODE_POOL_RETRY_SECONDS", 60, 0, 86400),
            node_pool_template=template,
            default_nads=tuple(nads_raw or ()),
            multus_image=get("MULTUS_IMAGE"),
            whereabouts_image=get("WHEREABOUTS_IMAGE"),
            allow_unpinned_images=(get("ALLOW_UNPINNED_IMAGES", "false") or "").lower() in ("1", "true", "yes"),
            multus_log_level=level,
            stall_seconds=integer("STALL_SECONDS", 600, 1, 86400),
            dns_endpoint_ca_file=get("DNS_ENDPOINT_CA_FILE") or get("SANDBOX_CA_BUNDLE"),
            dns_endpoint_address=_ip_literal(r, "DNS_ENDPOINT_ADDRESS") or _ip_literal(r, "SANDBOX_DNS_ADDRESS"),
            vpc_egress=(get("VPC_EGRESS", "false") or "").lower() in ("1", "true", "yes"),
            nad_topic=get("TOPIC_NAD_REQUESTS", "multus-nad-requests") or "multus-nad-requests",
            policy_document=(get("POLICY_DOCUMENT", "true") or "").lower() not in ("0", "false", "no"),
            rollout_canary=integer("ROLLOUT_CANARY", 1, 0, 1000),
            rollout_wave_size=wave_size,
            rollout_gate_seconds=number("ROLLOUT_GATE_SECONDS", 600.0, 1, 86400),
            managed_projects=managed,
            reconcile_topic=get("TOPIC_RECONCILE"),
            fanout_batch=integer("FANOUT_BATCH", 100, 1, 1000),
            prune_orphans=r.boolean("PRUNE_ORPHANS", False),
            allowed_registries=registries,
            policy_database=_database_id(r, "POLICY_DATABASE"),
            datapath_url=_local_url(r, "DATAPATH_URL"),
            verify_timeout_seconds=number("VERIFY_TIMEOUT_SECONDS", 30.0, 5, VERIFY_TIMEOUT_MAX_SECONDS),
            requester_auth=_auth_mode(r),
            requester_audiences=_audiences(r),
            sandbox_id_url=_local_url(r, "SANDBOX_ID_URL"),
            restrict_projects=r.boolean("RESTRICT_PROJECTS", True),
            reconcile_fanout_limit=integer("RECONCILE_FANOUT_LIMIT", 1000, 1, 100000),
        )._checked()

    def _checked(self) -> Settings:
        """Rules across variables. A request's verification (two pods) runs under its NAD claim,
        which others take over as abandoned after three leases: it must end well before that."""
        if 2 * self.verify_timeout_seconds >= 3 * self.lease_seconds:
            raise ConfigError(f"{PREFIX}VERIFY_TIMEOUT_SECONDS={self.verify_timeout_seconds:g}: a verification "
                              f"(two pods) must end within 3 leases ({PREFIX}LEASE_SECONDS={self.lease_seconds})")
        return self


def _auth_mode(r: _EnvReader) -> bool:
    raw = (r.get("REQUESTER_AUTH", "required") or "").lower()
    if raw not in ("required", "off"):
        raise ConfigError(f"{PREFIX}REQUESTER_AUTH={raw[:40]!r}: expected required or off")
    return raw == "required"


def _audiences(r: _EnvReader) -> tuple[str, ...]:
    raw = r.get("REQUESTER_AUDIENCE", "multus-provisioner") or ""
    items = tuple(x.strip() for x in raw.split(",") if x.strip())
    if not items or not all(x.isprintable() and len(x) <= 256 for x in items):
        raise ConfigError(f"{PREFIX}REQUESTER_AUDIENCE: expected one or more audiences, comma-separated")
    return items


def _local_url(r: _EnvReader, name: str) -> str | None:
    """The sandbox's own servers listen on the loopback interface; anything else is refused, so
    this variable cannot point a deployed function at someone else's keys."""
    raw = r.get(name)
    if raw is None:
        return None
    match = re.fullmatch(r"http://127\.0\.0\.1:([0-9]{1,5})", raw.rstrip("/"))
    if not match or not 0 < int(match.group(1)) < 65536:
        raise ConfigError(f"{PREFIX}{name}={raw[:100]!r}: expected http://127.0.0.1:PORT (the sandbox only)")
    return raw.rstrip("/")


def _database_id(r: _EnvReader, name: str) -> str | None:
    """A Firestore database id (`(default)` or 4-63 of a-z, 0-9, -), or None when unset."""
    import re

    value = r.get(name)
    if not value:
        return None
    if value != "(default)" and not re.fullmatch(r"[a-z][a-z0-9-]{2,61}[a-z0-9]", value):
        raise ConfigError(f"{PREFIX}{name}={value[:80]!r}: expected a Firestore database id")
    return value


def _loopback_endpoint(endpoint: str) -> bool:
    """Is `host:port` on this machine (where the sandbox's GKE server listens)?"""
    import ipaddress

    host = endpoint.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ip_literal(r: _EnvReader, name: str) -> str | None:
    """An IP address to connect to (never a name: nothing to resolve), or None."""
    import ipaddress

    raw = r.get(name)
    if raw is None:
        return None
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}={raw[:100]!r}: expected an IP address") from None


@dataclass(frozen=True)
class _EnvReader:
    """Typed reads of `MULTUS_PROVISIONER_*` variables; each bad value names its variable."""

    env: Mapping[str, str]

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(PREFIX + name)
        return default if value is None or value == "" else value

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name}={raw!r}: expected an integer") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{PREFIX}{name}={value}: expected {lo}..{hi}")
        return value

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name}={raw!r}: expected a number") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{PREFIX}{name}={value}: expected {lo}..{hi}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{PREFIX}{name}={raw!r}: expected true or false")

    def names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.get(name)
        if raw is None:
            return default
        items = tuple(x.strip() for x in raw.split(",") if x.strip())
        for item in items:
            if not naming.DNS_LABEL.match(item):
                raise ConfigError(f"{PREFIX}{name}: {item!r} is not a valid namespace name")
        return items

    def as_json(self, name: str) -> Any:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{PREFIX}{name}: not valid JSON ({e.msg} at {e.pos})") from None
