# Identities and least privilege.
#
# runtime  - what the functions run as: Firestore (datastore.user), the custom GKE role below (in each
#            managed project: the GKE API only - clusters.get/list, clusters.update when there is a
#            node pool template; no in-cluster permission: those are Kubernetes RBAC applied per
#            cluster at opt-in, shared/rbac/controller.yaml), log writing, and publishing on the
#            reconcile topic only (the tick's fan-out). Nothing else: no primitive roles, no Pub/Sub admin.
# trigger  - one per function: the OIDC identity of its push subscription, run.invoker on THAT
#            function's Cloud Run service only.
# build    - what Cloud Build runs as when it builds the function images from the uploaded source.

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-runtime"
  display_name = "multus-provisioner functions runtime"
  description  = "Runs the multus-provisioner functions: Firestore, custom GKE role, log writing."
}

resource "google_service_account" "trigger" {
  for_each     = local.streams
  project      = var.project_id
  account_id   = "${var.name_prefix}-${each.value.short}-inv"
  display_name = "multus-provisioner ${each.key} push invoker"
  description  = "OIDC identity of the ${each.key} push subscription; may invoke only that function."
}

resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-build"
  display_name = "multus-provisioner function builds"
  description  = "Cloud Build identity that turns the uploaded source into the function images."
}

# --- runtime -----------------------------------------------------------------------------------------------

locals {
  gke_permission_doc = yamldecode(file("${path.module}/gke-permissions.yaml"))
  # `only_with_node_pool_template`: CreateNodePool's permission exists only when there is a template.
  gke_permissions = sort([for p in local.gke_permission_doc.permissions : p.permission
  if !try(p.only_with_node_pool_template, false) || var.node_pool_template != null])
}

resource "google_project_iam_custom_role" "gke" {
  for_each    = toset(local.cluster_projects)
  project     = each.value
  role_id     = "${replace(var.name_prefix, "-", "_")}_${local.gke_permission_doc.role.id}"
  title       = local.gke_permission_doc.role.title
  description = local.gke_permission_doc.role.description
  permissions = local.gke_permissions
}

resource "google_project_iam_member" "runtime_gke" {
  for_each = toset(local.cluster_projects)
  project  = each.value
  role     = google_project_iam_custom_role.gke[each.value].id
  member   = google_service_account.runtime.member
}

# Read and write on the workflow database only (the condition names it): never on the policy database.
resource "google_project_iam_member" "runtime_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.runtime.member
  condition {
    title       = "workflow database only"
    description = "Workflow documents, ledger and history; not the policy database."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${local.firestore_db}\""
  }
}

# The policy database: read only (firestore.tf).
resource "google_project_iam_member" "runtime_policy_reader" {
  project = var.project_id
  role    = "roles/datastore.viewer"
  member  = google_service_account.runtime.member
  condition {
    title       = "policy database, read only"
    description = "config/policy is read by the functions and written only by policy_writers."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${google_firestore_database.policy.name}\""
  }
}

# --- policy writers ---------------------------------------------------------------------------------------------

resource "google_project_iam_member" "policy_writers" {
  for_each = toset(var.policy_writers)
  project  = var.project_id
  role     = "roles/datastore.user"
  member   = each.value
  condition {
    title       = "policy database only"
    description = "May change config/policy (what the controller installs on every opted-in cluster)."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${google_firestore_database.policy.name}\""
  }
}

resource "google_project_iam_member" "runtime_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.runtime.member
}

# The reconcile tick publishes one scoped reconcile per cluster on its own topic (shared/flows/fanout.py).
resource "google_pubsub_topic_iam_member" "runtime_reconcile_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.stream["reconcile"].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.runtime.member
}

# --- trigger identities --------------------------------------------------------------------------------------

resource "google_cloud_run_service_iam_member" "trigger_invoker" {
  for_each = local.streams
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.fn[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.trigger[each.key].member
}

# Pub/Sub signs each push with an OIDC token of the trigger identity. Projects created before
# 2021-04-08 need the Pub/Sub service agent to hold Token Creator on that identity; granting it on
# the trigger accounts only (never project-wide) makes both kinds of project work.
resource "google_service_account_iam_member" "pubsub_token_creator" {
  for_each           = local.streams
  service_account_id = google_service_account.trigger[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# --- build -----------------------------------------------------------------------------------------------------

# A function build needs to write its logs and push the image to the gcf-artifacts repository that
# Cloud Functions creates; it reads the source from our bucket (below). Narrower than
# roles/cloudbuild.builds.builder, which also grants Pub/Sub, Storage-wide and other rights.
resource "google_project_iam_member" "build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.build.member
}

resource "google_project_iam_member" "build_artifacts" {
  project = var.project_id
  role    = "roles/artifactregistry.writer"
  member  = google_service_account.build.member
}

resource "google_storage_bucket_iam_member" "build_reads_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

# --- NAD requesters ---------------------------------------------------------------------------------------------

resource "google_pubsub_topic_iam_member" "nad_requesters" {
  for_each = toset(var.nad_requesters)
  project  = var.project_id
  topic    = google_pubsub_topic.stream["nad-requests"].name
  role     = "roles/pubsub.publisher"
  member   = each.value
}
