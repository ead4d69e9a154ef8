"""The emulator launcher: prerequisites, start/stop without leftovers, the module entry, resets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sandbox.emulators import EmulatorError, EmulatorProcess, Emulators, find_prerequisites

pytestmark = pytest.mark.emulator
ROOT = Path(__file__).resolve().parent.parent


def _gone(pid: int) -> bool:
    """True when neither the process nor any member of its process group exists any more."""
    try:
        os.killpg(pid, 0)
        return False
    except ProcessLookupError:
        pass
    return not Path(f"/proc/{pid}").exists()


def _wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return all(_gone(p) for p in pids)


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc (no psutil needed)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _answers(host: str) -> bool:
    with urllib.request.urlopen(f"http://{host}/", timeout=5) as resp:
        return resp.status == 200


# --------------------------------------------------------------------------- prerequisites

def test_prerequisites_present_on_this_machine() -> None:
    assert find_prerequisites() == []


def test_prerequisites_name_the_exact_fix(tmp_path: Path) -> None:
    missing = find_prerequisites(java=str(tmp_path / "no-java"), root=tmp_path)
    text = "\n".join(missing)
    assert "Java runtime >= 17" in text and "openjdk-17-jre-headless" in text
    assert "google-cloud-cli-firestore-emulator" in text
    assert "google-cloud-cli-pubsub-emulator" in text
    assert len(missing) == 3


def test_old_java_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    fake.chmod(0o755)
    missing = find_prerequisites(java=str(fake), firestore=False, pubsub=False)
    assert len(missing) == 1 and "reports 11" in missing[0] and ">= 17" in missing[0]


# --------------------------------------------------------------------------- lifecycle

def test_start_and_stop_leave_no_process() -> None:
    emu = Emulators(project="multus-lifecycle")
    with emu:
        pids = emu.pids
        assert len(pids) == 2
        for pid in pids:
            assert os.getpgid(pid) == pid, "each emulator leads its own process group"
            assert b"java" in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert emu.firestore_host and emu.firestore_host.startswith("127.0.0.1:")
        assert emu.pubsub_host and emu.pubsub_host.startswith("127.0.0.1:")
        assert _answers(emu.firestore_host) and _answers(emu.pubsub_host)
        assert emu.env() == {"FIRESTORE_EMULATOR_HOST": emu.firestore_host,
                             "PUBSUB_EMULATOR_HOST": emu.pubsub_host,
                             "GOOGLE_CLOUD_PROJECT": "multus-lifecycle"}
    assert _wait_gone(pids, timeout=1.0), "stop() returned while emulator processes were still alive"
    emu.stop()  # idempotent


def test_external_hosts_start_nothing() -> None:
    emu = Emulators(firestore_host="127.0.0.1:9", pubsub_host="127.0.0.1:10").start()
    assert emu.pids == []
    assert emu.env()["FIRESTORE_EMULATOR_HOST"] == "127.0.0.1:9"
    assert emu.env()["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:10"
    emu.stop()


def test_a_dying_emulator_is_reported_with_its_output(tmp_path: Path) -> None:
    proc = EmulatorProcess("firestore", ["java", "-cp", str(tmp_path / "missing.jar"), "No.Such.Main"], 1)
    proc.spawn()
    try:
        with pytest.raises(EmulatorError) as info:
            proc.wait_ready(time.monotonic() + 30)
        message = str(info.value)
        assert "exited with status" in message and "No.Such.Main" in message
    finally:
        proc.stop()
    assert _gone(proc.proc.pid)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_module_entry_prints_hosts_first_and_exits_clean(tmp_path: Path, signum: int) -> None:
    env_file = tmp_path / "sandbox.env"
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.emulators", "--env-file", str(env_file),
                             "--project", "multus-entry"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().strip()
        second = proc.stdout.readline().strip()
        assert first.startswith("FIRESTORE_EMULATOR_HOST=127.0.0.1:"), (first, proc.stderr.read())
        assert second.startswith("PUBSUB_EMULATOR_HOST=127.0.0.1:"), second
        fs_host, ps_host = first.split("=", 1)[1], second.split("=", 1)[1]
        assert _answers(fs_host) and _answers(ps_host)
        deadline = time.monotonic() + 10
        while not env_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = env_file.read_text().splitlines()
        assert lines[:2] == [first, second] and "GOOGLE_CLOUD_PROJECT=multus-entry" in lines
        javas = _children(proc.pid)
        assert len(javas) == 2 and all(b"java" in Path(f"/proc/{p}/cmdline").read_bytes() for p in javas)
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
        assert _wait_gone(javas, timeout=2), "the module left an emulator behind"
        assert not env_file.exists(), "a stale env file would point at dead ports"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------------- resets

def test_reset_firestore_clears_one_project_only(emulators: Emulators, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulators.firestore_host)
    wiped = firestore.Client(project="multus-reset")
    kept = firestore.Client(project="multus-reset-keep")
    try:
        wiped.collection("things").document("a").set({"n": 1})
        kept.collection("things").document("b").set({"n": 2})
        emulators.reset_firestore(project="multus-reset")
        assert not wiped.collection("things").document("a").get().exists
        assert kept.collection("things").document("b").get().exists
    finally:
        wiped.close()
        kept.close()


def test_reset_pubsub_deletes_topics_and_subscriptions(emulators: Emulators,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulators.pubsub_host)
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        for project in ("multus-reset", "multus-reset-keep"):
            topic = publisher.create_topic(name=f"projects/{project}/topics/requests").name
            subscriber.create_subscription(name=f"projects/{project}/subscriptions/requests-sub", topic=topic)
        emulators.reset_pubsub(project="multus-reset")
        assert list(publisher.list_topics(project="projects/multus-reset")) == []
        assert list(subscriber.list_subscriptions(project="projects/multus-reset")) == []
        assert [t.name for t in publisher.list_topics(project="projects/multus-reset-keep")] == [
            "projects/multus-reset-keep/topics/requests"]
        # The names are free again: a new session can recreate them.
        publisher.create_topic(name="projects/multus-reset/topics/requests")
    finally:
        emulators.reset_pubsub(project="multus-reset")
        emulators.reset_pubsub(project="multus-reset-keep")
        subscriber.close()
        publisher.transport.close()
