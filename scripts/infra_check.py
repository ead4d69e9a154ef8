"""Terraform against the real Google provider, offline: init from a local mirror, validate, test.

`infra/` is written for `hashicorp/google`; this runs Terraform's own checks of it with that
provider, built from the Go module proxy like the other real components (`sandbox.gobuild`,
`realworld/terraform-provider-google`: the cache folder's `bin/` is laid out as Terraform's unpacked
filesystem mirror, `registry.terraform.io/hashicorp/google/VERSION/linux_amd64/...`).

Terraform runs with a CLI configuration file of ours (`TF_CLI_CONFIG_FILE`, never the user's
`~/.terraformrc`) whose only installation method is that mirror, and with a data directory of ours
(`TF_DATA_DIR`), so nothing is downloaded, the user's `infra/.terraform` is left alone and parallel
runs do not meet. `terraform init -lockfile=readonly` then checks the built provider against the
hash recorded in `infra/.terraform.lock.hcl`.

    python -m scripts.infra_check            # init, validate, `terraform test` of infra/ (= make infra-check's core)
    python -m scripts.infra_check lock       # record the built provider's hash in infra/.terraform.lock.hcl
    python -m scripts.infra_check env DIR    # write the CLI config under DIR, print the variables to export
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sandbox import gobuild

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
LOCK = INFRA / ".terraform.lock.hcl"
COMPONENT = "terraform-provider-google"
PROVIDER = "registry.terraform.io/hashicorp/google"
PLATFORM = "linux_amd64"
# `terraform test` with mock providers that fill computed values during plan (override_during) needs 1.11.
MIN_TERRAFORM = (1, 11)


class CheckError(RuntimeError):
    """Terraform or the provider cannot be used here; the message says what to do."""


def provider_version() -> str:
    """The provider version the build produces, read from the mirror path in build.toml (one place)."""
    component = gobuild.components()[COMPONENT]
    for name in component.binaries:
        m = re.fullmatch(rf"{re.escape(PROVIDER)}/(\d+\.\d+\.\d+)/{PLATFORM}/terraform-provider-google_v\1(_x5)?", name)
        if m:
            return m.group(1)
    raise CheckError(f"realworld/{COMPONENT}/build.toml names no binary under {PROVIDER}/VERSION/{PLATFORM}/")


def mirror() -> Path:
    """The filesystem mirror holding the built provider (built first if the cache lacks it)."""
    try:
        return gobuild.bin_dir(COMPONENT)
    except gobuild.BuildError as err:
        raise CheckError(str(err)) from None


def package_dir() -> Path:
    """The mirror's folder of the built provider package (what Terraform hashes and installs)."""
    return mirror() / PROVIDER / provider_version() / PLATFORM


def package_hash(folder: Path) -> str:
    """Terraform's `h1:` hash of an unpacked provider package (Go's dirhash Hash1, as the lock records it)."""
    summary = hashlib.sha256()
    for path in sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        summary.update(f"{digest}  {path.relative_to(folder).as_posix()}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def locked(lock_file: Path = LOCK) -> tuple[str, list[str]]:
    """(version, hashes) that the lock file records for hashicorp/google."""
    text = lock_file.read_text(encoding="utf-8") if lock_file.exists() else ""
    block = re.search(r'provider "' + re.escape(PROVIDER) + r'" \{(.*?)\n\}', text, re.S)
    if block is None:
        raise CheckError(f"{lock_file} records no {PROVIDER}: run `python -m scripts.infra_check lock`")
    version = re.search(r'version\s*=\s*"([^"]+)"', block.group(1))
    return (version.group(1) if version else "", re.findall(r'"((?:h1|zh):[^"]+)"', block.group(1)))


def terraform_binary() -> str:
    exe = shutil.which("terraform")
    if exe is None:
        raise CheckError(
            "terraform is not on PATH: install Terraform >= 1.11 (this project's machine image ships 1.11.4 "
            "in /usr/local/bin) and run the check again"
        )
    out = subprocess.run([exe, "version", "-json"], capture_output=True, text=True, check=False,
                         env=_clean_env()).stdout
    try:
        version = json.loads(out)["terraform_version"]
    except (ValueError, KeyError):
        raise CheckError(f"`{exe} version -json` printed no version: {out[:200]!r}") from None
    parts = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if parts < MIN_TERRAFORM:
        raise CheckError(f"terraform {version} at {exe} is too old: `terraform test` here needs >= "
                         f"{MIN_TERRAFORM[0]}.{MIN_TERRAFORM[1]} (mock providers that fill values during plan)")
    return exe


def _clean_env() -> dict[str, str]:
    """The caller's environment without any Terraform setting that could reach the network or the user's files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "CHECKPOINT_"))}
    env.update({"CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"})
    return env


@dataclasses.dataclass
class Terraform:
    """Terraform with our CLI configuration (mirror only) and data directory, both under `state`."""

    state: Path
    exe: str = ""
    mirror_dir: Path | None = None

    def __post_init__(self) -> None:
        self.exe = self.exe or terraform_binary()
        self.mirror_dir = self.mirror_dir or mirror()
        self.state.mkdir(parents=True, exist_ok=True)
        self.config = self.state / "terraform.rc"
        # Only the mirror: a provider it lacks fails to install instead of being fetched.
        self.config.write_text(
            "# Written by scripts/infra_check.py: install providers from the local mirror only.\n"
            "disable_checkpoint = true\n"
            "provider_installation {\n"
            "  filesystem_mirror {\n"
            f"    path    = {json.dumps(str(self.mirror_dir))}\n"
            f"    include = [{json.dumps(PROVIDER)}]\n"
            "  }\n"
            "}\n",
            encoding="utf-8",
        )

    def env(self, data_dir: Path) -> dict[str, str]:
        env = _clean_env()
        env.update({"TF_CLI_CONFIG_FILE": str(self.config), "TF_DATA_DIR": str(data_dir)})
        return env

    def run(self, module: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`terraform -chdir=module ARGS` with its own data directory (one per module folder)."""
        data_dir = self.state / ("data-" + re.sub(r"[^A-Za-z0-9]+", "-", str(module.resolve())).strip("-"))
        return subprocess.run([self.exe, f"-chdir={module}", *args], capture_output=True, text=True,
                              timeout=timeout, check=False, env=self.env(data_dir))

    def init(self, module: Path) -> subprocess.CompletedProcess[str]:
        # -lockfile=readonly: the built provider must match the hash in the lock file; init never rewrites it.
        return self.run(module, "init", "-backend=false", "-input=false", "-no-color", "-lockfile=readonly")

    def validate(self, module: Path) -> subprocess.CompletedProcess[str]:
        return self.run(module, "validate", "-json", "-no-color")

    def test(self, module: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(module, "test", "-no-color", *args, timeout=1200)

    def lock(self, module: Path) -> subprocess.CompletedProcess[str]:
        """Add the built provider's hash to the module's lock file (keeps the hashes already there)."""
        return self.run(module, "providers", "lock", f"-fs-mirror={self.mirror_dir}", f"-platform={PLATFORM}",
                        "-no-color", "hashicorp/google")


def test_results(stdout: str) -> tuple[dict[str, str], dict[str, object]]:
    """From `terraform test -json`: {"FILE/RUN": status} and the summary line's fields."""
    runs: dict[str, str] = {}
    summary: dict[str, object] = {}
    for line in stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("type") == "test_run" and msg.get("test_run", {}).get("progress") == "complete":
            run = msg["test_run"]
            runs[f"{msg.get('@testfile', '')}/{msg.get('@testrun', '')}"] = run.get("status", "")
        elif msg.get("type") == "test_summary":
            summary = msg.get("test_summary", {})
    return runs, summary


def diagnostics(stdout: str, stderr: str = "") -> str:
    """Readable errors from a `-json` validate or test run (or the raw text when it is not JSON)."""
    out = []
    for line in stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        for diag in msg.get("diagnostics", []) or ([msg["diagnostic"]] if "diagnostic" in msg else []):
            where = diag.get("range", {})
            loc = f"{where.get('filename', '')}:{where.get('start', {}).get('line', '')}" if where else ""
            out.append(f"{diag.get('severity')}: {diag.get('summary')} {loc}\n  {diag.get('detail', '')}")
    return "\n".join(x for x in out if x.strip()) + ("\n" + stderr if stderr.strip() else "")


def check(state: Path) -> int:
    tf = Terraform(state)
    print(f"[infra] hashicorp/google {provider_version()} from {tf.mirror_dir}", flush=True)
    steps = [("init", lambda: tf.init(INFRA)), ("validate", lambda: tf.validate(INFRA)),
             ("test", lambda: tf.test(INFRA))]
    for name, step in steps:
        proc = step()
        print(f"[infra] terraform {name}: exit {proc.returncode}", flush=True)
        if proc.returncode != 0 or name == "test":
            print(diagnostics(proc.stdout, proc.stderr) if name == "validate" else proc.stdout + proc.stderr)
        if proc.returncode != 0:
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.infra_check", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("check", "lock", "env"), nargs="?", default="check")
    parser.add_argument("dir", nargs="?", help="env: where to write the CLI configuration and data directory")
    args = parser.parse_args(argv)
    try:
        if args.action == "env":
            state = Path(args.dir or tempfile.mkdtemp(prefix="multus-terraform-")).resolve()
            tf = Terraform(state)
            for key, value in tf.env(state / "data").items():
                if key.startswith(("TF_", "CHECKPOINT_")):
                    print(f"export {key}={value}")
            return 0
        with tempfile.TemporaryDirectory(prefix="multus-terraform-") as tmp:
            if args.action == "lock":
                proc = Terraform(Path(tmp)).lock(INFRA)
                print(proc.stdout + proc.stderr)
                return proc.returncode
            return check(Path(tmp))
    except CheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
