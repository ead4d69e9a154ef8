"""The sandbox GKE API over REST (HTTP/1.1 + proto3 JSON), served from the same World as gRPC.

`gcloud container ...` and `ClusterManagerClient(transport="rest")` speak the GKE v1 REST API,
not gRPC; without this surface the how-to's commands cannot be typed against the sandbox. One
HTTP port on 127.0.0.1 serves three Google APIs, told apart by path as gcloud's endpoint
overrides send them (docs/SANDBOX_GKE.md, "gcloud against the sandbox"):

- `/v1/projects/*/locations|zones/...`: google.container.v1.ClusterManager. The HTTP rules are
  read from the installed client library's REST transport (each `_Base<Rpc>._get_http_options`),
  so every method the client knows is routed; those in `server._RPCS` go to the same World
  method as the gRPC surface (an RPC added there is served here too), the rest answer 501
  UNIMPLEMENTED;
- `/compute/v1/...`: the Compute Engine subset of `sandbox.gke.compute`;
- `/v1/projects/*/services/*`: Service Usage (every service ENABLED).

Requests are decoded once, here: path variables, query parameters and the JSON body become the
RPC's request message; answers are proto3 JSON (camelCase, enum names unless the caller asks
`$alt=json;enum-encoding=int` as the Python client does), errors Google's JSON error shape.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

log = logging.getLogger(__name__)

SERVICE = "google.container.v1.ClusterManager"
MAX_BODY = 8 << 20

# gRPC status name -> HTTP status, as google/rpc/code.proto documents each code's HTTP mapping.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
}
# Numeric google.rpc.Code values (the `code` of an Operation's or audit entry's Status).
RPC_CODE = {name: i for i, name in enumerate(
    ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
     "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
     "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"))}

# Google's system parameters (https://cloud.google.com/apis/docs/system-parameters): accepted on
# every call, never bound to a request field.
SYSTEM_PARAMS = frozenset({"alt", "$alt", "prettyPrint", "fields", "$fields", "key", "quotaUser", "$.xgafv",
                           "callback", "upload_protocol", "uploadType", "$callback", "$prettyPrint"})

# Google's front end answers a bad or missing OAuth token with these messages (UNAUTHENTICATED).
NO_CREDENTIALS = ("Request is missing required authentication credential. Expected OAuth 2 access token, "
                  "login cookie or other valid authentication credential. See "
                  "https://developers.google.com/identity/sign-in/web/devconsole-project.")
BAD_CREDENTIALS = ("Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                   "cookie or other valid authentication credential. See "
                   "https://developers.google.com/identity/sign-in/web/devconsole-project.")


class HttpError(Exception):
    """An answer that is an error: HTTP status and the JSON body to send."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{status}: {body}")


def google_error(code: str, message: str, details: list[dict[str, Any]] | None = None) -> HttpError:
    """Google's JSON error shape for a gRPC status name (`{"error": {code, message, status, details}}`)."""
    status = HTTP_STATUS.get(code, 500)
    error: dict[str, Any] = {"code": status, "message": message, "status": code}
    if details:
        error["details"] = details
    return HttpError(status, {"error": error})


# ---------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """One HTTP binding of an RPC (google.api.http): verb, path template, body field."""

    rpc: str
    verb: str
    template: str
    pattern: re.Pattern[str]
    fields: tuple[str, ...]
    body: str | None

    def match(self, verb: str, path: str) -> dict[str, str] | None:
        if verb != self.verb:
            return None
        m = self.pattern.fullmatch(path)
        if m is None:
            return None
        return {f: unquote(m.group(f"v{i}")) for i, f in enumerate(self.fields)}


_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=([^}]*))?\}")
_SEGMENT = r"[^/:]+"  # one path segment; ':' starts a custom verb (google/api/http.proto)


def compile_template(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A path template (`/v1/{name=projects/*/locations/*}:verb`) -> (regex, field paths)."""
    out, fields, pos = [], [], 0
    for m in _VARIABLE.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        sub = m.group(2) or "*"
        parts = [_SEGMENT if s == "*" else r".+" if s == "**" else re.escape(s) for s in sub.split("/")]
        out.append(f"(?P<v{len(fields)}>{'/'.join(parts)})")
        fields.append(m.group(1))
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out)), tuple(fields)


@cache
def rules() -> tuple[Rule, ...]:
    """Every HTTP rule of ClusterManager, read from the installed client's REST transport.

    The transport's `_Base<Rpc>` classes hold the google.api.http options generated from
    google/container/v1/cluster_service.proto; reading them keeps the sandbox's routes exactly
    the client's (no second copy to drift).
    """
    from google.cloud.container_v1.services.cluster_manager.transports import rest_base

    base = rest_base._BaseClusterManagerRestTransport
    out = []
    for attr, holder in sorted(vars(base).items()):
        if not attr.startswith("_Base") or not hasattr(holder, "_get_http_options"):
            continue
        rpc = attr[len("_Base"):]
        for option in holder._get_http_options():
            pattern, fields = compile_template(option["uri"])
            out.append(Rule(rpc, option["method"].upper(), option["uri"], pattern, fields, option.get("body")))
    if not out:
        raise RuntimeError("no HTTP rules found in google.cloud.container_v1's REST transport")
    return tuple(out)


def find_rule(verb: str, path: str) -> tuple[Rule, dict[str, str]] | None:
    for rule in rules():
        bound = rule.match(verb, path)
        if bound is not None:
            return rule, bound
    return None


# ---------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class Request:
    """An HTTP request as the handler read it: decoded once, at the edge."""

    verb: str
    path: str  # still percent-encoded; rules decode each variable
    query: tuple[tuple[str, str], ...]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise google_error("INVALID_ARGUMENT", f"Invalid JSON payload received. {e}.") from None


def enum_ints(req: Request) -> bool:
    """Whether the caller asked for enums as numbers (`$alt=json;enum-encoding=int`); 400 for another alt."""
    alt = req.param("$alt") or req.param("alt") or "json"
    kind, _, options = alt.partition(";")
    if kind != "json":
        raise google_error("INVALID_ARGUMENT", f"Invalid value at 'alt' ({alt[:40]!r}): the sandbox serves "
                                               "only alt=json.")
    return options.replace(" ", "") == "enum-encoding=int"


def _query_value(field: Any, value: str, name: str) -> Any:
    from google.protobuf.descriptor import FieldDescriptor as F

    if field.type == F.TYPE_BOOL:
        if value not in ("true", "false"):
            raise google_error("INVALID_ARGUMENT", f"Invalid value at '{name}' (TYPE_BOOL), \"{value[:40]}\"")
        return value == "true"
    if field.type == F.TYPE_MESSAGE:
        raise google_error("INVALID_ARGUMENT", f"Invalid JSON payload received. Cannot bind query parameter "
                                               f"'{name}' to a message field.")
    return value


def bind_query(pb_type: Any, req: Request, into: dict[str, Any]) -> None:
    """Put the query parameters into the request JSON (`a.b=v`, repeated keys for repeated fields)."""
    for name, value in req.query:
        if name in SYSTEM_PARAMS or name.startswith("$"):
            continue
        desc = pb_type.DESCRIPTOR
        node = into
        parts = name.split(".")
        for i, part in enumerate(parts):
            f = desc.fields_by_name.get(part) or desc.fields_by_camelcase_name.get(part)
            if f is None:
                raise google_error("INVALID_ARGUMENT", f"Invalid JSON payload received. Unknown name \"{name}\": "
                                                       "Cannot bind query parameter. Field "
                                                       f"'{part}' could not be found in request message.")
            if i < len(parts) - 1:
                if f.message_type is None:
                    raise google_error("INVALID_ARGUMENT", f"Invalid JSON payload received. Unknown name "
                                                           f"\"{name}\": Cannot bind query parameter.")
                node = node.setdefault(f.json_name, {})
                desc = f.message_type
                continue
            converted = _query_value(f, value, name)
            if f.is_repeated:
                node.setdefault(f.json_name, []).append(converted)
            else:
                node[f.json_name] = converted


def decode_request(message_type: Any, req: Request, rule: Rule, bound: dict[str, str]) -> Any:
    """Path variables + query + body -> the RPC's request message (proto-plus), or a 400."""
    from google.protobuf import json_format

    pb_type = message_type.pb()
    data: dict[str, Any] = {}
    if rule.body == "*":
        data = req.json()
        if not isinstance(data, dict):
            raise google_error("INVALID_ARGUMENT", "Invalid JSON payload received. Expected an object.")
    elif rule.body:
        data = {rule.body: req.json()}
    elif req.body.strip():
        raise google_error("INVALID_ARGUMENT", f"Invalid JSON payload received. {rule.verb} {rule.template} "
                                               "takes no request body.")
    bind_query(pb_type, req, data)
    pb = pb_type()
    try:
        json_format.ParseDict(data, pb, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        raise google_error("INVALID_ARGUMENT", f"Invalid JSON payload received. {e}") from None
    for path, value in bound.items():  # the URL wins over the body, as Google's transcoding does
        target = pb
        *outer, last = path.split(".")
        for part in outer:
            target = getattr(target, part)
        setattr(target, last, value)
    return message_type.wrap(pb)


def encode_message(message: Any, *, ints: bool) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(type(message).pb(message), preserving_proto_field_name=False,
                                     use_integers_for_enums=ints)


# ---------------------------------------------------------------------------------------- the app
Route = Callable[[Request], tuple[int, dict[str, Any]]]


@dataclass
class RestApp:
    """Routes one request to GKE, Compute or Service Usage; knows nothing about sockets.

    `sandbox` is the `GkeSandbox` (world, faults, call counts, token); `compute` the Compute
    subset sharing its world.
    """

    sandbox: Any
    compute: Any
    # (verb, path) of the latest requests, to see what a client sent (never headers: they hold the token)
    requests: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=1000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, req: Request) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append((req.verb, req.path))
        try:
            self._authorize(req)
            if req.path.startswith("/compute/v1/"):
                return self.compute.handle(req, req.path[len("/compute/v1/"):])
            m = re.fullmatch(r"/v1/projects/([^/]+)/services/([^/:]+)", req.path)
            if m and req.verb == "GET":
                return self._service(m.group(1), unquote(m.group(2)))
            return self._gke(req)
        except HttpError as e:
            return e.status, e.body

    def _authorize(self, req: Request) -> None:
        token = self.sandbox.token
        if token is None:
            return
        got = req.headers.get("authorization", "")
        if not got:
            raise google_error("UNAUTHENTICATED", NO_CREDENTIALS)
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            raise google_error("UNAUTHENTICATED", BAD_CREDENTIALS)

    def _service(self, project: str, service: str) -> tuple[int, dict[str, Any]]:
        """Service Usage `services.get`: every API is enabled in the simulated project."""
        if project not in (self.sandbox.world.project, self.compute.project_number):
            raise google_error("PERMISSION_DENIED", f"Permission denied to get service [{service}]")
        return 200, {"name": f"projects/{self.compute.project_number}/services/{service}",
                     "parent": f"projects/{self.compute.project_number}",
                     "config": {"name": service, "title": service}, "state": "ENABLED"}

    def _gke(self, req: Request) -> tuple[int, dict[str, Any]]:
        from google.cloud import container_v1

        from sandbox.gke.server import _RPCS
        from sandbox.gke.world import ApiError

        ints = enum_ints(req)
        found = find_rule(req.verb, req.path)
        if found is None:
            raise google_error("NOT_FOUND", f"The requested URL {req.path[:200]} was not found on this server "
                                            f"({req.verb}).")
        rule, bound = found
        served = _RPCS.get(rule.rpc)
        if served is None:
            raise google_error("UNIMPLEMENTED", f"The sandbox does not serve {SERVICE}.{rule.rpc} "
                                                "(docs/SANDBOX_GKE.md lists what it serves).")
        attr, req_name, _ = served
        request = decode_request(getattr(container_v1, req_name), req, rule, bound)
        self.sandbox.record_call(rule.rpc)
        seconds, failure = self.sandbox.faults.take(rule.rpc)
        if seconds:
            time.sleep(seconds)
        if failure is not None:
            raise google_error(failure.code.name, failure.message)
        try:
            response = getattr(self.sandbox.world, attr)(request)
        except ApiError as e:
            raise google_error(e.code, e.message, _details(getattr(e, "details", None))) from None
        except Exception as e:  # a sandbox bug: say so rather than hang the client
            log.exception("sandbox GKE REST %s failed", rule.rpc)
            raise google_error("INTERNAL", f"sandbox error in {rule.rpc}: {e}") from None
        return 200, encode_message(response, ints=ints)


def _details(details: Any) -> list[dict[str, Any]]:
    """An ApiError's details as JSON objects: dicts as they are, protobuf messages (an ErrorInfo,
    a google.protobuf.Any) in their proto3 JSON form with `@type`; anything else is dropped."""
    from google.protobuf import any_pb2, json_format
    from google.protobuf.message import Message

    out: list[dict[str, Any]] = []
    for d in details or ():
        if isinstance(d, dict):
            out.append(d)
            continue
        pb = type(d).pb(d) if hasattr(type(d), "pb") and not isinstance(d, Message) else d
        if isinstance(pb, any_pb2.Any):
            out.append(json_format.MessageToDict(pb))
        elif isinstance(pb, Message):
            out.append({"@type": f"type.googleapis.com/{pb.DESCRIPTOR.full_name}", **json_format.MessageToDict(pb)})
    return out


# ---------------------------------------------------------------------------------------- HTTP
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is closed, so no thread outlives its client for long
    server: _Server

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("rest: " + fmt, *args)

    def _serve(self) -> None:
        length = self.headers.get("Content-Length")
        try:
            n = int(length or 0)
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_BODY:
            self.close_connection = True
            self._send(*_error_pair(google_error("INVALID_ARGUMENT", "The request body is too large or its "
                                                                     "Content-Length is invalid.")))
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._send(*_error_pair(google_error("INVALID_ARGUMENT", "Chunked request bodies are not "
                                                                     "accepted; send Content-Length.")))
            return
        body = self.rfile.read(n) if n else b""
        raw_path, _, qs = self.path.partition("?")
        req = Request(self.command, raw_path, tuple(parse_qsl(qs, keep_blank_values=True)),
                      {k.lower(): v for k, v in self.headers.items()}, body)
        try:
            status, out = self.server.app.handle(req)
        except Exception as e:  # never leave a client without an answer
            log.exception("sandbox REST failed on %s %s", self.command, raw_path)
            status, out = _error_pair(google_error("INTERNAL", f"sandbox error: {e}"))
        self._send(status, out)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


def _error_pair(e: HttpError) -> tuple[int, dict[str, Any]]:
    return e.status, e.body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: RestApp


class RestServer:
    """The REST port: one ThreadingHTTPServer on 127.0.0.1 around a `RestApp`."""

    def __init__(self, app: RestApp) -> None:
        self.app = app
        self._server: _Server | None = None
        self.url: str | None = None

    def start(self, port: int = 0) -> str:
        if self._server is not None:
            raise RuntimeError("the sandbox REST server is already started")
        server = _Server(("127.0.0.1", int(port)), _Handler)
        server.app = self.app
        threading.Thread(target=server.serve_forever, name="sandbox-gke-rest", daemon=True).start()
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
