# Inputs. Defaults match shared/core/settings.py, so a deployment needs only project_id and source_zip.

variable "project_id" {
  description = "Project that hosts the controller (functions, topics, Firestore)."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a valid project id (6-30 chars, lowercase letters, digits, hyphens)."
  }
}

variable "region" {
  description = "Region of the functions, the Cloud Scheduler job and the source bucket."
  type        = string
  default     = "us-central1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must look like us-central1."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name (topics, functions, service accounts), so two deployments can share a project."
  type        = string
  default     = "multus"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}$", var.name_prefix))
    error_message = "name_prefix must be 2-12 chars: lowercase letter first, then lowercase letters, digits or hyphens (service account ids are limited to 30 chars)."
  }
}

variable "source_zip" {
  description = "Path of the function source zip built by `make package` (dist/function-source.zip)."
  type        = string
  default     = "../dist/function-source.zip"
  validation {
    condition     = endswith(var.source_zip, ".zip")
    error_message = "source_zip must be the .zip that `make package` writes."
  }
}

variable "runtime" {
  description = "Cloud Functions runtime."
  type        = string
  default     = "python311"
  validation {
    condition     = contains(["python311", "python312"], var.runtime)
    error_message = "runtime must be python311 or python312."
  }
}

# --- function sizing -------------------------------------------------------------------------------------

variable "function_memory" {
  description = "Memory of each function instance (the bundle apply + three SDKs fit in 512Mi)."
  type        = string
  default     = "512Mi"
  validation {
    condition     = contains(["256Mi", "512Mi", "1Gi", "2Gi"], var.function_memory)
    error_message = "function_memory must be one of 256Mi, 512Mi, 1Gi, 2Gi."
  }
}

variable "function_timeout_seconds" {
  description = "Request timeout of each function; also the push subscription's ack deadline (a step must finish within it)."
  type        = number
  default     = 300
  validation {
    condition     = var.function_timeout_seconds >= 10 && var.function_timeout_seconds <= 540
    error_message = "function_timeout_seconds must be 10..540 (a push ack deadline is at most 600 s)."
  }
}

variable "function_max_instances" {
  description = "Upper bound of instances per function: caps cost and the fan-out against GKE APIs."
  type        = number
  default     = 5
  validation {
    condition     = var.function_max_instances >= 1 && var.function_max_instances <= 100
    error_message = "function_max_instances must be 1..100."
  }
}

variable "reconcile_max_instances" {
  description = "Upper bound of reconcile instances: each tick fans out one invocation per cluster, so this sets how wide a sweep runs (1,000 clusters at ~0.5 s each finish in about a minute with 20)."
  type        = number
  default     = 20
  validation {
    condition     = var.reconcile_max_instances >= 1 && var.reconcile_max_instances <= 1000
    error_message = "reconcile_max_instances must be 1..1000."
  }
}

variable "rollout_canary" {
  description = "Clusters in a bundle rollout's canary wave when none carries the multus-provisioner-wave=canary label."
  type        = number
  default     = 1
  validation {
    condition     = var.rollout_canary >= 0 && var.rollout_canary <= 1000
    error_message = "rollout_canary must be 0..1000."
  }
}

variable "rollout_wave_size" {
  description = "Clusters per rollout wave after the canary: a number (\"10\") or a share of the fleet (\"25%\")."
  type        = string
  default     = "25%"
  validation {
    condition     = can(regex("^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$", var.rollout_wave_size))
    error_message = "rollout_wave_size must be a number of clusters (10) or a share 1%..100%."
  }
}

variable "rollout_gate_seconds" {
  description = "How long a cluster may take to pass a rollout's health gate before it is rolled back."
  type        = number
  default     = 600
  validation {
    condition     = var.rollout_gate_seconds >= 1 && var.rollout_gate_seconds <= 86400
    error_message = "rollout_gate_seconds must be 1..86400."
  }
}

variable "ingress_settings" {
  description = "Function ingress. Pub/Sub push from the same project counts as internal traffic."
  type        = string
  default     = "ALLOW_INTERNAL_ONLY"
  validation {
    condition     = contains(["ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.ingress_settings)
    error_message = "ingress_settings must be ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB (never ALLOW_ALL)."
  }
}

variable "vpc_connector" {
  description = "Serverless VPC Access connector (projects/P/locations/R/connectors/N) the functions reach private-only control planes through; empty: none (the DNS-based endpoint needs no VPC egress). Also MULTUS_PROVISIONER_VPC_EGRESS."
  type        = string
  default     = ""
  validation {
    condition     = var.vpc_connector == "" || can(regex("^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/locations/[a-z]+-[a-z]+[0-9]+/connectors/[a-z][-a-z0-9]{0,23}$", var.vpc_connector))
    error_message = "vpc_connector must be empty or projects/PROJECT/locations/REGION/connectors/NAME."
  }
}

# --- delivery ---------------------------------------------------------------------------------------------

variable "max_delivery_attempts" {
  description = "Deliveries of one message before Pub/Sub dead-letters it; also MULTUS_PROVISIONER_MAX_ATTEMPTS."
  type        = number
  default     = 5
  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be 5..100 (Pub/Sub's dead-letter limits)."
  }
}

variable "retry_minimum_backoff" {
  description = "Shortest wait before Pub/Sub redelivers a failed message (exponential backoff starts here)."
  type        = string
  default     = "10s"
  validation {
    condition     = can(regex("^[0-9]+s$", var.retry_minimum_backoff)) && try(tonumber(trimsuffix(var.retry_minimum_backoff, "s")) <= 600, false)
    error_message = "retry_minimum_backoff must be like \"10s\", at most 600s."
  }
}

variable "retry_maximum_backoff" {
  description = "Longest wait between redeliveries."
  type        = string
  default     = "600s"
  validation {
    condition     = can(regex("^[0-9]+s$", var.retry_maximum_backoff)) && try(tonumber(trimsuffix(var.retry_maximum_backoff, "s")) <= 600, false)
    error_message = "retry_maximum_backoff must be like \"600s\", at most 600s."
  }
}

variable "reconcile_schedule" {
  description = "Cron schedule of the Cloud Scheduler job that publishes {} to the reconcile topic."
  type        = string
  default     = "*/10 * * * *"
  validation {
    condition     = length(split(" ", var.reconcile_schedule)) == 5
    error_message = "reconcile_schedule must be a 5-field cron expression."
  }
}

variable "reconcile_time_zone" {
  description = "Time zone of reconcile_schedule."
  type        = string
  default     = "Etc/UTC"
}

variable "nad_requesters" {
  description = "Principals allowed to publish NAD requests (roles/pubsub.publisher on that topic only), e.g. group:platform@example.com."
  type        = list(string)
  default     = []
  validation {
    condition = alltrue([
      for m in var.nad_requesters : can(regex("^(user|group|serviceAccount|domain):[^ ]+$", m))
    ])
    error_message = "nad_requesters entries must be user:, group:, serviceAccount: or domain: members (never allUsers / allAuthenticatedUsers)."
  }
}

variable "kms_key_name" {
  description = "Optional Cloud KMS key for the topics (CMEK). null = Google-managed encryption."
  type        = string
  default     = null
}

# --- where the events come from --------------------------------------------------------------------------

variable "sink_scope" {
  description = "Where the Logging sinks live: project (this project's clusters), folder or organization (clusters of every project below it)."
  type        = string
  default     = "project"
  validation {
    condition     = contains(["project", "folder", "organization"], var.sink_scope)
    error_message = "sink_scope must be project, folder or organization."
  }
}

variable "sink_parent_id" {
  description = "Folder id (digits) or organization id (digits) for a folder/organization sink; ignored for project."
  type        = string
  default     = ""
  validation {
    condition     = var.sink_parent_id == "" || can(regex("^[0-9]{6,}$", var.sink_parent_id))
    error_message = "sink_parent_id must be the numeric id of the folder or organization."
  }
}

variable "managed_cluster_projects" {
  description = "Projects whose clusters the controller may act on; each gets the custom GKE role bound to the runtime identity. Defaults to project_id."
  type        = list(string)
  default     = []
}

# --- Firestore --------------------------------------------------------------------------------------------

variable "create_firestore_database" {
  description = "Create the Firestore database. false when it already exists (for example an existing (default))."
  type        = bool
  default     = true
}

variable "firestore_database" {
  description = "Firestore database id (MULTUS_PROVISIONER_DATABASE)."
  type        = string
  default     = "(default)"
  validation {
    condition     = var.firestore_database == "(default)" || can(regex("^[a-z][a-z0-9-]{2,62}$", var.firestore_database))
    error_message = "firestore_database must be (default) or a valid database id."
  }
}

variable "firestore_location" {
  description = "Firestore location (a region or nam5/eur3); cannot change after creation."
  type        = string
  default     = "nam5"
}

variable "collection_prefix" {
  description = "Prefix of every Firestore collection name (MULTUS_PROVISIONER_COLLECTION_PREFIX)."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{0,40}$", var.collection_prefix))
    error_message = "collection_prefix: letters, digits, '_' and '-' only, at most 40."
  }
}

# --- controller settings (shared/core/settings.py) -------------------------------------------------------------

variable "opt_in_label" {
  description = "Cluster resource label that opts a cluster in, as key=value."
  type        = string
  default     = "multus-provisioner=enabled"
  validation {
    condition     = can(regex("^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?=([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$", var.opt_in_label))
    error_message = "opt_in_label must be key=value with a valid label key and value."
  }
}

variable "lease_seconds" {
  description = "How long a step's claim on a cluster workflow lasts."
  type        = number
  default     = 120
  validation {
    condition     = var.lease_seconds >= 5 && var.lease_seconds <= 3600
    error_message = "lease_seconds must be 5..3600."
  }
}

variable "crd_timeout_seconds" {
  description = "How long to wait for the CRDs to become Established."
  type        = number
  default     = 60
  validation {
    condition     = var.crd_timeout_seconds > 0 && var.crd_timeout_seconds <= 600
    error_message = "crd_timeout_seconds must be in (0, 600]."
  }
}

variable "ledger_ttl_days" {
  description = "Days an event stays in the idempotency ledger before the TTL policy deletes it."
  type        = number
  default     = 30
  validation {
    condition     = var.ledger_ttl_days >= 1 && var.ledger_ttl_days <= 3650
    error_message = "ledger_ttl_days must be 1..3650."
  }
}

variable "prune_orphans" {
  description = "Let reconcile delete managed NADs found on a cluster without a record when they conflict with a recorded one (the deleted config is kept in the NAD's record). Off: they are reported as orphans in status and history."
  type        = bool
  default     = false
}

variable "stall_seconds" {
  description = "Age after which reconcile resumes a workflow that stopped mid-way."
  type        = number
  default     = 600
  validation {
    condition     = var.stall_seconds >= 1 && var.stall_seconds <= 86400
    error_message = "stall_seconds must be 1..86400."
  }
}

variable "busy_wait_seconds" {
  description = "How long a write GKE refuses because another operation runs on the cluster is retried (not counted as attempts)."
  type        = number
  default     = 3600
  validation {
    condition     = var.busy_wait_seconds >= 0 && var.busy_wait_seconds <= 86400
    error_message = "busy_wait_seconds must be 0..86400."
  }
}

variable "node_pool_retry_seconds" {
  description = "Backoff before a node pool that failed transiently in GKE (stockout, quota) is deleted and created again; doubled per attempt."
  type        = number
  default     = 60
  validation {
    condition     = var.node_pool_retry_seconds >= 0 && var.node_pool_retry_seconds <= 86400
    error_message = "node_pool_retry_seconds must be 0..86400."
  }
}

variable "allowed_namespaces" {
  description = "Namespaces NADs may be created in (empty: any namespace not denied)."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for n in var.allowed_namespaces : can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", n))])
    error_message = "allowed_namespaces entries must be valid namespace names."
  }
}

variable "denied_namespaces" {
  description = "Namespaces NADs may never be created in."
  type        = list(string)
  default     = ["kube-system"]
  validation {
    condition     = alltrue([for n in var.denied_namespaces : can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", n))])
    error_message = "denied_namespaces entries must be valid namespace names."
  }
}

variable "max_nads_per_cluster" {
  description = "Upper bound of NADs per cluster."
  type        = number
  default     = 32
  validation {
    condition     = var.max_nads_per_cluster >= 1 && var.max_nads_per_cluster <= 1000
    error_message = "max_nads_per_cluster must be 1..1000."
  }
}

variable "node_pool_template" {
  description = "Node pool the controller creates when an opted-in cluster has none with additional networks (null: never create one). Fields as shared/core/settings.py NodePoolTemplate."
  type = object({
    name                = optional(string, "multus-pool")
    network             = string
    subnetwork          = string
    secondary_pod_range = string
    max_pods_per_node   = optional(number, 8)
    machine_type        = optional(string, "e2-standard-4")
    node_count          = optional(number, 1)
    labels              = optional(map(string), {})
  })
  default = null
}

variable "default_nads" {
  description = "NAD requests applied to every opted-in cluster once it is READY (JSON objects as the NAD request schema)."
  type        = list(any)
  default     = []
}

variable "multus_image" {
  description = "Override of the Multus image (must be pinned by digest). null: the bundle's validated image."
  type        = string
  default     = null
  validation {
    condition     = var.multus_image == null || can(regex("@sha256:[0-9a-f]{64}$", var.multus_image))
    error_message = "multus_image must be pinned by digest (…@sha256:<64 hex>)."
  }
}

variable "policy_writers" {
  description = "Who may change the operator's policy (config/policy in the policy database: node pool template, namespaces, the bundle's images), as IAM members (user:, group:, serviceAccount:). Nobody else is granted write access to it."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for m in var.policy_writers : can(regex("^(user|group|serviceAccount):[^\\s]+@[^\\s]+$", m))])
    error_message = "Each policy_writers entry must be user:EMAIL, group:EMAIL or serviceAccount:EMAIL."
  }
}

variable "allowed_image_registries" {
  description = "Registries (host[/path]) the bundle's images may come from besides the seed's gcr.io/gke-release, e.g. a mirror in Artifact Registry. Only here: the Firestore config/policy document cannot add one (docs/SECURITY.md)."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for r in var.allowed_image_registries : can(regex("^[a-z0-9.-]+\\.[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*$", r))])
    error_message = "Each allowed_image_registries entry must be a registry host with an optional path, like us-docker.pkg.dev/my-project/mirror."
  }
}

variable "whereabouts_image" {
  description = "Override of the Whereabouts image (must be pinned by digest). null: the bundle's validated image."
  type        = string
  default     = null
  validation {
    condition     = var.whereabouts_image == null || can(regex("@sha256:[0-9a-f]{64}$", var.whereabouts_image))
    error_message = "whereabouts_image must be pinned by digest (…@sha256:<64 hex>)."
  }
}

variable "multus_log_level" {
  description = "Multus log level (null: the bundle's default)."
  type        = string
  default     = null
  validation {
    condition     = var.multus_log_level == null || contains(["debug", "verbose", "error", "panic"], coalesce(var.multus_log_level, "error"))
    error_message = "multus_log_level must be debug, verbose, error or panic."
  }
}

# --- optional example (procedure steps 1-3) ---------------------------------------------------------------

variable "create_example" {
  description = "Also create an example VPC, subnet with a secondary range, an opted-in cluster and a node pool with additional networks (costs money; off by default)."
  type        = bool
  default     = false
}

variable "example_zone" {
  description = "Zone of the example cluster."
  type        = string
  default     = "us-central1-a"
}

variable "example_primary_cidr" {
  description = "Primary range of the example's additional subnet (node NICs)."
  type        = string
  default     = "10.0.1.0/24"
  validation {
    condition     = can(cidrhost(var.example_primary_cidr, 0))
    error_message = "example_primary_cidr must be a CIDR."
  }
}

variable "example_secondary_cidr" {
  description = "Secondary range of the example's additional subnet (pod interfaces, the NADs' Whereabouts range lies inside it)."
  type        = string
  default     = "172.16.1.0/24"
  validation {
    condition     = can(cidrhost(var.example_secondary_cidr, 0))
    error_message = "example_secondary_cidr must be a CIDR."
  }
}

variable "example_master_cidr" {
  description = "Control-plane /28 of the example's private cluster."
  type        = string
  default     = "172.16.0.32/28"
}

variable "example_authorized_cidr" {
  description = "Network allowed to reach the example cluster's control plane (the controller connects to the endpoint)."
  type        = string
  default     = "10.0.0.0/8"
  validation {
    condition     = can(cidrhost(var.example_authorized_cidr, 0))
    error_message = "example_authorized_cidr must be a CIDR."
  }
}
