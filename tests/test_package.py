"""`make package` output: what ships, that it is reproducible, and that it serves in a clean environment.

The serving test is the deployment in miniature: a fresh virtualenv gets ONLY the package's
requirements.txt (from PyPI, through pip's cache), functions-framework serves each entry point from the
package folder on 127.0.0.1, and each answers a Pub/Sub CloudEvent - both as Eventarc sends it (binary
mode, with `subscription`) and as our push subscriptions send it (the raw push envelope). The payload is
an audit entry of another service: the event handlers acknowledge it as ignored, on_nad_request records
it as a rejected request, reconcile sweeps. The backends are the sandbox's: Google's Firestore emulator
and the sandbox GKE server; the metadata server is a closed loopback port, so nothing leaves this machine.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import package as pkg

ROOT = Path(__file__).resolve().parent.parent
OTHER_SERVICE_ENTRY = ROOT / "tests" / "samples" / "audit" / "other_service_compute.json"


# --- contents ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> pkg.Package:
    out = tmp_path_factory.mktemp("package")
    return pkg.build(ROOT, build_dir=out / "build", dist_dir=out / "dist")


def test_package_holds_main_shared_and_runtime_requirements_only(built):
    names = set(built.files)
    assert {"main.py", "requirements.txt", "shared/__init__.py", "shared/core/settings.py"} <= names
    assert (built.folder / "main.py").read_bytes() == (ROOT / "functions" / "main.py").read_bytes()
    assert (built.folder / "requirements.txt").read_bytes() == (ROOT / "requirements.txt").read_bytes()
    for name in names:
        assert name in ("main.py", "requirements.txt") or name.startswith("shared/"), name
        assert "__pycache__" not in name and not name.endswith(".pyc"), name
    for data in sorted((ROOT / "shared").glob("manifests/*.yaml")) + sorted((ROOT / "shared").glob("schemas/*.json")):
        assert data.relative_to(ROOT).as_posix() in names, f"{data} is not shipped"
    shipped_py = {n for n in names if n.endswith(".py") and n.startswith("shared/")}
    source_py = {p.relative_to(ROOT).as_posix() for p in (ROOT / "shared").rglob("*.py")
                 if "__pycache__" not in p.parts}
    assert shipped_py == source_py


def test_folder_and_zip_hold_the_same_bytes(built):
    with zipfile.ZipFile(built.zip_path) as zf:
        assert sorted(zf.namelist()) == list(built.files)
        for name in built.files:
            assert zf.read(name) == (built.folder / name).read_bytes(), name
    on_disk = sorted(p.relative_to(built.folder).as_posix() for p in built.folder.rglob("*") if p.is_file())
    assert on_disk == list(built.files)


def test_zip_is_reproducible(built, tmp_path):
    again = pkg.build(ROOT, build_dir=tmp_path / "b", dist_dir=tmp_path / "d")
    assert again.sha256 == built.sha256
    assert again.zip_path.read_bytes() == built.zip_path.read_bytes()


def _fake_root(tmp_path: Path, main_source: str, requirements: str = "functions-framework>=3.8,<4\n") -> Path:
    root = tmp_path / "repo"
    (root / "functions").mkdir(parents=True)
    (root / "shared").mkdir()
    (root / "shared" / "__init__.py").write_text("")
    (root / "functions" / "main.py").write_text(main_source)
    (root / "requirements.txt").write_text(requirements)
    return root


ALL_ENTRY_POINTS = "".join(f"def {name}(e):\n    return None\n" for name in pkg.ENTRY_POINTS)


def test_a_missing_entry_point_fails_the_build(tmp_path):
    root = _fake_root(tmp_path, ALL_ENTRY_POINTS.replace("def reconcile", "def reconcile_v2"))
    with pytest.raises(pkg.PackageError, match="reconcile"):
        pkg.build(root)
    assert not (root / "dist").exists()


@pytest.mark.parametrize("line", ["-r requirements-dev.txt", "-e .", "./local-wheel.whl"])
def test_requirements_that_cannot_resolve_in_the_deployment_fail_the_build(tmp_path, line):
    root = _fake_root(tmp_path, ALL_ENTRY_POINTS, f"functions-framework>=3.8\n{line}\n")
    with pytest.raises(pkg.PackageError, match=r"requirements\.txt line 2"):
        pkg.build(root)


def test_cli_writes_default_locations_and_reports(tmp_path, capsys):
    root = _fake_root(tmp_path, ALL_ENTRY_POINTS)
    assert pkg.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert (root / "dist" / "function-source.zip").is_file() and "sha256=" in out
    (root / "functions" / "main.py").write_text("def broken(:\n")
    assert pkg.main(["--root", str(root)]) == 1
    assert "not valid Python" in capsys.readouterr().err


# --- serving from a clean virtualenv ----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clean_venv(built, tmp_path_factory) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("fnvenv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--prefer-binary", "-r", str(built.folder / "requirements.txt")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    try:
        yield venv
    finally:
        shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture(scope="module")
def gke_backend() -> Iterator[object]:
    from sandbox.gke.realism import Realism
    from sandbox.gke.server import GkeSandbox

    sandbox = GkeSandbox(operation_delay=0.1, realism=Realism())  # GKE on an ordinary day
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


def _sandbox_env(emulators, gke_backend, token_file: Path) -> dict[str, str]:
    """The functions' environment: sandbox backends only; anything else is a closed loopback port."""
    closed = f"127.0.0.1:{_free_port()}"
    project = gke_backend.scenario.project
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GOOGLE_", "MULTUS_PROVISIONER_", "CLOUDSDK_")) and k not in (
               "FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")}
    env.update({
        "MULTUS_PROVISIONER_PROJECT": project,
        "GOOGLE_CLOUD_PROJECT": project,
        "MULTUS_PROVISIONER_COLLECTION_PREFIX": f"pkg{os.getpid()}_",
        "FIRESTORE_EMULATOR_HOST": emulators.firestore_host,
        "PUBSUB_EMULATOR_HOST": emulators.pubsub_host or closed,
        "MULTUS_PROVISIONER_GKE_ENDPOINT": gke_backend.endpoint,
        "MULTUS_PROVISIONER_ACCESS_TOKEN_FILE": str(token_file),
        "GCE_METADATA_HOST": closed,
        "GCE_METADATA_IP": closed,
        "NO_GCE_CHECK": "True",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def _wait_listening(port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"functions-framework exited early:\n{proc.stderr.read() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def servers(built, clean_venv, emulators, gke_backend, tmp_path_factory) -> Iterator[dict[str, int]]:
    """One functions-framework per entry point, started together (each takes ~1 s to import)."""
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text("sandbox-token\n")
    env = _sandbox_env(emulators, gke_backend, token_file)
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for target in pkg.ENTRY_POINTS:
            port = _free_port()
            procs[target] = (subprocess.Popen(
                [str(clean_venv / "bin" / "functions-framework"), "--target", target,
                 "--signature-type", "cloudevent", "--source", "main.py", "--host", "127.0.0.1",
                 "--port", str(port)],
                cwd=built.folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                start_new_session=True), port)
        deadline = time.monotonic() + 60
        for proc, port in procs.values():
            _wait_listening(port, proc, deadline)
        yield {target: port for target, (_, port) in procs.items()}
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)
            if proc.stderr:
                proc.stderr.close()


def _message() -> dict[str, object]:
    data = base64.b64encode(OTHER_SERVICE_ENTRY.read_bytes()).decode()
    return {"data": data, "attributes": {"logging.googleapis.com/timestamp": "2026-11-30T10:00:00Z"},
            "messageId": "1234567890", "publishTime": "2026-11-30T10:00:01.000Z"}


def _post(port: int, body: dict[str, object], headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("target", pkg.ENTRY_POINTS)
def test_each_entry_point_acknowledges_an_eventarc_cloudevent(servers, target):
    body = {"message": _message(), "subscription": "projects/pkg-test-project/subscriptions/eventarc-sub"}
    headers = {"ce-id": "1234567890", "ce-specversion": "1.0",
               "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
               "ce-source": "//pubsub.googleapis.com/projects/pkg-test-project/topics/multus-cluster-events",
               "ce-time": "2026-11-30T10:00:01Z"}
    status, text = _post(servers[target], body, headers)
    assert 200 <= status < 300, f"{target}: {status} {text[:500]}"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("target", pkg.ENTRY_POINTS)
def test_each_entry_point_acknowledges_a_pubsub_push_envelope(servers, target):
    body = {"message": _message(), "subscription": "projects/pkg-test-project/subscriptions/multus-push"}
    status, text = _post(servers[target], body, {})
    assert 200 <= status < 300, f"{target}: {status} {text[:500]}"


def test_the_clean_venv_has_no_dev_tools(clean_venv):
    proc = subprocess.run([str(clean_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                          capture_output=True, text=True, timeout=60, check=True)
    installed = {p["name"].lower() for p in json.loads(proc.stdout)}
    assert "functions-framework" in installed
    for dev in ("pytest", "ruff", "hypothesis", "python-hcl2", "multus-provisioner"):
        assert dev not in installed, dev
