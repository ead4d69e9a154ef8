"""Kubernetes `Status` bodies and the error type that carries them through the server."""

from __future__ import annotations

from typing import Any

REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    406: "NotAcceptable", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid",
    429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


class ApiError(Exception):
    """An API failure that becomes a `Status` body with `code`, `reason` and optional `details`."""

    def __init__(self, code: int, message: str, reason: str | None = None,
                 details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return status_body(self.code, self.message, self.reason, self.details)


class PageNotFound(ApiError):
    """A path outside every served group/version: Kubernetes answers `404 page not found` as text."""

    def __init__(self) -> None:
        super().__init__(404, "404 page not found")


def status_body(code: int, message: str, reason: str | None = None,
                details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Success" if code < 400 else "Failure", "message": message,
        "reason": reason or REASONS.get(code, ""), "code": code,
    }
    if details:
        body["details"] = details
    if not body["reason"]:
        del body["reason"]
    return body


def not_found(gr: str, name: str, group: str = "", kind: str = "") -> ApiError:
    return ApiError(404, f'{gr} "{name}" not found', "NotFound",
                    {"name": name, "group": group, "kind": kind.split(".")[0] if kind else gr.split(".")[0]})


def already_exists(gr: str, name: str, group: str, plural: str) -> ApiError:
    return ApiError(409, f'{gr} "{name}" already exists', "AlreadyExists",
                    {"name": name, "group": group, "kind": plural})


def conflict(gr: str, name: str, group: str, plural: str, why: str) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {gr} "{name}": {why}', "Conflict",
                    {"name": name, "group": group, "kind": plural})


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; `causes` are (field, reason, message) as Kubernetes' field errors report them."""
    qual = f"{kind}.{group}" if group else kind
    msgs = "; ".join(m for _, _, m in causes) if len(causes) == 1 else "[" + ", ".join(m for _, _, m in causes) + "]"
    return ApiError(422, f'{qual} "{name}" is invalid: {msgs}', "Invalid", {
        "name": name, "group": group, "kind": kind,
        "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes],
    })
