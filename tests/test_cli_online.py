"""The online CLI against the sandbox stack: request-nad, status, history, verify, sandbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multus_cli import main as cli
from sandbox.identity import SANDBOX_USER
from tests.fakes import nad_doc
from tests.fixtures_stack import ref_of, wait_nad, wait_state

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def env_file(stack) -> str:
    return str(stack.write_env_file(stack.state_dir / "env"))


@pytest.fixture
def ready_cluster(stack, e2e_store, cluster_name):
    from sandbox.gke.scenario import NodePoolSpec

    stack.gke.create_cluster(cluster_name, wait=False, labels={"multus-provisioner": "enabled"},
                             node_pools=(NodePoolSpec("default-pool"),))
    ref = ref_of(stack, cluster_name)
    wait_state(e2e_store, ref, "READY", 40)
    return ref


def test_request_nad_waits_for_the_outcome_and_prints_json(env_file, ready_cluster, e2e_store, capsys):
    rc = cli.main(["request-nad", "--sandbox", env_file, "--cluster", ready_cluster.path, "--name", "via-cli",
                   "--range", "172.16.1.0/26", "--exclude", "172.16.1.0/30", "--wait", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["state"] == "APPLIED" and out["messageId"] and out["outcome"] == "APPLIED"
    assert out["record"]["applied"]["range"] == "172.16.1.0/26"
    # the CLI attached the sandbox user's ID token; the controller recorded who asked (issue 24)
    assert out["requester"] == out["record"]["lastRequest"]["requester"] == SANDBOX_USER
    doc = nad_doc(e2e_store, ready_cluster, "default", "via-cli")
    assert json.loads(doc["config"])["plugins"][0]["ipam"]["exclude"] == ["172.16.1.0/30"]


def test_request_nad_wait_answers_for_this_request_not_an_earlier_one_on_the_same_name(
        env_file, ready_cluster, e2e_store, capsys):
    base = ["request-nad", "--sandbox", env_file, "--cluster", ready_cluster.path, "--wait", "--json"]
    assert cli.main([*base, "--name", "waiter", "--range", "172.16.1.0/26"]) == 0
    assert cli.main([*base, "--name", "blocker", "--range", "172.16.1.64/26"]) == 0
    capsys.readouterr()
    # the record of `waiter` says APPLIED from the first request; this update's answer is a refusal
    rc = cli.main([*base, "--name", "waiter", "--range", "172.16.1.64/27"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert rc == 2, out
    assert out["outcome"] == "REJECTED" and out["state"] == "APPLIED"  # `state`: what is on the cluster
    assert out["record"]["lastRequest"]["messageId"] == out["messageId"]
    assert out["record"]["applied"]["range"] == "172.16.1.0/26"
    assert "overlaps default/blocker (172.16.1.64/26)" in captured.err
    assert out["message"].startswith("update refused: waiter keeps 172.16.1.0/26")
    # status and history say so too
    assert cli.main(["status", "--sandbox", env_file, ready_cluster.path]) == 0
    nads = capsys.readouterr().out.split("\nnads\n", 1)[1]
    line = next(x for x in nads.splitlines() if "default/waiter" in x)
    assert "APPLIED" in line and "172.16.1.0/26" in line and "last request apply REJECTED: update refused" in line
    assert cli.main(["history", "--sandbox", env_file, ready_cluster.path]) == 0
    assert "update refused: waiter keeps 172.16.1.0/26" in capsys.readouterr().out
    # a request_id reused with another body: refused before it reaches the NAD, exit 2 with the reason
    assert cli.main([*base, "--name", "keyed", "--range", "172.16.1.128/27", "--request-id", "k-1"]) == 0
    capsys.readouterr()
    rc = cli.main([*base, "--name", "keyed", "--range", "172.16.1.160/27", "--request-id", "k-1"])
    captured = capsys.readouterr()
    assert rc == 2 and json.loads(captured.out)["outcome"] == "REJECTED"
    assert "request_id 'k-1' was already used for a different request" in captured.err
    assert nad_doc(e2e_store, ready_cluster, "default", "keyed")["applied"]["range"] == "172.16.1.128/27"


def test_status_and_history_show_an_orphan_reconcile_reported(stack, env_file, ready_cluster, e2e_store, capsys):
    from shared.core import nad as nadlib
    from tests.fixtures_stack import wait_for
    from tests.test_e2e import kube_engine

    assert cli.main(["request-nad", "--sandbox", env_file, "--cluster", ready_cluster.path, "--name", "owner",
                     "--range", "172.16.1.0/25", "--wait", "--json"]) == 0
    capsys.readouterr()
    req = nadlib.parse_request({"cluster": ready_cluster.path, "name": "squat", "range": "172.16.1.64/26"})
    kube_engine(stack, ready_cluster.cluster).apply_nad(nadlib.render_nad(req, req.range))  # no record
    stack.publish("reconcile", json.dumps({"cluster": ready_cluster.path}).encode())
    wait_nad(e2e_store, ready_cluster, "default", "squat", "ORPHANED")
    assert cli.main(["status", "--sandbox", env_file, "--json", ready_cluster.path]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [o["name"] for o in status["orphans"]] == ["squat"]
    assert "overlaps default/owner (172.16.1.0/25)" in status["orphans"][0]["orphan"]["reason"]
    assert cli.main(["status", "--sandbox", env_file, ready_cluster.path]) == 0
    assert "ORPHANED  172.16.1.64/26  orphan: 172.16.1.64/26 overlaps default/owner" in capsys.readouterr().out
    wait_for(lambda: cli.main(["history", "--sandbox", env_file, ready_cluster.path]) == 0
             and "orphan reported: default/squat" in capsys.readouterr().out, 10, "orphan in history")


def test_request_nad_wait_exit_1_when_no_outcome_in_time(env_file, capsys):
    missing = "projects/multus-sandbox/locations/us-central1/clusters/never-created-x"
    rc = cli.main(["request-nad", "--sandbox", env_file, "--cluster", missing, "--name", "early",
                   "--wait", "--timeout", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["outcome"] in (None, "PENDING"), out


def test_request_nad_invalid_input_is_exit_2_naming_the_field(env_file, capsys):
    rc = cli.main(["request-nad", "--sandbox", env_file, "--cluster", "projects/multus-sandbox/locations/"
                   "us-central1/clusters/x1", "--name", "Bad_Name", "--range", "172.16.1.5/24"])
    err = capsys.readouterr().err
    assert rc == 2 and "name" in err and "172.16.1.0/24" in err


def test_sandbox_flag_with_a_broken_env_file_is_exit_2(tmp_path, capsys):
    bad = tmp_path / "env"
    bad.write_text("this is not an env file\n")
    assert cli.main(["status", "--sandbox", str(bad)]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert cli.main(["status", "--sandbox", str(tmp_path / "missing")]) == 2


def test_status_lists_clusters_and_one_cluster_in_detail(env_file, ready_cluster, capsys):
    assert cli.main(["status", "--sandbox", env_file]) == 0
    table = capsys.readouterr().out
    assert ready_cluster.path in table and "READY" in table and "sha256:" in table
    assert cli.main(["status", "--sandbox", env_file, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any(c["cluster"] == ready_cluster.path and c["state"] == "READY" for c in data["clusters"])
    assert cli.main(["status", "--sandbox", env_file, ready_cluster.cluster]) == 0
    detail = capsys.readouterr().out
    assert "steps" in detail and "install" in detail and "node pool" in detail
    assert cli.main(["status", "--sandbox", env_file, "no-such-cluster"]) == 2
    assert "no cluster named" in capsys.readouterr().err


def test_status_shows_rejected_requests_with_reasons(stack, env_file, ready_cluster, e2e_store, capsys):
    body = {"cluster": ready_cluster.path, "name": "bad-one", "mtu": 9000, "surprise": 1}
    stack.publish("nad-requests", json.dumps(body).encode())
    wait_nad(e2e_store, ready_cluster, "default", "bad-one", "REJECTED")
    assert cli.main(["status", "--sandbox", env_file, ready_cluster.path]) == 0
    out = capsys.readouterr().out
    assert "rejected requests" in out and "mtu" in out and "surprise" in out


def test_history_pages_in_time_order(env_file, ready_cluster, capsys):
    assert cli.main(["history", "--sandbox", env_file, "--json", ready_cluster.cluster]) == 0
    entries = json.loads(capsys.readouterr().out)["history"]
    stamps = [e["at"] for e in entries]
    assert stamps == sorted(stamps) and len(entries) >= 4
    assert cli.main(["history", "--sandbox", env_file, "--limit", "2", "--json", ready_cluster.cluster]) == 0
    assert len(json.loads(capsys.readouterr().out)["history"]) == 2
    assert cli.main(["history", "--sandbox", env_file, "--limit", "0", ready_cluster.cluster]) == 2


def test_verify_refuses_a_nad_that_is_not_applied(env_file, ready_cluster, capsys):
    assert cli.main(["verify", "--sandbox", env_file, ready_cluster.cluster, "default/never-requested"]) == 2
    assert "only APPLIED NADs" in capsys.readouterr().err
    assert cli.main(["verify", "--sandbox", env_file, ready_cluster.cluster, "no-slash"]) == 2


def _descendants(root: int) -> list[int]:
    table = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        pid, ppid = (int(x) for x in line.split())
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _children_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


def test_sandbox_command_prints_env_and_stops_everything_on_sigterm(tmp_path):
    env_path = tmp_path / "env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "multus_cli.main", "sandbox", "--env-file", str(env_path), "--state-dir",
         str(tmp_path / "state")], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.startswith("# Ctrl-C"):
                break
        env = dict(x.split("=", 1) for x in lines if "=" in x and not x.startswith("#"))
        for key in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "MULTUS_PROVISIONER_GKE_ENDPOINT",
                    "MULTUS_PROVISIONER_URL_ON_NAD_REQUEST", "MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS",
                    "MULTUS_PROVISIONER_KUBECONFIG_DIR", "MULTUS_PROVISIONER_PROJECT"):
            assert key in env, (key, lines, proc.stderr.read() if proc.poll() is not None else "")
        assert all(v.startswith("127.0.0.1:") for k, v in env.items() if k.endswith("_HOST"))
        assert env_path.read_text().count("=") >= 10
        assert (Path(env["MULTUS_PROVISIONER_KUBECONFIG_DIR"]) / "demo-legacy.yaml").exists()
        pids = _descendants(proc.pid)
        assert pids, "expected child processes (functions, emulators)"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    time.sleep(0.5)
    assert _children_alive(pids) == [], "processes left running after SIGTERM"
