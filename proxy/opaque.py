"""X-Opaque-Id: the tenant on every task the cluster runs for it.

Both engines show a request's `X-Opaque-Id` in `_tasks`, in the slow logs and in deprecation logs,
and echo it on the response. The proxy forwards `X-Opaque-Id: <tenant>;<id>`, where `<id>` is the
client's own X-Opaque-Id or, without one, a request id of the proxy's own. The client's header is
never forwarded as it is (it is not in upstream.FORWARDED_HEADERS, the listener's allow-list), so the prefix is always the
tenant the proxy identified: a client that sends `globex;x` is forwarded as `acme;globex;x`. The
node's echo is not relayed (NOT_RELAYED); the client gets back exactly what it sent, or nothing.

This is the one place that builds the header; the hardening helper's forwarded-header allow-list
should name `x-opaque-id` as set by the proxy, not passed.
"""
from __future__ import annotations

import itertools
import os

#: what separates the tenant from the rest of the id (tenant names may not contain it: config.py)
SEPARATOR = ";"

_PREFIX = b"%08x-" % int.from_bytes(os.urandom(4), "big")  # per process: ids stay unique across workers
_COUNTER = itertools.count(1)


def new_request_id() -> bytes:
    """A request id unique to this process (and, by its random prefix, across processes)."""
    return b"%s%x" % (_PREFIX, next(_COUNTER))


#: tenant → the start of its forwarded header line (tenants are the config's: few)
_FIELD_STARTS: dict[str, bytes] = {}


def forwarded_field(tenant: str, request_id: bytes) -> bytes:
    """The X-Opaque-Id header line for the node: `<tenant>;<request_id>`."""
    start = _FIELD_STARTS.get(tenant)
    if start is None:
        if len(_FIELD_STARTS) >= 4096:
            _FIELD_STARTS.clear()
        start = _FIELD_STARTS[tenant] = b"X-Opaque-Id: %s;" % tenant.encode("utf-8")
    return start + request_id + b"\r\n"


def echoed_field(client_id: bytes | None) -> bytes:
    """The X-Opaque-Id header line for the client: its own, unchanged (empty if it sent none)."""
    return b"X-Opaque-Id: %s\r\n" % client_id if client_id is not None else b""


def tenant_of(opaque_id: str) -> str:
    """The tenant a forwarded X-Opaque-Id names (what precedes the first SEPARATOR)."""
    return opaque_id.split(SEPARATOR, 1)[0]
