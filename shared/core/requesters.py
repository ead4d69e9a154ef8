"""Who asked, and what they may ask for: requester identity and the authorization policy.

A NAD request is published to a topic that any principal with `pubsub.publisher` on it can
write to, so the topic's IAM alone says nothing about *which* namespaces of *which* clusters a
person may change. Each request therefore carries a Google-signed ID token in a message
attribute (`idToken`, see `token_from_attributes`); the function verifies it (signature,
issuer, audience, expiry: `shared.adapters.idtoken`) and this module decides, purely, what the
identity in it may do:

- `Grant`: emails (exact, `*@domain` or `*`) -> projects, clusters, namespaces (patterns) and
  an address quota (the largest block one NAD may take, the NADs one namespace may hold);
- `authorize`: the problems of one request for one requester under the grants in force.

Only the email is kept (in the NAD record and its history); the token never leaves the
function's memory. Pure module: standard library only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.core.errors import Problem

TOKEN_ATTRIBUTE = "idToken"
# Pub/Sub caps an attribute value at 1024 bytes and a Google ID token may be longer: the
# publisher splits it into `idToken`, `idToken.1`, `idToken.2`...; `token_from_attributes` joins them.
TOKEN_CHUNK = 1000
MAX_TOKEN_CHUNKS = 8
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
# Namespaces no request may touch unless the policy says otherwise (`protectedNamespaces`):
# the cluster's own (kube-system, kube-public, kube-node-lease), GKE's, Managed Prometheus', Istio's.
PROTECTED_NAMESPACES = ("kube-*", "gke-*", "gmp-*", "istio-system")
DEFAULT_LARGEST_PREFIX = {4: 24, 6: 64}  # a NAD takes at most a /24 (IPv4) or a /64 (IPv6)

_EMAIL = re.compile(r"^(\*|\*@[A-Za-z0-9.-]+|[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190})$")
_PATTERN = re.compile(r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?|[a-z0-9][-a-z0-9]{0,61}-?\*)$")
_CLUSTER_PATTERN = re.compile(r"^(\*|[a-z0-9][-a-z0-9]{0,39}\*?|projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/"
                              r"locations/[a-z0-9-]{1,63}/clusters/[a-z0-9][-a-z0-9]{0,39})$")


@dataclass(frozen=True)
class Requester:
    """A verified identity: the email of an ID token whose signature, issuer, audience and expiry
    were checked. `subject` (the token's `sub`) is kept for logs of the function only."""

    email: str
    subject: str = ""


def matches(pattern: str, value: str) -> bool:
    """`*` matches anything, `prefix-*` / `prefix*` a prefix, anything else itself."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def email_matches(pattern: str, email: str) -> bool:
    pattern, email = pattern.lower(), email.lower()
    if pattern.startswith("*@"):
        return email.endswith(pattern[1:])
    return pattern == "*" or pattern == email


def protected_problem(namespace: str, patterns: Iterable[str]) -> str | None:
    hit = next((p for p in patterns if matches(p, namespace)), None)
    if hit is None:
        return None
    return (f"namespace {namespace!r} is denied by policy: it is protected ({hit}; protected: "
            f"{', '.join(patterns)}); no NAD is applied or deleted there")


@dataclass(frozen=True)
class Grant:
    """What the identities matching `emails` may ask for. `largest_prefix` maps an IP version to
    the shortest prefix length one NAD may take (24: at most a /24); `max_nads_per_namespace`
    None leaves only the cluster's limit."""

    emails: tuple[str, ...]
    projects: tuple[str, ...] = ("*",)
    clusters: tuple[str, ...] = ("*",)
    namespaces: tuple[str, ...] = ("*",)
    largest_prefix: Mapping[int, int] | None = None
    max_nads_per_namespace: int | None = None

    def prefix_limit(self, version: int) -> int:
        return (self.largest_prefix or DEFAULT_LARGEST_PREFIX).get(version, DEFAULT_LARGEST_PREFIX[version])


# Without a `requesters` list in the policy, every verified identity may ask for any namespace the
# namespace policy allows, on every cluster of the managed projects, within the default quota.
DEFAULT_GRANTS = (Grant(emails=("*",)),)


def parse_grants(raw: Any, *, src: str) -> tuple[Grant, ...]:
    """The policy's `requesters` list -> grants; a `ValueError` (the caller's ConfigError) names
    the first bad field. Each entry: {emails, projects?, clusters?, namespaces?, largestPrefix?
    {ipv4, ipv6}, maxNadsPerNamespace?}."""
    if not isinstance(raw, list):
        raise ValueError(f"{src}: expected a list of grants")
    out = []
    known = {"emails", "projects", "clusters", "namespaces", "largestPrefix", "maxNadsPerNamespace", "description"}
    for i, item in enumerate(raw):
        where = f"{src}[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected an object")
        unknown = sorted(set(item) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
        lists: dict[str, tuple[str, ...]] = {}
        for key, rx in (("emails", _EMAIL), ("projects", _PATTERN), ("clusters", _CLUSTER_PATTERN),
                        ("namespaces", _PATTERN)):
            value = item.get(key, None if key == "emails" else ["*"])
            if not isinstance(value, list) or not value or not all(isinstance(x, str) and rx.match(x) for x in value):
                raise ValueError(f"{where}.{key}: expected a non-empty list of "
                                 + ("emails (or *@domain, *)" if key == "emails" else "names or prefix* patterns"))
            lists[key] = tuple(value)
        prefix: dict[int, int] | None = None
        if item.get("largestPrefix") is not None:
            lp = item["largestPrefix"]
            if not isinstance(lp, Mapping) or set(lp) - {"ipv4", "ipv6"} or not all(
                    type(v) is int and 0 <= v <= (32 if k == "ipv4" else 128) for k, v in lp.items()):
                raise ValueError(f"{where}.largestPrefix: expected {{\"ipv4\": 0..32, \"ipv6\": 0..128}}")
            prefix = {**DEFAULT_LARGEST_PREFIX, **{4 if k == "ipv4" else 6: v for k, v in lp.items()}}
        per_ns = item.get("maxNadsPerNamespace")
        if per_ns is not None and (type(per_ns) is not int or not 1 <= per_ns <= 1000):
            raise ValueError(f"{where}.maxNadsPerNamespace: expected an integer in 1..1000")
        out.append(Grant(emails=lists["emails"], projects=lists["projects"], clusters=lists["clusters"],
                         namespaces=lists["namespaces"], largest_prefix=prefix, max_nads_per_namespace=per_ns))
    return tuple(out)


def grants_for(grants: Iterable[Grant], email: str) -> list[Grant]:
    return [g for g in grants if any(email_matches(p, email) for p in g.emails)]


def _covers(g: Grant, req: Any) -> tuple[bool, bool]:
    """(the grant covers the request's cluster, and its namespace too)."""
    ref = req.cluster
    where = (any(matches(p, ref.project) for p in g.projects)
             and any(p == ref.path if p.startswith("projects/") else matches(p, ref.cluster) for p in g.clusters))
    return where, where and any(matches(p, req.namespace) for p in g.namespaces)


def authorize(grants: Iterable[Grant], requester: Requester | None, req: Any) -> tuple[list[Problem], Grant]:
    """(problems, the grant that decides the quota) for `req` (a `NadRequest`) asked by `requester`.

    `requester` None: a request the controller makes itself (the policy's default NADs) or a
    deployment that turned verification off; only the default quota applies. A requester needs
    one grant that names its email and covers the request's project, cluster and namespace; the
    first such grant sets the quota.
    """
    if requester is None:
        return [], DEFAULT_GRANTS[0]
    mine = grants_for(grants, requester.email)
    if not mine:
        return [Problem("requester", f"{requester.email} is not granted any NAD requests by the policy")], \
            DEFAULT_GRANTS[0]
    covered = [_covers(g, req) for g in mine]
    for g, (_, whole) in zip(mine, covered, strict=True):
        if whole:
            return [], g
    field, what = (("namespace", f"namespace {req.namespace!r} of {req.cluster.path}") if any(c for c, _ in covered)
                   else ("cluster", f"cluster {req.cluster.path}"))
    scope = "; ".join(f"projects {','.join(g.projects)} clusters {','.join(g.clusters)} "
                      f"namespaces {','.join(g.namespaces)}" for g in mine)
    return [Problem(field, f"{requester.email} may not change NADs in {what} (granted: {scope})")], mine[0]


def quota_problems(grant: Grant, *, requested: str | None, cidr: str) -> list[Problem]:
    """The address quota of one NAD: its range (`cidr`, the request's or the pool's when the
    request gave none) takes at most the grant's largest prefix. A request without a range takes
    the pool's range only when that fits the quota: it never silently takes a whole large pool."""
    net = ipaddress.ip_network(cidr, strict=False)
    limit = grant.prefix_limit(net.version)
    if net.prefixlen >= limit:
        return []
    if requested is None:
        return [Problem("range", f"no range given and the node pool's range {cidr} is larger than the /{limit} "
                                 f"a NAD may take; give a range of at most /{limit} inside {cidr}")]
    return [Problem("range", f"range {cidr} is larger than the /{limit} a NAD may take (policy quota)")]


def namespace_quota_problem(grant: Grant, others: Iterable[Mapping[str, Any]], namespace: str,
                            counted: Iterable[str]) -> str | None:
    """Why one more NAD in `namespace` would exceed the grant's per-namespace quota, or None
    (`others` are the cluster's other NADs' footprints, as `decisions.footprints` gives them)."""
    if grant.max_nads_per_namespace is None:
        return None
    states = set(counted)
    n = len({o.get("name") for o in others if o.get("namespace") == namespace and o.get("state") in states})
    if n >= grant.max_nads_per_namespace:
        return (f"namespace {namespace!r} already has {n} NADs (quota {grant.max_nads_per_namespace} "
                "per namespace)")
    return None


def token_from_attributes(attributes: Mapping[str, str]) -> str | None:
    """The ID token a message carries (joined from its chunks), or None."""
    first = attributes.get(TOKEN_ATTRIBUTE)
    if not first:
        return None
    parts = [first]
    for i in range(1, MAX_TOKEN_CHUNKS):
        more = attributes.get(f"{TOKEN_ATTRIBUTE}.{i}")
        if not more:
            break
        parts.append(more)
    return "".join(parts)


def token_attributes(token: str) -> dict[str, str]:
    """The message attributes that carry `token` (the inverse of `token_from_attributes`)."""
    chunks = [token[i:i + TOKEN_CHUNK] for i in range(0, len(token), TOKEN_CHUNK)] or [""]
    if len(chunks) > MAX_TOKEN_CHUNKS:
        raise ValueError(f"an ID token of {len(token)} characters is longer than {TOKEN_CHUNK * MAX_TOKEN_CHUNKS}")
    return {(TOKEN_ATTRIBUTE if i == 0 else f"{TOKEN_ATTRIBUTE}.{i}"): c for i, c in enumerate(chunks)}


def claims_problems(claims: Mapping[str, Any], *, audiences: Iterable[str], issuers: Iterable[str],
                    now: float) -> list[Problem]:
    """The checks of a decoded token's claims that are ours to make (the signature and the
    expiry are checked by google-auth on decoding; they are checked again here so that the rule
    is written once, testable without keys): issuer, audience, expiry, a verified email."""
    out = []
    if claims.get("iss") not in tuple(issuers):
        out.append(Problem("attributes.idToken", f"issuer {str(claims.get('iss'))[:100]!r} is not trusted"))
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if not any(a in tuple(audiences) for a in auds):
        out.append(Problem("attributes.idToken", f"audience {str(aud)[:100]!r} is not this controller's "
                                                 f"({', '.join(audiences)})"))
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp < now:
        out.append(Problem("attributes.idToken", "the token has expired"))
    email = claims.get("email")
    if not isinstance(email, str) or not _EMAIL.match(email) or email.startswith("*"):
        out.append(Problem("attributes.idToken", "the token carries no email (request it with the email scope "
                                                 "or from a service account)"))
    elif claims.get("email_verified") is False:
        out.append(Problem("attributes.idToken", f"the token's email {email} is not verified"))
    return out
