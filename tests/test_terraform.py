"""infra/ against the real hashicorp/google provider, offline (scripts/infra_check.py).

The provider is built from the Go module proxy (realworld/terraform-provider-google, the first time
only: 6-11 minutes here) and served to Terraform from a filesystem mirror through a CLI
configuration of ours. These tests run `terraform init` (the lock file's hash must match the build),
`terraform validate` (every argument of every resource, the example's included, against the
provider's schema) and `terraform test` (infra/tests/*.tftest.hcl: the whole deployment planned for
each variable set against a mock of that provider, with the security and wiring assertions), and
plant errors in a copy of infra/ to show the checks fail when they should.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from scripts import infra_check

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
# The variable sets infra/tests/deployment.tftest.hcl plans; a run that disappears fails here.
RUNS = {
    "tests/deployment.tftest.hcl/one_project",
    "tests/deployment.tftest.hcl/folder_sinks_with_managed_projects",
    "tests/deployment.tftest.hcl/organization_sinks_with_managed_projects",
    "tests/deployment.tftest.hcl/private_clusters_with_vpc_connector",
    "tests/deployment.tftest.hcl/example_cluster_and_node_pool",
}

# The first run on a machine builds the provider (minutes); later runs find it in the cache.
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def tf(tmp_path_factory: pytest.TempPathFactory) -> infra_check.Terraform:
    try:
        return infra_check.Terraform(tmp_path_factory.mktemp("terraform"))
    except infra_check.CheckError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="module")
def initialised(tf: infra_check.Terraform) -> infra_check.Terraform:
    proc = tf.init(INFRA)
    if proc.returncode != 0:
        built = infra_check.package_hash(infra_check.package_dir())
        pytest.fail(f"terraform init failed (the provider built here hashes to {built}; infra/.terraform.lock.hcl "
                    f"records {infra_check.locked()[1]}: a different Go toolchain builds other bytes, then run "
                    f"`python -m scripts.infra_check lock` and commit the lock):\n{proc.stdout}{proc.stderr}")
    return tf


def copy_of_infra(dest: Path) -> Path:
    shutil.copytree(INFRA, dest, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", "tfplan"))
    return dest


def test_the_lock_file_records_the_pinned_provider_built_here():
    version, hashes = infra_check.locked()
    assert version == infra_check.provider_version()
    assert infra_check.package_hash(infra_check.package_dir()) in hashes, (
        "infra/.terraform.lock.hcl does not record the provider built from realworld/terraform-provider-google: "
        "run `python -m scripts.infra_check lock` and commit the lock")


def test_init_installs_the_provider_from_the_mirror_only(initialised: infra_check.Terraform):
    proc = initialised.run(INFRA, "version", "-json")
    assert proc.returncode == 0, proc.stderr
    selections = json.loads(proc.stdout)["provider_selections"]
    assert selections == {infra_check.PROVIDER: infra_check.provider_version()}
    # The CLI configuration names the mirror as the only installation method (nothing is downloaded).
    config = initialised.config.read_text()
    assert "filesystem_mirror" in config and "direct" not in config and "network_mirror" not in config
    assert str(infra_check.mirror()) in config


def test_terraform_validate_accepts_infra_with_the_real_provider(initialised: infra_check.Terraform):
    proc = initialised.validate(INFRA)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["valid"], infra_check.diagnostics(proc.stdout, proc.stderr)
    assert report["error_count"] == 0
    assert report["warning_count"] == 0, infra_check.diagnostics(proc.stdout)


def test_terraform_test_plans_every_variable_set_and_every_assertion_holds(initialised: infra_check.Terraform):
    proc = initialised.test(INFRA, "-json")
    runs, summary = infra_check.test_results(proc.stdout)
    assert proc.returncode == 0, infra_check.diagnostics(proc.stdout, proc.stderr)
    assert set(runs) == RUNS, f"terraform test ran {sorted(runs)}"
    assert set(runs.values()) == {"pass"}, runs
    assert summary.get("passed") == len(RUNS) and summary.get("failed") == 0 and summary.get("errored") == 0


def test_a_misspelt_attribute_fails_validate_naming_it(tf: infra_check.Terraform, tmp_path: Path):
    """A planted error: `ingress_settings` renamed in a copy of infra/. python-hcl2 and checkov accept
    it; only the provider's schema knows the argument does not exist."""
    infra = copy_of_infra(tmp_path / "infra")
    functions = infra / "functions.tf"
    text = functions.read_text()
    planted = re.sub(r"^(\s+)ingress_settings(\s+)=", r"\1ingress_setting \2=", text, count=1, flags=re.M)
    assert planted != text, "functions.tf no longer sets ingress_settings: plant the error elsewhere"
    functions.write_text(planted)
    assert tf.init(infra).returncode == 0
    proc = tf.validate(infra)
    report = json.loads(proc.stdout)
    assert proc.returncode != 0 and not report["valid"]
    named = [d for d in report["diagnostics"]
             if d["severity"] == "error" and '"ingress_setting"' in d.get("detail", "")]
    assert named, infra_check.diagnostics(proc.stdout)
    assert named[0]["range"]["filename"] == "functions.tf"


def test_a_push_subscription_with_another_functions_audience_fails_terraform_test(
        tf: infra_check.Terraform, tmp_path: Path):
    """A planted error the schema cannot see: every push token's audience is the reconcile function's URI."""
    infra = copy_of_infra(tmp_path / "infra")
    pubsub = infra / "pubsub.tf"
    text = pubsub.read_text()
    planted = text.replace(
        "audience              = google_cloudfunctions2_function.fn[each.key].service_config[0].uri",
        'audience              = google_cloudfunctions2_function.fn["reconcile"].service_config[0].uri')
    assert planted != text, "pubsub.tf's audience line changed: plant the error elsewhere"
    pubsub.write_text(planted)
    assert tf.init(infra).returncode == 0
    proc = tf.test(infra, "-json")
    runs, _ = infra_check.test_results(proc.stdout)
    assert proc.returncode != 0
    assert runs and "fail" in runs.values(), runs
    assert "whose audience is that URI" in proc.stdout, infra_check.diagnostics(proc.stdout)


def test_docs_name_the_provider_version_the_configuration_is_validated_against():
    version = infra_check.provider_version()
    assert f"hashicorp/google {version}" in (ROOT / "docs" / "DEPLOY.md").read_text()
    assert f"hashicorp/google {version}" in (ROOT / "README.md").read_text()
