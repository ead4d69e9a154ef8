# The shape of the deployment in one place: one "stream" per function. Each stream has a topic, a
# dead-letter topic (+ a pull subscription to inspect it), a push subscription that delivers to the
# function with retry backoff and a dead-letter policy, the function itself and the identity that
# invokes it. Two streams are fed by Logging sinks (logging.tf); users publish NAD requests; Cloud
# Scheduler publishes to reconcile.

locals {
  streams = {
    cluster-events = {
      short       = "cluster"
      entry_point = "on_cluster_event"
      description = "GKE CreateCluster / DeleteCluster audit entries (Logging sink)"
    }
    node-pool-events = {
      short       = "nodepool"
      entry_point = "on_node_pool_event"
      description = "GKE CreateNodePool / DeleteNodePool audit entries (Logging sink)"
    }
    nad-requests = {
      short       = "nad"
      entry_point = "on_nad_request"
      description = "NetworkAttachmentDefinition requests published by users"
    }
    reconcile = {
      short       = "reconcile"
      entry_point = "reconcile"
      description = "Periodic {} from Cloud Scheduler (fanned out: one scoped reconcile per cluster)"
    }
  }

  labels = {
    app        = "multus-provisioner"
    deployment = var.name_prefix
  }

  cluster_projects = length(var.managed_cluster_projects) > 0 ? var.managed_cluster_projects : [var.project_id]

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # What the functions read (shared/core/settings.py, prefix MULTUS_PROVISIONER_). Empty string = default.
  runtime_env = {
    MULTUS_PROVISIONER_PROJECT              = var.project_id
    MULTUS_PROVISIONER_COLLECTION_PREFIX    = var.collection_prefix
    MULTUS_PROVISIONER_DATABASE             = var.firestore_database
    MULTUS_PROVISIONER_OPT_IN_LABEL         = var.opt_in_label
    MULTUS_PROVISIONER_LEASE_SECONDS        = tostring(var.lease_seconds)
    MULTUS_PROVISIONER_CRD_TIMEOUT_SECONDS  = tostring(var.crd_timeout_seconds)
    MULTUS_PROVISIONER_LEDGER_TTL_DAYS      = tostring(var.ledger_ttl_days)
    MULTUS_PROVISIONER_STALL_SECONDS        = tostring(var.stall_seconds)
    MULTUS_PROVISIONER_PRUNE_ORPHANS        = tostring(var.prune_orphans)
    MULTUS_PROVISIONER_ALLOWED_NAMESPACES   = join(",", var.allowed_namespaces)
    MULTUS_PROVISIONER_DENIED_NAMESPACES    = join(",", var.denied_namespaces)
    MULTUS_PROVISIONER_MAX_NADS_PER_CLUSTER = tostring(var.max_nads_per_cluster)
    MULTUS_PROVISIONER_MAX_ATTEMPTS         = tostring(var.max_delivery_attempts)
    MULTUS_PROVISIONER_NODE_POOL_TEMPLATE   = var.node_pool_template == null ? "" : jsonencode(var.node_pool_template)
    MULTUS_PROVISIONER_DEFAULT_NADS         = length(var.default_nads) == 0 ? "" : jsonencode(var.default_nads)
    MULTUS_PROVISIONER_MULTUS_IMAGE         = var.multus_image == null ? "" : var.multus_image
    MULTUS_PROVISIONER_WHEREABOUTS_IMAGE    = var.whereabouts_image == null ? "" : var.whereabouts_image
    MULTUS_PROVISIONER_MULTUS_LOG_LEVEL     = var.multus_log_level == null ? "" : var.multus_log_level
    MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS   = google_pubsub_topic.stream["nad-requests"].name
    # The scheduled tick fans out one scoped reconcile per cluster on this topic (shared/flows/fanout.py).
    MULTUS_PROVISIONER_TOPIC_RECONCILE         = google_pubsub_topic.stream["reconcile"].name
    MULTUS_PROVISIONER_MANAGED_PROJECTS        = join(",", var.managed_cluster_projects)
    MULTUS_PROVISIONER_ROLLOUT_CANARY          = tostring(var.rollout_canary)
    MULTUS_PROVISIONER_ROLLOUT_WAVE_SIZE       = var.rollout_wave_size
    MULTUS_PROVISIONER_ROLLOUT_GATE_SECONDS    = tostring(var.rollout_gate_seconds)
    MULTUS_PROVISIONER_BUSY_WAIT_SECONDS       = tostring(var.busy_wait_seconds)
    MULTUS_PROVISIONER_NODE_POOL_RETRY_SECONDS = tostring(var.node_pool_retry_seconds)
    MULTUS_PROVISIONER_VPC_EGRESS              = var.vpc_connector == "" ? "false" : "true"
    # Registries the bundle's images may come from besides gcr.io/gke-release (config/policy cannot add one).
    MULTUS_PROVISIONER_ALLOWED_REGISTRIES = join(",", var.allowed_image_registries)
    # config/policy lives in its own database: the runtime reads it, only var.policy_writers write it.
    MULTUS_PROVISIONER_POLICY_DATABASE = google_firestore_database.policy.name
  }
}
