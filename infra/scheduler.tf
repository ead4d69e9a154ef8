# The reconcile heartbeat: Cloud Scheduler publishes {} to the reconcile topic. reconcile resumes
# workflows whose event was lost or dead-lettered and finds opted-in clusters created while the sinks
# were down, so a missed event delays provisioning by at most one period instead of forever.
resource "google_cloud_scheduler_job" "reconcile" {
  project     = var.project_id
  region      = var.region
  name        = "${var.name_prefix}-reconcile"
  description = "multus-provisioner: periodic reconcile"
  schedule    = var.reconcile_schedule
  time_zone   = var.reconcile_time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.stream["reconcile"].id
    data       = base64encode("{}")
    attributes = {
      source = "cloud-scheduler"
    }
  }

  retry_config {
    retry_count = 0 # the next run is the retry
  }

  depends_on = [google_project_service.api]
}
