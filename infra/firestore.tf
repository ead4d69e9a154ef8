# Firestore (native mode): workflow documents, the idempotency ledger and history (DESIGN.md).

resource "google_firestore_database" "db" {
  count                             = var.create_firestore_database ? 1 : 0
  project                           = var.project_id
  name                              = var.firestore_database
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"

  depends_on = [google_project_service.api]
}

locals {
  # The database id the indexes and the TTL policy attach to (created here or pre-existing).
  firestore_db = var.create_firestore_database ? google_firestore_database.db[0].name : var.firestore_database
}

# TTL on the ledger: `events/{key}.expireAt` (ledger_ttl_days after the event). Single-field indexes on
# expireAt are switched off: nothing queries it, and an index on a monotonically growing timestamp only
# adds write cost and hotspots.
resource "google_firestore_field" "ledger_ttl" {
  project    = var.project_id
  database   = local.firestore_db
  collection = "${var.collection_prefix}events"
  field      = "expireAt"

  ttl_config {}
  index_config {}
}

# Composite indexes for the only two queries that combine fields (all others filter or order on a single
# field, which Firestore indexes automatically):
# - reconcile: clusters whose `state` is one of the resumable states and whose `updatedAt` is older than
#   stall_seconds  -> where(state in [...]).where(updatedAt < cutoff)
# - when a cluster becomes READY: its PENDING NADs, oldest first -> nads.where(state == PENDING).order_by(updatedAt)
resource "google_firestore_index" "clusters_state_updated" {
  project     = var.project_id
  database    = local.firestore_db
  collection  = "${var.collection_prefix}clusters"
  query_scope = "COLLECTION"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "updatedAt"
    order      = "ASCENDING"
  }
}

resource "google_firestore_index" "nads_state_updated" {
  project     = var.project_id
  database    = local.firestore_db
  collection  = "${var.collection_prefix}nads" # the subcollection clusters/{id}/nads (the prefix applies to every collection id)
  query_scope = "COLLECTION"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "updatedAt"
    order      = "ASCENDING"
  }
}
