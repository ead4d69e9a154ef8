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

PREFIX = "MULTUS_PROVISIONER_"


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message names the variable."""


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
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
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
        tpl = cls(**{k: (dict(v) if k == "labels" else v) for k, v in data.items()})
        for name in ("network", "subnetwork", "secondary_pod_range"):
            if not getattr(tpl, name):
                raise ConfigError(f"{source}: {name} is required")
        if not _DNS1123.match(tpl.name) or len(tpl.name) > 40:
            raise ConfigError(f"{source}: name {tpl.name!r} is not a valid node pool name")
        if not isinstance(tpl.max_pods_per_node, int) or not 1 <= tpl.max_pods_per_node <= 256:
            raise ConfigError(f"{source}: max_pods_per_node must be an integer in 1..256")
        if not isinstance(tpl.node_count, int) or not 0 <= tpl.node_count <= 1000:
            raise ConfigError(f"{source}: node_count must be an integer in 0..1000")
        return tpl


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
    node_pool_template: NodePoolTemplate | None = None
    default_nads: tuple[Mapping[str, Any], ...] = ()
    multus_image: str | None = None
    whereabouts_image: str | None = None
    allow_unpinned_images: bool = False
    multus_log_level: str | None = None
    stall_seconds: int = 600
    nad_topic: str = "multus-nad-requests"
    policy_document: bool = True

    def collection(self, name: str) -> str:
        """The Firestore collection name with the deployment's prefix (tests use their own)."""
        return f"{self.collection_prefix}{name}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(PREFIX + name)
            return default if value is None or value == "" else value

        def integer(name: str, default: int, lo: int, hi: int) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{PREFIX}{name}={raw!r}: expected an integer") from None
            if not lo <= value <= hi:
                raise ConfigError(f"{PREFIX}{name}={value}: expected {lo}..{hi}")
            return value

        def number(name: str, default: float, lo: float, hi: float) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{PREFIX}{name}={raw!r}: expected a number") from None
            if not lo <= value <= hi:
                raise ConfigError(f"{PREFIX}{name}={value}: expected {lo}..{hi}")
            return value

        def names(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = get(name)
            if raw is None:
                return default
            items = tuple(x.strip() for x in raw.split(",") if x.strip())
            for item in items:
                if not _DNS1123.match(item):
                    raise ConfigError(f"{PREFIX}{name}: {item!r} is not a valid namespace name")
            return items

        def as_json(name: str) -> Any:
            raw = get(name)
            if raw is None:
                return None
            try:
                return json.loads(raw)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{PREFIX}{name}: not valid JSON ({e.msg} at {e.pos})") from None

        project = get("PROJECT") or env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCLOUD_PROJECT") or ""
        prefix = get("COLLECTION_PREFIX", "") or ""
        if not _PREFIX_RX.match(prefix):
            raise ConfigError(f"{PREFIX}COLLECTION_PREFIX={prefix!r}: letters, digits, '_' and '-' only, <= 40")
        label = get("OPT_IN_LABEL", "multus-provisioner=enabled") or ""
        key, sep, value = label.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
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
        return cls(
            project=project,
            collection_prefix=prefix,
            database=get("DATABASE", "(default)") or "(default)",
            opt_in_label=(key, value),
            gke_endpoint=get("GKE_ENDPOINT"),
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
            node_pool_template=template,
            default_nads=tuple(nads_raw or ()),
            multus_image=get("MULTUS_IMAGE"),
            whereabouts_image=get("WHEREABOUTS_IMAGE"),
            allow_unpinned_images=(get("ALLOW_UNPINNED_IMAGES", "false") or "").lower() in ("1", "true", "yes"),
            multus_log_level=level,
            stall_seconds=integer("STALL_SECONDS", 600, 1, 86400),
            nad_topic=get("TOPIC_NAD_REQUESTS", "multus-nad-requests") or "multus-nad-requests",
            policy_document=(get("POLICY_DOCUMENT", "true") or "").lower() not in ("0", "false", "no"),
        )
