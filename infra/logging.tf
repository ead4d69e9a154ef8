# Logging sinks: GKE Admin Activity audit entries -> the two event topics.
#
# Each filter keeps, from the Admin Activity audit log of `container.googleapis.com`, only the methods
# the controller reacts to (v1 and v1beta1 spellings: gcloud beta and some tools call v1beta1): cluster
# and node pool create/delete, and the cluster changes that can opt a cluster in or out or make it
# eligible (SetLabels: `gcloud container clusters update --update-labels`; UpdateCluster and
# UpdateMaster: upgrades). For these methods GKE writes the first entry of the long-running operation
# (`operation.first`, which the controller records as "provisioning"), the last one (`operation.last`,
# on which it acts) and, for a request refused at once, a single entry without `operation` (decoded as
# refused). All three are wanted, so the filter has no clause on `operation`. Everything else
# (GetCluster, node auto-upgrades in the system_event log, other services, Data Access logs) never
# reaches Pub/Sub and costs nothing. The filters are plain text in sink-filters.yaml, so
# tests/sink_filter.py evaluates the very texts the sinks get against the sample entries.
#
# Scope: project sinks by default; var.sink_scope = "folder" / "organization" installs the same sinks
# one level up with include_children, so clusters in every project below are covered (bind the custom
# GKE role in those projects through var.managed_cluster_projects).

locals {
  # The filter texts live in sink-filters.yaml, the one copy that the controller's tests evaluate too.
  sink_filters = yamldecode(file("${path.module}/sink-filters.yaml"))

  sinks = {
    cluster-events = {
      topic  = "cluster-events"
      filter = local.sink_filters["cluster-events"]
    }
    node-pool-events = {
      topic  = "node-pool-events"
      filter = local.sink_filters["node-pool-events"]
    }
  }

  project_sinks = var.sink_scope == "project" ? local.sinks : {}
  folder_sinks  = var.sink_scope == "folder" ? local.sinks : {}
  org_sinks     = var.sink_scope == "organization" ? local.sinks : {}

  sink_writers = merge(
    { for k, s in google_logging_project_sink.events : k => s.writer_identity },
    { for k, s in google_logging_folder_sink.events : k => s.writer_identity },
    { for k, s in google_logging_organization_sink.events : k => s.writer_identity },
  )
}

resource "google_logging_project_sink" "events" {
  for_each               = local.project_sinks
  project                = var.project_id
  name                   = "${var.name_prefix}-${each.key}"
  description            = "multus-provisioner: ${local.streams[each.value.topic].description}"
  destination            = "pubsub.googleapis.com/${google_pubsub_topic.stream[each.value.topic].id}"
  filter                 = each.value.filter
  unique_writer_identity = true
}

resource "google_logging_folder_sink" "events" {
  for_each         = local.folder_sinks
  folder           = var.sink_parent_id
  name             = "${var.name_prefix}-${each.key}"
  description      = "multus-provisioner: ${local.streams[each.value.topic].description}"
  destination      = "pubsub.googleapis.com/${google_pubsub_topic.stream[each.value.topic].id}"
  filter           = each.value.filter
  include_children = true

  lifecycle {
    precondition {
      condition     = var.sink_parent_id != ""
      error_message = "sink_scope = folder needs sink_parent_id (the folder's numeric id)."
    }
  }
}

resource "google_logging_organization_sink" "events" {
  for_each         = local.org_sinks
  org_id           = var.sink_parent_id
  name             = "${var.name_prefix}-${each.key}"
  description      = "multus-provisioner: ${local.streams[each.value.topic].description}"
  destination      = "pubsub.googleapis.com/${google_pubsub_topic.stream[each.value.topic].id}"
  filter           = each.value.filter
  include_children = true

  lifecycle {
    precondition {
      condition     = var.sink_parent_id != ""
      error_message = "sink_scope = organization needs sink_parent_id (the organization's numeric id)."
    }
  }
}

# Each sink's writer identity may publish to its own topic, and nowhere else.
resource "google_pubsub_topic_iam_member" "sink_publisher" {
  for_each = local.sinks
  project  = var.project_id
  topic    = google_pubsub_topic.stream[each.value.topic].name
  role     = "roles/pubsub.publisher"
  member   = local.sink_writers[each.key]
}
