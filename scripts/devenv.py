"""Make the repository's virtualenv run the CLI from the repository (`make setup` calls this).

The project is not a distribution: the deployed code is `functions/main.py` + `shared/` in a zip
(`make package`), and the tools (`multus_cli/`, `sandbox/`, `scripts/`) run from this checkout. So
instead of installing packages named `shared` or `sandbox` into site-packages, the virtualenv
gets one `.pth` line naming this checkout, and a `multus-provisioner` launcher in its `bin/`.
"""

from __future__ import annotations

import os
import stat
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PTH_NAME = "multus_provisioner_checkout.pth"
LAUNCHER = """#!{python}
# multus-provisioner, run from the checkout at {root} (written by scripts/devenv.py).
import sys

from multus_cli.main import main

sys.exit(main())
"""


def install(prefix: Path | None = None) -> tuple[Path, Path]:
    """Write the .pth file and the launcher into the running interpreter's environment."""
    if prefix is None and sys.prefix == sys.base_prefix:
        raise SystemExit("scripts.devenv: run it with the virtualenv's python, not the system one")
    purelib = Path(sysconfig.get_paths()["purelib"])
    pth = purelib / PTH_NAME
    pth.write_text(f"{ROOT}\n")
    bindir = Path(sysconfig.get_paths()["scripts"])
    launcher = bindir / "multus-provisioner"
    launcher.write_text(LAUNCHER.format(python=sys.executable, root=ROOT))
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return pth, launcher


if __name__ == "__main__":
    pth, launcher = install()
    print(f"{os.path.relpath(pth)} -> {ROOT}\n{os.path.relpath(launcher)}")
