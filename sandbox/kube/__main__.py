"""`python -m sandbox.kube --port N --kubeconfig PATH [--nodes N] [--token-file F]`.

Binds 127.0.0.1, prints its URL first (flushed) so a parent can read it, writes the kubeconfig,
and stops cleanly on SIGTERM/SIGINT. Without --token-file a random token is generated (it is in
the kubeconfig, written 0600); with one, the token is read from it, or written to it if absent.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading

from sandbox.kube.server import KubeApiServer


def _token(path: str | None) -> str:
    if not path:
        return secrets.token_urlsafe(24)
    if os.path.exists(path):
        with open(path) as f:
            token = f.read().strip()
        if not token:
            raise SystemExit(f"--token-file {path}: the file is empty")
        return token
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.kube", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    p.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    p.add_argument("--nodes", default="1", help="number of nodes, or comma-separated node names")
    p.add_argument("--token-file", help="read the Bearer token from this file (created if absent)")
    p.add_argument("--name", default="sandbox", help="cluster/context name")
    p.add_argument("--crd-delay", type=float, default=0.2)
    p.add_argument("--rollout-delay", type=float, default=0.5)
    p.add_argument("--pod-delay", type=float, default=0.2)
    a = p.parse_args(argv)
    if not 0 <= a.port <= 65535:
        p.error("--port must be between 0 and 65535")
    nodes: int | list[str] = int(a.nodes) if a.nodes.isdigit() else [n for n in a.nodes.split(",") if n]
    try:
        server = KubeApiServer(token=_token(a.token_file), nodes=nodes, crd_delay=a.crd_delay,
                               rollout_delay=a.rollout_delay, pod_delay=a.pod_delay, name=a.name)
    except ValueError as e:
        p.error(str(e))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    url = server.start(a.port)
    try:
        print(url, flush=True)
        server.write_kubeconfig(a.kubeconfig, a.name)
        print(f"kubeconfig: {a.kubeconfig}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
