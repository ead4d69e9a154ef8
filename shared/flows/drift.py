"""The bundle half of a READY cluster's drift check, in one LIST per kind.

The check used to GET each of the bundle's ten objects (plus the DaemonSet again for its
rollout): 12 cluster requests with the NAD list. Listing each kind once (namespaced kinds in
their namespace) finds the same missing objects in 6 requests, and the DaemonSet's rollout is
read from the listed object. The objects are matched by name rather than by a managed-by label
selector: the bundle is the seed's manifest byte for byte (tests/test_multus.py), and the seed's
objects carry no such label.
"""

from __future__ import annotations

from typing import Any

from shared.core.multus import object_key
from shared.core.observed import nested
from shared.ports import ClusterApiPort


def bundle_drift(kube: ClusterApiPort, bundle: Any) -> tuple[list[dict[str, Any]], Any]:
    """(the bundle objects missing on the cluster, the DaemonSet's rollout as listed or None)."""
    present: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    kinds = sorted({(o["apiVersion"], o["kind"], (o["metadata"].get("namespace") or "")) for o in bundle.objects})
    for api_version, kind, namespace in kinds:
        for item in kube.list(api_version, kind, namespace or None):
            namespace_of, name_of = nested(item, "metadata", "namespace"), nested(item, "metadata", "name")
            present[(api_version, kind, str(namespace_of or ""), str(name_of or ""))] = item
    missing = [o for o in bundle.objects if object_key(o) not in present]
    ns, name = bundle.daemonset
    ds = present.get(("apps/v1", "DaemonSet", ns, name))
    return missing, (kube.rollout_of(ds) if ds is not None else None)
