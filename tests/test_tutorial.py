"""docs/TUTORIAL.md, run: its `sh tutorial` commands in order, against a started stack.

The tutorial's first terminal (`multus-provisioner sandbox --scenario sandbox/scenarios/tutorial.yaml`)
is this test's `Stack` on the same scenario, its state in `<tmp>/.sandbox` so that the
tutorial's relative paths hold with `<tmp>` as the working directory. Every other command is
run as a user's shell would run it (bash, the tutorial's exports, `multus-provisioner`, `gcloud`
and `kubectl` on PATH; `kubectl` is kubectl 1.27 or 1.33). Markers in the markdown say what to
wait for (`<!-- tutorial: wait-state CLUSTER STATE -->`, read from Firestore) and what a block
prints (`<!-- tutorial: expect TEXT -->`), so the document and the test cannot drift apart.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.stack import REPO, Stack
from shared.core.refs import ClusterRef
from tests.fixtures_stack import direct_store, wait_state

TUTORIAL = REPO / "docs" / "TUTORIAL.md"
SDK_BIN = Path("/usr/lib/google-cloud-sdk/bin")
VENV_BIN = Path(sys.executable).parent  # where `multus-provisioner` is installed
_MARKER = re.compile(r"^<!-- tutorial: (wait-state|expect) (.+?) -->$")


@dataclass(frozen=True)
class Step:
    kind: str  # "run" (a shell command), "wait-state" (cluster, state) or "expect" (text in the block's output)
    text: str
    line: int


def parse(markdown: str) -> list[Step]:
    """The tutorial's steps, in order: commands of ```sh tutorial blocks, and the markers between them."""
    steps: list[Step] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line.strip())
        if marker:
            steps.append(Step(marker.group(1), marker.group(2), i + 1))
        elif line.strip() == "```sh tutorial":
            i += 1
            block: list[tuple[int, str]] = []
            while i < len(lines) and lines[i].strip() != "```":
                block.append((i + 1, lines[i]))
                i += 1
            if i == len(lines):
                raise ValueError(f"{TUTORIAL}: unclosed tutorial block")
            steps.append(Step("block", "", block[0][0] if block else i))
            steps.extend(_commands(block))
        i += 1
    return steps


def _commands(block: list[tuple[int, str]]) -> list[Step]:
    """Split a block into commands: `\\` continues a line; `<<'EOF'` takes lines up to `EOF`."""
    out: list[Step] = []
    k = 0
    while k < len(block):
        start, text = block[k]
        parts = [text]
        while parts[-1].rstrip().endswith("\\") and k + 1 < len(block):
            k += 1
            parts.append(block[k][1])
        command = "\n".join(parts)
        heredoc = re.search(r"<<-?'?([A-Z]+)'?\s*$", parts[-1])
        if heredoc:
            while k + 1 < len(block):
                k += 1
                command += "\n" + block[k][1]
                if block[k][1].strip() == heredoc.group(1):
                    break
            else:
                raise ValueError(f"{TUTORIAL}:{start}: heredoc without its {heredoc.group(1)} line")
        if command.strip() and not command.strip().startswith("#"):
            out.append(Step("run", command, start))
        k += 1
    return out


def test_the_tutorial_parses_into_the_how_tos_commands() -> None:
    steps = parse(TUTORIAL.read_text())
    commands = [s.text for s in steps if s.kind == "run"]
    joined = "\n".join(commands)
    for how_to in ("gcloud compute networks create", "gcloud compute networks subnets create",
                   "gcloud container clusters create", "gcloud container node-pools create",
                   "gcloud container clusters get-credentials", "gcloud container clusters delete",
                   "multus-provisioner request-nad", "--enable-multi-networking", "max-pods-per-node=8"):
        assert how_to in joined, how_to
    assert [s.text.split()[1] for s in steps if s.kind == "wait-state"] == ["AWAITING_NODE_POOL", "DELETED"]
    assert any(s.kind == "run" and "<<'EOF'" in s.text and s.text.rstrip().endswith("EOF") for s in steps)


@pytest.fixture(params=["1.27", "1.33"])
def kubectl_version(request: Any) -> str:
    return str(request.param)


@pytest.fixture(params=["sim", pytest.param("real", marks=pytest.mark.real)])
def kube_kind(request: Any) -> str:
    """The tutorial's kubectl commands against the simulated API server and a real kube-apiserver."""
    return str(request.param)


@pytest.fixture
def tutorial_stack(emulators: Any, tmp_path: Path, kubectl_version: str, kube_kind: str) -> Iterator[Stack]:
    # GKE's ordinary day is on (the scenario's default): the tutorial waits for GKE's own operation
    # after CreateCluster before it creates the pool, as its reader must.
    prefix = f"tut{kubectl_version.replace('.', '')}{kube_kind}_"
    stack = Stack(scenario=REPO / "sandbox" / "scenarios" / "tutorial.yaml", state_dir=tmp_path / ".sandbox",
                  emulators=emulators, operation_delay=0.0, crd_delay=0.1, rollout_delay=0.2, kube=kube_kind,
                  extra_env={"MULTUS_PROVISIONER_COLLECTION_PREFIX": prefix,
                             "MULTUS_PROVISIONER_ROLLOUT_WAIT_SECONDS": "30"})
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def test_the_tutorial_runs(tutorial_stack: Stack, tmp_path: Path, kubectl_version: str) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "kubectl").symlink_to(SDK_BIN / f"kubectl.{kubectl_version}")
    (tmp_path / "home").mkdir()
    env = {"PATH": os.pathsep.join([str(tools), str(VENV_BIN), str(SDK_BIN), os.environ.get("PATH", "")]),
           "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8", "PWD": str(tmp_path)}
    store = direct_store(tutorial_stack)
    zone = "us-central1-c"
    block_output = ""
    for step in parse(TUTORIAL.read_text()):
        where = f"{TUTORIAL.name}:{step.line}"
        if step.kind == "block":
            block_output = ""
        elif step.kind == "wait-state":
            cluster, state = step.text.split()
            wait_state(store, ClusterRef(tutorial_stack.project, zone, cluster), state, timeout=90)
        elif step.kind == "expect":
            assert step.text in block_output, f"{where}: expected {step.text!r} in:\n{block_output}"
        elif step.text.startswith("export "):
            for assignment in shlex.split(step.text)[1:]:
                key, _, value = assignment.partition("=")
                env[key] = value.replace("$PWD", str(tmp_path))
        else:
            p = subprocess.run(["bash", "-o", "pipefail", "-c", step.text], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, f"{where}: {step.text}\nexit {p.returncode}\n{p.stdout}\n{p.stderr}"
            block_output += p.stdout + p.stderr


def test_make_sandbox_takes_the_tutorial_scenario() -> None:
    """The tutorial's first command: `make sandbox SCENARIO=...` starts that scenario (dry run)."""
    out = subprocess.run(["make", "-n", "sandbox", "SCENARIO=sandbox/scenarios/tutorial.yaml"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "multus-provisioner sandbox --env-file .sandbox/env --scenario sandbox/scenarios/tutorial.yaml" in out.stdout
    assert "make sandbox SCENARIO=sandbox/scenarios/tutorial.yaml" in TUTORIAL.read_text()
