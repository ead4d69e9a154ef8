"""`multus-provisioner rollout status|resume|abort`: the fleet's bundle rollout (rollouts/current).

`status` shows the target and previous bundle (versions and images), the waves, each cluster's
state and, when halted, why. `resume` lets a HALTED rollout go on (the cluster that failed its
gate is tried again); `abort` stops it and sends every cluster back to the last good bundle.
The document is read and written through `shared.adapters.store`, as the functions do; `--json`
prints it as stored (the typed `FleetRollout` through the store's table, `rollout_doc`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from multus_cli.online import EXIT_INVALID, EXIT_OK, _common, _guard, _load_sandbox, _print_json, _settings, _store
from shared.core.records import BundleOptions, FleetRollout, RolloutState


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


def _document(rollout: FleetRollout | None) -> dict[str, Any] | None:
    """The rollout as `rollouts/current` holds it (the `--json` shape: the document's fields)."""
    from shared.adapters.store import rollout_doc

    return rollout_doc(rollout) if rollout is not None else None


def cmd_status(args: argparse.Namespace) -> int:
    flow = _flow(args)
    rollout = flow.status()
    refused = policy_problem(flow)
    if args.json:
        _print_json({"rollout": _document(rollout), "policyError": refused})
        return EXIT_OK
    if refused:
        print(f"policy    REFUSED, nothing rolls out until it is fixed: {refused}")
    if rollout is None:
        print("no rollout yet: the fleet runs the policy's bundle")
        return EXIT_OK
    print_status(rollout)
    return EXIT_OK


def _bundle_line(label: str, b: BundleOptions) -> str:
    return f"{label:<10}{b.version}  multus {b.multus_image}  whereabouts {b.whereabouts_image}  log {b.log_level}"


def print_status(rollout: FleetRollout) -> None:
    print(f"state     {rollout.state}" + (f" (since {rollout.finished_at})" if rollout.finished_at else ""))
    print(_bundle_line("target", rollout.target))
    print(_bundle_line("previous", rollout.previous))
    if rollout.reason:
        print(f"reason    {rollout.reason}")
    for i, wave in enumerate(rollout.waves):
        current = " <- current" if i == rollout.wave and rollout.state in (RolloutState.RUNNING,
                                                                            RolloutState.HALTED) else ""
        print(f"{wave.name}{current}")
        for cid in wave.clusters:
            entry = rollout.clusters.get(cid)
            path, state, message = (entry.path or cid, entry.state or "", entry.message) if entry else (cid, "", "")
            print(f"  {path:<60} {state:<12} {message}".rstrip())


def _act(args: argparse.Namespace, action: str) -> int:
    from shared.core.errors import Rejected

    flow = _flow(args)
    try:
        rollout: FleetRollout = getattr(flow, action)()
    except Rejected as e:
        print(f"error: {e.problems[0].message if e.problems else e.reason}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        _print_json({"rollout": _document(rollout)})
    else:
        print(f"rollout {rollout.state}" + (f": {rollout.reason}" if rollout.reason else ""))
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    return _act(args, "resume")


def cmd_abort(args: argparse.Namespace) -> int:
    return _act(args, "abort")
