"""The part of Kubernetes' protobuf encoding that a real client sends the sandbox server.

Multus' client (client-go with `ContentType: application/vnd.kubernetes.protobuf`) writes the pod's
`network-status` with a pods/status update whose body is protobuf, which a real API server accepts
for built-in types. The sandbox server is JSON only, so this reads just what that update changes:
the envelope (`k8s\\0` + `runtime.Unknown`: typeMeta=1, raw=2) and, in the Pod (metadata=1), the
ObjectMeta fields name=1, namespace=3, uid=5, resourceVersion=6, labels=11, annotations=12 (maps:
key=1, value=2), as numbered in k8s.io/api/core/v1/generated.proto and
k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto. The pod's status is not decoded: the caller
keeps the stored one (Multus sends back the status it read).
"""

from __future__ import annotations

from typing import Any

MAGIC = b"k8s\x00"


class DecodeError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message: varints as int, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            out.append((num, value))
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > len(buf):
                raise DecodeError("truncated field")
            out.append((num, buf[i:i + size]))
            i += size
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
    return out


def _text(v: int | bytes) -> str:
    if not isinstance(v, bytes):
        raise DecodeError("expected a string")
    return v.decode("utf-8")


def _map(entries: list[bytes]) -> dict[str, str]:
    out = {}
    for entry in entries:
        kv = dict(fields(entry))
        out[_text(kv.get(1, b""))] = _text(kv.get(2, b""))
    return out


def decode_pod_metadata(body: bytes) -> dict[str, Any]:
    """`{"apiVersion", "kind", "metadata": {...}}` of a protobuf-encoded Pod (no spec, no status)."""
    if not body.startswith(MAGIC):
        raise DecodeError("not a Kubernetes protobuf body")
    envelope = fields(body[len(MAGIC):])
    type_meta = dict(fields(next((v for n, v in envelope if n == 1 and isinstance(v, bytes)), b"")))
    api_version, kind = _text(type_meta.get(1, b"")), _text(type_meta.get(2, b""))
    if (api_version, kind) != ("v1", "Pod"):
        raise DecodeError(f"only v1 Pod is decoded from protobuf, got {api_version}/{kind}")
    raw = next((v for n, v in envelope if n == 2 and isinstance(v, bytes)), b"")
    meta_bytes = next((v for n, v in fields(raw) if n == 1 and isinstance(v, bytes)), b"")
    md: dict[str, Any] = {}
    labels: list[bytes] = []
    annotations: list[bytes] = []
    for num, value in fields(meta_bytes):
        if num in (1, 3, 5, 6):
            md[{1: "name", 3: "namespace", 5: "uid", 6: "resourceVersion"}[num]] = _text(value)
        elif num == 11 and isinstance(value, bytes):
            labels.append(value)
        elif num == 12 and isinstance(value, bytes):
            annotations.append(value)
    if labels:
        md["labels"] = _map(labels)
    if annotations:
        md["annotations"] = _map(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md}
