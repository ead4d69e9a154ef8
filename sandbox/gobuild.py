"""Pinned builds of the real upstream components (Go modules), cached under the user's home.

Nothing here is downloaded prebuilt: each component is a small wrapper module in `realworld/NAME/`
(`go.mod` and `go.sum` pin the upstream version and every module's checksum, as `requirements.txt`
pins the Python side; `build.toml` names the binaries and their package paths). The first build
of a component compiles it with the machine's Go through the Go module proxy; the binaries then go
to `~/.cache/multus-provisioner/realworld/NAME-DIGEST/bin/`, where DIGEST covers the wrapper's
files and the Go version. A fresh clone on the same machine (CI's included) finds them there, and a
change of pin builds a new directory instead of reusing a stale one.

Why a cache outside the clone: CI runs in a fresh clone, and compiling Kubernetes takes minutes on
two cores; the module cache (`GOMODCACHE`) and Go's build cache (`GOCACHE`) are Go's defaults,
also under the home directory, so even a new pin recompiles only what changed.

This module imports nothing of ours: it is used by the sandbox's servers (`sandbox.kube.real`),
the CNI data path and the infra checks alike, and by `python -m sandbox.gobuild` (`make realworld`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REALWORLD = ROOT / "realworld"
MIN_GO = (1, 24)
# A Kubernetes build needs several GiB of module and build cache; less than this fails midway with
# an obscure linker error, so it is checked first.
MIN_FREE_BYTES = 6 * 1024**3
HEARTBEAT_SECONDS = 30.0


class BuildError(RuntimeError):
    """A component cannot be built here; the message says what to do about it."""


@dataclasses.dataclass(frozen=True)
class Component:
    """One wrapper module in `realworld/` and the binaries it builds."""

    name: str
    folder: Path
    title: str
    binaries: dict[str, str]  # binary name -> package path ("." = the wrapper's own main)
    ldflags: tuple[str, ...]
    tags: tuple[str, ...]

    def digest(self, go_version: str) -> str:
        """What the cached binaries depend on: the wrapper's files and the Go toolchain."""
        h = hashlib.sha256(go_version.encode())
        for path in sorted(self.folder.rglob("*")):
            if path.is_file():
                h.update(path.relative_to(self.folder).as_posix().encode() + b"\0")
                h.update(path.read_bytes() + b"\0")
        return h.hexdigest()[:16]


def cache_root() -> Path:
    """`$MULTUS_PROVISIONER_CACHE`, else `$XDG_CACHE_HOME/multus-provisioner`, else `~/.cache/…`."""
    explicit = os.environ.get("MULTUS_PROVISIONER_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "multus-provisioner"


def components() -> dict[str, Component]:
    """Every wrapper module under `realworld/`, by folder name."""
    found: dict[str, Component] = {}
    for spec in sorted(REALWORLD.glob("*/build.toml")):
        data = tomllib.loads(spec.read_text(encoding="utf-8"))
        binaries = data.get("binaries")
        if not isinstance(binaries, dict) or not binaries:
            raise BuildError(f"{spec}: [binaries] must name at least one binary")
        found[spec.parent.name] = Component(
            name=spec.parent.name,
            folder=spec.parent,
            title=str(data.get("title", spec.parent.name)),
            binaries={str(k): str(v) for k, v in binaries.items()},
            ldflags=tuple(str(x) for x in data.get("ldflags", ())),
            tags=tuple(str(x) for x in data.get("tags", ())),
        )
    return found


def go_version() -> str:
    """`go1.26.8 linux/amd64`; a missing or too old Go is a `BuildError` saying what to install."""
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "Go is not installed (the real components are built from pinned Go modules): install Go "
            f">= {MIN_GO[0]}.{MIN_GO[1]} (Debian: `apt-get install golang`, or the machine image's Go) "
            "and make sure `go` is on PATH, then run `make realworld`"
        )
    out = subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout.strip()
    match = re.search(r"go(\d+)\.(\d+)", out)
    if not match or (int(match[1]), int(match[2])) < MIN_GO:
        raise BuildError(f"{out or 'go version failed'}: Go >= {MIN_GO[0]}.{MIN_GO[1]} is needed to build the "
                         "real components")
    return out.removeprefix("go version ").strip()


def _go_env(name: str) -> Path:
    out = subprocess.run(["go", "env", name], capture_output=True, text=True, check=False).stdout.strip()
    return Path(out) if out else Path.home()


def _check_disk(*paths: Path) -> None:
    for path in paths:
        probe = path
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if free < MIN_FREE_BYTES:
            raise BuildError(
                f"only {free / 1024**3:.1f} GiB free under {probe} (a first build needs about "
                f"{MIN_FREE_BYTES // 1024**3} GiB for Go's module and build caches): free some space, "
                "or point MULTUS_PROVISIONER_CACHE, GOMODCACHE and GOCACHE at a larger disk"
            )


def _say(message: str) -> None:
    print(f"[realworld] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder per cache at a time: parallel test workers wait for the first one's build."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_with_heartbeat(argv: Sequence[str], cwd: Path, env: dict[str, str], label: str) -> None:
    """Run `go build`, printing elapsed time every half minute so a long first build shows life."""
    started = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            _say(f"  still building {label} ({time.monotonic() - started:.0f} s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False)
    finally:
        done.set()
        thread.join()
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        if "no space left" in tail:
            raise BuildError(f"building {label}: the disk is full ({tail.splitlines()[-1]}); free some space and "
                             "run `make realworld`")
        raise BuildError(f"building {label} failed (exit {proc.returncode}):\n{tail}")


def bin_dir(name: str, build: bool = True) -> Path:
    """The folder holding component `name`'s binaries, built first if the cache lacks them."""
    table = components()
    if name not in table:
        raise BuildError(f"unknown component {name!r}; known: {', '.join(sorted(table))}")
    component = table[name]
    version = go_version()
    target = cache_root() / "realworld" / f"{name}-{component.digest(version)}"
    marker = target / "built.json"
    if marker.exists():
        return target / "bin"
    if not build:
        raise BuildError(f"{component.title} is not built yet: run `make realworld`")
    with _locked(cache_root() / "realworld" / f".{name}.lock"):
        if marker.exists():  # another worker built it while this one waited
            return target / "bin"
        _build(component, version, target)
    return target / "bin"


def _build(component: Component, version: str, target: Path) -> None:
    _check_disk(cache_root(), _go_env("GOMODCACHE"), _go_env("GOCACHE"))
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    env = dict(os.environ)
    # -mod=readonly: go.sum is the pin; a build never rewrites it. GOTOOLCHAIN=local: no toolchain
    # download (nothing but the module proxy is reachable), the machine's Go builds it.
    env.update({"GOFLAGS": "-mod=readonly -buildvcs=false", "GOTOOLCHAIN": "local"})
    started = time.monotonic()
    _say(f"building {component.title}: {', '.join(component.binaries)} with {version}")
    _say("  (first build only; later runs reuse " + str(target) + ")")
    for binary, package in component.binaries.items():
        argv = ["go", "build", "-trimpath", "-o", str(staging / "bin" / binary)]
        if component.ldflags:
            argv += ["-ldflags", " ".join(["-s", "-w", *component.ldflags])]
        else:
            argv += ["-ldflags", "-s -w"]
        if component.tags:
            argv += ["-tags", ",".join(component.tags)]
        argv.append(package)
        _run_with_heartbeat(argv, component.folder, env, f"{component.name}/{binary}")
        _say(f"  {binary} built ({time.monotonic() - started:.0f} s so far)")
    elapsed = time.monotonic() - started
    (staging / "built.json").write_text(
        json.dumps({"component": component.name, "go": version, "seconds": round(elapsed, 1),
                    "binaries": sorted(component.binaries)}, indent=2) + "\n",
        encoding="utf-8",
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    _say(f"{component.name} built in {elapsed:.0f} s -> {target / 'bin'}")


def binary(component: str, name: str | None = None) -> Path:
    """The path of one built binary (`binary("kube", "kube-apiserver")`), building if needed."""
    path = bin_dir(component) / (name or component)
    if not path.exists():
        raise BuildError(f"{path} is missing from the cache: remove {path.parent.parent} and run `make realworld`")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.gobuild", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("build", "list", "path"), nargs="?", default="build")
    parser.add_argument("names", nargs="*", help="components (default: all)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    table = components()
    names = args.names or sorted(table)
    try:
        if args.action == "list":
            version = go_version()
            rows = []
            for name in names:
                c = table[name]
                target = cache_root() / "realworld" / f"{name}-{c.digest(version)}"
                rows.append({"component": name, "title": c.title, "binaries": sorted(c.binaries),
                             "cached": (target / "built.json").exists(), "path": str(target / "bin")})
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    print(f"{row['component']:<12} {'cached' if row['cached'] else 'not built':<10} {row['title']}")
            return 0
        started = time.monotonic()
        paths = {name: str(bin_dir(name)) for name in names}
        if args.json:
            print(json.dumps(paths, indent=2))
        elif args.action == "path":
            for path in paths.values():
                print(path)
        else:
            _say(f"ready in {time.monotonic() - started:.0f} s: {', '.join(names)}")
        return 0
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
