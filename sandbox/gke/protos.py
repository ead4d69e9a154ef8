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
        **_endpoint_fields(spec),
    )


def _endpoint_fields(spec: ClusterSpec) -> dict[str, object]:
    """The control plane's access as a caller asks for it (only when the spec differs from the default).

    Both spellings GKE accepts are filled: the newer `control_plane_endpoints_config` and the older
    `private_cluster_config` / `master_authorized_networks_config`, which GKE keeps in step.
    """
    from google.cloud import container_v1 as c

    if spec.public_endpoint and not spec.dns_endpoint and spec.authorized_networks is None:
        return {}
    cpe = c.ControlPlaneEndpointsConfig
    authorized = c.MasterAuthorizedNetworksConfig(
        enabled=spec.authorized_networks is not None,
        cidr_blocks=[c.MasterAuthorizedNetworksConfig.CidrBlock(display_name=f"net-{i}", cidr_block=cidr)
                     for i, cidr in enumerate(spec.authorized_networks or ())])
    return {
        "control_plane_endpoints_config": cpe(
            dns_endpoint_config=cpe.DNSEndpointConfig(allow_external_traffic=spec.dns_endpoint),
            ip_endpoints_config=cpe.IPEndpointsConfig(enabled=True, enable_public_endpoint=spec.public_endpoint,
                                                      authorized_networks_config=authorized)),
        "private_cluster_config": c.PrivateClusterConfig(enable_private_nodes=not spec.public_endpoint,
                                                         enable_private_endpoint=not spec.public_endpoint),
        "master_authorized_networks_config": authorized,
    }


def pool_locations(location: str, zones: int = 1) -> list[str]:
    """The zones a pool's nodes live in: the cluster's zone, or `zones` zones of a regional cluster.

    GKE spreads a regional cluster's pools over three zones of the region, `initial_node_count`
    nodes in each (docs/SANDBOX_GKE.md, "Regional clusters"); the calm world uses one zone, so a
    pool has exactly `node_count` nodes.
    """
    return [location] if region_of(location) != location else [f"{location}-{z}" for z in "abc"[:zones]]
