"""The sandbox's own commands, `multus-provisioner sandbox` and `multus-provisioner demo`.

They register themselves with the CLI (`multus_cli.main` looks for this module's `register`), so the
CLI needs no knowledge of the sandbox and the deployed library none of either.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

EXIT_OK = 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sandbox", help="run the offline stack (emulators, GKE and cluster APIs, functions)",
                              description="Start the whole simulated GCP project on 127.0.0.1 and wait for Ctrl-C.")
    p.add_argument("--scenario", help="scenario YAML (default: sandbox/scenarios/default.yaml)")
    p.add_argument("--env-file", default=".sandbox/env", help="where to write the env file (default: .sandbox/env)")
    p.add_argument("--state-dir", default=".sandbox", help="kubeconfigs, token and logs go here")
    p.add_argument("--reconcile-every", type=float, default=60.0, metavar="SECONDS",
                   help="publish a reconcile tick this often, as Cloud Scheduler does (0: never; default 60)")
    _kube_flag(p)
    p.set_defaults(handler=cmd_sandbox)

    p = subparsers.add_parser("demo", help="the whole procedure, end to end, in the sandbox",
                              description="Create clusters, let the controller provision them, attach a pod.")
    p.add_argument("--scenario", help="scenario YAML (default: sandbox/scenarios/default.yaml)")
    p.add_argument("--state-dir", default=".sandbox/demo", help="kubeconfigs, token and logs go here")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for each milestone")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    _kube_flag(p)
    p.set_defaults(handler=cmd_demo)


def _kube_flag(p: Any) -> None:
    p.add_argument("--kube", choices=("sim", "real"), default="sim",
                   help="each cluster's Kubernetes API: 'sim', the fast simulated server (default), or 'real', "
                        "a real kube-apiserver, controller-manager, scheduler and kwok built from pinned sources "
                        "(the first run builds them: several minutes; see docs/SANDBOX_KUBE.md)")


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Run the stack until SIGINT or SIGTERM; print the env it exported."""
    import signal
    from pathlib import Path

    from sandbox.stack import DEFAULT_SCENARIO, Stack

    stack = Stack(scenario=Path(args.scenario) if args.scenario else DEFAULT_SCENARIO,
                  state_dir=Path(args.state_dir), progress=lambda m: print(f"... {m}", file=sys.stderr),
                  reconcile_every=args.reconcile_every or None, kube=args.kube)
    stopping = []

    def stop(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        env = stack.start()
        path = stack.write_env_file(args.env_file)
        for key in sorted(env):
            print(f"{key}={env[key]}")
        print(f"# env file: {path}\n# kubeconfigs: {env['MULTUS_PROVISIONER_KUBECONFIG_DIR']}\n"
              f"# try: multus-provisioner status --sandbox {path}\n# Ctrl-C stops everything.", flush=True)
        while not stopping:
            time.sleep(0.2)
    finally:
        print("... stopping the sandbox", file=sys.stderr)
        stack.stop()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from sandbox.demo import run_demo

    return run_demo(args)
