"""`multus-provisioner`: the offline commands (no cloud, no cluster needed).

Each command group lives in a module with a `register(subparsers)` function that adds its
parsers and sets `handler=` on each; this module registers its own offline commands and, when
present, the extensions: `multus_cli.online` (request-nad, status, history, verify) and the sandbox's
own commands (`sandbox.commands`: sandbox, demo), which register themselves here. The CLI lives
outside the deployed library (`shared/`) and only imports it; nothing deployed imports the CLI.
Everything heavier than argparse is imported inside the handlers so `--help` stays instant.

Exit codes: 0 fine; 2 invalid input (each problem on stderr, named by its field);
3 cluster not eligible (`precheck`); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from shared.core.errors import Problem, Rejected

EXIT_OK, EXIT_UNEXPECTED, EXIT_INVALID, EXIT_INELIGIBLE = 0, 1, 2, 3
MAX_INPUT_BYTES = 16 * 1024 * 1024  # cluster JSON can be large; requests are capped by shared.nad
EXTENSIONS = ("multus_cli.online", "multus_cli.ranges", "multus_cli.rollout", "sandbox.commands")

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------------------------
# Helpers shared by command modules
# --------------------------------------------------------------------------------------------

def read_input(path: str, *, what: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """Bytes of a file, or of stdin for "-"; `Rejected` naming `what` if it cannot be read."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
    except OSError as e:
        raise Rejected("cannot read input", [Problem(what, f"{path}: {e.strerror or e}")]) from None
    if len(data) > max_bytes:
        raise Rejected("input too large", [Problem(what, f"{path}: over {max_bytes} bytes")])
    return data


def read_json(path: str, *, what: str) -> Any:
    from shared.core.nad import load_json

    data = read_input(path, what=what)
    try:
        return load_json(data, max_bytes=MAX_INPUT_BYTES, what=what)
    except Rejected as e:
        raise Rejected(f"invalid {what}",
                       [Problem(f"{what}{'.' + p.field if p.field else ''}", p.message) for p in e.problems]
                       ) from None


def print_problems(err: Rejected, stream: TextIO) -> None:
    print(f"error: {err.reason}", file=stream)
    for p in err.problems:
        print(f"  {p.field or '(input)'}: {p.message}", file=stream)


def dump(obj: Any, output: str, stream: TextIO) -> None:
    """JSON (indented, sorted-free: apply order matters) or YAML (safe_dump, so every string --
    including a JSON `spec.config` full of quotes -- is quoted as YAML requires)."""
    if output == "json":
        stream.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        return
    import yaml

    stream.write(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True))


# --------------------------------------------------------------------------------------------
# render-nad, validate-request
# --------------------------------------------------------------------------------------------

_NAD_FLAGS = (  # (flag, request field, help)
    ("--cluster", "cluster", "projects/P/locations/L/clusters/C (zones/Z accepted)"),
    ("--name", "name", "NAD name (DNS-1123 label)"),
    ("--namespace", "namespace", "namespace (default: default)"),
    ("--master", "master", "node interface for IPVLAN (default: eth1)"),
    ("--mode", "mode", "IPVLAN mode: l2 (default), l3, l3s"),
    ("--range", "range", "Whereabouts range, a CIDR such as 172.16.1.0/24"),
    ("--range-start", "range_start", "first address to hand out"),
    ("--range-end", "range_end", "last address to hand out"),
    ("--gateway", "gateway", "gateway address inside the range"),
    ("--request-id", "request_id", "idempotency key, recorded as an annotation"),
)


def add_request_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a NAD request, for every command that takes one (render-nad, request-nad)."""
    for flag, dest, help_ in _NAD_FLAGS:
        p.add_argument(flag, dest=dest, help=help_)
    p.add_argument("--exclude", action="append", metavar="CIDR", help="CIDR to exclude (repeatable)")
    p.add_argument("--mtu", type=int, help="interface MTU (68-8896)")
    p.add_argument("--file", metavar="REQUEST.json", help="read the request from a JSON file ('-': stdin)")


def request_from_args(args: argparse.Namespace, **extra: Any) -> tuple[dict[str, Any], Any]:
    """The request a command line describes: (the JSON object, the parsed `NadRequest`).

    From `--file` (strict JSON, as the functions read it) or from the flags, never both; the
    problems of a request given by flags name the flags the user typed, not the JSON fields.
    `extra` adds fields that are not flags of their own (`action`, `verify`).
    """
    from shared.core.nad import parse_request

    if args.file is not None:
        given = [flag for flag, dest, _ in _NAD_FLAGS if getattr(args, dest) is not None]
        given += ["--exclude"] if args.exclude else []
        given += ["--mtu"] if args.mtu is not None else []
        if given:
            raise Rejected("invalid arguments",
                           [Problem("--file", f"cannot be combined with {', '.join(given)}")])
        req = parse_request(read_input(args.file, what="--file"))
        if not extra:
            return req.to_dict(), req
        obj = {**req.to_dict(), **extra}
        return obj, parse_request(obj)
    obj = {dest: getattr(args, dest) for _, dest, _ in _NAD_FLAGS if getattr(args, dest) is not None}
    if args.exclude:
        obj["exclude"] = list(args.exclude)
    if args.mtu is not None:
        obj["mtu"] = args.mtu
    obj.update(extra)
    try:
        return obj, parse_request(obj)
    except Rejected as e:  # name the flags the user typed, not the JSON fields
        raise Rejected(e.reason, [Problem(_flag_of(p.field), p.message) for p in e.problems],
                       cluster=e.cluster) from None


def _flag_of(field: str) -> str:
    base, sep, rest = field.partition("[")
    return "--" + base.replace("_", "-") + (sep + rest if sep else "") if base else field


def cmd_render_nad(args: argparse.Namespace) -> int:
    from shared.core.nad import render_nad

    _, req = request_from_args(args)
    dump(render_nad(req), args.output, sys.stdout)
    return EXIT_OK


def cmd_validate_request(args: argparse.Namespace) -> int:
    from shared.core.nad import parse_request

    req = parse_request(read_input(args.file, what="FILE"))
    note = "" if req.range else " (range omitted: the node pool's secondary pod range will be used)"
    print(f"OK {req.action} {req.key} on {req.cluster.path}{note}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# render-bundle
# --------------------------------------------------------------------------------------------

def cmd_render_bundle(args: argparse.Namespace) -> int:
    from shared.core.multus import load_bundle

    try:
        bundle = load_bundle(multus_image=args.multus_image, whereabouts_image=args.whereabouts_image,
                             allow_unpinned=args.allow_unpinned, log_level=args.log_level)
    except Rejected as e:
        raise Rejected(e.reason, [Problem(_flag_of(p.field), p.message) for p in e.problems]) from None
    if args.output == "json":
        sys.stdout.write(json.dumps(bundle.to_list(), indent=2) + "\n")
    else:
        sys.stdout.write(bundle.to_yaml())
    print(f"bundle version {bundle.version}: {len(bundle.objects)} objects", file=sys.stderr)
    return EXIT_OK


def cmd_render_rbac(args: argparse.Namespace) -> int:
    """The controller's in-cluster RBAC for one cluster (docs/DEPLOY.md "Opting a cluster in")."""
    from shared.core.rbac import controller_rbac

    try:
        objects = controller_rbac(args.user, args.namespace or ["default"])
    except Rejected as e:
        raise Rejected(e.reason, [Problem(_flag_of(p.field), p.message) for p in e.problems]) from None
    if args.output == "json":
        sys.stdout.write(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2) + "\n")
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    print(f"{len(objects)} RBAC objects for {args.user}", file=sys.stderr)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# precheck
# --------------------------------------------------------------------------------------------

def cmd_precheck(args: argparse.Namespace) -> int:
    from shared.core import prechecks

    cluster = read_json(args.cluster_json, what="--cluster-json")
    if not isinstance(cluster, dict):
        raise Rejected("invalid cluster", [Problem(
            "--cluster-json", "expected the object that `gcloud container clusters describe` prints")])
    node_pools = None
    if args.node_pools_json is not None:
        node_pools = read_json(args.node_pools_json, what="--node-pools-json")
        if isinstance(node_pools, dict) and isinstance(node_pools.get("nodePools"), list):
            node_pools = node_pools["nodePools"]
        if not isinstance(node_pools, list) or not all(isinstance(p, dict) for p in node_pools):
            raise Rejected("invalid node pools", [Problem(
                "--node-pools-json", "expected a list (`gcloud container node-pools list --format=json`)")])
    findings = prechecks.precheck(cluster, node_pools)
    if args.secondary_range is not None:  # the CIDR of the pool's pod range (gcloud ... subnets describe)
        pools = prechecks.suitable_pools(node_pools if node_pools is not None else cluster.get("nodePools") or [])
        if pools:
            findings += prechecks.check_range_capacity(pools[0], args.secondary_range, cluster=cluster)
    eligible = prechecks.eligible(findings)
    if args.json:
        print(json.dumps({"eligible": eligible, "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        for f in findings:
            print(f"[{f.severity}] {f.id}: {f.message}")
            if f.fix:
                print(f"    fix: {f.fix}")
        print("eligible" if eligible else "NOT eligible")
    return EXIT_OK if eligible else EXIT_INELIGIBLE


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------

def register(subparsers: Any) -> None:
    """The offline commands; command modules follow the same convention."""
    p = subparsers.add_parser("render-nad", help="print the NetworkAttachmentDefinition for a request",
                              description="Render a NAD from flags or a request file "
                                          "(see docs/NAD_REQUESTS.md).")
    add_request_flags(p)
    p.add_argument("--output", "-o", choices=("yaml", "json"), default="yaml")
    p.set_defaults(handler=cmd_render_nad)

    p = subparsers.add_parser("render-bundle", help="print the Multus + Whereabouts install bundle",
                              description="Print the bundle as a stream `kubectl apply -f -` accepts.")
    p.add_argument("--output", "-o", choices=("yaml", "json"), default="yaml",
                   help="yaml: multi-document stream; json: a v1 List")
    p.add_argument("--multus-image", help="override the Multus image (digest-pinned)")
    p.add_argument("--whereabouts-image", help="override the Whereabouts image (digest-pinned)")
    p.add_argument("--allow-unpinned", action="store_true", help="accept image overrides without a digest")
    p.add_argument("--log-level", help="Multus log level (debug, verbose, error, panic)")
    p.set_defaults(handler=cmd_render_bundle)

    p = subparsers.add_parser("render-rbac", help="print the controller's RBAC for an opted-in cluster",
                              description="Print the Kubernetes RBAC the controller needs in one cluster, "
                                          "for `kubectl apply -f -` at opt-in (docs/DEPLOY.md).")
    p.add_argument("--user", required=True,
                   help="the controller's identity in the cluster: the runtime service account's e-mail")
    p.add_argument("--namespace", action="append", metavar="NS",
                   help="a namespace that may receive NADs (its verification pods run there); repeatable; "
                        "default: default")
    p.add_argument("--output", "-o", choices=("yaml", "json"), default="yaml")
    p.set_defaults(handler=cmd_render_rbac)

    p = subparsers.add_parser("validate-request", help="check a NAD request file",
                              description="Print OK, or every problem with its field (exit 2).")
    p.add_argument("file", metavar="FILE", help="request JSON file ('-': stdin)")
    p.set_defaults(handler=cmd_validate_request)

    p = subparsers.add_parser("precheck", help="check a cluster's eligibility from its JSON",
                              description="Check `gcloud container clusters describe --format=json` output "
                                          "(exit 3 when not eligible; each finding with its fix).")
    p.add_argument("--cluster-json", required=True, metavar="FILE", help="cluster JSON ('-': stdin)")
    p.add_argument("--node-pools-json", metavar="FILE",
                   help="node pools JSON list (default: the cluster's own nodePools)")
    p.add_argument("--secondary-range", metavar="CIDR",
                   help="the CIDR of the multi-network pool's pod range: also check range-capacity")
    p.add_argument("--json", action="store_true", help="print findings as JSON")
    p.set_defaults(handler=cmd_precheck)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multus-provisioner",
        description="Multus + IPVLAN + Whereabouts for GKE Standard: offline tools and controller client.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(subparsers)
    for name in EXTENSIONS:
        try:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name).register(subparsers)
        except Exception as e:  # a broken extension must not take the offline commands down
            print(f"warning: {name} not loaded ({type(e).__name__}: {e})", file=sys.stderr)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) and usage errors (2): return, so tests can call main()
        return e.code if isinstance(e.code, int) else EXIT_INVALID
    handler: Handler = args.handler
    try:
        return handler(args)
    except Rejected as e:
        print_problems(e, sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:
        print(f"error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
