# The whole deployment planned offline against the real hashicorp/google provider's schema and
# validators (scripts/infra_check.py installs the provider built from the Go module proxy; the
# `mock_provider` below answers instead of Google's APIs, so nothing is created and no credentials
# are needed). Each run applies against the mock (Terraform plans, then the mock fills every value
# that only Google would know: function URIs, topic ids, ...), because what matters here are
# relations between such values: the push subscription's OIDC audience is *that* function's URI, an
# invoker may invoke *that* function only. The provider's own validators check every argument with
# the run's values (an IAM member or service account id of the wrong shape fails the run).
#
# What the asserts hold, for every variable set: each function's runtime identity and its exact grant
# set (least privilege, no primitive role, no public member), the build identity's, the invokers (each
# push identity invokes only its own function, ingress internal only), each push subscription
# authenticated with an OIDC token whose audience is its function's URI, a dead-letter topic and the
# Pub/Sub service agent's grants for it on every subscription, the scheduler's target, the sinks'
# filters (sink-filters.yaml, the texts the controller's tests evaluate) and the functions'
# environment (function-settings.yaml, which tests/test_infra.py checks against
# shared/core/settings.py). Run it with `make infra-check`.

mock_provider "google" {
  mock_data "google_project" {
    defaults = { number = "123456789012" }
  }

  # Identities and sink writers as Google names them, one per instance: the provider's validators
  # refuse the mock's random strings as IAM members, and distinct values make the relations testable.
  override_resource {
    target = google_service_account.runtime
    values = {
      email  = "multus-runtime@multus-host.iam.gserviceaccount.com"
      member = "serviceAccount:multus-runtime@multus-host.iam.gserviceaccount.com"
      name   = "projects/multus-host/serviceAccounts/multus-runtime@multus-host.iam.gserviceaccount.com"
      id     = "projects/multus-host/serviceAccounts/multus-runtime@multus-host.iam.gserviceaccount.com"
    }
  }
  override_resource {
    target = google_service_account.build
    values = {
      email  = "multus-build@multus-host.iam.gserviceaccount.com"
      member = "serviceAccount:multus-build@multus-host.iam.gserviceaccount.com"
      name   = "projects/multus-host/serviceAccounts/multus-build@multus-host.iam.gserviceaccount.com"
      id     = "projects/multus-host/serviceAccounts/multus-build@multus-host.iam.gserviceaccount.com"
    }
  }
  override_resource {
    target = google_service_account.trigger["cluster-events"]
    values = {
      email  = "multus-cluster-inv@multus-host.iam.gserviceaccount.com"
      member = "serviceAccount:multus-cluster-inv@multus-host.iam.gserviceaccount.com"
      name   = "projects/multus-host/serviceAccounts/multus-cluster-inv@multus-host.iam.gserviceaccount.com"
      id     = "projects/multus-host/serviceAccounts/multus-cluster-inv@multus-host.iam.gserviceaccount.com"
    }
  }
  override_resource {
    target = google_service_account.trigger["node-pool-events"]
    values = {
      email  = "multus-nodepool-inv@multus-host.iam.gserviceaccount.com"
      member = "serviceAccount:multus-nodepool-inv@multus-host.iam.gserviceaccount.com"
      name   = "projects/multus-host/serviceAccounts/multus-nodepool-inv@multus-host.iam.gserviceaccount.com"
      id     = "projects/multus-host/serviceAccounts/multus-nodepool-inv@multus-host.iam.gserviceaccount.com"
    }
  }
  override_resource {
    target = google_service_account.trigger["nad-requests"]
    values = {
      email  = "multus-nad-inv@multus-host.iam.gserviceaccount.com"
      member = "serviceAccount:multus-nad-inv@multus-host.iam.gserviceaccount.com"
      name   = "projects/multus-host/serviceAccounts/multus-nad-inv@multus-host.iam.gserviceaccount.com"
      id     = "projects/multus-host/serviceAccounts/multus-nad-inv@multus-host.iam.gserviceaccount.com"
    }
  }
  override_resource {
    target = google_service_account.trigger["reconcile"]
    values = {
      email  = "multus-reconcile-inv@multus-host.iam.gserviceaccount.com"
      member = "serviceAccount:multus-reconcile-inv@multus-host.iam.gserviceaccount.com"
      name   = "projects/multus-host/serviceAccounts/multus-reconcile-inv@multus-host.iam.gserviceaccount.com"
      id     = "projects/multus-host/serviceAccounts/multus-reconcile-inv@multus-host.iam.gserviceaccount.com"
    }
  }
  override_resource {
    target = google_service_account.example_nodes[0]
    values = {
      email  = "multus-example-nodes@multus-host.iam.gserviceaccount.com"
      member = "serviceAccount:multus-example-nodes@multus-host.iam.gserviceaccount.com"
      name   = "projects/multus-host/serviceAccounts/multus-example-nodes@multus-host.iam.gserviceaccount.com"
      id     = "projects/multus-host/serviceAccounts/multus-example-nodes@multus-host.iam.gserviceaccount.com"
    }
  }
  override_resource {
    target = google_logging_project_sink.events["cluster-events"]
    values = { writer_identity = "serviceAccount:project-cluster-events@gcp-sa-logging.iam.gserviceaccount.com" }
  }
  override_resource {
    target = google_logging_project_sink.events["node-pool-events"]
    values = { writer_identity = "serviceAccount:project-node-pool-events@gcp-sa-logging.iam.gserviceaccount.com" }
  }
  override_resource {
    target = google_logging_folder_sink.events["cluster-events"]
    values = { writer_identity = "serviceAccount:folder-cluster-events@gcp-sa-logging.iam.gserviceaccount.com" }
  }
  override_resource {
    target = google_logging_folder_sink.events["node-pool-events"]
    values = { writer_identity = "serviceAccount:folder-node-pool-events@gcp-sa-logging.iam.gserviceaccount.com" }
  }
  override_resource {
    target = google_logging_organization_sink.events["cluster-events"]
    values = { writer_identity = "serviceAccount:organization-cluster-events@gcp-sa-logging.iam.gserviceaccount.com" }
  }
  override_resource {
    target = google_logging_organization_sink.events["node-pool-events"]
    values = { writer_identity = "serviceAccount:organization-node-pool-events@gcp-sa-logging.iam.gserviceaccount.com" }
  }
}

variables {
  project_id = "multus-host"
  source_zip = "tests/function-source.zip"
}

# One project: the controller and the clusters in one project, project-level sinks, no VPC egress.
run "one_project" {
  command = apply # against the mock provider: nothing leaves this machine

  variables {
    policy_writers = ["group:platform-policy@example.com"]
  }

  assert {
    condition = (
      google_firestore_database.policy.name == "multus-policy"
      && google_project_iam_member.runtime_firestore.condition[0].expression == "resource.name == \"projects/multus-host/databases/(default)\""
      && google_project_iam_member.runtime_policy_reader.role == "roles/datastore.viewer"
      && google_project_iam_member.runtime_policy_reader.condition[0].expression == "resource.name == \"projects/multus-host/databases/multus-policy\""
      && sort([for g in output.iam_grants : "${g.member} ${g.role}" if g.on == "firestore-database:multus-policy"]) == sort([
        "${google_service_account.runtime.member} roles/datastore.viewer",
        "group:platform-policy@example.com roles/datastore.user",
      ])
      && google_cloudfunctions2_function.fn["nad-requests"].service_config[0].environment_variables["MULTUS_PROVISIONER_POLICY_DATABASE"] == "multus-policy"
    )
    error_message = "config/policy lives in its own database: the runtime only reads it, only policy_writers write it."
  }

  assert {
    condition     = alltrue([for f in google_cloudfunctions2_function.fn : f.service_config[0].service_account_email == google_service_account.runtime.email])
    error_message = "Every function must run as the runtime identity."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.runtime.member]) == sort([
      "roles/datastore.user on firestore-database:(default)",
      "roles/datastore.viewer on firestore-database:multus-policy",
      "roles/logging.logWriter on project:multus-host",
      "roles/pubsub.publisher on topic:multus-reconcile",
      "${google_project_iam_custom_role.gke["multus-host"].id} on project:multus-host",
    ])
    error_message = "The runtime identity's grants are ${jsonencode([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.runtime.member])}."
  }

  assert {
    condition = sort(keys(google_project_iam_custom_role.gke)) == sort(["multus-host"]) && alltrue([
      for r in google_project_iam_custom_role.gke :
      sort(tolist(r.permissions)) == sort([for p in yamldecode(file("gke-permissions.yaml")).permissions : p.permission if !try(p.only_with_node_pool_template, false)])
    ])
    error_message = "The custom GKE role must exist in each managed project with exactly the permissions of gke-permissions.yaml (no node pool template: no clusters.update)."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.build.member]) == sort([
      "roles/artifactregistry.writer on project:multus-host",
      "roles/logging.logWriter on project:multus-host",
      "roles/storage.objectViewer on bucket:multus-host-multus-fn-source",
    ])
    error_message = "The build identity's grants are ${jsonencode([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.build.member])}."
  }

  assert {
    condition = alltrue([
      for g in output.iam_grants :
      !contains(["roles/owner", "roles/editor", "roles/viewer"], g.role) && !contains(["allUsers", "allAuthenticatedUsers"], g.member)
    ])
    error_message = "No primitive role and no public member may be granted."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.member} on ${g.on}" if contains(["roles/run.invoker", "roles/cloudfunctions.invoker"], g.role)]) == sort([
      for k, f in google_cloudfunctions2_function.fn : "${google_service_account.trigger[k].member} on run-service:${f.location}/${f.service_config[0].service}"
    ]) && alltrue([for f in google_cloudfunctions2_function.fn : f.service_config[0].ingress_settings == "ALLOW_INTERNAL_ONLY"])
    error_message = "Only each stream's push identity may invoke its own function (no public invoker, internal ingress only)."
  }

  assert {
    condition = length(distinct([for sa in google_service_account.trigger : sa.email])) == 4 && alltrue([
      for k, sa in google_service_account.trigger :
      [for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == sa.member] == ["roles/run.invoker on run-service:${google_cloudfunctions2_function.fn[k].location}/${google_cloudfunctions2_function.fn[k].service_config[0].service}"]
    ])
    error_message = "Each push identity may invoke only its own function and hold nothing else."
  }

  assert {
    condition = sort(keys(google_pubsub_subscription.push)) == sort(["cluster-events", "nad-requests", "node-pool-events", "reconcile"]) && alltrue([
      for k, s in google_pubsub_subscription.push :
      s.topic == google_pubsub_topic.stream[k].id
      && s.push_config[0].push_endpoint == google_cloudfunctions2_function.fn[k].service_config[0].uri
      && s.push_config[0].oidc_token[0].audience == google_cloudfunctions2_function.fn[k].service_config[0].uri
      && s.push_config[0].oidc_token[0].service_account_email == google_service_account.trigger[k].email
    ])
    error_message = "Each push subscription must deliver to its function's URI with an OIDC token of its own push identity whose audience is that URI."
  }

  assert {
    condition = alltrue([
      for k, s in google_pubsub_subscription.push :
      s.dead_letter_policy[0].dead_letter_topic == google_pubsub_topic.dead_letter[k].id
      && s.dead_letter_policy[0].max_delivery_attempts == 5
      && s.retry_policy[0].minimum_backoff == "10s" && s.retry_policy[0].maximum_backoff == "600s"
      && google_pubsub_subscription.dead_letter_inspect[k].topic == google_pubsub_topic.dead_letter[k].id
    ])
    error_message = "Every push subscription needs its dead-letter topic (with an inspection subscription) and backoff."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"]) == sort(flatten([
      for k, s in google_pubsub_subscription.push : [
        "roles/pubsub.publisher on topic:${google_pubsub_topic.dead_letter[k].name}",
        "roles/pubsub.subscriber on subscription:${s.name}",
        "roles/iam.serviceAccountTokenCreator on service-account:${google_service_account.trigger[k].name}",
      ]
    ]))
    error_message = "The Pub/Sub service agent needs exactly the dead-letter grants of each subscription and token creation on the push identities."
  }

  assert {
    condition = (
      google_cloud_scheduler_job.reconcile.pubsub_target[0].topic_name == google_pubsub_topic.stream["reconcile"].id
      && base64decode(google_cloud_scheduler_job.reconcile.pubsub_target[0].data) == "{}"
      && google_cloud_scheduler_job.reconcile.schedule == "*/10 * * * *"
    )
    error_message = "The scheduler must publish {} to the reconcile topic every 10 minutes."
  }

  assert {
    condition = sort(keys(google_logging_project_sink.events)) == sort(["cluster-events", "node-pool-events"]) && alltrue([
      for k, s in google_logging_project_sink.events :
      s.filter == yamldecode(file("sink-filters.yaml"))[k]
      && s.destination == "pubsub.googleapis.com/${google_pubsub_topic.stream[k].id}"
      && [for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == s.writer_identity] == ["roles/pubsub.publisher on topic:${google_pubsub_topic.stream[k].name}"]
    ])
    error_message = "Each project sink must carry its filter from sink-filters.yaml, deliver to its own topic and have its writer publish there only."
  }

  assert {
    condition     = length(google_logging_folder_sink.events) + length(google_logging_organization_sink.events) == 0
    error_message = "Only project sinks may exist for sink_scope = project."
  }

  assert {
    condition = alltrue([
      for f in google_cloudfunctions2_function.fn :
      sort(keys(f.service_config[0].environment_variables)) == sort(formatlist("MULTUS_PROVISIONER_%s", yamldecode(file("function-settings.yaml")).set))
    ])
    error_message = "Each function's environment must hold exactly the `set` variables of function-settings.yaml."
  }

  assert {
    condition = alltrue([
      for f in google_cloudfunctions2_function.fn :
      f.service_config[0].environment_variables["MULTUS_PROVISIONER_PROJECT"] == "multus-host"
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS"] == google_pubsub_topic.stream["nad-requests"].name
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_TOPIC_RECONCILE"] == google_pubsub_topic.stream["reconcile"].name
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_MANAGED_PROJECTS"] == ""
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_MAX_ATTEMPTS"] == tostring(google_pubsub_subscription.push["reconcile"].dead_letter_policy[0].max_delivery_attempts)
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_VPC_EGRESS"] == "false"
      && f.service_config[0].vpc_connector == null
      && f.service_config[0].vpc_connector_egress_settings == null
    ])
    error_message = "The functions' settings must name this deployment's project, topics, managed projects and VPC egress."
  }
}

# Folder sinks with managed cluster projects: the custom GKE role in each managed project only.
run "folder_sinks_with_managed_projects" {
  command = apply # against the mock provider: nothing leaves this machine

  variables {
    sink_scope               = "folder"
    sink_parent_id           = "123456789012"
    managed_cluster_projects = ["multus-host", "team-a-clusters", "team-b-clusters"]
  }

  assert {
    condition     = alltrue([for f in google_cloudfunctions2_function.fn : f.service_config[0].service_account_email == google_service_account.runtime.email])
    error_message = "Every function must run as the runtime identity."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.runtime.member]) == sort([
      "roles/datastore.user on firestore-database:(default)",
      "roles/datastore.viewer on firestore-database:multus-policy",
      "roles/logging.logWriter on project:multus-host",
      "roles/pubsub.publisher on topic:multus-reconcile",
      "${google_project_iam_custom_role.gke["multus-host"].id} on project:multus-host",
      "${google_project_iam_custom_role.gke["team-a-clusters"].id} on project:team-a-clusters",
      "${google_project_iam_custom_role.gke["team-b-clusters"].id} on project:team-b-clusters",
    ])
    error_message = "The runtime identity's grants are ${jsonencode([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.runtime.member])}."
  }

  assert {
    condition = sort(keys(google_project_iam_custom_role.gke)) == sort(["multus-host", "team-a-clusters", "team-b-clusters"]) && alltrue([
      for r in google_project_iam_custom_role.gke :
      sort(tolist(r.permissions)) == sort([for p in yamldecode(file("gke-permissions.yaml")).permissions : p.permission if !try(p.only_with_node_pool_template, false)])
    ])
    error_message = "The custom GKE role must exist in each managed project with exactly the permissions of gke-permissions.yaml (no node pool template: no clusters.update)."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.build.member]) == sort([
      "roles/artifactregistry.writer on project:multus-host",
      "roles/logging.logWriter on project:multus-host",
      "roles/storage.objectViewer on bucket:multus-host-multus-fn-source",
    ])
    error_message = "The build identity's grants are ${jsonencode([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.build.member])}."
  }

  assert {
    condition = alltrue([
      for g in output.iam_grants :
      !contains(["roles/owner", "roles/editor", "roles/viewer"], g.role) && !contains(["allUsers", "allAuthenticatedUsers"], g.member)
    ])
    error_message = "No primitive role and no public member may be granted."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.member} on ${g.on}" if contains(["roles/run.invoker", "roles/cloudfunctions.invoker"], g.role)]) == sort([
      for k, f in google_cloudfunctions2_function.fn : "${google_service_account.trigger[k].member} on run-service:${f.location}/${f.service_config[0].service}"
    ]) && alltrue([for f in google_cloudfunctions2_function.fn : f.service_config[0].ingress_settings == "ALLOW_INTERNAL_ONLY"])
    error_message = "Only each stream's push identity may invoke its own function (no public invoker, internal ingress only)."
  }

  assert {
    condition = length(distinct([for sa in google_service_account.trigger : sa.email])) == 4 && alltrue([
      for k, sa in google_service_account.trigger :
      [for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == sa.member] == ["roles/run.invoker on run-service:${google_cloudfunctions2_function.fn[k].location}/${google_cloudfunctions2_function.fn[k].service_config[0].service}"]
    ])
    error_message = "Each push identity may invoke only its own function and hold nothing else."
  }

  assert {
    condition = sort(keys(google_pubsub_subscription.push)) == sort(["cluster-events", "nad-requests", "node-pool-events", "reconcile"]) && alltrue([
      for k, s in google_pubsub_subscription.push :
      s.topic == google_pubsub_topic.stream[k].id
      && s.push_config[0].push_endpoint == google_cloudfunctions2_function.fn[k].service_config[0].uri
      && s.push_config[0].oidc_token[0].audience == google_cloudfunctions2_function.fn[k].service_config[0].uri
      && s.push_config[0].oidc_token[0].service_account_email == google_service_account.trigger[k].email
    ])
    error_message = "Each push subscription must deliver to its function's URI with an OIDC token of its own push identity whose audience is that URI."
  }

  assert {
    condition = alltrue([
      for k, s in google_pubsub_subscription.push :
      s.dead_letter_policy[0].dead_letter_topic == google_pubsub_topic.dead_letter[k].id
      && s.dead_letter_policy[0].max_delivery_attempts == 5
      && s.retry_policy[0].minimum_backoff == "10s" && s.retry_policy[0].maximum_backoff == "600s"
      && google_pubsub_subscription.dead_letter_inspect[k].topic == google_pubsub_topic.dead_letter[k].id
    ])
    error_message = "Every push subscription needs its dead-letter topic (with an inspection subscription) and backoff."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"]) == sort(flatten([
      for k, s in google_pubsub_subscription.push : [
        "roles/pubsub.publisher on topic:${google_pubsub_topic.dead_letter[k].name}",
        "roles/pubsub.subscriber on subscription:${s.name}",
        "roles/iam.serviceAccountTokenCreator on service-account:${google_service_account.trigger[k].name}",
      ]
    ]))
    error_message = "The Pub/Sub service agent needs exactly the dead-letter grants of each subscription and token creation on the push identities."
  }

  assert {
    condition = (
      google_cloud_scheduler_job.reconcile.pubsub_target[0].topic_name == google_pubsub_topic.stream["reconcile"].id
      && base64decode(google_cloud_scheduler_job.reconcile.pubsub_target[0].data) == "{}"
      && google_cloud_scheduler_job.reconcile.schedule == "*/10 * * * *"
    )
    error_message = "The scheduler must publish {} to the reconcile topic every 10 minutes."
  }

  assert {
    condition = sort(keys(google_logging_folder_sink.events)) == sort(["cluster-events", "node-pool-events"]) && alltrue([
      for k, s in google_logging_folder_sink.events :
      s.filter == yamldecode(file("sink-filters.yaml"))[k]
      && s.destination == "pubsub.googleapis.com/${google_pubsub_topic.stream[k].id}"
      && [for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == s.writer_identity] == ["roles/pubsub.publisher on topic:${google_pubsub_topic.stream[k].name}"]
    ])
    error_message = "Each folder sink must carry its filter from sink-filters.yaml, deliver to its own topic and have its writer publish there only."
  }

  assert {
    condition     = length(google_logging_project_sink.events) + length(google_logging_organization_sink.events) == 0
    error_message = "Only folder sinks may exist for sink_scope = folder."
  }

  assert {
    condition = alltrue([
      for f in google_cloudfunctions2_function.fn :
      sort(keys(f.service_config[0].environment_variables)) == sort(formatlist("MULTUS_PROVISIONER_%s", yamldecode(file("function-settings.yaml")).set))
    ])
    error_message = "Each function's environment must hold exactly the `set` variables of function-settings.yaml."
  }

  assert {
    condition = alltrue([
      for f in google_cloudfunctions2_function.fn :
      f.service_config[0].environment_variables["MULTUS_PROVISIONER_PROJECT"] == "multus-host"
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS"] == google_pubsub_topic.stream["nad-requests"].name
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_TOPIC_RECONCILE"] == google_pubsub_topic.stream["reconcile"].name
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_MANAGED_PROJECTS"] == "multus-host,team-a-clusters,team-b-clusters"
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_MAX_ATTEMPTS"] == tostring(google_pubsub_subscription.push["reconcile"].dead_letter_policy[0].max_delivery_attempts)
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_VPC_EGRESS"] == "false"
      && f.service_config[0].vpc_connector == null
      && f.service_config[0].vpc_connector_egress_settings == null
    ])
    error_message = "The functions' settings must name this deployment's project, topics, managed projects and VPC egress."
  }
}

# Organization sinks; the clusters live in other projects than the controller.
run "organization_sinks_with_managed_projects" {
  command = apply # against the mock provider: nothing leaves this machine

  variables {
    sink_scope               = "organization"
    sink_parent_id           = "987654321098"
    managed_cluster_projects = ["team-a-clusters"]
  }

  assert {
    condition     = alltrue([for f in google_cloudfunctions2_function.fn : f.service_config[0].service_account_email == google_service_account.runtime.email])
    error_message = "Every function must run as the runtime identity."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.runtime.member]) == sort([
      "roles/datastore.user on firestore-database:(default)",
      "roles/datastore.viewer on firestore-database:multus-policy",
      "roles/logging.logWriter on project:multus-host",
      "roles/pubsub.publisher on topic:multus-reconcile",
      "${google_project_iam_custom_role.gke["team-a-clusters"].id} on project:team-a-clusters",
    ])
    error_message = "The runtime identity's grants are ${jsonencode([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.runtime.member])}."
  }

  assert {
    condition = sort(keys(google_project_iam_custom_role.gke)) == sort(["team-a-clusters"]) && alltrue([
      for r in google_project_iam_custom_role.gke :
      sort(tolist(r.permissions)) == sort([for p in yamldecode(file("gke-permissions.yaml")).permissions : p.permission if !try(p.only_with_node_pool_template, false)])
    ])
    error_message = "The custom GKE role must exist in each managed project with exactly the permissions of gke-permissions.yaml (no node pool template: no clusters.update)."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.build.member]) == sort([
      "roles/artifactregistry.writer on project:multus-host",
      "roles/logging.logWriter on project:multus-host",
      "roles/storage.objectViewer on bucket:multus-host-multus-fn-source",
    ])
    error_message = "The build identity's grants are ${jsonencode([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.build.member])}."
  }

  assert {
    condition = alltrue([
      for g in output.iam_grants :
      !contains(["roles/owner", "roles/editor", "roles/viewer"], g.role) && !contains(["allUsers", "allAuthenticatedUsers"], g.member)
    ])
    error_message = "No primitive role and no public member may be granted."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.member} on ${g.on}" if contains(["roles/run.invoker", "roles/cloudfunctions.invoker"], g.role)]) == sort([
      for k, f in google_cloudfunctions2_function.fn : "${google_service_account.trigger[k].member} on run-service:${f.location}/${f.service_config[0].service}"
    ]) && alltrue([for f in google_cloudfunctions2_function.fn : f.service_config[0].ingress_settings == "ALLOW_INTERNAL_ONLY"])
    error_message = "Only each stream's push identity may invoke its own function (no public invoker, internal ingress only)."
  }

  assert {
    condition = length(distinct([for sa in google_service_account.trigger : sa.email])) == 4 && alltrue([
      for k, sa in google_service_account.trigger :
      [for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == sa.member] == ["roles/run.invoker on run-service:${google_cloudfunctions2_function.fn[k].location}/${google_cloudfunctions2_function.fn[k].service_config[0].service}"]
    ])
    error_message = "Each push identity may invoke only its own function and hold nothing else."
  }

  assert {
    condition = sort(keys(google_pubsub_subscription.push)) == sort(["cluster-events", "nad-requests", "node-pool-events", "reconcile"]) && alltrue([
      for k, s in google_pubsub_subscription.push :
      s.topic == google_pubsub_topic.stream[k].id
      && s.push_config[0].push_endpoint == google_cloudfunctions2_function.fn[k].service_config[0].uri
      && s.push_config[0].oidc_token[0].audience == google_cloudfunctions2_function.fn[k].service_config[0].uri
      && s.push_config[0].oidc_token[0].service_account_email == google_service_account.trigger[k].email
    ])
    error_message = "Each push subscription must deliver to its function's URI with an OIDC token of its own push identity whose audience is that URI."
  }

  assert {
    condition = alltrue([
      for k, s in google_pubsub_subscription.push :
      s.dead_letter_policy[0].dead_letter_topic == google_pubsub_topic.dead_letter[k].id
      && s.dead_letter_policy[0].max_delivery_attempts == 5
      && s.retry_policy[0].minimum_backoff == "10s" && s.retry_policy[0].maximum_backoff == "600s"
      && google_pubsub_subscription.dead_letter_inspect[k].topic == google_pubsub_topic.dead_letter[k].id
    ])
    error_message = "Every push subscription needs its dead-letter topic (with an inspection subscription) and backoff."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"]) == sort(flatten([
      for k, s in google_pubsub_subscription.push : [
        "roles/pubsub.publisher on topic:${google_pubsub_topic.dead_letter[k].name}",
        "roles/pubsub.subscriber on subscription:${s.name}",
        "roles/iam.serviceAccountTokenCreator on service-account:${google_service_account.trigger[k].name}",
      ]
    ]))
    error_message = "The Pub/Sub service agent needs exactly the dead-letter grants of each subscription and token creation on the push identities."
  }

  assert {
    condition = (
      google_cloud_scheduler_job.reconcile.pubsub_target[0].topic_name == google_pubsub_topic.stream["reconcile"].id
      && base64decode(google_cloud_scheduler_job.reconcile.pubsub_target[0].data) == "{}"
      && google_cloud_scheduler_job.reconcile.schedule == "*/10 * * * *"
    )
    error_message = "The scheduler must publish {} to the reconcile topic every 10 minutes."
  }

  assert {
    condition = sort(keys(google_logging_organization_sink.events)) == sort(["cluster-events", "node-pool-events"]) && alltrue([
      for k, s in google_logging_organization_sink.events :
      s.filter == yamldecode(file("sink-filters.yaml"))[k]
      && s.destination == "pubsub.googleapis.com/${google_pubsub_topic.stream[k].id}"
      && [for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == s.writer_identity] == ["roles/pubsub.publisher on topic:${google_pubsub_topic.stream[k].name}"]
    ])
    error_message = "Each organization sink must carry its filter from sink-filters.yaml, deliver to its own topic and have its writer publish there only."
  }

  assert {
    condition     = length(google_logging_project_sink.events) + length(google_logging_folder_sink.events) == 0
    error_message = "Only organization sinks may exist for sink_scope = organization."
  }

  assert {
    condition = alltrue([
      for f in google_cloudfunctions2_function.fn :
      sort(keys(f.service_config[0].environment_variables)) == sort(formatlist("MULTUS_PROVISIONER_%s", yamldecode(file("function-settings.yaml")).set))
    ])
    error_message = "Each function's environment must hold exactly the `set` variables of function-settings.yaml."
  }

  assert {
    condition = alltrue([
      for f in google_cloudfunctions2_function.fn :
      f.service_config[0].environment_variables["MULTUS_PROVISIONER_PROJECT"] == "multus-host"
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS"] == google_pubsub_topic.stream["nad-requests"].name
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_TOPIC_RECONCILE"] == google_pubsub_topic.stream["reconcile"].name
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_MANAGED_PROJECTS"] == "team-a-clusters"
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_MAX_ATTEMPTS"] == tostring(google_pubsub_subscription.push["reconcile"].dead_letter_policy[0].max_delivery_attempts)
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_VPC_EGRESS"] == "false"
      && f.service_config[0].vpc_connector == null
      && f.service_config[0].vpc_connector_egress_settings == null
    ])
    error_message = "The functions' settings must name this deployment's project, topics, managed projects and VPC egress."
  }
}

# Private-only clusters: the functions reach their control planes through a Serverless VPC Access connector.
run "private_clusters_with_vpc_connector" {
  command = apply # against the mock provider: nothing leaves this machine

  variables {
    vpc_connector = "projects/multus-host/locations/us-central1/connectors/gke-private"
  }

  assert {
    condition     = alltrue([for f in google_cloudfunctions2_function.fn : f.service_config[0].service_account_email == google_service_account.runtime.email])
    error_message = "Every function must run as the runtime identity."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.runtime.member]) == sort([
      "roles/datastore.user on firestore-database:(default)",
      "roles/datastore.viewer on firestore-database:multus-policy",
      "roles/logging.logWriter on project:multus-host",
      "roles/pubsub.publisher on topic:multus-reconcile",
      "${google_project_iam_custom_role.gke["multus-host"].id} on project:multus-host",
    ])
    error_message = "The runtime identity's grants are ${jsonencode([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.runtime.member])}."
  }

  assert {
    condition = sort(keys(google_project_iam_custom_role.gke)) == sort(["multus-host"]) && alltrue([
      for r in google_project_iam_custom_role.gke :
      sort(tolist(r.permissions)) == sort([for p in yamldecode(file("gke-permissions.yaml")).permissions : p.permission if !try(p.only_with_node_pool_template, false)])
    ])
    error_message = "The custom GKE role must exist in each managed project with exactly the permissions of gke-permissions.yaml (no node pool template: no clusters.update)."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.build.member]) == sort([
      "roles/artifactregistry.writer on project:multus-host",
      "roles/logging.logWriter on project:multus-host",
      "roles/storage.objectViewer on bucket:multus-host-multus-fn-source",
    ])
    error_message = "The build identity's grants are ${jsonencode([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.build.member])}."
  }

  assert {
    condition = alltrue([
      for g in output.iam_grants :
      !contains(["roles/owner", "roles/editor", "roles/viewer"], g.role) && !contains(["allUsers", "allAuthenticatedUsers"], g.member)
    ])
    error_message = "No primitive role and no public member may be granted."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.member} on ${g.on}" if contains(["roles/run.invoker", "roles/cloudfunctions.invoker"], g.role)]) == sort([
      for k, f in google_cloudfunctions2_function.fn : "${google_service_account.trigger[k].member} on run-service:${f.location}/${f.service_config[0].service}"
    ]) && alltrue([for f in google_cloudfunctions2_function.fn : f.service_config[0].ingress_settings == "ALLOW_INTERNAL_ONLY"])
    error_message = "Only each stream's push identity may invoke its own function (no public invoker, internal ingress only)."
  }

  assert {
    condition = length(distinct([for sa in google_service_account.trigger : sa.email])) == 4 && alltrue([
      for k, sa in google_service_account.trigger :
      [for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == sa.member] == ["roles/run.invoker on run-service:${google_cloudfunctions2_function.fn[k].location}/${google_cloudfunctions2_function.fn[k].service_config[0].service}"]
    ])
    error_message = "Each push identity may invoke only its own function and hold nothing else."
  }

  assert {
    condition = sort(keys(google_pubsub_subscription.push)) == sort(["cluster-events", "nad-requests", "node-pool-events", "reconcile"]) && alltrue([
      for k, s in google_pubsub_subscription.push :
      s.topic == google_pubsub_topic.stream[k].id
      && s.push_config[0].push_endpoint == google_cloudfunctions2_function.fn[k].service_config[0].uri
      && s.push_config[0].oidc_token[0].audience == google_cloudfunctions2_function.fn[k].service_config[0].uri
      && s.push_config[0].oidc_token[0].service_account_email == google_service_account.trigger[k].email
    ])
    error_message = "Each push subscription must deliver to its function's URI with an OIDC token of its own push identity whose audience is that URI."
  }

  assert {
    condition = alltrue([
      for k, s in google_pubsub_subscription.push :
      s.dead_letter_policy[0].dead_letter_topic == google_pubsub_topic.dead_letter[k].id
      && s.dead_letter_policy[0].max_delivery_attempts == 5
      && s.retry_policy[0].minimum_backoff == "10s" && s.retry_policy[0].maximum_backoff == "600s"
      && google_pubsub_subscription.dead_letter_inspect[k].topic == google_pubsub_topic.dead_letter[k].id
    ])
    error_message = "Every push subscription needs its dead-letter topic (with an inspection subscription) and backoff."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"]) == sort(flatten([
      for k, s in google_pubsub_subscription.push : [
        "roles/pubsub.publisher on topic:${google_pubsub_topic.dead_letter[k].name}",
        "roles/pubsub.subscriber on subscription:${s.name}",
        "roles/iam.serviceAccountTokenCreator on service-account:${google_service_account.trigger[k].name}",
      ]
    ]))
    error_message = "The Pub/Sub service agent needs exactly the dead-letter grants of each subscription and token creation on the push identities."
  }

  assert {
    condition = (
      google_cloud_scheduler_job.reconcile.pubsub_target[0].topic_name == google_pubsub_topic.stream["reconcile"].id
      && base64decode(google_cloud_scheduler_job.reconcile.pubsub_target[0].data) == "{}"
      && google_cloud_scheduler_job.reconcile.schedule == "*/10 * * * *"
    )
    error_message = "The scheduler must publish {} to the reconcile topic every 10 minutes."
  }

  assert {
    condition = sort(keys(google_logging_project_sink.events)) == sort(["cluster-events", "node-pool-events"]) && alltrue([
      for k, s in google_logging_project_sink.events :
      s.filter == yamldecode(file("sink-filters.yaml"))[k]
      && s.destination == "pubsub.googleapis.com/${google_pubsub_topic.stream[k].id}"
      && [for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == s.writer_identity] == ["roles/pubsub.publisher on topic:${google_pubsub_topic.stream[k].name}"]
    ])
    error_message = "Each project sink must carry its filter from sink-filters.yaml, deliver to its own topic and have its writer publish there only."
  }

  assert {
    condition     = length(google_logging_folder_sink.events) + length(google_logging_organization_sink.events) == 0
    error_message = "Only project sinks may exist for sink_scope = project."
  }

  assert {
    condition = alltrue([
      for f in google_cloudfunctions2_function.fn :
      sort(keys(f.service_config[0].environment_variables)) == sort(formatlist("MULTUS_PROVISIONER_%s", yamldecode(file("function-settings.yaml")).set))
    ])
    error_message = "Each function's environment must hold exactly the `set` variables of function-settings.yaml."
  }

  assert {
    condition = alltrue([
      for f in google_cloudfunctions2_function.fn :
      f.service_config[0].environment_variables["MULTUS_PROVISIONER_PROJECT"] == "multus-host"
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS"] == google_pubsub_topic.stream["nad-requests"].name
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_TOPIC_RECONCILE"] == google_pubsub_topic.stream["reconcile"].name
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_MANAGED_PROJECTS"] == ""
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_MAX_ATTEMPTS"] == tostring(google_pubsub_subscription.push["reconcile"].dead_letter_policy[0].max_delivery_attempts)
      && f.service_config[0].environment_variables["MULTUS_PROVISIONER_VPC_EGRESS"] == "true"
      && f.service_config[0].vpc_connector == "projects/multus-host/locations/us-central1/connectors/gke-private"
      && f.service_config[0].vpc_connector_egress_settings == "PRIVATE_RANGES_ONLY"
    ])
    error_message = "The functions' settings must name this deployment's project, topics, managed projects and VPC egress."
  }
}

# The optional example of the procedure's steps 1-3 (create_example = true): VPCs, the opted-in
# cluster and the node pool with additional networks, planned through the provider's validators too.
run "example_cluster_and_node_pool" {
  command = apply # against the mock provider

  variables {
    create_example = true
    node_pool_template = {
      network             = "multus-additional"
      subnetwork          = "multus-additional-subnet"
      secondary_pod_range = "multus-pods"
    }
  }

  assert {
    condition = alltrue([
      for r in google_project_iam_custom_role.gke :
      sort(tolist(r.permissions)) == sort([for p in yamldecode(file("gke-permissions.yaml")).permissions : p.permission])
      && contains(tolist(r.permissions), "container.clusters.update")
      && length([for p in r.permissions : p if !startswith(p, "container.clusters.")]) == 0
    ])
    error_message = "With a node pool template the role adds clusters.update (CreateNodePool) and holds no in-cluster permission."
  }

  assert {
    condition = (
      google_container_cluster.example[0].resource_labels["multus-provisioner"] == "enabled"
      && google_container_cluster.example[0].datapath_provider == "ADVANCED_DATAPATH"
      && google_container_cluster.example[0].enable_multi_networking
      && google_container_cluster.example[0].networking_mode == "VPC_NATIVE"
    )
    error_message = "The example cluster must be opted in and eligible (Dataplane V2, multi-networking, VPC-native)."
  }

  assert {
    condition = (
      google_container_node_pool.example_multus[0].network_config[0].additional_node_network_configs[0].network == google_compute_network.example_additional[0].name
      && google_container_node_pool.example_multus[0].network_config[0].additional_pod_network_configs[0].secondary_pod_range == google_compute_subnetwork.example_additional[0].secondary_ip_range[0].range_name
      && google_container_node_pool.example_multus[0].network_config[0].additional_pod_network_configs[0].max_pods_per_node == 8
    )
    error_message = "The example node pool must attach the additional network and its secondary pod range."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.example_nodes[0].member]) == sort([
      "roles/container.defaultNodeServiceAccount on project:multus-host",
    ])
    error_message = "The example's node identity may hold only the default node role."
  }

  assert {
    condition = sort([for g in output.iam_grants : "${g.role} on ${g.on}" if g.member == google_service_account.runtime.member]) == sort([
      "roles/datastore.user on firestore-database:(default)",
      "roles/datastore.viewer on firestore-database:multus-policy",
      "roles/logging.logWriter on project:multus-host",
      "roles/pubsub.publisher on topic:multus-reconcile",
      "${google_project_iam_custom_role.gke["multus-host"].id} on project:multus-host",
    ]) && alltrue([for g in output.iam_grants : !contains(["roles/owner", "roles/editor", "roles/viewer"], g.role)])
    error_message = "The example must not widen the runtime identity's grants or add a primitive role."
  }
}
