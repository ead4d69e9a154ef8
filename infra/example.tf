# OPTIONAL example of the procedure's steps 1-3 (var.create_example, off by default; it costs money):
# - a VPC for the cluster and a second VPC for the additional pod network, whose subnet has the
#   secondary range the NADs' Whereabouts ranges are carved from;
# - a GKE Standard cluster with Dataplane V2, IP alias and multi-networking, carrying the opt-in label;
# - a node pool attached to the additional network (additional node + pod network, max 8 pods/node).
# Created together, the opted-in cluster walks through DISCOVERED -> INSTALLING -> READY by itself.

locals {
  example_count    = var.create_example ? 1 : 0
  opt_in_key       = split("=", var.opt_in_label)[0]
  opt_in_value     = split("=", var.opt_in_label)[1]
  example_region   = join("-", slice(split("-", var.example_zone), 0, 2))
  example_sec_name = "${var.name_prefix}-pods-net1"
}

resource "google_compute_network" "example_primary" {
  count                   = local.example_count
  project                 = var.project_id
  name                    = "${var.name_prefix}-example-primary"
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "example_primary" {
  count                    = local.example_count
  project                  = var.project_id
  name                     = "${var.name_prefix}-example-primary"
  region                   = local.example_region
  network                  = google_compute_network.example_primary[0].id
  ip_cidr_range            = "10.10.0.0/20"
  private_ip_google_access = true

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = "10.20.0.0/16"
  }
  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = "10.30.0.0/20"
  }

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Step 1: the VPC of the second interface, with the secondary range for pod interfaces.
resource "google_compute_network" "example_additional" {
  count                   = local.example_count
  project                 = var.project_id
  name                    = "${var.name_prefix}-example-net1"
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "example_additional" {
  count                    = local.example_count
  project                  = var.project_id
  name                     = "${var.name_prefix}-example-net1"
  region                   = local.example_region
  network                  = google_compute_network.example_additional[0].id
  ip_cidr_range            = var.example_primary_cidr
  private_ip_google_access = true

  secondary_ip_range {
    range_name    = local.example_sec_name
    ip_cidr_range = var.example_secondary_cidr
  }

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Traffic inside each VPC only: node-to-node and control-plane-to-node on the cluster network,
# pod-to-pod (IPVLAN L2, the NADs' range) and node-to-node on the additional network.
resource "google_compute_firewall" "example_primary_internal" {
  count         = local.example_count
  project       = var.project_id
  name          = "${var.name_prefix}-example-primary-internal"
  network       = google_compute_network.example_primary[0].id
  direction     = "INGRESS"
  source_ranges = ["10.10.0.0/20", "10.20.0.0/16", var.example_master_cidr]

  allow {
    protocol = "all"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "example_additional_internal" {
  count         = local.example_count
  project       = var.project_id
  name          = "${var.name_prefix}-example-net1-internal"
  network       = google_compute_network.example_additional[0].id
  direction     = "INGRESS"
  source_ranges = [var.example_primary_cidr, var.example_secondary_cidr]

  allow {
    protocol = "all"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_service_account" "example_nodes" {
  count        = local.example_count
  project      = var.project_id
  account_id   = "${var.name_prefix}-example-nodes"
  display_name = "multus-provisioner example node pool"
}

resource "google_project_iam_member" "example_nodes" {
  count   = local.example_count
  project = var.project_id
  role    = "roles/container.defaultNodeServiceAccount"
  member  = google_service_account.example_nodes[0].member
}

# Step 2: the cluster (Standard, >= 1.28, Dataplane V2, IP alias, multi-networking), opted in.
resource "google_container_cluster" "example" {
  count    = local.example_count
  project  = var.project_id
  name     = "${var.name_prefix}-example"
  location = var.example_zone

  network    = google_compute_network.example_primary[0].id
  subnetwork = google_compute_subnetwork.example_primary[0].id

  datapath_provider       = "ADVANCED_DATAPATH"
  enable_multi_networking = true
  networking_mode         = "VPC_NATIVE"
  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }

  min_master_version = "1.30"
  release_channel {
    channel = "REGULAR"
  }

  resource_labels = {
    (local.opt_in_key) = local.opt_in_value
  }

  remove_default_node_pool = true
  initial_node_count       = 1
  deletion_protection      = false

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false # the controller (Cloud Run egress) reaches the public endpoint
    master_ipv4_cidr_block  = var.example_master_cidr
  }

  master_authorized_networks_config {
    # Cloud Run egress uses Google Cloud public addresses; this keeps the rest of the internet out.
    gcp_public_cidrs_access_enabled = true
    cidr_blocks {
      cidr_block   = var.example_authorized_cidr
      display_name = "operators"
    }
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  enable_shielded_nodes       = true
  enable_intranode_visibility = true
  enable_legacy_abac          = false

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }

  node_config {
    service_account = google_service_account.example_nodes[0].email
    image_type      = "COS_CONTAINERD"
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }

  # Dataplane V2 enforces NetworkPolicy itself; the legacy Calico add-on must stay off with it.
  # checkov:skip=CKV_GCP_12:Dataplane V2 (ADVANCED_DATAPATH) enforces network policy; network_policy{} is the legacy Calico add-on and is incompatible with it
  # checkov:skip=CKV_GCP_66:Binary Authorization is enforced with the project singleton policy above
  # checkov:skip=CKV_GCP_65:Google Groups for RBAC needs a Workspace domain; this example has none to name
  # checkov:skip=CKV_GCP_24:PodSecurityPolicy was removed from Kubernetes 1.25; the example requires >= 1.28
  # checkov:skip=CKV_GCP_18:Only private nodes; the control plane keeps a public endpoint restricted by authorized networks, because the serverless controller connects to it
  # checkov:skip=CKV_GCP_25:Private nodes are enabled (private_cluster_config.enable_private_nodes); the check wants a private endpoint too, which serverless callers cannot reach
}

# Step 3: the node pool with the additional node network and additional pod network.
resource "google_container_node_pool" "example_multus" {
  count    = local.example_count
  project  = var.project_id
  name     = "multus-pool"
  location = var.example_zone
  cluster  = google_container_cluster.example[0].name

  node_count = 1

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  network_config {
    additional_node_network_configs {
      network    = google_compute_network.example_additional[0].name
      subnetwork = google_compute_subnetwork.example_additional[0].name
    }
    additional_pod_network_configs {
      subnetwork          = google_compute_subnetwork.example_additional[0].name
      secondary_pod_range = local.example_sec_name
      max_pods_per_node   = 8
    }
  }

  node_config {
    machine_type    = "e2-standard-4"
    service_account = google_service_account.example_nodes[0].email
    image_type      = "COS_CONTAINERD"
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
    metadata = {
      disable-legacy-endpoints = "true"
    }
  }
}
