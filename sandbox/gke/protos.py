"""Scenario specs -> GKE API messages (`google.cloud.container_v1`), as a caller would send them.

`cluster_message` is what the demo passes to CreateCluster for a `create_at_start: false`
cluster; the server then fills the output-only fields (status, endpoint, CA, versions...) the way
GKE does. Keeping the translation here means the scenario and the API never drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.gke.scenario import ClusterSpec, NodePoolSpec, full_version, region_of

if TYPE_CHECKING:
    from google.cloud import container_v1


def node_pool_message(spec: NodePoolSpec) -> container_v1.NodePool:
    """The NodePool a CreateNodePool (or CreateCluster) request would carry for this spec."""
    from google.cloud import container_v1 as c

    return c.NodePool(
        name=spec.name,
        initial_node_count=spec.node_count,
        config=c.NodeConfig(machine_type=spec.machine_type, labels=dict(spec.labels)),
        network_config=c.NodeNetworkConfig(
            additional_node_network_configs=[
                c.AdditionalNodeNetworkConfig(network=n.network, subnetwork=n.subnetwork)
                for n in spec.additional_node_networks],
            additional_pod_network_configs=[
                c.AdditionalPodNetworkConfig(
                    subnetwork=p.subnetwork, secondary_pod_range=p.secondary_pod_range,
                    max_pods_per_node=c.MaxPodsConstraint(max_pods_per_node=p.max_pods_per_node))
                for p in spec.additional_pod_networks],
        ),
    )


def cluster_message(spec: ClusterSpec) -> container_v1.Cluster:
    """The Cluster a CreateCluster request would carry for this spec (no output-only fields)."""
    from google.cloud import container_v1 as c

    dp = c.DatapathProvider.ADVANCED_DATAPATH if spec.dataplane_v2 else c.DatapathProvider.LEGACY_DATAPATH
    return c.Cluster(
        name=spec.name,
        initial_cluster_version=full_version(spec.version),
        resource_labels=dict(spec.labels),
        network=spec.network,
        subnetwork=spec.subnetwork,
        autopilot=c.Autopilot(enabled=spec.autopilot),
        ip_allocation_policy=c.IPAllocationPolicy(use_ip_aliases=spec.ip_alias),
        network_config=c.NetworkConfig(datapath_provider=dp, enable_multi_networking=spec.multi_networking),
        node_pools=[node_pool_message(p) for p in spec.node_pools],
    )


def pool_locations(location: str) -> list[str]:
    """The zones a pool's nodes live in: the cluster's zone, or zone `-a` of a regional cluster.

    Real regional clusters spread over three zones; one keeps node counts equal to `node_count`,
    which is what scenario authors expect to see in the simulated cluster.
    """
    return [location] if region_of(location) != location else [f"{location}-a"]
