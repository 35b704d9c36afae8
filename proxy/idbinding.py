"""Scroll, point-in-time and async-search ids, bound to the tenant that opened them.

Such an id is a bearer token: whoever presents it reads the search it names, whatever index the
request path names. So the client never sees the cluster's id. It sees

    sg1.<tag>.<original>      tag = first 16 hex digits of HMAC-SHA256(key, tenant NUL original)

and the proxy, before forwarding a request that carries one, checks the tag against the tenant
making the request and sends the cluster its original id. The binding needs no shared store: every
worker and every instance with the same key agrees, across restarts. ES ids are base64, so the
wrapper adds only URL-safe characters and is found again by fixed offsets.

Pure: `IdBinder` takes values and returns values (the one coroutine reads a response's first
chunks). `flow` calls `rebind` once per request after the body is decoded, and wraps the id in the
first bytes of the response with `Rebound.wrap_response` / `wrap_stream_head`.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import orjson

from .config import Config
from .errors import BadRequest, Forbidden

PREFIX = "sg1."
_TAG_HEX = 16
#: bytes the wrapper adds to an id: "sg1." + 16 hex digits + "."
OVERHEAD = len(PREFIX) + _TAG_HEX + 1
#: how much of a streamed response is read looking for its id (a point in time over many shards is long)
HEAD_LIMIT = 1024 * 1024

# The id field is the first key of the responses that carry one (ES writes _scroll_id / pit_id / id first).
_HEAD = re.compile(rb'\A(\s*\{\s*"(_scroll_id|pit_id|id)"\s*:\s*")([^"\\]*)"')
# A prefix of that shape that has not reached the closing quote of the id yet: read more.
_PARTIAL = re.compile(rb'\s*(?:\{\s*(?:"[^"\\]*(?:"\s*(?::\s*(?:"[^"\\]*)?)?)?)?)?')
_SCROLL_PATH = ("_search", "scroll")
#: response_fields of a close-point-in-time call: OpenSearch echoes each closed id, {"pits": [{"pit_id": ...}]}
CLOSED_PITS = (b"pits",)


def binding_key(config: Config) -> bytes:
    """The HMAC key: `security.binding_secret`, or one derived from every tenant's credential digests.

    The derived key is the same on every instance with the same tenants and keys, and no tenant can
    compute it from its own key alone; but anyone who reads the config file can, and it changes
    (invalidating every open scroll and point in time) when any tenant or key changes.
    """
    secret = config.security.binding_secret
    if secret:
        return hashlib.sha256(b"sluicegate id binding\0" + secret.encode()).digest()
    digest = hashlib.sha256(b"sluicegate id binding, derived\0")
    for name in sorted(config.tenants):
        spec = config.tenants[name]
        digest.update(name.encode() + b"\0")
        for key in sorted(spec.api_keys):
            digest.update(key.encode() + b"\0")
        for user in sorted(spec.users):
            digest.update(f"{user}\0{spec.users[user]}\0".encode())
    return digest.digest()


_DROP_ENCODING = frozenset({b"content-encoding"})
_DROP_ACCEPT = frozenset({b"accept-encoding"})
_DROP_BOTH = _DROP_ENCODING | _DROP_ACCEPT


@dataclass(frozen=True, slots=True)
class Rebound:
    """How one request is forwarded and its response relayed, given the ids it carries or gets back."""

    binder: IdBinder
    tenant: str
    #: the request target to send the node (the client's, with any bound id unwrapped)
    target: str
    #: the body to send instead of the client's (identity-encoded JSON), or None to send the client's
    body: bytes | None
    #: the first key of a 2xx response that holds an id to wrap for this tenant, or empty
    response_fields: tuple[bytes, ...]

    def request(self, raw: bytes) -> tuple[str, bytes | None]:
        """(target, body) for the node."""
        return self.target, self.body if self.body is not None else (raw or None)

    @property
    def dropped_headers(self) -> frozenset[bytes]:
        """Client headers (lower-case names) the node must not get with this request."""
        if self.body is not None:  # the proxy re-serialised the body, uncompressed
            if self.response_fields:
                return _DROP_BOTH
            return _DROP_ENCODING
        if self.response_fields:  # the response's id is rewritten in its first bytes: ask for them plain
            return _DROP_ACCEPT
        return frozenset()

    def wraps(self, status: int, encoding: str | None) -> bool:
        """Whether a response with this status and Content-Encoding has an id to wrap."""
        return bool(self.response_fields) and 200 <= status < 300 and encoding in (None, "", "identity")

    def wrap_response(self, data: bytes) -> bytes:
        """A whole response body with the id in its first key wrapped (unchanged when there is none)."""
        if self.response_fields == CLOSED_PITS:
            return self.binder.wrap_closed_pits(self.tenant, data)
        wrapped = self.binder.wrap_head(self.tenant, data, self.response_fields)
        return data if wrapped is None else wrapped

    async def wrap_stream_head(self, chunks: AsyncIterator[bytes]) -> tuple[bytes, int]:
        """Read a streamed response until its id is whole (at most HEAD_LIMIT bytes) and wrap it.

        Returns the bytes to send first and how many bytes longer they are than what was read.
        """
        head = b""
        async for chunk in chunks:
            head += chunk
            if len(head) >= HEAD_LIMIT or not _PARTIAL.fullmatch(head):
                break
        wrapped = self.binder.wrap_head(self.tenant, head, self.response_fields)
        return (head, 0) if wrapped is None else (wrapped, len(wrapped) - len(head))


class IdBinder:
    """Wraps the cluster's ids for one tenant and checks the ones a tenant presents. One per config snapshot."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes):
        self._key = key

    def _tag(self, tenant: str, original: str) -> str:
        message = tenant.encode() + b"\0" + original.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:_TAG_HEX]

    def wrap(self, tenant: str, original: str) -> str:
        """The id `tenant` is given for the cluster's `original`."""
        return f"{PREFIX}{self._tag(tenant, original)}.{original}"

    def unwrap(self, tenant: str, presented: Any, what: str) -> str:
        """The cluster's id inside `presented`, or Forbidden (403) naming neither the id nor its owner."""
        if (
            isinstance(presented, str)
            and len(presented) > OVERHEAD
            and presented.startswith(PREFIX)
            and presented[OVERHEAD - 1] == "."
        ):
            original = presented[OVERHEAD:]
            if hmac.compare_digest(presented[len(PREFIX):OVERHEAD - 1], self._tag(tenant, original)):
                return original
        raise Forbidden(f"tenant '{tenant}' presented a {what} id that was not issued to it by this proxy")

    def wrap_head(self, tenant: str, head: bytes, fields: tuple[bytes, ...]) -> bytes | None:
        """`head` with the id of its first key wrapped, when that key is one of `fields`; else None."""
        m = _HEAD.match(head)
        if m is None or m.group(2) not in fields or not m.group(3):
            return None
        wrapped = self.wrap(tenant, m.group(3).decode("latin-1")).encode("latin-1")
        return head[:m.start(3)] + wrapped + head[m.end(3):]

    def wrap_closed_pits(self, tenant: str, data: bytes) -> bytes:
        """OpenSearch's answer to closing points in time, `{"pits": [{"successful": .., "pit_id": ID}]}`, with
        each ID wrapped as the tenant presented it (each was checked as the tenant's before the call went out).
        The ids are replaced where they stand, so the node's formatting is kept; anything else is unchanged."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        pits = doc.get("pits") if isinstance(doc, dict) else None
        for pit in pits if isinstance(pits, list) else ():
            original = pit.get("pit_id") if isinstance(pit, dict) else None
            if isinstance(original, str) and original:
                data = data.replace(orjson.dumps(original), orjson.dumps(self.wrap(tenant, original)))
        return data

    # ---- requests ----

    def rebind(self, tenant: str, call, body, target: str) -> Rebound | None:
        """How to forward `call` for `tenant`: its bound ids checked and unwrapped, and which id of the
        response to wrap. None when the call neither carries nor receives a bound id (most calls).

        Raises Forbidden for an id not bound to `tenant` (or not bound at all), and for `_all` in a
        clear-scroll or close-point-in-time call, which would reach every tenant's searches.
        """
        kind = call.kind
        doc = body.json if body is not None else None
        if kind == "scroll":
            return self._scroll(tenant, call, body, target)
        if kind == "clear_scroll":
            return self._clear_scroll(tenant, call, body, target)
        if kind == "close_pit":
            return self._close_pit(tenant, body, target)
        if kind in ("async_search_get", "async_search_delete"):
            return self._async_get(tenant, call, target)
        submit = call.api == "async_search.submit"
        pit = doc.get("pit") if isinstance(doc, dict) and (kind == "search" or submit) else None
        if pit is not None:
            if not isinstance(pit, dict):
                raise BadRequest("[pit] must be an object holding the point in time's [id]")
            original = self.unwrap(tenant, pit.get("id"), "point-in-time")
            new_body = _json_body(body, {**doc, "pit": {**pit, "id": original}})
            return Rebound(self, tenant, target, new_body, (b"id",) if submit else (b"pit_id",))
        if submit:
            return Rebound(self, tenant, target, None, (b"id",))
        if kind in ("search", "search_template") and call.params.get("scroll"):
            return Rebound(self, tenant, target, None, (b"_scroll_id",))
        if kind == "open_pit":
            return Rebound(self, tenant, target, None, (b"id", b"pit_id"))
        return None

    def _scroll(self, tenant: str, call, body, target: str) -> Rebound:
        """POST|GET /_search/scroll[/{id}] with the id in the path, ?scroll_id= or the body."""
        path, query = _split_target(target)
        segments = _segments(path)
        if len(segments) > 3:
            raise BadRequest("a scroll request names one scroll id in its path")
        if len(segments) == 3:
            path = "/_search/scroll/" + _quote(self.unwrap(tenant, segments[2], "scroll"))
        query = self._unwrap_param(tenant, call, query, "scroll_id", "scroll")
        doc = body.json if body is not None else None
        new_body = None
        if isinstance(doc, dict) and "scroll_id" in doc:
            new_body = _json_body(body, {**doc, "scroll_id": self.unwrap(tenant, doc["scroll_id"], "scroll")})
        return Rebound(self, tenant, _join_target(path, query), new_body, (b"_scroll_id",))

    def _clear_scroll(self, tenant: str, call, body, target: str) -> Rebound:
        """DELETE /_search/scroll[/{ids}] with ids in the path or the body's scroll_id (one or a list)."""
        path, query = _split_target(target)
        segments = _segments(path)
        if len(segments) > 3:
            raise BadRequest("a clear-scroll request names its scroll ids in one path segment")
        if len(segments) == 3:
            ids = segments[2].split(",")
            path = "/_search/scroll/" + ",".join(_quote(self._unwrap_any(tenant, i, "scroll")) for i in ids)
        query = self._unwrap_param(tenant, call, query, "scroll_id", "scroll")
        doc = body.json if body is not None else None
        new_body = None
        if isinstance(doc, dict) and "scroll_id" in doc:
            new_body = _json_body(body, {**doc, "scroll_id": self._unwrap_list(tenant, doc["scroll_id"], "scroll")})
        return Rebound(self, tenant, _join_target(path, query), new_body, ())

    def _close_pit(self, tenant: str, body, target: str) -> Rebound:
        """DELETE /_pit {"id": ...} (ES) or DELETE /_search/point_in_time {"pit_id": [...]} (OpenSearch)."""
        path, _ = _split_target(target)
        if any(seg == "_all" for seg in _segments(path)):
            raise Forbidden(f"tenant '{tenant}' may not close every point in time: [_all] reaches other tenants'")
        doc = body.json if body is not None else None
        new_body = None
        if isinstance(doc, dict) and ("id" in doc or "pit_id" in doc):
            replaced = dict(doc)
            for key in ("id", "pit_id"):
                if key in doc:
                    replaced[key] = self._unwrap_list(tenant, doc[key], "point-in-time")
            new_body = _json_body(body, replaced)
        return Rebound(self, tenant, target, new_body, CLOSED_PITS)

    def _async_get(self, tenant: str, call, target: str) -> Rebound:
        """GET|DELETE /_async_search/{id} and GET /_async_search/status/{id}."""
        _, query = _split_target(target)
        original = self.unwrap(tenant, call.doc_id, "async search")
        path = ("/_async_search/status/" if call.api == "async_search.status" else "/_async_search/") + _quote(original)
        fields = (b"id",) if call.kind == "async_search_get" else ()
        return Rebound(self, tenant, _join_target(path, query), None, fields)

    def _unwrap_any(self, tenant: str, presented: str, what: str) -> str:
        if presented == "_all":
            raise Forbidden(f"tenant '{tenant}' may not use [_all] here: it reaches every tenant's {what} ids")
        return self.unwrap(tenant, presented, what)

    def _unwrap_list(self, tenant: str, presented: Any, what: str) -> Any:
        if isinstance(presented, list):
            if not presented:
                raise BadRequest(f"an empty list of {what} ids")
            return [self._unwrap_any(tenant, p, what) for p in presented]
        return self._unwrap_any(tenant, presented, what)

    def _unwrap_param(self, tenant: str, call, query: str, name: str, what: str) -> str:
        if name not in call.params:
            return query
        pairs = []
        for pair in query.split("&"):
            key = pair.partition("=")[0]
            if unquote(key.replace("+", " ")) == name:
                ids = call.params[name].split(",")
                pair = name + "=" + ",".join(_quote(self._unwrap_any(tenant, i, what)) for i in ids)
            pairs.append(pair)
        return "&".join(pairs)


def _json_body(body, doc: Any) -> bytes:
    if body.raw == b"" and body.data:
        raise BadRequest("send a scroll or point-in-time id in the request body, not in ?source=")
    return orjson.dumps(doc)


def _split_target(target: str) -> tuple[str, str | None]:
    path, sep, query = target.partition("?")
    return path, query if sep else None


def _join_target(path: str, query: str | None) -> str:
    return path if query is None else f"{path}?{query}"


def _segments(path: str) -> list[str]:
    return [unquote(seg) for seg in path.split("/") if seg]


def _quote(value: str) -> str:
    return quote(value, safe="")
