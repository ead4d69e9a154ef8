# Topics, dead-letter topics and the push subscriptions that deliver to the functions.
#
# Why push subscriptions we own instead of the function's Eventarc `event_trigger`: Eventarc creates
# and manages the trigger's subscription itself and offers no dead-letter policy or backoff settings for
# it (hashicorp/terraform-provider-google#25069, #17697); edits made afterwards are reset on redeploy.
# A push subscription of our own gives every trigger a dead-letter policy and exponential backoff, and
# functions-framework turns its push envelope into the same messagePublished CloudEvent.

resource "google_pubsub_topic" "stream" {
  for_each     = local.streams
  project      = var.project_id
  name         = "${var.name_prefix}-${each.key}"
  labels       = local.labels
  kms_key_name = var.kms_key_name
  # checkov:skip=CKV_GCP_83:CMEK is opt-in through var.kms_key_name; payloads are audit-log metadata and NAD requests (no secrets), Google-managed encryption is the default
  # 7 days is transport, not the record: a message is delivered within minutes (backoff up to
  # retry_maximum_backoff, then dead-lettered). The audit trail is elsewhere: GKE's Admin Activity
  # audit logs stay 400 days in Cloud Logging, every step is in Firestore's history, and what could
  # not be handled is kept 31 days on the dead-letter topic (docs/SECURITY.md "Retention").
  message_retention_duration = "604800s"

  depends_on = [google_project_service.api]
}

resource "google_pubsub_topic" "dead_letter" {
  for_each     = local.streams
  project      = var.project_id
  name         = "${var.name_prefix}-${each.key}-dead-letter"
  labels       = local.labels
  kms_key_name = var.kms_key_name
  # checkov:skip=CKV_GCP_83:CMEK is opt-in through var.kms_key_name; same payloads as the source topic
  # 31 days, Pub/Sub's maximum for a topic: a dead-lettered event (a forged or failed audit entry, a
  # refused request) outlives a subscription's 7-day limit and a long weekend; an operator can seek
  # the inspection subscription back over the whole month (docs/SECURITY.md "Retention").
  message_retention_duration = "2678400s"

  depends_on = [google_project_service.api]
}

# The delivery path: topic -> push -> function (authenticated with the trigger identity's OIDC token).
resource "google_pubsub_subscription" "push" {
  for_each = local.streams
  project  = var.project_id
  name     = "${var.name_prefix}-${each.key}-push"
  topic    = google_pubsub_topic.stream[each.key].id
  labels   = local.labels

  # = the function timeout: a delivery is never redelivered while it runs (the reconcile tick drives a
  # rollout step and publishes its fan-out within it; each fanned-out cluster is a short invocation).
  ack_deadline_seconds       = var.function_timeout_seconds
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  push_config {
    push_endpoint = google_cloudfunctions2_function.fn[each.key].service_config[0].uri
    oidc_token {
      service_account_email = google_service_account.trigger[each.key].email
      audience              = google_cloudfunctions2_function.fn[each.key].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = var.retry_minimum_backoff
    maximum_backoff = var.retry_maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expire, even when idle for a long time
  }

  depends_on = [
    google_cloud_run_service_iam_member.trigger_invoker,
    google_service_account_iam_member.pubsub_token_creator,
  ]
}

# Where failed messages land: a pull subscription an operator reads (`gcloud pubsub subscriptions pull`).
resource "google_pubsub_subscription" "dead_letter_inspect" {
  for_each = local.streams
  project  = var.project_id
  name     = "${var.name_prefix}-${each.key}-dead-letter-inspect"
  topic    = google_pubsub_topic.dead_letter[each.key].id
  labels   = local.labels

  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = true

  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering is done by the Pub/Sub service agent: it must publish to the dead-letter topic and
# acknowledge (subscribe) on the source subscription. Exactly those two grants, per stream.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.streams
  project  = var.project_id
  topic    = google_pubsub_topic.dead_letter[each.key].name
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each     = local.streams
  project      = var.project_id
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
