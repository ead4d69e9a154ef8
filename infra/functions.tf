# The four Cloud Functions (gen2), built from the `make package` zip.
#
# They are HTTP-served gen2 functions without an Eventarc trigger: each is fed by the push subscription
# in pubsub.tf (dead-letter policy + backoff). The entry points are decorated with
# @functions_framework.cloud_event, and functions-framework converts the Pub/Sub push envelope into the
# google.cloud.pubsub.topic.v1.messagePublished CloudEvent, so the code sees what Eventarc would send.

resource "google_storage_bucket" "source" {
  project                     = var.project_id
  name                        = "${var.project_id}-${var.name_prefix}-fn-source"
  location                    = var.region
  labels                      = local.labels
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true # only holds build inputs; teardown should not need a manual step
  # checkov:skip=CKV_GCP_62:Holds only the function source zips that Terraform uploads; Cloud Audit Logs already record every access

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      num_newer_versions = 5
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.api]
}

resource "google_storage_bucket_object" "source" {
  # The content hash in the name makes a changed package redeploy the functions, and only then.
  name   = "function-source-${filemd5(var.source_zip)}.zip"
  bucket = google_storage_bucket.source.name
  source = var.source_zip
}

resource "google_cloudfunctions2_function" "fn" {
  for_each    = local.streams
  project     = var.project_id
  location    = var.region
  name        = "${var.name_prefix}-${each.key}"
  description = "multus-provisioner: ${each.value.description}"
  labels      = local.labels

  build_config {
    runtime         = var.runtime
    entry_point     = each.value.entry_point
    service_account = google_service_account.build.id
    environment_variables = {
      GOOGLE_FUNCTION_SIGNATURE_TYPE = "cloudevent"
    }
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory = var.function_memory
    timeout_seconds  = var.function_timeout_seconds
    # reconcile runs one short invocation per cluster after each tick's fan-out: it gets its own cap.
    max_instance_count               = each.key == "reconcile" ? var.reconcile_max_instances : var.function_max_instances
    min_instance_count               = 0
    max_instance_request_concurrency = 1 # one event per instance: steps hold leases and long calls
    ingress_settings                 = var.ingress_settings
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.runtime.email
    environment_variables            = local.runtime_env
    # Private-only clusters (no public endpoint, no DNS-based endpoint): their 10.x control plane is
    # reached through a Serverless VPC Access connector in the clusters' VPC, private ranges only, so
    # Google APIs keep their usual path. Empty: no VPC egress (the DNS-based endpoint needs none).
    vpc_connector                 = var.vpc_connector == "" ? null : var.vpc_connector
    vpc_connector_egress_settings = var.vpc_connector == "" ? null : "PRIVATE_RANGES_ONLY"
  }

  depends_on = [
    google_project_service.api,
    google_project_iam_member.build_logs,
    google_project_iam_member.build_artifacts,
    google_storage_bucket_iam_member.build_reads_source,
  ]
}
