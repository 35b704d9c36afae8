"""Who is asking: credentials → tenant, and what that tenant may touch.

Secrets are stored as sha256 digests. A presented API key is hashed and looked up by digest; a
Basic password is hashed and compared with hmac.compare_digest. Neither the config nor a timing
side channel reveals a key.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from .config import Config, Plan
from .errors import Forbidden, Unauthorized


@dataclass(frozen=True, slots=True)
class TenantView:
    """One tenant as the request path sees it, derived once per config load."""

    name: str
    plan_name: str
    plan: Plan
    enforce: bool
    indices: tuple[str, ...]
    #: matches one concrete index name or wildcard expression that lies inside the tenant's grant
    index_grant: re.Pattern[str]


def _grant_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    # '*' in a tenant pattern matches anything, including a '*' in the request: a request wildcard
    # that the pattern matches literally can only expand to names the pattern also matches.
    parts = ("".join(".*" if ch == "*" else re.escape(ch) for ch in p) for p in patterns)
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


class Directory:
    """Credentials → tenant for one config snapshot."""

    def __init__(self, config: Config):
        self.tenants: dict[str, TenantView] = {}
        self._by_key_digest: dict[str, TenantView] = {}
        self._by_user: dict[str, tuple[str, TenantView]] = {}
        for name, spec in config.tenants.items():
            view = TenantView(
                name=name,
                plan_name=spec.plan,
                plan=config.plans[spec.plan],
                enforce=config.tenant_enforced(name),
                indices=tuple(spec.indices),
                index_grant=_grant_regex(tuple(spec.indices)),
            )
            self.tenants[name] = view
            for digest in spec.api_keys:
                self._by_key_digest[digest[len("sha256:"):]] = view
            for user, digest in spec.users.items():
                self._by_user[user] = (digest[len("sha256:"):], view)

    def identify(self, authorization: str | None, path: str) -> TenantView:
        """The tenant behind an Authorization header, or Unauthorized (401) naming no secret."""
        if not authorization:
            raise Unauthorized(f"missing authentication credentials for REST request [{_clip(path)}]")
        scheme, _, token = authorization.partition(" ")
        scheme = scheme.lower()
        token = token.strip()
        if scheme == "apikey" and token:
            digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
            # Keyed by the digest of the presented key: lookup time depends on that digest, never
            # on a stored secret, so it leaks nothing an attacker could not compute themselves.
            view = self._by_key_digest.get(digest)
            if view is not None:
                return view
        elif scheme == "basic" and token:
            user, password = _basic(token)
            entry = self._by_user.get(user) if user is not None else None
            if entry is not None:
                digest = hashlib.sha256(password.encode("utf-8", "surrogateescape")).hexdigest()
                if hmac.compare_digest(digest, entry[0]):
                    return entry[1]
        raise Unauthorized(
            "unable to authenticate with provided credentials and anonymous access is not allowed for this request"
        )


def _basic(token: str) -> tuple[str | None, str]:
    try:
        raw = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None, ""
    user, sep, password = raw.partition(":")
    return (user, password) if sep else (None, "")


def _clip(path: str, limit: int = 200) -> str:
    return path if len(path) <= limit else path[:limit] + "..."


# ---- grants -------------------------------------------------------------------------------

#: cluster-level reads every tenant may make: clients call these to discover the cluster
_OPEN_CLUSTER_KINDS = frozenset({"info", "cluster_health"})
#: calls whose indices are all named in the body (NDJSON headers, actions, docs) when the path names none
_BODY_NAMES_INDICES = frozenset({"msearch", "msearch_template", "bulk", "mget"})


def authorize(tenant: TenantView, call, body) -> None:
    """Refuse (403) a call outside the tenant's grants.

    Called twice: with body=None on the path alone (before the body is read), and again with
    the decoded body for calls that name indices inside it.
    """
    if body is None:
        _authorize_path(tenant, call)
    elif call.kind in _BODY_NAMES_INDICES and body.lines is not None:
        _authorize_body_lines(tenant, call, body.lines)
    elif call.kind == "mget" and isinstance(body.json, dict):
        for doc in body.json.get("docs") or ():
            if isinstance(doc, dict) and "_index" in doc:
                _check_index(tenant, call, str(doc["_index"]))


def _authorize_path(tenant: TenantView, call) -> None:
    if call.kind in _OPEN_CLUSTER_KINDS and call.method in ("GET", "HEAD"):
        return
    if call.resource not in tenant.plan.resources:
        raise Forbidden(f"tenant '{tenant.name}' may not make {call.resource} requests (plan '{tenant.plan_name}')")
    if call.cluster:
        if call.api not in tenant.plan.cluster_apis:
            raise Forbidden(f"tenant '{tenant.name}' may not call the cluster-level API [{call.api}]")
        return
    if call.kind in ("scroll", "clear_scroll", "close_pit"):
        return
    if not call.indices:
        if call.kind in _BODY_NAMES_INDICES:
            return  # checked against the body's own index names
        raise Forbidden(
            f"tenant '{tenant.name}' must name its indices: [{call.api}] without an index would reach every "
            f"tenant's data (allowed: {', '.join(tenant.indices)})"
        )
    for index in call.indices:
        _check_index(tenant, call, index)


def _authorize_body_lines(tenant: TenantView, call, lines) -> None:
    path_default = call.indices
    if call.kind == "bulk":
        for line in lines:
            if isinstance(line, dict):
                for meta in line.values():
                    index = meta.get("_index") if isinstance(meta, dict) else None
                    if index is None and not path_default:
                        raise Forbidden(f"a _bulk action of tenant '{tenant.name}' names no index")
                    if index is not None:
                        _check_index(tenant, call, str(index))
        return
    # _msearch: every other line is a header naming the indices of the search after it.
    for header in lines[0::2]:
        names = header.get("index") if isinstance(header, dict) else None
        if names is None:
            if not path_default:
                raise Forbidden(f"an _msearch header of tenant '{tenant.name}' names no index")
            continue
        for index in (names if isinstance(names, list) else str(names).split(",")):
            _check_index(tenant, call, str(index))


def _check_index(tenant: TenantView, call, index: str) -> None:
    name = index.strip()
    if name.startswith("-"):
        return  # an exclusion only narrows what the rest of the expression selects
    if name in ("", "_all", "*") or not tenant.index_grant.match(_date_math_pattern(name)):
        raise Forbidden(
            f"tenant '{tenant.name}' may not access index [{_clip(name, 100)}] with [{call.api}] "
            f"(allowed: {', '.join(tenant.indices)})"
        )


def _date_math_pattern(name: str) -> str:
    """`<acme-{now/d}>` → `acme-*`: the static part is what decides the grant."""
    if name.startswith("<") and name.endswith(">"):
        return re.sub(r"\{.*?\}+", "*", name[1:-1])
    return name
