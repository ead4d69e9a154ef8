"""Static checks of the deployment (infra/*.tf, infra/*.yaml, cloudbuild.yaml).

The wiring is asserted on the parsed HCL (python-hcl2, v7/v8 output: strings keep their quotes,
interpolations stay as `${...}` text), the sink filters (infra/sink-filters.yaml) are evaluated with
tests/sink_filter.py against sample audit entries, the functions' environment contract
(infra/function-settings.yaml) is checked against what shared/core/settings.py reads, and checkov runs
on infra/ in its own virtualenv (.venv-tools; see infra/tools-requirements.txt). Terraform itself,
with the real google provider, validates and plans infra/ in tests/test_terraform.py.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from tests.sink_filter import FilterSyntaxError, parse

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
SAMPLES = ROOT / "tests" / "samples"
ENTRY_POINTS = {"on_cluster_event", "on_node_pool_event", "on_nad_request", "reconcile"}
STREAMS = {"cluster-events", "node-pool-events", "nad-requests", "reconcile"}
PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}


# --- HCL loading --------------------------------------------------------------------------------------------

def _unq(value: Any) -> Any:
    """Strip the quotes python-hcl2 v8 keeps around string literals (and around block labels)."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        return {_unq(k): _clean(v) for k, v in node.items() if k != "__is_block__"}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return _unq(node)


@cache
def tf_files() -> dict[str, dict[str, Any]]:
    files = sorted(INFRA.glob("*.tf"))
    assert files, "infra/ has no .tf files"
    out = {}
    for path in files:
        with path.open() as fh:
            out[path.name] = _clean(hcl2.load(fh))
    return out


@cache
def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(type, name) -> body, over every file (a duplicate address is itself an error)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for fname, doc in tf_files().items():
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for rname, body in named.items():
                    key = (rtype, rname)
                    assert key not in out, f"{rtype}.{rname} declared twice ({fname})"
                    out[key] = body
    return out


@cache
def locals_() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for doc in tf_files().values():
        for block in doc.get("locals", []):
            for k, v in block.items():
                if k == "__comments__":
                    continue
                assert k not in out, f"local.{k} declared twice"
                out[k] = v
    return out


@cache
def variables() -> dict[str, dict[str, Any]]:
    out = {}
    for doc in tf_files().values():
        for block in doc.get("variable", []):
            out.update(block)
    return out


def of_type(rtype: str) -> dict[str, dict[str, Any]]:
    return {name: body for (t, name), body in resources().items() if t == rtype}


def res(rtype: str, name: str) -> dict[str, Any]:
    assert (rtype, name) in resources(), f"missing resource {rtype}.{name}"
    return resources()[(rtype, name)]


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The single nested block `name` of a resource body."""
    blocks = body.get(name)
    assert isinstance(blocks, list) and len(blocks) == 1, f"expected one {name} block, got {blocks!r}"
    return blocks[0]


def ref(expr: Any) -> str:
    """`${google_x.y[each.key].id}` -> `google_x.y[each.key].id` (a bare reference expression)."""
    assert isinstance(expr, str) and expr.startswith("${") and expr.endswith("}"), f"not a reference: {expr!r}"
    return expr[2:-1]


def all_strings(node: Any):
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "__comments__":
                yield from all_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from all_strings(v)
    elif isinstance(node, str):
        yield node


IAM_TYPES = {
    "google_project_iam_member", "google_project_iam_binding", "google_project_iam_policy",
    "google_pubsub_topic_iam_member", "google_pubsub_topic_iam_binding",
    "google_pubsub_subscription_iam_member", "google_pubsub_subscription_iam_binding",
    "google_cloud_run_service_iam_member", "google_cloud_run_v2_service_iam_member",
    "google_cloudfunctions2_function_iam_member", "google_service_account_iam_member",
    "google_storage_bucket_iam_member", "google_organization_iam_member", "google_folder_iam_member",
}


def iam_grants() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for (rtype, name), body in resources().items():
        if rtype in IAM_TYPES or rtype.endswith(("_iam_member", "_iam_binding", "_iam_policy")):
            out.append((rtype, name, body))
    return out


# --- parsing and formatting ---------------------------------------------------------------------------------

def test_every_tf_file_parses_and_declares_something():
    for name, doc in tf_files().items():
        assert doc, f"{name} is empty"


def test_terraform_fmt_is_clean():
    # The machine image ships terraform; fmt needs no provider (tests/test_terraform.py runs the rest).
    terraform = shutil.which("terraform")
    assert terraform, "terraform is not on PATH; the machine image ships it in /usr/local/bin"
    proc = subprocess.run([terraform, "fmt", "-check", "-diff", "-recursive", str(INFRA)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- variables, APIs, outputs -------------------------------------------------------------------------------

def test_every_variable_has_a_type_and_description():
    for name, body in variables().items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"


@pytest.mark.parametrize("name", ["project_id", "region", "name_prefix", "opt_in_label", "runtime",
                                  "sink_scope", "max_delivery_attempts", "function_timeout_seconds"])
def test_key_variables_are_validated(name):
    assert variables()[name].get("validation"), f"variable {name} has no validation block"


def test_defaults_match_shared_settings():
    from shared.core.settings import Settings

    s = Settings()
    v = variables()
    assert v["opt_in_label"]["default"] == "=".join(s.opt_in_label)
    assert v["lease_seconds"]["default"] == s.lease_seconds
    assert v["ledger_ttl_days"]["default"] == s.ledger_ttl_days
    assert v["max_nads_per_cluster"]["default"] == s.max_nads_per_cluster
    assert v["stall_seconds"]["default"] == s.stall_seconds
    assert v["prune_orphans"]["default"] is s.prune_orphans
    assert v["denied_namespaces"]["default"] == list(s.denied_namespaces)
    assert v["firestore_database"]["default"] == s.database
    assert v["create_example"]["default"] is False


def test_required_apis_are_enabled():
    services = set(locals_()["services"].removeprefix("${toset(").removesuffix(")}").replace('"', "")
                   .strip("[] \n").replace("\n", "").replace(" ", "").split(","))
    services.discard("")
    for api in ("container", "cloudfunctions", "run", "eventarc", "pubsub", "firestore", "logging",
                "cloudbuild", "artifactregistry", "cloudscheduler"):
        assert f"{api}.googleapis.com" in services, api
    api = res("google_project_service", "api")
    assert api["for_each"] == "${local.services}"
    assert api["disable_on_destroy"] is False


def _outputs() -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for doc in tf_files().values():
        for b in doc.get("output", []):
            outputs.update(b)
    return outputs


def test_outputs_name_topics_functions_and_service_accounts():
    outputs = _outputs()
    for name in ("topics", "functions", "service_accounts", "dead_letter_subscriptions", "iam_grants"):
        assert name in outputs and outputs[name].get("description"), name


def test_the_iam_grants_output_lists_every_grant_resource():
    """infra/tests assert least privilege on `output.iam_grants`: a grant left out of it would escape them."""
    listed = "".join(all_strings(_outputs()["iam_grants"]["value"]))
    grants = [(t, n) for t, n, _ in iam_grants()]
    assert grants, "found no IAM grant resources"
    missing = [f"{t}.{n}" for t, n in grants if f"{t}.{n}" not in listed]
    assert not missing, f"IAM grants missing from output iam_grants: {missing}"


# --- streams: functions, triggers, dead letters ---------------------------------------------------------------

def _defined_entry_points() -> set[str]:
    tree = ast.parse((ROOT / "functions" / "main.py").read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_streams_map_one_to_one_onto_the_entry_points_in_functions_main():
    streams = locals_()["streams"]
    assert set(streams) == STREAMS
    wired = {s["entry_point"] for s in streams.values()}
    assert wired == ENTRY_POINTS
    assert wired <= _defined_entry_points(), "an entry point Terraform wires is missing from functions/main.py"
    from scripts.package import ENTRY_POINTS as packaged

    assert set(packaged) == wired


def test_one_function_per_stream_built_from_the_package():
    fn = res("google_cloudfunctions2_function", "fn")
    assert fn["for_each"] == "${local.streams}"
    build = block(fn, "build_config")
    assert build["entry_point"] == "${each.value.entry_point}"
    assert build["runtime"] == "${var.runtime}"
    assert set(re.findall(r'"(python3\d+)"', variables()["runtime"]["validation"][0]["condition"])) \
        == {"python311", "python312"}
    storage = block(block(build, "source"), "storage_source")
    assert ref(storage["object"]) == "google_storage_bucket_object.source.name"
    assert "filemd5(var.source_zip)" in res("google_storage_bucket_object", "source")["name"]
    svc = block(fn, "service_config")
    assert ref(svc["service_account_email"]) == "google_service_account.runtime.email"
    for knob in ("timeout_seconds", "max_instance_count", "available_memory"):
        assert knob in svc, knob
    assert svc["ingress_settings"] == "${var.ingress_settings}"
    assert "ALLOW_ALL" not in variables()["ingress_settings"]["default"]
    assert "event_trigger" not in fn, "triggers are push subscriptions we own (dead-letter policy + backoff)"


def test_private_control_planes_are_reached_through_an_optional_vpc_connector():
    """Private-only clusters need VPC egress: var.vpc_connector puts the functions on a Serverless VPC
    Access connector (private ranges only) and tells the controller it may dial private endpoints."""
    fn = res("google_cloudfunctions2_function", "fn")
    svc = block(fn, "service_config")
    assert svc["vpc_connector"] == '${var.vpc_connector == "" ? null : var.vpc_connector}'
    assert svc["vpc_connector_egress_settings"] == '${var.vpc_connector == "" ? null : "PRIVATE_RANGES_ONLY"}'
    assert variables()["vpc_connector"]["default"] == ""
    env = locals_()["runtime_env"]
    assert env["MULTUS_PROVISIONER_VPC_EGRESS"] == '${var.vpc_connector == "" ? "false" : "true"}'
    assert env["MULTUS_PROVISIONER_BUSY_WAIT_SECONDS"] == "${tostring(var.busy_wait_seconds)}"


class _RecordingEnv(Mapping[str, str]):
    """An empty environment that remembers every name read from it."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return default

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


def settings_read_by_the_code() -> set[str]:
    """The MULTUS_PROVISIONER_* names Settings.from_env reads (recorded while it runs: with nothing set,
    every name and every fallback is read)."""
    from shared.core.settings import PREFIX, Settings

    env = _RecordingEnv()
    Settings.from_env(env)
    return {k.removeprefix(PREFIX) for k in env.read if k.startswith(PREFIX)}


def function_settings() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "function-settings.yaml").read_text())


def test_function_settings_file_names_exactly_what_shared_settings_reads():
    """infra/function-settings.yaml is the one list of the functions' environment (the Terraform tests
    assert each function's planned environment against its `set` part): it must classify every variable
    the code reads, and nothing else, and give a reason for each one left unset."""
    doc = function_settings()
    deployed, unset = doc["set"], doc["unset"]
    assert len(deployed) == len(set(deployed)), "a name is listed twice under `set`"
    assert not set(deployed) & set(unset), f"both set and unset: {set(deployed) & set(unset)}"
    read = settings_read_by_the_code()
    assert set(deployed) | set(unset) == read, (
        f"read by the code but not classified: {sorted(read - set(deployed) - set(unset))}; "
        f"classified but not read: {sorted((set(deployed) | set(unset)) - read)}")
    for name, why in unset.items():
        assert isinstance(why, str) and len(why) >= 20, f"{name}: say why a deployment leaves it unset"


def test_function_environment_is_the_set_part_of_the_settings_file():
    env = locals_()["runtime_env"]
    assert {k.removeprefix("MULTUS_PROVISIONER_") for k in env} == set(function_settings()["set"])
    assert all(k.startswith("MULTUS_PROVISIONER_") for k in env)
    assert ref(env["MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS"]) == 'google_pubsub_topic.stream["nad-requests"].name'
    assert env["MULTUS_PROVISIONER_MAX_ATTEMPTS"] == "${tostring(var.max_delivery_attempts)}"
    assert env["MULTUS_PROVISIONER_PRUNE_ORPHANS"] == "${tostring(var.prune_orphans)}"


def test_every_value_terraform_can_set_is_accepted_by_the_settings():
    """The defaults' rendering (tostring of numbers and booleans, empty string = default) parses."""
    from shared.core.settings import Settings

    v = variables()
    rendered = {
        "OPT_IN_LABEL": v["opt_in_label"]["default"], "LEASE_SECONDS": str(v["lease_seconds"]["default"]),
        "CRD_TIMEOUT_SECONDS": str(v["crd_timeout_seconds"]["default"]), "PRUNE_ORPHANS": "false",
        "LEDGER_TTL_DAYS": str(v["ledger_ttl_days"]["default"]), "STALL_SECONDS": str(v["stall_seconds"]["default"]),
        "DENIED_NAMESPACES": ",".join(v["denied_namespaces"]["default"]), "ALLOWED_NAMESPACES": "",
        "MAX_NADS_PER_CLUSTER": str(v["max_nads_per_cluster"]["default"]), "NODE_POOL_TEMPLATE": "",
        "MAX_ATTEMPTS": str(v["max_delivery_attempts"]["default"]), "DEFAULT_NADS": "", "VPC_EGRESS": "true",
        "ROLLOUT_WAVE_SIZE": v["rollout_wave_size"]["default"], "MANAGED_PROJECTS": "team-a-clusters,multus-host",
        "ROLLOUT_CANARY": str(v["rollout_canary"]["default"]), "PROJECT": "multus-host",
        "ROLLOUT_GATE_SECONDS": str(v["rollout_gate_seconds"]["default"]), "DATABASE": "(default)",
        "BUSY_WAIT_SECONDS": str(v["busy_wait_seconds"]["default"]), "COLLECTION_PREFIX": "",
        "NODE_POOL_RETRY_SECONDS": str(v["node_pool_retry_seconds"]["default"]),
        "TOPIC_NAD_REQUESTS": "multus-nad-requests", "TOPIC_RECONCILE": "multus-reconcile",
        "MULTUS_IMAGE": "", "WHEREABOUTS_IMAGE": "", "MULTUS_LOG_LEVEL": "",
        "ALLOWED_REGISTRIES": "us-docker.pkg.dev/platform/mirror,europe-docker.pkg.dev/p/m",
        "POLICY_DATABASE": "multus-policy",
    }
    assert set(rendered) == set(function_settings()["set"])
    s = Settings.from_env({f"MULTUS_PROVISIONER_{k}": val for k, val in rendered.items()})
    assert s.vpc_egress is True and s.managed_projects == ("team-a-clusters", "multus-host")
    assert s.reconcile_topic == "multus-reconcile" and s.max_attempts == v["max_delivery_attempts"]["default"]


def test_every_trigger_is_a_push_subscription_on_its_topic_with_dead_letter_and_backoff():
    push = res("google_pubsub_subscription", "push")
    assert push["for_each"] == "${local.streams}"
    assert ref(push["topic"]) == "google_pubsub_topic.stream[each.key].id"
    pc = block(push, "push_config")
    assert ref(pc["push_endpoint"]) == "google_cloudfunctions2_function.fn[each.key].service_config[0].uri"
    oidc = block(pc, "oidc_token")
    assert ref(oidc["service_account_email"]) == "google_service_account.trigger[each.key].email"
    dlp = block(push, "dead_letter_policy")
    assert ref(dlp["dead_letter_topic"]) == "google_pubsub_topic.dead_letter[each.key].id"
    assert dlp["max_delivery_attempts"] == "${var.max_delivery_attempts}"
    rp = block(push, "retry_policy")
    assert rp["minimum_backoff"] == "${var.retry_minimum_backoff}"
    assert rp["maximum_backoff"] == "${var.retry_maximum_backoff}"
    assert variables()["retry_minimum_backoff"]["default"] == "10s"
    assert push["ack_deadline_seconds"] == "${var.function_timeout_seconds}"
    # the referenced topics and function exist, over the same keys
    for rtype, name in (("google_pubsub_topic", "stream"), ("google_pubsub_topic", "dead_letter"),
                        ("google_cloudfunctions2_function", "fn"), ("google_service_account", "trigger")):
        assert res(rtype, name)["for_each"] == "${local.streams}", f"{rtype}.{name}"


def test_dead_lettered_events_are_kept_a_month_and_transport_a_week():
    """Issue 24: what failed is kept 31 days (Pub/Sub's topic maximum), the transport 7 days."""
    assert res("google_pubsub_topic", "dead_letter")["message_retention_duration"] == "2678400s"
    assert res("google_pubsub_topic", "stream")["message_retention_duration"] == "604800s"
    assert res("google_pubsub_subscription", "dead_letter_inspect")["retain_acked_messages"] is True


def test_each_dead_letter_topic_has_an_inspection_subscription():
    inspect = res("google_pubsub_subscription", "dead_letter_inspect")
    assert inspect["for_each"] == "${local.streams}"
    assert ref(inspect["topic"]) == "google_pubsub_topic.dead_letter[each.key].id"
    assert "push_config" not in inspect, "an inspection subscription is pulled by people"


def test_pubsub_service_agent_gets_exactly_the_dead_letter_grants():
    assert locals_()["pubsub_service_agent"].endswith("@gcp-sa-pubsub.iam.gserviceaccount.com")
    grants = [(t, n, b) for t, n, b in iam_grants() if b.get("member") == "${local.pubsub_service_agent}"]
    found = {(t, b["role"], ref(b.get("topic") or b.get("subscription") or b.get("service_account_id")))
             for t, _, b in grants}
    assert found == {
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher",
         "google_pubsub_topic.dead_letter[each.key].name"),
        ("google_pubsub_subscription_iam_member", "roles/pubsub.subscriber",
         "google_pubsub_subscription.push[each.key].name"),
        # OIDC push tokens (needed in projects created before 2021-04-08), on the trigger identities only
        ("google_service_account_iam_member", "roles/iam.serviceAccountTokenCreator",
         "google_service_account.trigger[each.key].name"),
    }
    for _, _, b in grants:
        assert b["for_each"] == "${local.streams}"


def test_trigger_identity_may_invoke_only_its_own_function():
    inv = res("google_cloud_run_service_iam_member", "trigger_invoker")
    assert inv["for_each"] == "${local.streams}"
    assert inv["role"] == "roles/run.invoker"
    assert ref(inv["service"]) == "google_cloudfunctions2_function.fn[each.key].service_config[0].service"
    assert ref(inv["member"]) == "google_service_account.trigger[each.key].member"
    mentions = [(t, n) for t, n, b in iam_grants()
                if any("google_service_account.trigger" in s for s in all_strings(b))]
    assert sorted(mentions) == [("google_cloud_run_service_iam_member", "trigger_invoker"),
                                ("google_service_account_iam_member", "pubsub_token_creator")]
    invokers = [(t, n) for t, n, b in iam_grants() if b.get("role") == "roles/run.invoker"]
    assert invokers == [("google_cloud_run_service_iam_member", "trigger_invoker")]


def test_scheduler_publishes_empty_object_to_reconcile():
    job = res("google_cloud_scheduler_job", "reconcile")
    target = block(job, "pubsub_target")
    assert ref(target["topic_name"]) == 'google_pubsub_topic.stream["reconcile"].id'
    assert target["data"] == '${base64encode("{}")}'
    assert job["schedule"] == "${var.reconcile_schedule}"
    assert variables()["reconcile_schedule"]["default"] == "*/10 * * * *"


# --- Logging sinks --------------------------------------------------------------------------------------------

SINK_TYPES = ("google_logging_project_sink", "google_logging_folder_sink", "google_logging_organization_sink")


def test_sinks_publish_to_existing_topics_and_writers_publish_only_there():
    sinks = locals_()["sinks"]
    assert set(sinks) == {"cluster-events", "node-pool-events"}
    for key, sink in sinks.items():
        assert sink["topic"] in STREAMS, f"sink {key} targets unknown stream {sink['topic']}"
        assert sink["topic"] == key
    scopes = {"google_logging_project_sink": "local.project_sinks",
              "google_logging_folder_sink": "local.folder_sinks",
              "google_logging_organization_sink": "local.org_sinks"}
    for rtype, local_name in scopes.items():
        body = res(rtype, "events")
        assert ref(body["for_each"]) == local_name
        assert body["destination"] == "pubsub.googleapis.com/${google_pubsub_topic.stream[each.value.topic].id}"
        assert ref(body["filter"]) == "each.value.filter"
        if rtype != "google_logging_project_sink":
            assert body["include_children"] is True, rtype
        else:
            assert body["unique_writer_identity"] is True
    for local_name, scope in (("project_sinks", "project"), ("folder_sinks", "folder"), ("org_sinks", "organization")):
        assert ref(locals_()[local_name]) == f'var.sink_scope == "{scope}" ? local.sinks : {{}}'
    writers = locals_()["sink_writers"]
    for rtype in SINK_TYPES:
        assert f"{rtype}.events" in writers and "writer_identity" in writers
    pub = res("google_pubsub_topic_iam_member", "sink_publisher")
    assert pub["for_each"] == "${local.sinks}"
    assert pub["role"] == "roles/pubsub.publisher"
    assert ref(pub["topic"]) == "google_pubsub_topic.stream[each.value.topic].name"
    assert ref(pub["member"]) == "local.sink_writers[each.key]"
    elsewhere = [(t, n) for t, n, b in iam_grants() if (t, n) != ("google_pubsub_topic_iam_member", "sink_publisher")
                 and any("sink_writers" in s or "writer_identity" in s for s in all_strings(b))]
    assert elsewhere == [], f"sink writer identities granted elsewhere: {elsewhere}"


def _filters() -> dict[str, str]:
    """The sinks' filters from infra/sink-filters.yaml, the one copy Terraform reads too."""
    return yaml.safe_load((INFRA / "sink-filters.yaml").read_text())


def test_sink_filters_are_the_texts_the_sinks_use():
    loc = locals_()
    assert ref(loc["sink_filters"]) == 'yamldecode(file("${path.module}/sink-filters.yaml"))'
    assert ref(loc["sinks"]["cluster-events"]["filter"]) == 'local.sink_filters["cluster-events"]'
    assert ref(loc["sinks"]["node-pool-events"]["filter"]) == 'local.sink_filters["node-pool-events"]'
    assert set(_filters()) == set(loc["sinks"])
    for text in _filters().values():
        assert isinstance(text, str) and "${" not in text, "filters are plain text (no interpolation)"
        parse(text)


def _audit_expectations() -> list[tuple[str, dict[str, Any], str | None]]:
    """(name, entry, stream that must select it or None) from both sample folders."""
    out = []
    audit = SAMPLES / "audit"
    expected = json.loads((audit / "EXPECTED.json").read_text())
    for name, exp in expected.items():
        if name.startswith("_"):
            continue
        action = exp.get("action")
        stream = None
        if action and action.startswith("cluster."):
            stream = "cluster-events"
        elif action and action.startswith("node_pool."):
            stream = "node-pool-events"
        out.append((f"audit/{name}", json.loads((audit / name).read_text()), stream))
    mine = SAMPLES / "infra"
    for name, stream in json.loads((mine / "EXPECTED.json").read_text()).items():
        if not name.startswith("_"):
            out.append((f"infra/{name}", json.loads((mine / name).read_text()), stream))
    return out


def test_sample_sets_cover_every_method_version_and_both_phases():
    selected = [(e, s) for _, e, s in _audit_expectations() if s]
    methods = {e["protoPayload"]["methodName"] for e, _ in selected}
    for version in ("v1", "v1beta1"):
        for verb in ("CreateCluster", "DeleteCluster", "CreateNodePool", "DeleteNodePool"):
            assert f"google.container.{version}.ClusterManager.{verb}" in methods, (version, verb)
    ops = [e.get("operation", {}) for e, _ in selected]
    assert any(o.get("first") for o in ops) and any(o.get("last") for o in ops)
    assert sum(1 for _, _, s in _audit_expectations() if s is None) >= 8


@pytest.mark.parametrize("name,entry,stream", [pytest.param(*case, id=case[0]) for case in _audit_expectations()])
def test_sink_filters_select_exactly_the_intended_entries(name, entry, stream):
    selected = {key for key, text in _filters().items() if parse(text).matches(entry)}
    assert selected == ({stream} if stream else set()), name


def test_the_stacks_sink_stand_in_forwards_exactly_the_methods_the_filters_select():
    from sandbox.stack import SINK_METHODS

    in_filters = set()
    for text in _filters().values():
        in_filters |= set(re.findall(r'protoPayload\.methodName="([^"]+)"', text))
    assert in_filters == set(SINK_METHODS)
    for verb in ("SetLabels", "UpdateCluster", "UpdateMaster"):  # labels and upgrades reach the controller
        assert f"google.container.v1.ClusterManager.{verb}" in in_filters


def test_filter_matcher_rejects_syntax_it_does_not_implement():
    for bad in ('severity>=ERROR', 'protoPayload.methodName=~"Create"', 'foo AND', '"bare text"', 'a.b=("x")'):
        with pytest.raises(FilterSyntaxError):
            parse(bad)


def test_filter_matcher_precedence_or_binds_tighter_than_and():
    f = parse('a=1 AND b=1 OR c=1')
    assert f.matches({"a": 1, "c": 1}) and not f.matches({"c": 1})
    assert parse("NOT a:*").matches({}) and not parse("-a=1").matches({"a": 1})


# --- IAM -------------------------------------------------------------------------------------------------------

def test_no_primitive_roles_and_no_public_members_anywhere():
    for rtype, name, body in iam_grants():
        for s in all_strings(body):
            assert s not in PRIMITIVE_ROLES, f"{rtype}.{name} grants {s}"
            assert "allUsers" not in s and "allAuthenticatedUsers" not in s, f"{rtype}.{name}: public member"
    for doc in tf_files().values():
        for s in all_strings(doc.get("resource", [])):
            assert s not in PRIMITIVE_ROLES
    assert not of_type("google_project_iam_binding") and not of_type("google_project_iam_policy"), \
        "authoritative project bindings would strip other members; use *_iam_member"


def test_runtime_identity_has_exactly_firestore_gke_role_and_log_writing():
    runtime = "${google_service_account.runtime.member}"
    grants = {(t, b["role"]) for t, _, b in iam_grants() if b.get("member") == runtime}
    assert grants == {
        ("google_project_iam_member", "roles/datastore.user"),  # the workflow database only (condition)
        ("google_project_iam_member", "roles/datastore.viewer"),  # the policy database, read only
        ("google_project_iam_member", "roles/logging.logWriter"),
        ("google_project_iam_member", "${google_project_iam_custom_role.gke[each.value].id}"),
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher"),  # the reconcile fan-out
    }
    publish = res("google_pubsub_topic_iam_member", "runtime_reconcile_publisher")
    assert ref(publish["topic"]) == 'google_pubsub_topic.stream["reconcile"].name'


def test_the_policy_has_a_database_of_its_own_that_only_policy_writers_write():
    """Issue 24: who may change config/policy is limited by IAM (Conditions name databases)."""
    db = res("google_firestore_database", "policy")
    assert db["name"] == "${var.name_prefix}-policy" and db["delete_protection_state"] == "DELETE_PROTECTION_ENABLED"
    workflow = res("google_project_iam_member", "runtime_firestore")
    assert "databases/${local.firestore_db}" in workflow["condition"][0]["expression"]
    reader = res("google_project_iam_member", "runtime_policy_reader")
    assert reader["role"] == "roles/datastore.viewer"
    assert "databases/${google_firestore_database.policy.name}" in reader["condition"][0]["expression"]
    writers = res("google_project_iam_member", "policy_writers")
    assert ref(writers["for_each"]) == "toset(var.policy_writers)" and writers["role"] == "roles/datastore.user"
    assert "databases/${google_firestore_database.policy.name}" in writers["condition"][0]["expression"]
    env = locals_()["runtime_env"]
    assert ref(env["MULTUS_PROVISIONER_POLICY_DATABASE"]) == "google_firestore_database.policy.name"


def test_reconcile_fans_out_on_its_own_topic_with_its_own_instance_cap():
    env = locals_()["runtime_env"]
    assert ref(env["MULTUS_PROVISIONER_TOPIC_RECONCILE"]) == 'google_pubsub_topic.stream["reconcile"].name'
    assert env["MULTUS_PROVISIONER_MANAGED_PROJECTS"] == '${join(",", var.managed_cluster_projects)}'
    fn = res("google_cloudfunctions2_function", "fn")
    cap = block(fn, "service_config")["max_instance_count"]
    assert "var.reconcile_max_instances" in cap and "var.function_max_instances" in cap
    from shared.core.settings import Settings

    v = variables()
    assert v["rollout_wave_size"]["default"] == Settings().rollout_wave_size
    assert v["rollout_canary"]["default"] == Settings().rollout_canary
    assert v["rollout_gate_seconds"]["default"] == Settings().rollout_gate_seconds


def test_nad_requesters_are_publishers_on_the_nad_topic_only():
    b = res("google_pubsub_topic_iam_member", "nad_requesters")
    assert ref(b["topic"]) == 'google_pubsub_topic.stream["nad-requests"].name'
    assert b["role"] == "roles/pubsub.publisher"
    cond = variables()["nad_requesters"]["validation"][0]["condition"]
    assert "user|group|serviceAccount|domain" in cond


@cache
def permission_doc() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "gke-permissions.yaml").read_text())


def test_custom_role_is_built_from_the_one_permission_file():
    role = res("google_project_iam_custom_role", "gke")
    assert ref(role["permissions"]) == "local.gke_permissions"
    loc = locals_()
    assert ref(loc["gke_permission_doc"]) == 'yamldecode(file("${path.module}/gke-permissions.yaml"))'
    assert ref(loc["gke_permissions"]).replace("\n", " ") == (
        "sort([for p in local.gke_permission_doc.permissions : p.permission "
        "if !try(p.only_with_node_pool_template, false) || var.node_pool_template != null])")
    assert ref(role["for_each"]) == "toset(local.cluster_projects)"


# Verbs a list may hold for a resource it reads as a collection (everything else reads named objects).
LISTED = {"container.clusters.list"}


def test_every_permission_is_well_formed_explained_and_unique():
    seen = set()
    for entry in permission_doc()["permissions"]:
        perm = entry["permission"]
        assert re.fullmatch(r"container\.[a-z][A-Za-z]+\.[a-z][A-Za-z]+", perm), perm
        assert perm not in seen, f"duplicate {perm}"
        seen.add(perm)
        assert len(entry.get("reason", "")) >= 20, f"{perm}: say why"
        assert entry.get("used_by"), f"{perm}: say which code uses it"
        assert entry.get("source") in {"api-permissions", "ssa-create", "rbac-escalation", "observed"}, perm
    assert "container.clusters.getCredentials" not in seen
    assert not any(p.endswith(".watch") for p in seen)
    assert {p for p in seen if p.endswith(".list")} == LISTED


def _functions_in(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}


def test_every_permission_names_code_that_exists_and_is_called():
    """`used_by: file:function` must be a real function, and something in the controller must call it."""
    sources = {p: p.read_text() for p in [*sorted((ROOT / "shared").rglob("*.py")), ROOT / "functions" / "main.py"]}
    for entry in permission_doc()["permissions"]:
        for use in entry["used_by"]:
            file, _, fn = use.partition(":")
            path = ROOT / file
            assert path.is_file() and fn in _functions_in(path), f"{entry['permission']}: {use} does not exist"
            calls = sum(len(re.findall(rf"\.{fn}\(", text)) for text in sources.values())
            assert calls >= 1, f"{entry['permission']}: nothing calls {use}"


def _bundle_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted((ROOT / "shared" / "manifests").glob("*.y*ml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict) and doc.get("kind")]
    return objects


def test_project_iam_holds_the_gke_api_only():
    """Issue 24: no in-cluster permission at project level (GKE's IAM authorizer would grant it on
    every cluster of the project); CreateNodePool's update only with a node pool template."""
    perms = {p["permission"]: p for p in permission_doc()["permissions"]}
    assert set(perms) == {"container.clusters.get", "container.clusters.list", "container.clusters.update",
                          "container.clusters.create"}
    assert perms["container.clusters.update"].get("only_with_node_pool_template") is True
    assert [p for p, e in perms.items() if e.get("only_with_node_pool_template")] == ["container.clusters.update"]
    for banned in ("escalate", "bind", "thirdPartyObjects", "pods.", "clusterRoleBindings"):
        assert not [p for p in perms if banned in p], banned


# RBAC resource (group, plural) of each bundle kind.
KIND_TO_RESOURCE = {
    "CustomResourceDefinition": ("apiextensions.k8s.io", "customresourcedefinitions"),
    "ConfigMap": ("", "configmaps"),
    "ClusterRole": ("rbac.authorization.k8s.io", "clusterroles"),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io", "clusterrolebindings"),
    "ServiceAccount": ("", "serviceaccounts"),
    "DaemonSet": ("apps", "daemonsets"),
}


def _rules(kind: str, name: str) -> list[dict[str, Any]]:
    from shared.core.rbac import template

    return [r for o in template() if o["kind"] == kind and o["metadata"]["name"] == name for r in o["rules"]]


def _granted(rules: list[dict[str, Any]], group: str, resource: str, name: str | None) -> set[str]:
    verbs: set[str] = set()
    for r in rules:
        if group in r["apiGroups"] and resource in r["resources"]:
            if name is None and "resourceNames" in r:
                continue
            if name is not None and "resourceNames" in r and name not in r["resourceNames"]:
                continue
            verbs |= set(r["verbs"])
    return verbs


def test_controller_rbac_reaches_the_bundle_by_name_and_nothing_else():
    """shared/rbac/controller.yaml: create/get/patch on exactly the bundle's objects by name,
    escalate/bind only on the bundle's two ClusterRoles, no wildcard, no secrets, no pods create
    cluster-wide (tests/test_rbac_real.py proves it on a real kube-apiserver)."""
    from shared.core.rbac import template

    cluster_rules = _rules("ClusterRole", "multus-provisioner-controller")
    ns_rules = _rules("Role", "multus-provisioner-controller")
    bundle = _bundle_objects()
    for obj in bundle:
        group, resource = KIND_TO_RESOURCE[obj["kind"]]
        ns = obj["metadata"].get("namespace")
        rules = ns_rules if ns else cluster_rules
        assert ns in (None, "kube-system"), obj["metadata"]
        assert {"get", "create", "patch"} <= _granted(rules, group, resource, obj["metadata"]["name"]), obj["metadata"]
        assert {"update", "delete"}.isdisjoint(_granted(rules, group, resource, obj["metadata"]["name"]))
    named = {(g, res): set() for g, res in KIND_TO_RESOURCE.values()}
    for o in bundle:
        named[KIND_TO_RESOURCE[o["kind"]]].add(o["metadata"]["name"])
    for r in cluster_rules + ns_rules:
        assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"], r
        assert "secrets" not in r["resources"], r
        unnamed = set(r["verbs"]) - {"list"}
        if unnamed and not {"network-attachment-definitions", "events"} & set(r["resources"]):
            assert "resourceNames" in r, f"write or read of named objects without resourceNames: {r}"
            for res in r["resources"]:
                assert set(r["resourceNames"]) <= named[(r["apiGroups"][0], res)], r
        if {"escalate", "bind"} & set(r["verbs"]):
            assert r["resources"] == ["clusterroles"] and sorted(r["resourceNames"]) == ["multus-role", "whereabouts"]
    assert _granted(cluster_rules, "k8s.cni.cncf.io", "network-attachment-definitions", None) == {
        "get", "list", "create", "patch", "delete"}
    assert "create" not in _granted(cluster_rules, "", "pods", None)  # pods: list only, cluster-wide
    verify = _rules("ClusterRole", "multus-provisioner-verify")
    assert _granted(verify, "", "pods", None) == {"create", "get", "delete"}
    bindings = [o for o in template() if o.get("roleRef", {}).get("name") == "multus-provisioner-verify"]
    assert [b["kind"] for b in bindings] == ["RoleBinding"]  # never a ClusterRoleBinding: per namespace
    for o in template():
        for subject in o.get("subjects") or []:
            assert subject == {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "CONTROLLER_USER"}


def test_every_adapter_call_the_controller_makes_in_a_cluster_is_covered_by_the_rbac():
    """The Kube adapter's methods the flows call, each with the RBAC rule that lets it through."""
    import shared.adapters.kube as kube_adapter

    cluster_rules = _rules("ClusterRole", "multus-provisioner-controller")
    verify = _rules("ClusterRole", "multus-provisioner-verify")
    need = {
        "wait_established": (cluster_rules, "apiextensions.k8s.io", "customresourcedefinitions", "list"),
        "apply_nad": (cluster_rules, "k8s.cni.cncf.io", "network-attachment-definitions", "patch"),
        "delete_nad": (cluster_rules, "k8s.cni.cncf.io", "network-attachment-definitions", "delete"),
        "list_managed_nads": (cluster_rules, "k8s.cni.cncf.io", "network-attachment-definitions", "list"),
        "list_ippools": (cluster_rules, "whereabouts.cni.cncf.io", "ippools", "list"),
        "list_pod_refs": (cluster_rules, "", "pods", "list"),
        "list_pods": (cluster_rules, "", "pods", "list"),
        "create_pod": (verify, "", "pods", "create"),
        "get_pod": (verify, "", "pods", "get"),
        "delete_pod": (verify, "", "pods", "delete"),
        "pod_events": (verify, "", "events", "list"),
    }
    for method, (rules, group, resource, verb) in need.items():
        assert hasattr(kube_adapter.Kube, method), method
        assert verb in _granted(rules, group, resource, None), method


# --- Firestore --------------------------------------------------------------------------------------------------

def test_firestore_native_database_and_ttl_on_the_ledger():
    db = res("google_firestore_database", "db")
    assert db["type"] == "FIRESTORE_NATIVE"
    ttl = res("google_firestore_field", "ledger_ttl")
    assert ttl["collection"] == "${var.collection_prefix}events"
    assert ttl["field"] == "expireAt"
    assert ttl["ttl_config"] == [{}]
    store = (ROOT / "shared" / "adapters" / "store.py").read_text()
    assert '"expireAt"' in store and '_col("events")' in store


def _query_fields_per_function() -> dict[str, set[str]]:
    """Fields each store.py function filters or orders on (FieldFilter("f", ...), order_by("f"))."""
    tree = ast.parse((ROOT / "shared" / "adapters" / "store.py").read_text())
    out: dict[str, set[str]] = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        fields: set[str] = set()
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0]
            if name in ("order_by", "FieldFilter", "where") and isinstance(first, ast.Constant) \
                    and isinstance(first.value, str):
                fields.add(first.value)
        fields.discard("__name__")
        if fields:
            out[fn.name] = fields
    return out


def test_composite_indexes_exist_for_every_multi_field_query_and_only_those():
    per_fn = _query_fields_per_function()
    assert per_fn, "found no Firestore query in shared/adapters/store.py"
    needed = {frozenset(f) for f in per_fn.values() if len(f) > 1}
    declared = set()
    for body in of_type("google_firestore_index").values():
        declared.add(frozenset(f["field_path"] for f in body["fields"]))
    assert declared == needed, f"queries need {needed}, infra declares {declared}"


# --- example (procedure steps 1-3) ------------------------------------------------------------------------------

def test_example_is_off_by_default_and_follows_the_procedure():
    for (rtype, name), body in resources().items():
        if name.startswith("example"):
            assert body.get("count") == "${local.example_count}", f"{rtype}.{name} is not behind create_example"
    assert locals_()["example_count"] == "${var.create_example ? 1 : 0}"
    cluster = res("google_container_cluster", "example")
    assert cluster["datapath_provider"] == "ADVANCED_DATAPATH"
    assert cluster["enable_multi_networking"] is True
    assert cluster["networking_mode"] == "VPC_NATIVE" and cluster.get("ip_allocation_policy")
    assert tuple(int(x) for x in cluster["min_master_version"].split(".")[:2]) >= (1, 28)
    assert cluster["resource_labels"] == {"${(local.opt_in_key)}": "${local.opt_in_value}"}
    pool = res("google_container_node_pool", "example_multus")
    nc = block(pool, "network_config")
    assert block(nc, "additional_node_network_configs")["network"]
    pod = block(nc, "additional_pod_network_configs")
    assert pod["secondary_pod_range"] == "${local.example_sec_name}" and pod["max_pods_per_node"] == 8
    sub = res("google_compute_subnetwork", "example_additional")
    assert block(sub, "secondary_ip_range")["range_name"] == "${local.example_sec_name}"


# --- checkov ------------------------------------------------------------------------------------------------------

TOOLS_VENV = ROOT / ".venv-tools"


def _checkov() -> Path:
    """checkov from .venv-tools, created on first use (the same step `make tools` runs)."""
    exe = TOOLS_VENV / "bin" / "checkov"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS_VENV)], check=True, timeout=120)
        subprocess.run([str(TOOLS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", str(INFRA / "tools-requirements.txt")],
                       check=True, timeout=600)
    return exe


@pytest.mark.timeout(900)
def test_checkov_finds_no_unsuppressed_failure_and_every_skip_has_a_reason():
    cmd = [str(_checkov()), "-d", str(INFRA), "--framework", "terraform", "--skip-download", "-o", "json"]
    # No network: checkov would otherwise try to reach its vendor's API. An empty network namespace
    # makes that impossible where we may create one (root); --skip-download covers the rest.
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-n", *cmd]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.stdout.strip(), proc.stderr
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    tf = [r for r in reports if r.get("check_type") == "terraform"]
    assert tf, f"checkov produced no terraform report: {proc.stdout[:500]}"
    summary = tf[0]["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 40
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in tf[0]["results"].get("failed_checks", [])]
    assert not failed, f"checkov failures (fix them or suppress in code with a reason): {failed}"
    for c in tf[0]["results"].get("skipped_checks", []):
        reason = (c.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) >= 30, f"{c['check_id']} on {c['resource']} is skipped without a real reason"


# --- cloudbuild.yaml ----------------------------------------------------------------------------------------------

BUILTIN_SUBSTITUTIONS = {"PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION", "TRIGGER_NAME", "COMMIT_SHA",
                         "SHORT_SHA", "REVISION_ID", "BRANCH_NAME", "TAG_NAME", "REPO_NAME", "REPO_FULL_NAME",
                         "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT"}


@cache
def cloudbuild() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def test_cloudbuild_structure():
    cb = cloudbuild()
    assert set(cb) <= {"steps", "substitutions", "options", "timeout", "images", "artifacts", "tags",
                       "availableSecrets", "serviceAccount", "logsBucket", "queueTtl"}
    steps = cb["steps"]
    assert isinstance(steps, list) and steps
    ids = []
    for step in steps:
        assert isinstance(step.get("name"), str) and step["name"], step
        assert isinstance(step.get("args"), list) and all(isinstance(a, str) for a in step["args"]), step
        ids.append(step.get("id"))
        for dep in step.get("waitFor", []):
            assert dep in ids, f"step {step.get('id')} waits for unknown or later step {dep}"
    assert ids == ["package", "terraform-init", "terraform-plan", "terraform-apply"]
    text = {s["id"]: " ".join(s["args"]) for s in steps}
    # the deploy pipeline installs nothing from PyPI and runs no test code (docs/SECURITY.md "Pipelines")
    assert text["package"] == "-m scripts.package" and steps[0]["entrypoint"] == "python3"
    commands = [line.strip() for s in steps for a in s["args"] for line in a.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert not [c for c in commands if re.match(r"make\b", c) or "pip install" in c], commands
    assert "init" in text["terraform-init"] and "-backend-config=bucket=${_TF_STATE_BUCKET}" in text["terraform-init"]
    assert text["terraform-plan"].startswith("-chdir=infra plan") and "-out=tfplan" in text["terraform-plan"]
    assert "-var=source_zip=../dist/function-source.zip" in text["terraform-plan"]
    assert "apply -input=false -auto-approve tfplan" in text["terraform-apply"]


def test_tests_run_in_their_own_pipeline():
    """Test and deploy are separately privileged pipelines: the test one runs `make test` only."""
    cb = yaml.safe_load((ROOT / "cloudbuild-test.yaml").read_text())
    assert [s["id"] for s in cb["steps"]] == ["test"]
    assert "make test" in " ".join(cb["steps"][0]["args"])
    raw = (ROOT / "cloudbuild-test.yaml").read_text()
    assert "terraform" not in raw.split("steps:", 1)[1] and "serviceAccount" not in cb


def test_every_builder_image_is_a_substitution_so_it_can_be_pinned_by_digest():
    for name in ("cloudbuild.yaml", "cloudbuild-test.yaml"):
        cb = yaml.safe_load((ROOT / name).read_text())
        for step in cb["steps"]:
            ref_ = re.fullmatch(r"\$\{(_[A-Z_]+_IMAGE)\}", step["name"])
            assert ref_, f"{name}: {step['id']} names its image directly"
            default = cb["substitutions"][ref_.group(1)]
            # a digest, or a tag with an exact version (never a floating `:1.9` or `:latest`)
            assert "@sha256:" in default or re.search(r":(emulators|\d+\.\d+\.\d+)$", default), default


@pytest.mark.parametrize("name", ["cloudbuild.yaml", "cloudbuild-test.yaml"])
def test_cloudbuild_substitutions_are_declared_used_and_carry_no_secrets(name):
    cb = yaml.safe_load((ROOT / name).read_text())
    declared = set(cb["substitutions"])
    assert all(re.fullmatch(r"_[A-Z0-9_]+", k) for k in declared)
    raw = (ROOT / name).read_text()
    body = raw.split("steps:", 1)[1]
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", body)) | set(re.findall(r"\$([A-Z_][A-Z0-9_]*)", body))
    assert used - declared <= BUILTIN_SUBSTITUTIONS, f"undeclared: {used - declared - BUILTIN_SUBSTITUTIONS}"
    assert declared <= used, f"declared but unused: {declared - used}"
    assert "availableSecrets" not in cb and "secretEnv" not in raw
    for pattern in (r"-----BEGIN", r"AIza[0-9A-Za-z_-]{30,}", r'"private_key"', r"(?i)password\s*[:=]", r"ya29\."):
        assert not re.search(pattern, raw), pattern


def test_gitignore_would_not_commit_build_outputs():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "build/" in ignored and "dist/" in ignored
