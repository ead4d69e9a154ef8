"""Cloud Functions entry points (gen2, Pub/Sub-triggered CloudEvents).

Placeholder until the end-to-end issue lands: the names are the public interface that
Terraform and the sandbox wire to.
"""

import functions_framework


@functions_framework.cloud_event
def on_cluster_event(cloud_event):  # pragma: no cover - replaced by the workflow wiring
    return None


@functions_framework.cloud_event
def on_node_pool_event(cloud_event):  # pragma: no cover
    return None


@functions_framework.cloud_event
def on_nad_request(cloud_event):  # pragma: no cover
    return None


@functions_framework.cloud_event
def reconcile(cloud_event):  # pragma: no cover
    return None
