"""The offline CLI: every command through `main([...])`, exit codes, the extension hook, and
the installed console script once in a subprocess."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from multus_cli import main as cli
from shared.core.nad import parse_request, render_nad

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = ROOT / "tests" / "samples" / "requests"
CLUSTERS = ROOT / "tests" / "samples" / "clusters"
CLUSTER = "projects/my-project/locations/us-central1/clusters/multus-demo"
COMMANDS = ["render-nad", "render-bundle", "validate-request", "precheck"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


# --------------------------------------------------------------------------------------------
# Help and usage
# --------------------------------------------------------------------------------------------

def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_each_command(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: multus-provisioner {command}")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, )[0] == 2
    code, _, err = run(capsys, "no-such-command")
    assert code == 2 and "invalid choice" in err
    code, _, err = run(capsys, "render-nad", "--mtu", "abc")
    assert code == 2 and "--mtu" in err
    code, _, err = run(capsys, "precheck")
    assert code == 2 and "--cluster-json" in err


# --------------------------------------------------------------------------------------------
# render-nad
# --------------------------------------------------------------------------------------------

FLAGS = ["--cluster", CLUSTER, "--name", "data-plane", "--namespace", "team-a", "--master", "eth2",
         "--mode", "l3", "--range", "172.16.1.0/24", "--range-start", "172.16.1.10", "--range-end",
         "172.16.1.100", "--exclude", "172.16.1.0/28", "--exclude", "172.16.1.64/28", "--gateway",
         "172.16.1.1", "--mtu", "1460"]


def test_render_nad_from_flags_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "render-nad", *FLAGS)
    assert code == 0
    expected = render_nad(parse_request({
        "cluster": CLUSTER, "name": "data-plane", "namespace": "team-a", "master": "eth2", "mode": "l3",
        "range": "172.16.1.0/24", "range_start": "172.16.1.10", "range_end": "172.16.1.100",
        "exclude": ["172.16.1.0/28", "172.16.1.64/28"], "gateway": "172.16.1.1", "mtu": 1460}))
    assert yaml.safe_load(out) == expected
    assert out.startswith("apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n")


def test_render_nad_json_and_file_agree(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    expected = render_nad(parse_request((REQUESTS / "full.json").read_bytes()))
    code, out, _ = run(capsys, "render-nad", "--file", str(REQUESTS / "full.json"), "--output", "json")
    assert code == 0 and json.loads(out) == expected
    stdin(monkeypatch, (REQUESTS / "full.json").read_bytes())
    code, out, _ = run(capsys, "render-nad", "--file", "-", "-o", "yaml")
    assert code == 0 and yaml.safe_load(out) == expected


def test_render_nad_invalid_flags_name_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "render-nad", "--cluster", CLUSTER, "--name", "Bad_Name", "--range",
                         "172.16.1.5/24", "--mtu", "9000", "--exclude", "10.0.0.0/8")
    assert code == 2 and out == ""
    for flag in ("--name:", "--range:", "--mtu:"):
        assert flag in err
    assert "did you mean 172.16.1.0/24" in err


def test_render_nad_needs_a_range(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "render-nad", "--cluster", CLUSTER, "--name", "n")
    assert code == 2 and "range:" in err


def test_render_nad_file_excludes_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "render-nad", "--file", str(REQUESTS / "full.json"), "--name", "x")
    assert code == 2 and "--file: cannot be combined with --name" in err


def test_render_nad_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "render-nad", "--file", str(tmp_path / "nope.json"))
    assert code == 2 and "--file:" in err


def test_render_nad_yaml_keeps_injection_inert(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A request id is the one free-ish string that reaches metadata; YAML must carry it as is."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"cluster": CLUSTER, "name": "n", "range": "10.0.0.0/24",
                                "request_id": "a:b.c-d_e"}))
    code, out, _ = run(capsys, "render-nad", "--file", str(path))
    assert code == 0
    assert yaml.safe_load(out)["metadata"]["annotations"]["multus-provisioner.io/request-id"] == "a:b.c-d_e"
    path.write_text(json.dumps({"cluster": CLUSTER, "name": "n", "range": "10.0.0.0/24",
                                "request_id": "x\n---\nkind: Secret"}))
    code, out, err = run(capsys, "render-nad", "--file", str(path))
    assert code == 2 and out == "" and "request_id" in err


# --------------------------------------------------------------------------------------------
# validate-request
# --------------------------------------------------------------------------------------------

def test_validate_request_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate-request", str(REQUESTS / "full.json"))
    assert code == 0 and out.startswith("OK apply team-a~data-plane on projects/my-project/")
    code, out, _ = run(capsys, "validate-request", str(REQUESTS / "minimal.json"))
    assert code == 0 and "secondary pod range" in out


def test_validate_request_lists_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate-request", str(REQUESTS / "invalid_many.json"))
    assert code == 2 and out == ""
    for field in ("colour", "name", "namespace", "master", "mode", "range", "mtu"):
        assert f"  {field}: " in err


def test_validate_request_seed_example(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    stdin(monkeypatch, (REQUESTS / "invalid_seed_unquoted_range.txt").read_bytes())
    code, _, err = run(capsys, "validate-request", "-")
    assert code == 2 and "  range: " in err and "SECONDARY_RANGE_NAME" in err


def test_validate_request_unreadable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate-request", str(tmp_path))
    assert code == 2 and "FILE:" in err


# --------------------------------------------------------------------------------------------
# render-bundle (shared.core.multus)
# --------------------------------------------------------------------------------------------

def test_render_bundle_yaml_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    from shared.core.multus import load_bundle

    bundle = load_bundle()
    code, out, err = run(capsys, "render-bundle")
    assert code == 0 and bundle.version in err
    docs = [d for d in yaml.safe_load_all(out) if d is not None]
    assert docs == [dict(o) for o in bundle.objects]
    code, out, _ = run(capsys, "render-bundle", "--output", "json")
    listing = json.loads(out)
    assert listing["apiVersion"] == "v1" and listing["kind"] == "List"
    assert listing["items"] == docs


def test_render_bundle_bad_options_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "render-bundle", "--multus-image", "evil.example/multus:latest")
    assert code == 2 and out == "" and "--multus-image" in err
    code, _, err = run(capsys, "render-bundle", "--log-level", "chatty")
    assert code == 2 and "--log-level" in err
    code, out, _ = run(capsys, "render-bundle", "--multus-image", "gcr.io/x/multus:v1", "--allow-unpinned")
    assert code == 0 and "gcr.io/x/multus:v1" in out


# --------------------------------------------------------------------------------------------
# precheck (shared.prechecks)
# --------------------------------------------------------------------------------------------

def test_precheck_eligible(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "precheck", "--cluster-json", str(CLUSTERS / "eligible-regional.json"))
    assert code == 0 and out.strip().endswith("eligible")


def test_precheck_not_eligible_prints_findings_with_fixes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "precheck", "--cluster-json", str(CLUSTERS / "autopilot.json"))
    assert code == 3 and "NOT eligible" in out
    assert "[error] autopilot:" in out and "fix: " in out
    code, out, _ = run(capsys, "precheck", "--cluster-json", str(CLUSTERS / "autopilot.json"), "--json")
    report = json.loads(out)
    assert code == 3 and report["eligible"] is False
    assert all(set(f) == {"id", "severity", "message", "fix"} for f in report["findings"])
    assert "autopilot" in {f["id"] for f in report["findings"]}


def test_precheck_node_pools_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cluster = str(CLUSTERS / "awaiting-node-pool.json")
    assert run(capsys, "precheck", "--cluster-json", cluster)[0] == 3
    pools = str(CLUSTERS / "node-pools-with-multus.json")
    assert run(capsys, "precheck", "--cluster-json", cluster, "--node-pools-json", pools)[0] == 0
    wrapped = tmp_path / "wrapped.json"  # also accepted: {"nodePools": [...]}
    wrapped.write_text(json.dumps({"nodePools": json.loads(Path(pools).read_text())}))
    assert run(capsys, "precheck", "--cluster-json", cluster, "--node-pools-json", str(wrapped))[0] == 0


@pytest.mark.parametrize("content, flag", [
    ("{not json", "--cluster-json"),
    ("[1, 2]", "--cluster-json"),
    ('{"a": 1, "a": 2}', "--cluster-json.a"),
])
def test_precheck_bad_cluster_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str,
                                   flag: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    code, _, err = run(capsys, "precheck", "--cluster-json", str(path))
    assert code == 2 and f"  {flag}: " in err


def test_precheck_bad_node_pools_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"pools": 1}')
    code, _, err = run(capsys, "precheck", "--cluster-json", str(CLUSTERS / "eligible-zonal.json"),
                       "--node-pools-json", str(path))
    assert code == 2 and "--node-pools-json:" in err


# --------------------------------------------------------------------------------------------
# Unexpected errors and the extension hook
# --------------------------------------------------------------------------------------------

def test_unexpected_error_exits_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*_: Any, **__: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("shared.core.nad.render_nad", explode)
    code, _, err = run(capsys, "render-nad", "--file", str(REQUESTS / "full.json"))
    assert code == 1 and "unexpected RuntimeError: disk on fire" in err


@pytest.fixture
def extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "cli_ext_for_test"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        def register(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("--code", type=int, default=0)
            p.set_defaults(handler=lambda args: print("hello") or args.code)
    """))
    (tmp_path / "cli_ext_broken.py").write_text("raise ImportError('half-written module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_extensions_register_their_commands(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            extension: str) -> None:
    monkeypatch.setattr(cli, "EXTENSIONS", (extension, "cli_ext_absent"))
    code, out, _ = run(capsys, "hello", "--code", "3")
    assert (code, out) == (3, "hello\n")
    code, out, _ = run(capsys, "--help")
    assert "hello" in out and "render-nad" in out


def test_a_broken_extension_leaves_offline_commands_working(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           extension: str) -> None:
    monkeypatch.setattr(cli, "EXTENSIONS", ("cli_ext_broken",))
    code, out, err = run(capsys, "validate-request", str(REQUESTS / "full.json"))
    assert code == 0 and out.startswith("OK") and "cli_ext_broken not loaded" in err


def test_cli_online_is_the_default_extension() -> None:
    assert cli.EXTENSIONS == ("multus_cli.online", "multus_cli.ranges", "multus_cli.rollout", "sandbox.commands")


# --------------------------------------------------------------------------------------------
# The installed console script, once, in a subprocess (outside the repository directory)
# --------------------------------------------------------------------------------------------

def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "multus-provisioner"
    assert script.exists(), "run `make setup` (pip install -e .) to install the console script"
    ok = subprocess.run([str(script), "render-nad", "--file", str(REQUESTS / "full.json"), "-o", "json"],
                        capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == render_nad(parse_request((REQUESTS / "full.json").read_bytes()))
    bad = subprocess.run([str(script), "validate-request", "-"], input=(REQUESTS / "invalid_many.json").read_bytes(),
                         capture_output=True, cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and b"  mode: " in bad.stderr


def test_importing_the_cli_stays_light() -> None:
    """`--help` and the offline commands must not pay for the cloud SDKs at import time."""
    code = ("import sys; before = set(sys.modules); import multus_cli.main; "  # .pth files preload google.cloud
            "heavy = [m for m in set(sys.modules) - before if m.split('.')[0] in "
            "('google', 'kubernetes', 'grpc', 'yaml', 'jsonschema', 'cloudevents')]; print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
