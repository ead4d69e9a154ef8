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

output "policy_database" {
  description = "The Firestore database holding config/policy: only policy_writers may write it (docs/SECURITY.md)."
  value       = google_firestore_database.policy.name
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

output "iam_grants" {
  description = "Every IAM grant this deployment makes, as {role, member, on}, for a security review (all additive *_iam_member grants; tests/test_infra.py checks that none is left out)."
  value = concat(
    # Firestore grants carry a condition naming their database: listed by database, not project.
    [for g in [google_project_iam_member.runtime_firestore] :
    { role = g.role, member = g.member, on = "firestore-database:${local.firestore_db}" }],
    [for g in concat([google_project_iam_member.runtime_policy_reader], values(google_project_iam_member.policy_writers)) :
    { role = g.role, member = g.member, on = "firestore-database:${google_firestore_database.policy.name}" }],
    [for g in concat(values(google_project_iam_member.runtime_gke), [
      google_project_iam_member.runtime_logs,
      google_project_iam_member.build_logs,
      google_project_iam_member.build_artifacts,
    ], google_project_iam_member.example_nodes) : { role = g.role, member = g.member, on = "project:${g.project}" }],
    [for g in concat(
      [google_pubsub_topic_iam_member.runtime_reconcile_publisher],
      values(google_pubsub_topic_iam_member.nad_requesters),
      values(google_pubsub_topic_iam_member.dead_letter_publisher),
      values(google_pubsub_topic_iam_member.sink_publisher),
    ) : { role = g.role, member = g.member, on = "topic:${g.topic}" }],
    [for g in values(google_pubsub_subscription_iam_member.dead_letter_subscriber) :
    { role = g.role, member = g.member, on = "subscription:${g.subscription}" }],
    [for g in values(google_cloud_run_service_iam_member.trigger_invoker) :
    { role = g.role, member = g.member, on = "run-service:${g.location}/${g.service}" }],
    [for g in values(google_service_account_iam_member.pubsub_token_creator) :
    { role = g.role, member = g.member, on = "service-account:${g.service_account_id}" }],
    [{
      role   = google_storage_bucket_iam_member.build_reads_source.role
      member = google_storage_bucket_iam_member.build_reads_source.member
      on     = "bucket:${google_storage_bucket_iam_member.build_reads_source.bucket}"
    }],
  )
}
