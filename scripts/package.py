"""Build the deployable Cloud Functions source: `make package` -> build/function-source/ + dist/function-source.zip.

What ships is exactly what the functions need at run time, and nothing that could leak test or dev
tooling into production:
- `functions/main.py` as `main.py` at the root (Cloud Functions looks for the entry points there);
- the `shared/` package, with its data files (`manifests/*.yaml`, `schemas/*.json`);
- the runtime `requirements.txt` (never requirements-dev.txt).
No sandbox/, tests/, caches or bytecode. The zip is deterministic (sorted entries, fixed timestamps and
modes), so an unchanged tree gives a byte-identical zip and Terraform (which names the uploaded object
after its hash) redeploys only when the code changed.

Before writing anything it checks that main.py defines every entry point Terraform wires, so a renamed
function fails the build instead of the deployment.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import shutil
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The entry points infra/main.tf wires to topics (keep in sync; tests/test_infra.py checks both ways).
ENTRY_POINTS = ("on_cluster_event", "on_node_pool_event", "on_nad_request", "reconcile")

SHARED_SUFFIXES = (".py", ".yaml", ".yml", ".json")
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: no build-time leaks into the hash


class PackageError(Exception):
    """The source tree cannot be packaged; the message says what is missing or wrong."""


@dataclass(frozen=True)
class Package:
    folder: Path
    zip_path: Path
    files: tuple[str, ...]  # archive names, sorted
    sha256: str  # of the zip


def entry_points_defined(main_py: Path) -> set[str]:
    """Top-level function names in main.py (parsed, not imported: packaging must not need the SDKs)."""
    try:
        tree = ast.parse(main_py.read_text(encoding="utf-8"), filename=str(main_py))
    except SyntaxError as e:
        raise PackageError(f"{main_py}: not valid Python ({e.msg}, line {e.lineno})") from None
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def collect(root: Path = ROOT) -> dict[str, Path]:
    """Map archive name -> source file for everything that ships."""
    main_py = root / "functions" / "main.py"
    requirements = root / "requirements.txt"
    shared = root / "shared"
    for required in (main_py, requirements, shared / "__init__.py"):
        if not required.is_file():
            raise PackageError(f"missing {required.relative_to(root)}")
    missing = [name for name in ENTRY_POINTS if name not in entry_points_defined(main_py)]
    if missing:
        raise PackageError(f"functions/main.py does not define entry point(s): {', '.join(missing)}")
    _check_runtime_requirements(requirements)

    files: dict[str, Path] = {"main.py": main_py, "requirements.txt": requirements}
    for path in sorted(shared.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or _SKIP_DIRS.intersection(rel.parts) or path.suffix not in SHARED_SUFFIXES:
            continue
        files[rel.as_posix()] = path
    return files


def _check_runtime_requirements(requirements: Path) -> None:
    """The shipped requirements must not pull in dev files (`-r requirements-dev.txt`) or local paths."""
    for number, raw in enumerate(requirements.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r", "-c", "-e", "--requirement", "--constraint", "--editable", ".", "/")):
            raise PackageError(f"requirements.txt line {number}: {line!r} cannot be resolved in the deployment")


def write_zip(files: dict[str, Path], zip_path: Path) -> None:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[name].read_bytes())
    tmp.replace(zip_path)


def write_folder(files: dict[str, Path], folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    for name, src in files.items():
        dst = folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def build(root: Path = ROOT, build_dir: Path | None = None, dist_dir: Path | None = None) -> Package:
    """Build the folder and the zip; returns what was written."""
    files = collect(root)
    folder = (build_dir or root / "build") / "function-source"
    zip_path = (dist_dir or root / "dist") / "function-source.zip"
    write_folder(files, folder)
    write_zip(files, zip_path)
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    return Package(folder=folder, zip_path=zip_path, files=tuple(sorted(files)), sha256=digest)


def _summary(pkg: Package, root: Path) -> Iterable[str]:
    def show(p: Path) -> str:
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    yield f"{show(pkg.folder)}/ ({len(pkg.files)} files)"
    yield f"{show(pkg.zip_path)} sha256={pkg.sha256}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.package", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--build-dir", type=Path, help="where function-source/ goes (default: ROOT/build)")
    parser.add_argument("--dist-dir", type=Path, help="where function-source.zip goes (default: ROOT/dist)")
    args = parser.parse_args(argv)
    try:
        pkg = build(args.root.resolve(), args.build_dir, args.dist_dir)
    except PackageError as e:
        print(f"package: {e}", file=sys.stderr)
        return 1
    for line in _summary(pkg, args.root.resolve()):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
