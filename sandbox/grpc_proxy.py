"""A generic gRPC proxy on 127.0.0.1 with a fault table: make any gRPC server misbehave on cue.

Google's Firestore emulator cannot inject faults, and the sandbox GKE server's own fault table
is per method only. This proxy sits between an unmodified client library and an upstream
server and can fail, delay or hold the next N calls of a method — optionally only the calls
whose serialized request contains some bytes (a cluster's document id, a step name), so that
one cluster's call fails while every other cluster's passes.

How it forwards: on the wire a unary call and a streaming call look the same (a stream of
length-prefixed messages each way; "unary" only means one message), so every method is served
as stream-stream with identity (bytes) (de)serializers and forwarded as stream-stream to the
upstream channel. Unary, server-streaming (BatchGetDocuments, RunQuery), client-streaming and
bidi (Listen, Write) calls all pass unchanged. Request metadata is passed upstream; upstream
initial and trailing metadata and the status come back to the client. The client's remaining
deadline goes upstream with the call, and a cancelled client cancels the upstream call.

Faults (see `ProxyFaults`):
- `fail(method, code, times, contains=..., after=False)`: answer with a gRPC status instead of
  forwarding; with `after=True` the call is forwarded first and its answer replaced by the
  error ("the commit happened, the response was lost").
- `delay(method, seconds, times, contains=...)`: wait before forwarding. A delayed call whose
  client has gone meanwhile (its deadline passed, its process was killed) is NOT forwarded:
  the request is lost with its client, as a request still in a dead process's socket is.
- `hold(method, contains=...)`: like an endless delay, released by the returned `Hold`;
  `Hold.reached` tells the test the call is parked (used to kill a process mid-commit).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from sandbox.gke.faults import status_code  # one parser of status names for both fault tables

_METHOD = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*$")
# Metadata keys gRPC manages itself; forwarding them upstream would be refused or wrong.
_RESERVED = ("user-agent", "te", "content-type", "grpc-")


def method_name(method: str) -> str:
    """`"google.firestore.v1.Firestore/Commit"` (leading slash optional) -> `"/google...Firestore/Commit"`."""
    if not isinstance(method, str) or not _METHOD.match(method):
        raise ValueError(f"method {method!r}: expected 'package.Service/Method'")
    return method if method.startswith("/") else "/" + method


Needles = bytes | str | tuple[bytes | str, ...] | list[bytes | str] | None


def _needles(contains: Any) -> tuple[bytes, ...]:
    """`contains` as a tuple of byte strings, all of which a matching request must hold."""
    if contains is None:
        return ()
    items = contains if isinstance(contains, tuple | list) else (contains,)
    out = []
    for item in items:
        if isinstance(item, str):
            item = item.encode()
        if not isinstance(item, bytes) or not item:
            raise ValueError(f"contains: expected non-empty bytes or str, got {item!r}")
        out.append(item)
    return tuple(out)


class Hold:
    """A parked call: `reached` is set when a call arrives, `release()` lets it go on;
    `dropped` is set when its client went away while parked (the call is then never forwarded)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.dropped = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def wait_released(self, context: grpc.ServicerContext, stop: threading.Event) -> None:
        self.reached.set()
        while not self._released.wait(0.05):
            if stop.is_set() or not context.is_active():
                self.dropped.set()
                return


@dataclass
class _Fault:
    method: str
    contains: tuple[bytes, ...]  # all must occur in the first request message; () = any call
    times: int  # remaining; -1 = forever
    code: grpc.StatusCode | None = None
    message: str = ""
    after: bool = False
    delay: float = 0.0
    hold: Hold | None = None
    hits: int = 0

    def matches(self, method: str, first: bytes | None) -> bool:
        if self.method != method:
            return False
        return not self.contains or (first is not None and all(c in first for c in self.contains))


@dataclass
class ProxyFaults:
    """Armed faults, in the order added; each call consumes the first one that matches it."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _faults: list[_Fault] = field(default_factory=list)

    def _add(self, fault: _Fault) -> _Fault:
        if not isinstance(fault.times, int) or fault.times == 0 or fault.times < -1:
            raise ValueError(f"times must be a positive integer or -1 (forever), got {fault.times!r}")
        fault.contains = _needles(fault.contains)
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(self, method: str, code: grpc.StatusCode | str, times: int = 1, *, message: str = "",
             contains: Needles = None, after: bool = False) -> None:
        """The next `times` matching calls end with `code` (after being forwarded, with `after`)."""
        status = status_code(code)
        name = method_name(method)
        self._add(_Fault(name, contains, times, code=status, after=after,  # type: ignore[arg-type]
                         message=message or f"injected by the proxy: {status.name} for {name}"))

    def delay(self, method: str, seconds: float, times: int = 1, *, contains: Needles = None) -> None:
        """The next `times` matching calls wait `seconds` before being forwarded (if still wanted)."""
        if not isinstance(seconds, int | float) or not 0 <= seconds <= 600:
            raise ValueError(f"seconds must be a number in 0..600, got {seconds!r}")
        self._add(_Fault(method_name(method), contains, times, delay=float(seconds)))  # type: ignore[arg-type]

    def hold(self, method: str, *, contains: Needles = None) -> Hold:
        """Park the next matching call until the returned Hold is released (or its client goes)."""
        hold = Hold()
        self._add(_Fault(method_name(method), contains, 1, hold=hold))  # type: ignore[arg-type]
        return hold

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"method": f.method, "contains": list(f.contains), "times": f.times,
                     "code": f.code.name if f.code else None, "delay": f.delay, "hold": f.hold is not None}
                    for f in self._faults]

    def take(self, method: str, first: bytes | None) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.matches(method, first):
                    f.hits += 1
                    if f.times > 0:
                        f.times -= 1
                        if f.times == 0:
                            self._faults.remove(f)
                    return f
        return None


class GrpcProxy:
    """`GrpcProxy(upstream="127.0.0.1:8080").start()` -> "127.0.0.1:PORT"; `stop()` when done."""

    def __init__(self, upstream: str, *, max_workers: int = 64) -> None:
        host, sep, port = upstream.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"upstream {upstream!r}: expected host:port")
        self.upstream = upstream
        self.faults = ProxyFaults()
        self.calls: Counter[str] = Counter()  # method -> calls received (faulted or not)
        self._lock = threading.Lock()
        self._max_workers = max_workers
        self._stop = threading.Event()
        self._server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None
        self.address = ""

    def __enter__(self) -> GrpcProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, port: int = 0) -> str:
        self._channel = grpc.insecure_channel(self.upstream)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers,
                                                        thread_name_prefix="grpc-proxy"))
        server.add_generic_rpc_handlers((_Handler(self),))
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        if not bound:
            raise RuntimeError(f"could not bind 127.0.0.1:{port}")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{bound}"
        return self.address

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop(grace=0.5).wait(5)
            self._server = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def count(self, method: str) -> int:
        with self._lock:
            return self.calls[method_name(method)]

    # -- one call ------------------------------------------------------------------------------
    def _serve(self, method: str, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        with self._lock:
            self.calls[method] += 1
        first = next(requests, None)
        fault = self.faults.take(method, first)
        if fault is not None and fault.hold is not None:
            fault.hold.wait_released(context, self._stop)
        elif fault is not None and fault.delay:
            deadline = time.monotonic() + fault.delay
            while time.monotonic() < deadline and context.is_active() and not self._stop.is_set():
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if not context.is_active() or self._stop.is_set():
            return  # the client is gone (deadline, cancel, killed): the request is lost with it
        if fault is not None and fault.code is not None and not fault.after:
            context.abort(fault.code, fault.message)
        metadata = tuple((k, v) for k, v in context.invocation_metadata()
                         if not k.startswith(":") and not k.startswith(_RESERVED))
        remaining = context.time_remaining()
        upstream = self._channel.stream_stream(method)  # type: ignore[union-attr]
        chained = itertools.chain(() if first is None else (first,), requests)
        call = upstream(chained, metadata=metadata,
                        timeout=remaining if remaining is not None and remaining < 1e6 else None)
        context.add_callback(call.cancel)
        try:
            with contextlib.suppress(grpc.RpcError):
                context.send_initial_metadata(tuple(call.initial_metadata() or ()))
            responses = list(call) if fault is not None and fault.after else call
            if fault is not None and fault.after:
                context.abort(fault.code, fault.message)  # type: ignore[arg-type]
            yield from responses
            context.set_trailing_metadata(tuple(call.trailing_metadata() or ()))
        except grpc.RpcError as e:
            if not isinstance(e, grpc.Call):
                raise
            context.set_trailing_metadata(tuple(e.trailing_metadata() or ()))
            context.abort(e.code(), e.details() or "")


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: GrpcProxy) -> None:
        self.proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        return grpc.stream_stream_rpc_method_handler(
            lambda requests, context: self.proxy._serve(method, requests, context),
            request_deserializer=None, response_serializer=None)
