"""Issue 24, the image-policy half: a policy cannot ship a foreign image, a stored NAD config is
validated again before reconcile re-applies it, and the sandbox-only switches stay in the sandbox.

- Registry allowlist (`shared/core/multus.py` registry_problem, enforced by `Policy` and the
  settings): images only from the seed's `gcr.io/gke-release` or a registry configured at deploy
  time; a `config/policy` document naming another is refused before any rollout (every handler
  validates the policy first) and `rollout status` says why; it cannot add a registry itself.
- Stored configs (`shared/core/nad.py` request_of_config): reconcile re-applies a record's config
  only when it is what the request path renders for fields the request path accepts.
- `MULTUS_PROVISIONER_GKE_ENDPOINT` (plaintext gRPC, no credentials) takes loopback only.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.core import decisions as d
from shared.core import nad as nadlib
from shared.core.errors import Rejected
from shared.core.multus import DEFAULT_MULTUS_IMAGE, SEED_REGISTRY, registry_problem
from shared.core.policy import Policy
from shared.core.settings import ConfigError, Settings
from tests import test_workflow as _wf
from tests.fakes import nad_doc
from tests.test_workflow import ce, to_ready

local_stack, make_wf = _wf.local_stack, _wf.make_wf

DIGEST = "@sha256:" + "ab" * 32
FOREIGN = "ghcr.io/attacker/multus-cni:v4.2.2" + DIGEST
LOOKALIKE = "gcr.io/gke-release-mirror/multus-cni:v4.2.2" + DIGEST
MIRROR = "us-docker.pkg.dev/platform/mirror"
MIRRORED = f"{MIRROR}/multus-cni:v4.2.2" + DIGEST


# -- the registry allowlist ---------------------------------------------------------------------------

def test_only_the_seeds_registry_and_configured_ones_are_allowed() -> None:
    assert DEFAULT_MULTUS_IMAGE.startswith(SEED_REGISTRY + "/") and registry_problem(DEFAULT_MULTUS_IMAGE) is None
    for image in (FOREIGN, LOOKALIKE, "gcr.io/gke-release" + DIGEST, "docker.io/library/busybox" + DIGEST):
        why = registry_problem(image)
        assert why and "not from an allowed registry" in why and SEED_REGISTRY in why, image
    assert registry_problem(MIRRORED) is not None
    assert registry_problem(MIRRORED, [MIRROR]) is None
    assert registry_problem(f"{MIRROR}-evil/x" + DIGEST, [MIRROR]) is not None  # whole path segments


def test_a_policy_document_with_a_foreign_image_is_refused_by_name() -> None:
    base = Policy.from_settings(Settings())
    for field in ("multusImage", "whereaboutsImage"):
        for image in (FOREIGN, LOOKALIKE):
            with pytest.raises(ConfigError, match=rf"{field}: .*not from an allowed registry"):
                base.merged({field: image})
    assert base.merged({"multusImage": "gcr.io/gke-release/multus-cni:v4.2.2" + DIGEST}).multus_image
    mirrored = Policy.from_settings(Settings(allowed_registries=(MIRROR,)))
    assert mirrored.merged({"multusImage": MIRRORED}).multus_image == MIRRORED
    # the document cannot widen the allowlist: the field does not exist there
    with pytest.raises(ConfigError, match=r"unknown field.*allowedRegistries"):
        base.merged({"allowedRegistries": ["ghcr.io/attacker"], "multusImage": FOREIGN})


def test_the_environment_names_registries_and_its_images_obey_them() -> None:
    with pytest.raises(ConfigError, match=r"MULTUS_PROVISIONER_MULTUS_IMAGE: .*not from an allowed registry"):
        Policy.from_settings(Settings.from_env({"MULTUS_PROVISIONER_MULTUS_IMAGE": FOREIGN}))
    with pytest.raises(ConfigError, match=r"MULTUS_PROVISIONER_WHEREABOUTS_IMAGE: .*not from an allowed registry"):
        Policy.from_settings(Settings.from_env({"MULTUS_PROVISIONER_WHEREABOUTS_IMAGE": LOOKALIKE}))
    s = Settings.from_env({"MULTUS_PROVISIONER_ALLOWED_REGISTRIES": f" {MIRROR} ,",
                           "MULTUS_PROVISIONER_MULTUS_IMAGE": MIRRORED})
    assert s.allowed_registries == (MIRROR,) and Policy.from_settings(s).multus_image == MIRRORED
    for bad in ("*", "attacker", "https://ghcr.io/x", "ghcr.io/UPPER"):
        with pytest.raises(ConfigError, match=r"ALLOWED_REGISTRIES"):
            Settings.from_env({"MULTUS_PROVISIONER_ALLOWED_REGISTRIES": bad})


def test_a_foreign_policy_image_stops_every_handler_before_any_rollout_and_status_says_why(local_stack, make_wf,
                                                                                            capsys) -> None:
    from multus_cli.rollout import policy_problem
    from shared.core.events import decode_reconcile

    wf = make_wf()
    ref = to_ready(wf, local_stack)
    kube = wf.ctx.kube_for(ref)
    before = kube.get("apps/v1", "DaemonSet", "kube-system", "gke-multinet")
    rollout_before, _ = wf.store.get_rollout()
    wf.store._col("config").document("policy").set({"multusImage": FOREIGN})
    wf = make_wf()  # a fresh instance reads the document at once
    with pytest.raises(ConfigError, match=r"multusImage: .*ghcr.io/attacker.*not from an allowed registry"):
        wf.reconcile(decode_reconcile(ce({})))  # the tick: where a rollout would start
    with pytest.raises(ConfigError, match=r"not from an allowed registry"):
        wf.reconcile(decode_reconcile(ce({"cluster": ref.path})))
    assert wf.store.get_rollout()[0] == rollout_before  # no rollout started or moved
    after = kube.get("apps/v1", "DaemonSet", "kube-system", "gke-multinet")
    assert json.dumps(after["spec"]) == json.dumps(before["spec"]) and FOREIGN not in json.dumps(after)
    refused = policy_problem(wf.rollouts)  # what `multus-provisioner rollout status` prints
    assert refused and "ghcr.io/attacker" in refused and "multusImage" in refused


def test_a_forged_rollout_document_cannot_ship_a_foreign_image(local_stack, make_wf) -> None:
    wf = make_wf()
    ref = to_ready(wf, local_stack)
    wf.store._col("rollouts").document("current").set({
        "state": "RUNNING", "target": {"version": "forged", "multusImage": FOREIGN},
        "previous": {"version": "p"}, "clusters": {ref.doc_id: {"state": "UPDATING"}}})
    wf = make_wf()
    with pytest.raises(ConfigError, match=r"bundle multusImage: .*not from an allowed registry"):
        wf.ctx.bundle(ref)


# -- stored NAD configs ------------------------------------------------------------------------------------

CLUSTER = "projects/proj-one/locations/us-central1/clusters/multus-prod"


def _rendered(**fields: Any) -> str:
    req = nadlib.parse_request({"cluster": CLUSTER, "name": "data", "range": "172.16.1.0/26", **fields})
    return nadlib.render_config(req)


def test_a_stored_config_is_accepted_only_as_the_controllers_own_rendering() -> None:
    for fields in ({}, {"master": "eth2", "mode": "l3", "mtu": 1400, "gateway": "172.16.1.1",
                        "range_start": "172.16.1.10", "range_end": "172.16.1.40", "exclude": ["172.16.1.20/32"]}):
        config = _rendered(**fields)
        assert nadlib.render_config(nadlib.request_of_config(CLUSTER, "default", "data", config)) == config
    good = json.loads(_rendered())
    tampered = {
        "macvlan": {**good, "plugins": [{**good["plugins"][0], "type": "macvlan"}]},
        "a second plugin": {**good, "plugins": good["plugins"] * 2},
        "host-local IPAM": {**good, "plugins": [{**good["plugins"][0], "ipam": {"type": "host-local"}}]},
        "an extra field": {**good, "plugins": [{**good["plugins"][0], "capabilities": {"mac": True}}]},
        "a bad master": {**good, "plugins": [{**good["plugins"][0], "master": "eth1;reboot"}]},
        "another name": {**good, "name": "other"},
    }
    for what, conf in tampered.items():
        with pytest.raises(Rejected):
            nadlib.request_of_config(CLUSTER, "default", "data", json.dumps(conf, sort_keys=True,
                                                                            separators=(",", ":")))
        assert what
    for raw in ("not json", None, 7, json.dumps(good, indent=1)):  # other bytes than the rendering
        with pytest.raises(Rejected):
            nadlib.request_of_config(CLUSTER, "default", "data", raw)


def test_reconcile_does_not_reapply_a_tampered_record_and_says_why(local_stack, make_wf) -> None:
    from shared.core.events import decode_nad_request, decode_reconcile

    wf = make_wf()
    ref = to_ready(wf, local_stack)
    out = wf.handle_nad(decode_nad_request(ce({"cluster": ref.path, "name": "data", "range": "172.16.1.0/26"})))
    assert out.status == "done", out.message
    kube = wf.ctx.kube_for(ref)
    doc = nad_doc(wf.store, ref, "default", "data")
    conf = json.loads(doc["config"])
    conf["plugins"][0]["type"] = "macvlan"
    evil = json.dumps(conf, sort_keys=True, separators=(",", ":"))
    wf.store._nad_doc(ref, "default", "data").update(
        {"config": evil})
    kube.delete_nad("default", "data")  # the cluster lost it: reconcile would re-apply the record
    out = wf.reconcile(decode_reconcile(ce({"cluster": ref.path})))
    assert kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "data") is None
    assert any("refused to re-apply NAD default/data" in r for r in out.details["repaired"]), out.details
    doc = nad_doc(wf.store, ref, "default", "data")
    assert "not re-applied" in doc["lastError"] and "ipvlan" in doc["lastError"] and doc["state"] == d.NAD_APPLIED
    steps = [h for h in wf.store.history(ref, page_size=1000)[0] if h["step"] == "reapply-refused"]
    assert len(steps) == 1 and steps[0]["outcome"] == "failed"
    wf.reconcile(decode_reconcile(ce({"cluster": ref.path})))  # refused once, recorded once
    again = [h for h in wf.store.history(ref, page_size=1000)[0] if h["step"] == "reapply-refused"]
    assert len(again) == 1
    # a valid record is restored as before
    conf["plugins"][0]["type"] = "ipvlan"
    wf.store._nad_doc(ref, "default", "data").update(
        {"config": json.dumps(conf, sort_keys=True, separators=(",", ":"))})
    wf.reconcile(decode_reconcile(ce({"cluster": ref.path})))
    assert kube.get("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition", "default", "data") is not None


# -- the sandbox-only GKE endpoint ------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["127.0.0.1:8443", "localhost:1", "[::1]:9000", "127.0.0.53:80"])
def test_the_plaintext_gke_endpoint_takes_loopback(endpoint: str) -> None:
    assert Settings.from_env({"MULTUS_PROVISIONER_GKE_ENDPOINT": endpoint}).gke_endpoint == endpoint


@pytest.mark.parametrize("endpoint", ["container.googleapis.com:443", "10.0.0.5:8443", "evil.example:80",
                                      "0.0.0.0:80"])
def test_the_plaintext_gke_endpoint_refuses_anything_off_the_machine(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"GKE_ENDPOINT.*loopback"):
        Settings.from_env({"MULTUS_PROVISIONER_GKE_ENDPOINT": endpoint})


# -- the policy's own database ------------------------------------------------------------------------------

def test_the_policy_is_read_from_its_own_database_when_one_is_named(local_stack, monkeypatch) -> None:
    """infra/ puts config/policy in a database the runtime may only read; the store reads it there
    and never from the workflow database (where a runtime-identity write could otherwise land)."""
    import uuid

    from google.cloud import firestore

    from shared.adapters.store import Store

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", local_stack.env["FIRESTORE_EMULATOR_HOST"])
    prefix = f"pol{uuid.uuid4().hex[:6]}_"
    settings = Settings.from_env({**local_stack.env, "MULTUS_PROVISIONER_COLLECTION_PREFIX": prefix,
                                  "MULTUS_PROVISIONER_POLICY_DATABASE": "multus-policy"})
    assert settings.policy_database == "multus-policy"
    store = Store(settings)
    store._col("config").document("policy").set({"multusImage": FOREIGN})  # the workflow database: ignored
    assert store.get_policy() is None
    policy_db = firestore.Client(project=settings.project, database="multus-policy")
    policy_db.collection(f"{prefix}config").document("policy").set({"maxNadsPerCluster": 7})
    assert store.get_policy() == {"maxNadsPerCluster": 7}
    with pytest.raises(ConfigError, match="POLICY_DATABASE"):
        Settings.from_env({"MULTUS_PROVISIONER_POLICY_DATABASE": "Bad_DB"})


# -- low findings -----------------------------------------------------------------------------------------

def test_the_verify_pods_image_is_pinned_by_digest() -> None:
    from shared.core.multus import check_image
    from shared.flows.verify import VERIFY_IMAGE, verify_pod_manifest

    assert check_image(VERIFY_IMAGE, field="verify") == [] and "@sha256:" in VERIFY_IMAGE
    pod = verify_pod_manifest("p", "default", "n", None)
    assert [c["image"] for c in pod["spec"]["containers"]] == [VERIFY_IMAGE]


def test_multus_role_lets_the_nodes_read_nads_only() -> None:
    from shared.core.multus import load_bundle

    role = next(o for o in load_bundle().objects if o["metadata"]["name"] == "multus-role")
    assert role["rules"] == [{"apiGroups": ["k8s.cni.cncf.io"], "resources": ["network-attachment-definitions"],
                              "verbs": ["get", "list", "watch"]}]


def test_a_forbidden_answer_names_the_missing_rbac_verb() -> None:
    from shared.adapters.kube import _mapped
    from shared.core.errors import Permanent

    body = json.dumps({"reason": "Forbidden", "message": 'clusterroles.rbac.authorization.k8s.io "multus-role" is '
                       "forbidden: user \"u\" is attempting to grant RBAC permissions not currently held"})
    err = _mapped(403, body, "PATCH", "/apis/rbac.authorization.k8s.io/v1/clusterroles/multus-role")
    assert isinstance(err, Permanent) and "lacks `escalate` on clusterroles/multus-role" in str(err)
    err = _mapped(403, body, "PATCH", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/multus-role-binding")
    assert "lacks `bind`" in str(err)
    plain = _mapped(403, json.dumps({"message": "pods is forbidden"}), "POST", "/api/v1/namespaces/x/pods")
    assert "render-rbac" in str(plain)


# -- render-rbac --------------------------------------------------------------------------------------------

def test_render_rbac_prints_the_opt_in_rbac_for_a_user_and_its_namespaces(capsys) -> None:
    from multus_cli import main as cli

    user = "multus-runtime@proj.iam.gserviceaccount.com"
    assert cli.main(["render-rbac", "--user", user, "--namespace", "default", "--namespace", "team-a",
                     "--output", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "List"
    kinds = [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in doc["items"]]
    assert ("RoleBinding", "multus-provisioner-verify", "default") in kinds
    assert ("RoleBinding", "multus-provisioner-verify", "team-a") in kinds
    assert not [k for k in kinds if k[0] == "ClusterRoleBinding" and k[1] == "multus-provisioner-verify"]
    subjects = [s for o in doc["items"] for s in o.get("subjects") or []]
    assert subjects and all(s == {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                            for s in subjects)
    assert cli.main(["render-rbac", "--user", user]) == 0  # yaml, namespace default
    assert "namespace: default" in capsys.readouterr().out
    assert cli.main(["render-rbac", "--user", user, "--namespace", "Not_A_Namespace"]) == 2
    assert "--namespace" in capsys.readouterr().err
