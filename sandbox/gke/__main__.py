"""`python -m sandbox.gke --scenario FILE --port N`: the sandbox GKE API as a process.

Prints `MULTUS_PROVISIONER_GKE_ENDPOINT=127.0.0.1:N` as its first line (flushed) so a parent can
read the port it got, then `MULTUS_PROVISIONER_GKE_ADMIN=http://127.0.0.1:M` (and, with
`--rest-port`, `MULTUS_PROVISIONER_GKE_REST=http://127.0.0.1:R`); runs until SIGTERM or SIGINT,
then stops cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from sandbox.gke.audit import HttpPushSink
    from sandbox.gke.scenario import DEFAULT_SCENARIO, ScenarioError, load
    from sandbox.gke.server import GkeSandbox

    p = argparse.ArgumentParser(prog="python -m sandbox.gke", description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default=str(DEFAULT_SCENARIO), help="scenario YAML (default: %(default)s)")
    p.add_argument("--port", type=int, default=0, help="gRPC port on 127.0.0.1 (0 = any free port)")
    p.add_argument("--admin-port", type=int, default=0, help="admin HTTP port on 127.0.0.1 (0 = free)")
    p.add_argument("--operation-delay", type=float, default=0.5, help="seconds until an operation is DONE")
    p.add_argument("--audit-url", help="POST audit entries as Pub/Sub push requests to this loopback URL")
    p.add_argument("--subscription", default=None, help="subscription name put in push envelopes")
    p.add_argument("--start-all", action="store_true", help="also create clusters with create_at_start: false")
    p.add_argument("--realism", choices=("realistic", "calm"), default=None,
                   help="GKE's ordinary-day behaviours (default: the scenario's `realism`, else realistic)")
    p.add_argument("--rest-port", type=int, default=None,
                   help="also serve the REST surface (GKE, Compute, Service Usage) on this port (0 = free)")
    p.add_argument("--token-file", help="the REST surface requires 'Authorization: Bearer <this file's content>'")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    for name, value in (("--port", args.port), ("--admin-port", args.admin_port), ("--rest-port", args.rest_port)):
        if value is not None and not 0 <= value <= 65535:
            p.error(f"{name} must be in 0..65535")
    try:
        scenario = load(args.scenario)
    except ScenarioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sink = None
    if args.audit_url:
        try:
            sink = HttpPushSink(args.audit_url, subscription=args.subscription
                                or f"projects/{scenario.project}/subscriptions/gke-audit-push")
        except ValueError as e:
            p.error(str(e))
    from sandbox.gke.realism import Realism

    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            p.error(f"--token-file {args.token_file}: {e.strerror}")
        if not token or any(c.isspace() for c in token):
            p.error(f"--token-file {args.token_file}: expected one token without whitespace")
    sandbox = GkeSandbox(scenario, audit_sink=sink, operation_delay=args.operation_delay,
                         start_all=args.start_all, realism=Realism.named(args.realism) if args.realism else None,
                         token=token)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    endpoint = sandbox.start(args.port, admin_port=args.admin_port, rest_port=args.rest_port)
    print(f"MULTUS_PROVISIONER_GKE_ENDPOINT={endpoint}", flush=True)
    print(f"MULTUS_PROVISIONER_GKE_ADMIN={sandbox.admin_url}", flush=True)
    if sandbox.rest_url:
        print(f"MULTUS_PROVISIONER_GKE_REST={sandbox.rest_url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
        if sink is not None:
            sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
