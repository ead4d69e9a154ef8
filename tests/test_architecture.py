"""The layers, checked from the source: who may import whom (every import, lazy ones included).

    functions/main.py ─► shared.app ─► shared.flows ─► shared.ports, shared.core
                                   └─► shared.adapters ─► shared.ports, shared.core
    multus_cli ─► shared          sandbox.commands / sandbox.demo ─► multus_cli, shared
    sandbox.gke, sandbox.kube, sandbox.emulators: nothing of ours (they are the outside world),
    but sandbox.kube may use sandbox.gobuild (the pinned builds of the real components)

Nothing that `make package` ships (functions/ and shared/) may import the CLI, the sandbox,
scripts or tests; the core imports nothing but the core; the flows never an adapter.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("shared", "multus_cli", "sandbox", "scripts", "tests", "functions")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module of ours that `path` imports anywhere (top level, functions, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in OURS}


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _known(name: str, modules: set[str]) -> str | None:
    """The module of ours that an imported name belongs to (`shared.core.nad.render_nad` -> `shared.core.nad`)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


MODULES = {module_name(p) for p in sources(*OURS)} | {"functions.main"}

# (who, may import) as module-name prefixes; a module matches the longest rule prefix.
RULES: dict[str, tuple[str, ...]] = {
    "shared.core": ("shared.core",),
    "shared.ports": ("shared.core", "shared.ports"),
    "shared.adapters": ("shared.core", "shared.ports", "shared.adapters"),
    "shared.flows": ("shared.core", "shared.ports", "shared.flows"),
    "shared.app": ("shared.core", "shared.ports", "shared.flows", "shared.adapters", "shared.app"),
    "shared": ("shared",),
    "functions": ("shared.core", "shared.app", "shared.flows.context"),
    "multus_cli": ("multus_cli", "shared"),
    "sandbox.gke": ("sandbox.gke",),
    "sandbox.kube": ("sandbox.kube", "sandbox.gobuild"),
    "sandbox.gobuild": (),
    "sandbox.emulators": (),
    "sandbox.grpc_proxy": ("sandbox.gke.faults",),
    "sandbox": ("sandbox", "multus_cli", "shared"),
    "scripts": ("scripts", "shared", "sandbox", "multus_cli"),
    "tests": OURS,
}


def rule_for(module: str) -> tuple[str, tuple[str, ...]]:
    best = max((prefix for prefix in RULES if module == prefix or module.startswith(prefix + ".")), key=len)
    return best, RULES[best]


@pytest.mark.parametrize("path", sources(*OURS), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: Path) -> None:
    me = module_name(path)
    layer, allowed = rule_for(me)
    wrong = []
    for name in sorted(imports_of(path)):
        target = _known(name, MODULES) or name
        if not any(target == a or target.startswith(a + ".") for a in allowed):
            wrong.append(target)
    assert not wrong, f"{me} ({layer}) may import only {allowed}, but imports {sorted(set(wrong))}"


def test_the_rules_catch_a_wrong_import(tmp_path: Path) -> None:
    """The checker itself: a core module importing an adapter, or shared importing the CLI, is caught."""
    assert "shared.adapters.store" in imports_of(ROOT / "shared" / "app.py") or \
        "shared.adapters.store.Store" in imports_of(ROOT / "shared" / "app.py")
    layer, allowed = rule_for("shared.core.nad")
    assert layer == "shared.core" and not any("shared.adapters".startswith(a) for a in allowed)
    layer, allowed = rule_for("shared.flows.nad")
    assert not any("shared.adapters.kube".startswith(a + ".") for a in allowed)
    assert not any("multus_cli.main".startswith(a) for a in rule_for("shared.app")[1])


def test_the_deployed_package_imports_nothing_outside_it() -> None:
    """What `make package` ships must resolve in the cloud, where only shared/ and main.py exist."""
    for path in sources("shared", "functions"):
        outside = {n for n in imports_of(path) if n.split(".")[0] not in ("shared",)}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_flows_use_ports_not_adapters() -> None:
    for path in sources("shared/flows"):
        adapters = {n for n in imports_of(path) if n.startswith("shared.adapters")}
        assert not adapters, f"{path.relative_to(ROOT)} imports {sorted(adapters)}"
