"""The online CLI: `request-nad`, `status`, `history`, `verify`.

Kept apart from `multus_cli.main` (the offline commands) so that `render-nad --help` never imports
Pub/Sub or Firestore. Every command reads the same Firestore documents through
`shared.adapters.store` as the functions write them, against Google or, with `--sandbox ENV_FILE`,
against the sandbox (whose own commands, `sandbox` and `demo`, live in `sandbox.commands`).
Exit codes as in the offline CLI: 0 fine, 2 invalid input, 1 anything unexpected; `verify`
answers 4 when the check ran and failed; `request-nad --wait` answers 2 when the controller
refused the request and 1 when it failed or had no outcome in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multus_cli.main import add_request_flags, request_from_args

if TYPE_CHECKING:
    from shared.core.records import LastRequest, NadRecord

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_VERIFY_FAILED = 0, 1, 2, 4


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("request-nad", help="publish a NAD request to the controller's topic",
                              description="Validate a NAD request locally, then publish it with Pub/Sub.")
    add_request_flags(p)
    p.add_argument("--delete", action="store_true", help="delete the NAD instead of applying it")
    p.add_argument("--verify", action="store_true", help="after applying, check that a pod gets net1")
    p.add_argument("--topic", help="topic (name or projects/P/topics/T); default from the environment")
    p.add_argument("--wait", action="store_true",
                   help="wait for this request's outcome: exit 0 applied or verified (or deleted), 2 refused "
                        "(reasons on stderr), 1 anything else (failed, still pending at --timeout)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for --wait")
    _common(p)
    p.set_defaults(handler=_guard(cmd_request_nad))

    p = subparsers.add_parser("status", help="clusters and their NADs as the controller recorded them",
                              description="Without CLUSTER: every cluster. With CLUSTER: steps, NADs, rejections.")
    p.add_argument("cluster", nargs="?", help="a cluster name or projects/P/locations/L/clusters/C")
    _common(p)
    p.set_defaults(handler=_guard(cmd_status))

    p = subparsers.add_parser("history", help="the audit trail of one cluster, oldest first")
    p.add_argument("cluster", help="a cluster name or projects/P/locations/L/clusters/C")
    p.add_argument("--limit", type=int, default=200, help="at most this many entries (default 200)")
    _common(p)
    p.set_defaults(handler=_guard(cmd_history))

    p = subparsers.add_parser("verify", help="start a pod on a NAD and check that net1 gets an address in range")
    p.add_argument("cluster", help="a cluster name or projects/P/locations/L/clusters/C")
    p.add_argument("nad", help="NAMESPACE/NAME of an applied NAD")
    _common(p)
    p.set_defaults(handler=_guard(cmd_verify))


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The online commands' error edge, in one place: a usage problem is exit 2 with the message on
    stderr, as the offline CLI does; an API that failed (Firestore, GKE, the cluster) is exit 1 with
    its message. `Rejected` input goes on to `multus_cli.main`, which prints each problem (exit 2)."""

    def run(args: argparse.Namespace) -> int:
        from shared.core.errors import Permanent, Transient

        try:
            code: int = fn(args)
            return code
        except UsageError as e:
            _say(f"error: {e}", file=sys.stderr)
            return EXIT_INVALID
        except (Transient, Permanent) as e:
            _say(f"error: {e}", file=sys.stderr)
            return EXIT_ERROR

    run.__name__ = fn.__name__
    return run


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sandbox", metavar="ENV_FILE", help="use the sandbox described by this env file")
    p.add_argument("--json", action="store_true", help="machine-readable output")


# -- helpers ---------------------------------------------------------------------------------
class UsageError(Exception):
    """Bad CLI input: exit 2 with this message."""


def _load_sandbox(args: argparse.Namespace) -> None:
    if getattr(args, "sandbox", None):
        from multus_cli.envfile import load_env_file

        try:
            env = load_env_file(args.sandbox)
        except (OSError, ValueError) as e:
            raise UsageError(f"--sandbox {args.sandbox}: {e}") from None
        os.environ.update(env)


def _settings() -> Any:
    from shared.core.settings import ConfigError, Settings

    try:
        return Settings.from_env()
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _store(settings: Any) -> Any:
    from shared.adapters.store import Store

    return Store(settings)


def _resolve_cluster(store: Any, text: str) -> Any:
    from shared.core.errors import Rejected
    from shared.core.refs import ClusterRef

    if "/" in text:
        try:
            return ClusterRef.parse(text)
        except Rejected as e:
            raise UsageError(e.message) from None
    matches = [r.ref for r in store.list_clusters() if r.ref.cluster == text]
    if not matches:
        raise UsageError(f"no cluster named {text!r} is tracked; `multus-provisioner status` lists them")
    if len(matches) > 1:
        raise UsageError(f"{text!r} is ambiguous: " + ", ".join(m.path for m in matches))
    return matches[0]


def _ts(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M:%S"))
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _clean(text: str) -> str:
    """Text from Firestore (names, messages, reasons: ultimately what requesters and clusters
    wrote) made safe for a terminal: control characters, escape sequences and bidirectional
    overrides are shown as escapes (backslash-x1b, backslash-u202e) instead of acting on the terminal."""
    return _UNSAFE.sub(lambda m: repr(m.group(0))[1:-1] if ord(m.group(0)) < 0x100
                       else f"\\u{ord(m.group(0)):04x}", text)


def _say(*parts: Any, file: Any = None, sep: str = " ") -> None:
    """`print` for the text output: every part through `_clean` (JSON output is escaped by its encoder)."""
    print(_clean(sep.join(str(p) for p in parts)), file=file if file is not None else sys.stdout)


def _print_json(obj: Any) -> None:
    print(json.dumps(_jsonable(obj), indent=2, sort_keys=True, default=str))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header, *rows])


# -- request-nad -----------------------------------------------------------------------------
def _topic(args: argparse.Namespace, settings: Any) -> str:
    topic = args.topic or os.environ.get("MULTUS_PROVISIONER_TOPIC_NAD_REQUESTS") or settings.nad_topic
    if topic.startswith("projects/"):
        return topic
    if not settings.project:
        raise UsageError("no project: set MULTUS_PROVISIONER_PROJECT (or GOOGLE_CLOUD_PROJECT) or give --topic "
                         "projects/P/topics/T")
    return f"projects/{settings.project}/topics/{topic}"


def requester_token(env: Mapping[str, str] | None = None) -> str:
    """The requester's ID token for the controller's audience (MULTUS_PROVISIONER_REQUESTER_AUDIENCE,
    default multus-provisioner): from the sandbox's identity server when the environment names one
    (MULTUS_PROVISIONER_SANDBOX_ID_URL; MULTUS_PROVISIONER_SANDBOX_ID_EMAIL picks the identity), else
    from the Application Default Credentials (a service account, the metadata server) and, for a
    user's own login, `gcloud auth print-identity-token` (docs/NAD_REQUESTS.md "Who may ask")."""
    import subprocess
    import urllib.parse
    import urllib.request

    env = os.environ if env is None else env
    audience = (env.get("MULTUS_PROVISIONER_REQUESTER_AUDIENCE") or "multus-provisioner").split(",")[0].strip()
    sandbox = env.get("MULTUS_PROVISIONER_SANDBOX_ID_URL")
    if sandbox:
        query = {"audience": audience, **({"email": env["MULTUS_PROVISIONER_SANDBOX_ID_EMAIL"]}
                                          if env.get("MULTUS_PROVISIONER_SANDBOX_ID_EMAIL") else {})}
        ask = urllib.request.Request(f"{sandbox.rstrip('/')}/identity?{urllib.parse.urlencode(query)}",
                                     headers={"Metadata-Flavor": "Google"})
        try:
            with urllib.request.urlopen(ask, timeout=10) as resp:  # the sandbox's loopback server
                return str(resp.read().decode().strip())
        except OSError as e:
            raise UsageError(f"the sandbox's identity server ({sandbox}) did not issue a token: {e}") from None
    try:
        import google.auth.transport.requests
        import google.oauth2.id_token

        return str(google.oauth2.id_token.fetch_id_token(  # type: ignore[no-untyped-call]
            google.auth.transport.requests.Request(), audience))
    except Exception as first:  # user credentials cannot mint ID tokens for an audience: ask gcloud
        try:
            out = subprocess.run(["gcloud", "auth", "print-identity-token"], capture_output=True, text=True,
                                 timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UsageError(f"no ID token for audience {audience!r}: {first}; gcloud: {e}") from None
        if out.returncode != 0 or not out.stdout.strip():
            raise UsageError(f"no ID token for audience {audience!r}: {first}; gcloud: "
                             f"{_clean(out.stderr.strip())[:300]}") from None
        return out.stdout.strip()


def _requester_email(token: str) -> str | None:
    """The email a token names, for the CLI's own output (unverified: the controller verifies)."""
    import base64

    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError):
        return None
    email = claims.get("email") if isinstance(claims, dict) else None
    return email if isinstance(email, str) else None


def publish_request(request: dict[str, Any], topic: str, *, token: str | None = None,
                    env: Mapping[str, str] | None = None) -> str:
    """Publish one NAD request (compact JSON) with the requester's ID token (`requester_token`
    when not given) in its attributes, and return the Pub/Sub message id."""
    import google.cloud.pubsub_v1 as pubsub_v1

    from shared.core.requesters import token_attributes

    attributes = token_attributes(token or requester_token(env))
    publisher = pubsub_v1.PublisherClient()
    try:
        data = json.dumps(request, sort_keys=True, separators=(",", ":")).encode()
        return str(publisher.publish(topic, data, **attributes).result(timeout=60))
    finally:
        publisher.stop()


def cmd_request_nad(args: argparse.Namespace) -> int:
    _load_sandbox(args)
    extra: dict[str, Any] = {"action": "delete"} if args.delete else {}
    if args.verify:
        extra["verify"] = True
    request, parsed = request_from_args(args, **extra)  # Rejected: exit 2, each problem by its flag
    settings = _settings()
    topic = _topic(args, settings)
    token = requester_token()
    message_id = publish_request(request, topic, token=token)
    result: dict[str, Any] = {"messageId": message_id, "topic": topic, "cluster": parsed.cluster.path,
                              "nad": f"{parsed.namespace}/{parsed.name}", "requester": _requester_email(token)}
    if not args.wait:
        if args.json:
            _print_json(result)
        else:
            _say(message_id)
        return EXIT_OK
    outcome = _wait_outcome(_store(settings), parsed, message_id, args.timeout, quiet=args.json)
    doc = outcome.record
    result.update({"state": doc.get("state") if doc else None, "message": (doc or {}).get("message"),
                   "outcome": outcome.state, "reasons": outcome.reasons, "record": doc})
    if args.json:
        _print_json(result)
    else:
        _say(message_id)
        _say(f"{result['nad']}: {outcome.state or 'no outcome yet'}"
              + (f" ({outcome.message})" if outcome.message else ""), file=sys.stderr)
    if outcome.state in ("APPLIED", "VERIFIED") or (outcome.state == "DELETED" and parsed.action == "delete"):
        return EXIT_OK
    if outcome.state == "REJECTED":
        for reason in outcome.reasons:
            _say(f"  {reason}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_ERROR


@dataclass(frozen=True)
class WaitOutcome:
    """The outcome of one published request: its state (None until it has one), why, the record."""

    state: str | None
    message: str
    reasons: list[str]
    record: dict[str, Any] | None


def _this_request(rec: NadRecord | None, message_id: str, req: Any) -> LastRequest | None:
    """The record's last request when it is the outcome of THIS request (its message id, or its
    request id with the same body), else None: an earlier request's outcome on the same NAD is
    not an answer."""
    from shared.core.nad import request_digest

    last = rec.last_request if rec is not None else None
    if last is None:
        return None
    if last.message_id == message_id:
        return last
    if req.request_id and last.request_id == req.request_id and last.digest == request_digest(req):
        return last
    return None


def _wait_outcome(store: Any, req: Any, message_id: str, timeout: float, *, quiet: bool) -> WaitOutcome:
    from shared.core.decisions import REQUEST_SETTLED

    deadline = time.monotonic() + timeout
    shown = None
    doc = None
    while True:
        rec = store.get_nad(req.cluster, req.namespace, req.name)
        doc = dict(rec.data) if rec is not None else None  # the record as stored, for --json
        last = _this_request(rec, message_id, req)
        state = (last.state or None) if last else None
        if state != shown and not quiet:
            _say(f"  {req.namespace}/{req.name}: {state or 'waiting for the controller'}", file=sys.stderr)
            shown = state
        if state in REQUEST_SETTLED:
            reasons = list(last.reasons) if last else []
            return WaitOutcome(state, rec.message if rec else "", reasons, doc)
        # refused before it reached the NAD (e.g. a request_id already used for another body)
        for r in store.list_rejections(req.cluster, limit=20):
            if r.get("eventId") == message_id:
                reasons = [f"{p.get('field')}: {p.get('message')}" if p.get("field") else str(p.get("message"))
                           for p in r.get("problems") or []] or [str(r.get("reason"))]
                return WaitOutcome("REJECTED", str(r.get("reason") or ""), reasons, doc)
        if time.monotonic() >= deadline:
            return WaitOutcome(state, f"no outcome within {timeout:.0f}s" + (f" (now {state})" if state else ""),
                               [], doc)
        time.sleep(0.5)


# -- status / history -------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    _load_sandbox(args)
    store = _store(_settings())
    if args.cluster:
        return _status_one(store, _resolve_cluster(store, args.cluster), args.json)
    records = store.list_clusters()
    out = []
    for rec in records:
        nads = Counter(str(n.state or "") for n in store.list_nads(rec.ref, fields=("state",)))
        out.append({"cluster": rec.ref.path, "state": rec.state, "version": rec.data.get("version"),
                    "bundleVersion": rec.data.get("bundleVersion"), "nads": dict(nads),
                    "updatedAt": rec.data.get("updatedAt"), "lastError": rec.data.get("lastError")})
    if args.json:
        _print_json({"clusters": out})
        return EXIT_OK
    if not out:
        _say("no clusters tracked yet")
        return EXIT_OK
    rows = [[o["cluster"], o["state"], o["version"] or "-", o["bundleVersion"] or "-",
             ", ".join(f"{k} {v}" for k, v in sorted(o["nads"].items())) or "-", _ts(o["updatedAt"])]
            for o in out]
    _say(_table(rows, ["CLUSTER", "STATE", "VERSION", "BUNDLE", "NADS", "UPDATED"]))
    return EXIT_OK


def _status_one(store: Any, ref: Any, as_json: bool) -> int:
    rec = store.get_cluster(ref)
    records = store.list_nads(ref)
    nads = [dict(n.data) for n in records]  # the records as stored, for --json
    rejections = store.list_rejections(ref)
    history, _ = store.history(ref, page_size=500)
    if rec is None and not nads and not rejections:
        raise UsageError(f"{ref.path} is not tracked")
    doc = dict(rec.data) if rec else {}
    doc.pop("lease", None)
    if as_json:
        _print_json({"cluster": ref.path, "state": rec.state if rec else None, "document": doc,
                     "steps": history, "nads": nads, "rejections": rejections,
                     "orphans": [n for n in nads if n.get("state") == "ORPHANED"]})
        return EXIT_OK
    _say(f"cluster   {ref.path}")
    _say(f"state     {rec.state if rec else 'not tracked (NAD requests are waiting for it)'}")
    endpoint = doc.get("apiEndpoint")
    if isinstance(endpoint, dict) and endpoint.get("kind"):  # how the controller reaches the control plane
        _say(f"{'endpoint':<9} {endpoint.get('kind')} {endpoint.get('address', '')} ({endpoint.get('why', '')})")
    for key, label in (("version", "version"), ("bundleVersion", "bundle"), ("nodePool", "node pool"),
                       ("rollout", "rollout"), ("lastError", "last error")):
        value = doc.get(key)
        if value:
            shown = json.dumps(_jsonable(value), sort_keys=True) if isinstance(value, dict) else value
            _say(f"{label:<9} {shown}")
    findings = doc.get("findings") or []
    if findings:
        _say("findings")
        for f in findings:
            _say(f"  - [{f.get('severity')}] {f.get('id')}: {f.get('message')}\n      fix: {f.get('fix')}")
    _say("steps")
    for h in history[-15:]:
        _say(f"  {_ts(h.get('at'))}  {h.get('step', ''):<18} {h.get('outcome', ''):<8} {h.get('message', '')}")
    _say("nads")
    if not nads:
        _say("  (none)")
    for n in records:
        _say(_nad_line(n))
    if rejections:
        _say("rejected requests")
        for r in rejections:
            problems = "; ".join(f"{p.get('field')}: {p.get('message')}" for p in r.get("problems") or [])
            _say(f"  {_ts(r.get('at'))}  {r.get('reason')}{': ' + problems if problems else ''}")
    return EXIT_OK


def _nad_line(n: NadRecord) -> str:
    """One NAD in `status`: what is on the cluster, then the last request when it did not get there."""
    applied, last = n.applied, n.last_request
    on_cluster = (applied.range if applied else "") or (n.range if n.state in ("APPLIED", "VERIFIED") else "")
    line = f"  {n.namespace}/{n.name:<24} {n.state or '':<9} {on_cluster or n.range or ''}"
    if n.state == "ORPHANED":
        line += f"  orphan: {n.orphan.reason if n.orphan else ''}"
    elif applied and last and last.state and last.state != n.state:
        line += f"  last request {last.action or 'apply'} {last.state}: {n.message}"
    elif n.reasons:
        line += "  " + "; ".join(n.reasons)
    return line.rstrip()


def cmd_history(args: argparse.Namespace) -> int:
    _load_sandbox(args)
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    store = _store(_settings())
    ref = _resolve_cluster(store, args.cluster)
    entries: list[dict[str, Any]] = []
    token = None
    while len(entries) < args.limit:
        page, token = store.history(ref, page_size=min(100, args.limit - len(entries)), page_token=token)
        entries += page
        if not token:
            break
    if args.json:
        _print_json({"cluster": ref.path, "history": entries})
        return EXIT_OK
    if not entries:
        _say(f"no history for {ref.path}")
    for h in entries:
        _say(f"{_ts(h.get('at'))}  {h.get('state', '') or '':<19} {h.get('step', ''):<18} "
              f"{h.get('outcome', ''):<8} {h.get('message', '')}")
    return EXIT_OK


# -- verify ----------------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    from shared.app import Controller

    _load_sandbox(args)
    namespace, sep, name = args.nad.partition("/")
    if not sep or not namespace or not name:
        raise UsageError(f"NAD must be NAMESPACE/NAME, got {args.nad!r}")
    settings = _settings()
    store = _store(settings)
    ref = _resolve_cluster(store, args.cluster)
    wf = Controller(settings, store=store)
    out = wf.verify(ref, namespace, name, event_id=f"cli-verify-{uuid.uuid4().hex[:12]}")
    datapath = out.details.get("datapath")
    if args.json:
        _print_json({"cluster": ref.path, "nad": args.nad, "state": out.state, "ok": out.status == "done",
                     "message": out.message, "datapath": datapath})
    else:
        _say(f"{args.nad}: {out.state}: {out.message}")
        print_datapath(datapath)
    return EXIT_OK if out.status == "done" else EXIT_VERIFY_FAILED


def print_datapath(report: Any) -> None:
    """Each verify pod: node, Multus's net1, Whereabouts' IPPool entry, the kernel's net1; then the
    reachability between the two (or why it was not checked)."""
    if not isinstance(report, dict):
        return
    for pod in report.get("pods") or []:
        pool = pod.get("ippool")
        kernel = pod.get("kernel")
        print(f"  pod {pod.get('pod')} on node {pod.get('node') or '?'}")
        print(f"    net1 (Multus network-status): {', '.join(pod.get('net1') or []) or 'none'}")
        print(f"    IPPool {pool['pool']}: {pool['ip']} for {pool['podref']}" if pool
              else "    IPPool: no allocation found for this pod")
        print(f"    kernel, netns {kernel['netns']}: net1 {', '.join(kernel['net1']) or 'none'}" if kernel
              else "    kernel: not checked (no data-path probe: only the sandbox can look into a node)")
    if report.get("peer"):
        print(f"  {report['peer']}")
    reach = report.get("reach")
    if reach and reach.get("checked"):
        print(f"  {reach['from']} -> {reach['to']} over net1: ICMP {'ok' if reach['icmp'] else 'no answer'}, "
              f"ARP {'ok' if reach['arp'] else 'no answer'}")
    elif reach:
        print(f"  {reach['from']} -> {reach['to']} over net1: not checked (no data-path probe)")
