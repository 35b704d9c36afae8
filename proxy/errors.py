"""Elasticsearch-shaped refusals.

Each refusal is an exception that knows its own response, so the request path raises and one
boundary (`flow.handle`) turns it into a status, a body existing ES clients understand, and a
counter. Body shape: {"error": {"root_cause": [{"type", "reason"}], "type", "reason"}, "status"}.
"""
from __future__ import annotations

import math

import orjson

#: the header lines every refusal carries
_FIELDS = b"Content-Type: application/json; charset=UTF-8\r\nX-Elastic-Product: Elasticsearch\r\n"


def error_body(status: int, etype: str, reason: str, caused_by: dict | None = None) -> bytes:
    """The JSON bytes of an ES error response."""
    cause = {"type": etype, "reason": reason}
    error = {"root_cause": [cause], "type": etype, "reason": reason}
    if caused_by is not None:
        error["caused_by"] = caused_by
    return orjson.dumps({"error": error, "status": status})


def flat_error_body(status: int, reason: str) -> bytes:
    """The JSON bytes of the flat errors ES's REST layer answers itself (no handler, 405, 406)."""
    return orjson.dumps({"error": reason, "status": status})


class Refusal(Exception):
    """A request the proxy answers itself. Subclasses fix the status and ES error type."""

    status = 400
    etype = "illegal_argument_exception"
    #: the `reason` label in metrics and the access log
    label = "refused"
    #: ES's nested cause (`{"type", "reason"}`), where ES itself names one
    caused_by: dict | None = None
    #: answered in the flat shape of ES's REST layer, `{"error": reason, "status": S}`
    flat = False

    def __init__(self, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.headers = headers

    @classmethod
    def internal(cls) -> Refusal:
        """A bug, not the client's fault: still ES-shaped, never a bare 500 page."""
        refusal = cls("internal proxy error; the request was not forwarded or its response was cut short")
        refusal.status, refusal.etype, refusal.label = 500, "proxy_internal_exception", "internal"
        return refusal

    def fields(self) -> bytes:
        """The response's header lines (each ending in CRLF), as `listener.Request.respond` takes them."""
        if not self.headers:
            return _FIELDS
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        return _FIELDS + extra.encode("utf-8")

    def body(self) -> bytes:
        """The JSON body: ES-shaped (with ES's `caused_by` where it names one), or flat as ES's REST layer answers."""
        if self.flat:
            return flat_error_body(self.status, self.reason)
        return error_body(self.status, self.etype, self.reason, self.caused_by)


class Unauthorized(Refusal):
    status = 401
    etype = "security_exception"
    label = "auth"

    def __init__(self, reason: str):
        super().__init__(reason, {"WWW-Authenticate": 'ApiKey, Basic realm="sluicegate", charset="UTF-8"'})


class Forbidden(Refusal):
    status = 403
    etype = "security_exception"
    label = "forbidden"


class BadRequest(Refusal):
    """A body or URL that must be parsed and cannot be."""

    status = 400
    etype = "parse_exception"
    label = "parse"


class IllegalArgument(Refusal):
    status = 400
    etype = "illegal_argument_exception"
    label = "illegal_argument"


class BodyTooLarge(Refusal):
    status = 413
    etype = "content_too_long_exception"
    label = "body_too_large"


class UriTooLong(Refusal):
    status = 414
    etype = "too_long_http_line_exception"
    label = "uri_too_long"


class HeadersTooLarge(Refusal):
    status = 431
    etype = "too_long_http_header_exception"
    label = "headers_too_large"


class RequestTimeout(Refusal):
    status = 408
    etype = "request_timeout_exception"
    label = "client_timeout"


class Throttled(Refusal):
    """429: budget exhausted, queue full, or waited too long.

    Carries Retry-After (whole seconds, rounded up, as RFC 9110 wants), the IETF httpapi
    RateLimit-Policy / RateLimit headers, and X-Sluicegate-Reason.
    """

    status = 429
    etype = "es_rejected_execution_exception"

    def __init__(
        self,
        reason: str,
        *,
        why: str,
        retry_after: float,
        policy: str | None = None,
        limit: float = 0.0,
        remaining: float = 0.0,
        window: float = 0.0,
    ):
        headers = {
            "Retry-After": str(max(1, math.ceil(retry_after))),
            "X-Sluicegate-Reason": why,
        }
        if policy is not None:
            headers["RateLimit-Policy"] = f'"{policy}";q={int(limit)};w={max(1, math.ceil(window))}'
            headers["RateLimit"] = f'"{policy}";r={max(0, int(remaining))};t={max(1, math.ceil(retry_after))}'
        super().__init__(reason, headers)
        self.label = why
        self.retry_after = retry_after


class UpstreamFailure(Refusal):
    """No healthy node (503), a node failed mid-request (502), or it took too long (504)."""

    etype = "proxy_upstream_exception"
    label = "upstream"

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class InvalidParameter(BadRequest):
    """A query parameter ES itself would refuse (size=abc, from=-1, scroll=soon): its 400, error type and
    words, and the Java exception ES names as the cause (`number_format_exception`) where it names one."""

    etype = "illegal_argument_exception"
    label = "illegal_argument"

    def __init__(self, reason: str, caused_by: dict | None = None):
        super().__init__(reason)
        self.caused_by = caused_by


class NotAcceptable(Refusal):
    """A body whose Content-Type ES refuses (406, "Content-Type header [...] is not supported", flat as ES's
    REST layer answers it), or one the proxy must read to cost it and cannot (SMILE, CBOR, YAML on a
    search-class call: the proxy's own refusal, in the usual shape)."""

    status = 406
    etype = "media_type_header_exception"
    label = "content_type"

    def __init__(self, reason: str, flat: bool = True):
        super().__init__(reason)
        self.flat = flat
