"""The runtime lock: requirements.txt is requirements.in resolved (exact pins with hashes), it is
current, the declared ranges are true, and this virtualenv runs exactly the locked versions.

`make lock` regenerates the lock; this test does not talk to PyPI, so it cannot fail because a
new release appeared, only because the files disagree with each other or with what is installed.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s\\;]+)")


def declared() -> dict[str, Requirement]:
    out = {}
    for line in (ROOT / "requirements.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def locked() -> dict[str, dict]:
    """name -> {version, hashes, via} from pip-compile's output."""
    out: dict[str, dict] = {}
    current = None
    for raw in (ROOT / "requirements.txt").read_text().splitlines():
        line = raw.strip()
        m = _PIN.match(line)
        if m:
            current = {"version": Version(m["version"]), "hashes": [], "via": []}
            out[canonicalize_name(m["name"])] = current
            continue
        if current is None:
            continue
        if line.startswith("--hash=sha256:"):
            current["hashes"].append(line.split(":", 1)[1].rstrip(" \\"))
        elif line.startswith("# via"):
            current["via"].append(line.removeprefix("# via").strip())
        elif line.startswith("#   "):
            current["via"].append(line.removeprefix("#").strip())
    return out


def test_every_pin_is_exact_and_hashed():
    lock = locked()
    assert len(lock) > 10, "requirements.txt is not a pip-compile lock"
    for name, pin in lock.items():
        assert pin["hashes"], f"{name} has no --hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in pin["hashes"]), name
    for raw in (ROOT / "requirements.txt").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "--hash")):
            assert _PIN.match(line), f"not an exact pin: {line!r}"


def test_the_lock_is_current_with_the_declared_ranges():
    decl, lock = declared(), locked()
    for name, req in decl.items():
        assert name in lock, f"{name} is declared in requirements.in but not locked: run `make lock`"
        assert req.specifier.contains(lock[name]["version"]), \
            f"{name}=={lock[name]['version']} is outside the declared {req.specifier}: run `make lock`"
    direct = {name for name, pin in lock.items() if any("-r requirements.in" in v for v in pin["via"])}
    assert direct == set(decl), f"the lock's direct requirements {sorted(direct)} differ from requirements.in"


def test_declared_lower_ends_are_the_tested_versions():
    """A range's lower end is what the suite runs against (the locked release series), so the
    range claims nothing older than what is tested."""
    decl, lock = declared(), locked()
    for name, req in decl.items():
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lows, f"{name}: declare a lower end (>=)"
        low, pinned = lows[0], lock[name]["version"]
        series = pinned.release[: len(low.release)]
        assert low.release == series, f"{name}: lower end {low} but the lock tests {pinned}; raise it to {pinned}"


def test_this_virtualenv_runs_the_locked_versions():
    for name, pin in locked().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{name} is locked but not installed: run `make setup`") from None
        assert installed == pin["version"], f"{name}: installed {installed}, locked {pin['version']}"
