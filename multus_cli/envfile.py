"""The sandbox's env file: KEY=VALUE lines, no shell, no expansion.

`multus-provisioner sandbox` writes it (`sandbox.stack`), every online command reads it with
`--sandbox ENV_FILE`; the format is the contract between the two, so it lives on the reading
side and the sandbox imports it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def load_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a KEY=VALUE env file as the sandbox writes it (no shell, no expansion)."""
    out: dict[str, str] = {}
    text = Path(path).read_text()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            raise ValueError(f"{path}:{n}: expected KEY=VALUE, got {line[:80]!r}")
        out[key] = value
    return out


def write_env_file(path: str | os.PathLike[str], env: Mapping[str, str], *, header: str) -> Path:
    """Write `env` sorted by key, one KEY=VALUE per line, after a `# header` line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for key, value in env.items():
        if "\n" in value or "\n" in key:
            raise ValueError(f"env file value of {key!r} holds a newline")
    lines = [f"# {header}"] + [f"{k}={v}" for k, v in sorted(env.items())]
    path.write_text("\n".join(lines) + "\n")
    return path
