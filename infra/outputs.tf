output "topics" {
  description = "Topic per stream (publish NAD requests to nad-requests)."
  value       = { for k, t in google_pubsub_topic.stream : k => t.id }
}

output "dead_letter_subscriptions" {
  description = "Pull subscriptions to inspect dead-lettered messages, per stream."
  value       = { for k, s in google_pubsub_subscription.dead_letter_inspect : k => s.id }
}

output "functions" {
  description = "Function per stream, with its URL (internal ingress only)."
  value = {
    for k, f in google_cloudfunctions2_function.fn : k => {
      name = f.name
      url  = f.service_config[0].uri
    }
  }
}

output "service_accounts" {
  description = "Identities this deployment created."
  value = {
    runtime  = google_service_account.runtime.email
    build    = google_service_account.build.email
    triggers = { for k, sa in google_service_account.trigger : k => sa.email }
  }
}

output "gke_role_permissions" {
  description = "Permissions of the custom GKE role (from gke-permissions.yaml)."
  value       = local.gke_permissions
}

output "sink_writer_identities" {
  description = "Writer identity per Logging sink (each may publish only to its own topic)."
  value       = local.sink_writers
}

output "firestore_database" {
  description = "Firestore database id the functions use."
  value       = local.firestore_db
}

output "example_cluster" {
  description = "The example cluster's name, when create_example = true."
  value       = var.create_example ? google_container_cluster.example[0].id : null
}
