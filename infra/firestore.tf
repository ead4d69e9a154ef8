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

# No composite indexes: every query in shared/adapters/store.py filters or orders on ONE field
# (clusters / nads: where state ==; history: order_by at, __name__; rejections: order_by at desc),
# which Firestore's automatic single-field indexes serve. tests/test_infra.py reads store.py and fails
# if a query starts combining fields without a google_firestore_index here.

# The operator's policy (`config/policy`: node pool template, namespaces, the bundle's images) in a
# database of its own. Whoever can write it chooses what the controller installs on every opted-in
# cluster, so its writers are limited by IAM rather than by convention: the runtime identity may only
# READ this database (roles/datastore.viewer, conditioned on it), the members of `policy_writers` may
# write it, and nobody else is granted anything on it here (iam.tf; docs/SECURITY.md). Firestore IAM
# Conditions name databases, not document paths, hence a database rather than a condition on a path.
resource "google_firestore_database" "policy" {
  project                           = var.project_id
  name                              = "${var.name_prefix}-policy"
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"

  depends_on = [google_project_service.api]
}
