"""Install the Debian packages the real CNI data path needs, only when they are missing.

`python -m scripts.syspkgs` (run by `make test`'s setup and `make realworld`): user-mode-linux
(the guest kernel with IPVLAN), kmod (modprobe for its modules), iputils-ping and iputils-arping
(the layer-2 reachability checks). Each is checked by the file it provides; if any is missing and
this is a Debian-like machine where we are root, `apt-get update` then `apt-get install -y` of the
missing ones; otherwise a clear message says what to install, and the exit code is 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# package -> a file it installs (what the sandbox calls)
PACKAGES = {
    "user-mode-linux": "/usr/bin/linux.uml",
    "kmod": "/usr/bin/kmod",
    "iputils-ping": "/usr/bin/ping",
    "iputils-arping": "/usr/bin/arping",
}


def missing() -> list[str]:
    return [pkg for pkg, path in PACKAGES.items() if not Path(path).exists()]


def main() -> int:
    need = missing()
    if not need:
        return 0
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        print(f"error: the real CNI path needs the Debian packages {', '.join(need)}; install them as root "
              f"(`apt-get install -y {' '.join(need)}`) and run again", file=sys.stderr)
        return 1
    print(f"[syspkgs] installing {', '.join(need)} (apt-get)", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "--no-install-recommends", *need]):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
            print(f"error: {' '.join(argv)} failed (exit {proc.returncode}); the real CNI path needs "
                  f"{', '.join(need)}:\n{tail}", file=sys.stderr)
            return 1
    still = missing()
    if still:
        print(f"error: apt-get finished but {', '.join(still)} is still missing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
