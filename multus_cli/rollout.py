"""`multus-provisioner rollout status|resume|abort`: the fleet's bundle rollout (rollouts/current).

`status` shows the target and previous bundle (versions and images), the waves, each cluster's
state and, when halted, why. `resume` lets a HALTED rollout go on (the cluster that failed its
gate is tried again); `abort` stops it and sends every cluster back to the last good bundle.
The document is read and written through `shared.adapters.store`, as the functions do.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from multus_cli.online import EXIT_INVALID, EXIT_OK, _common, _guard, _load_sandbox, _print_json, _settings, _store


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("rollout", help="the fleet's bundle rollout: status, resume, abort",
                              description="Bundle rollouts in waves with a health gate (docs/WORKFLOW.md).")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text, fn in (("status", "target and previous versions, waves, each cluster's state", cmd_status),
                           ("resume", "let a HALTED rollout go on (the failed cluster is tried again)", cmd_resume),
                           ("abort", "stop the rollout; every cluster returns to the last good bundle", cmd_abort)):
        q = sub.add_parser(name, help=text, description=text)
        _common(q)
        q.set_defaults(handler=_guard(fn))


def _flow(args: argparse.Namespace) -> Any:
    from shared.app import Controller

    _load_sandbox(args)
    settings = _settings()
    return Controller(settings, store=_store(settings)).rollouts


def policy_problem(flow: Any) -> str | None:
    """Why the policy in force is refused (a foreign image, a bad field), or None. The functions
    refuse every event while it is (nothing rolls out); this is where the operator sees why."""
    from shared.core.settings import ConfigError

    try:
        flow.ctx.policy(fresh=True)
        flow.ctx.bundle()
    except ConfigError as e:
        return str(e)
    return None


def cmd_status(args: argparse.Namespace) -> int:
    flow = _flow(args)
    doc = flow.status()
    refused = policy_problem(flow)
    if args.json:
        _print_json({"rollout": doc, "policyError": refused})
        return EXIT_OK
    if refused:
        print(f"policy    REFUSED, nothing rolls out until it is fixed: {refused}")
    if doc is None:
        print("no rollout yet: the fleet runs the policy's bundle")
        return EXIT_OK
    print_status(doc)
    return EXIT_OK


def print_status(doc: dict[str, Any]) -> None:
    target, previous = doc.get("target") or {}, doc.get("previous") or {}
    print(f"state     {doc.get('state')}" + (f" (since {doc.get('finishedAt')})" if doc.get("finishedAt") else ""))
    print(f"target    {target.get('version')}  multus {target.get('multusImage')}  "
          f"whereabouts {target.get('whereaboutsImage')}  log {target.get('logLevel')}")
    print(f"previous  {previous.get('version')}  multus {previous.get('multusImage')}  "
          f"whereabouts {previous.get('whereaboutsImage')}  log {previous.get('logLevel')}")
    if doc.get("reason"):
        print(f"reason    {doc['reason']}")
    clusters = doc.get("clusters") or {}
    for i, wave in enumerate(doc.get("waves") or []):
        current = " <- current" if i == doc.get("wave") and doc.get("state") in ("RUNNING", "HALTED") else ""
        print(f"{wave['name']}{current}")
        for cid in wave["clusters"]:
            entry = clusters.get(cid) or {}
            print(f"  {entry.get('path', cid):<60} {entry.get('state', ''):<12} {entry.get('message', '')}".rstrip())


def _act(args: argparse.Namespace, action: str) -> int:
    from shared.core.errors import Rejected

    flow = _flow(args)
    try:
        doc = getattr(flow, action)()
    except Rejected as e:
        print(f"error: {e.problems[0].message if e.problems else e.reason}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        _print_json({"rollout": doc})
    else:
        print(f"rollout {doc['state']}" + (f": {doc['reason']}" if doc.get("reason") else ""))
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    return _act(args, "resume")


def cmd_abort(args: argparse.Namespace) -> int:
    return _act(args, "abort")
