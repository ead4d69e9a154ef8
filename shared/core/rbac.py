"""The controller's in-cluster RBAC, rendered for one identity and the namespaces that get NADs.

Why a rendered manifest and not IAM: GKE's IAM authorizer grants `container.<kind>.<verb>` on
every cluster of a project, opted in or not, and cannot name objects. Kubernetes RBAC can
(`resourceNames`), and it exists only in the clusters an operator opts in. The one source is
`shared/rbac/controller.yaml`; the operator applies its rendering at opt-in
(`multus-provisioner render-rbac`, docs/DEPLOY.md), and the sandbox's real tier applies the same
rendering to run the controller as that user (sandbox/stack.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

from shared.core.errors import Problem, Rejected
from shared.core.names import is_dns_label

USER_PLACEHOLDER = "CONTROLLER_USER"
NAMESPACE_PLACEHOLDER = "VERIFY_NAMESPACE"
VERIFY_BINDING = "multus-provisioner-verify"
# The sandbox's stand-in for the runtime service account's e-mail (a GKE user name is the e-mail).
SANDBOX_USER = "multus-runtime@sandbox-project.iam.gserviceaccount.com"


@cache
def _template() -> tuple[dict[str, Any], ...]:
    import yaml

    text = resources.files("shared").joinpath("rbac", "controller.yaml").read_text(encoding="utf-8")
    return tuple(d for d in yaml.safe_load_all(text) if d)


def template() -> list[dict[str, Any]]:
    """The manifest as written (placeholders in place): what tests compare against the code."""
    return copy.deepcopy(list(_template()))


def controller_rbac(user: str, namespaces: Iterable[str]) -> list[dict[str, Any]]:
    """The objects to apply in a cluster: `user` is the identity the controller's requests carry
    (on GKE, the runtime service account's e-mail); one verify RoleBinding per namespace."""
    problems: list[Problem] = []
    if not isinstance(user, str) or not user or len(user) > 253 or any(c.isspace() or ord(c) < 32 for c in user):
        problems.append(Problem("user", "expected the controller's identity (the runtime service account's e-mail)"))
    spaces = list(dict.fromkeys(namespaces))
    if not spaces:
        problems.append(Problem("namespace", "name at least one namespace that may receive NADs"))
    for ns in spaces:
        if not is_dns_label(ns):
            problems.append(Problem("namespace", f"{ns!r} is not a namespace name (a DNS-1123 label)"))
    if problems:
        raise Rejected("invalid RBAC options", problems)
    out: list[dict[str, Any]] = []
    for obj in template():
        for subject in obj.get("subjects") or []:
            if subject.get("name") == USER_PLACEHOLDER:
                subject["name"] = user
        if obj["metadata"].get("namespace") == NAMESPACE_PLACEHOLDER:
            for ns in spaces:
                one = copy.deepcopy(obj)
                one["metadata"]["namespace"] = ns
                out.append(one)
            continue
        out.append(obj)
    return out
