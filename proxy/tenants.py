"""Who is asking: credentials → tenant, and what that tenant may touch.

Secrets are stored as sha256 digests. A presented API key is hashed and looked up by digest; a
Basic password is hashed and compared with hmac.compare_digest. Neither the config nor a timing
side channel reveals a key. An Authorization value that identified a tenant is remembered, so a
client's key is hashed once per config load rather than on every request; unknown ones never are.

Over mutual TLS a client certificate can identify the tenant instead (`client_cert_subjects`): the
listener hands over the names the certificate answers to, and a certificate that names a tenant
is that tenant — the Authorization header is then not consulted. A certificate that names no
tenant leaves identification to the Authorization header, as on a plain connection.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from . import esapi, querynames
from .certnames import certificate_name
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
    #: matches the dotted API names of the cluster-level calls the plan grants (`plans.*.cluster_apis`)
    cluster_grant: re.Pattern[str]
    # what every request of the tenant reads of its plan, read once (the config's models are slow to read):
    #: whether any guardrail is set (`plan.guardrails.active`)
    guarded: bool = False
    #: resource class → its max_duration_s (`plan.<resource>.max_duration_s`)
    max_durations: Mapping[str, float | None] = field(default_factory=dict)
    #: `plan.max_cost_factor`
    max_cost_factor: float | None = None


def _grant_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    # '*' in a tenant pattern matches anything but ':', including a '*' in the request: a request
    # wildcard that the pattern matches literally can only expand to names the pattern also matches.
    # It never spans the ':' of a remote cluster ("other:acme-x"), unless the pattern names one itself.
    parts = ("".join("[^:]*" if ch == "*" else re.escape(ch) for ch in p) for p in patterns)
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


def _api_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """`cluster.health`, `cat.*`, `*`: an API name or a '*' suffix pattern; none matches nothing."""
    if not patterns:
        return re.compile(r"(?!)")
    parts = ("".join(".*" if ch == "*" else re.escape(ch) for ch in p) for p in patterns)
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


#: Authorization values remembered per Directory, and the longest one remembered (a real ApiKey or
#: Basic value is well under it): at most about 2.5 MB, however many variants a valid key is sent in
KNOWN_CREDENTIALS = 4096
KNOWN_CREDENTIAL_CHARS = 512


class Directory:
    """Credentials → tenant for one config snapshot."""

    def __init__(self, config: Config):
        self.tenants: dict[str, TenantView] = {}
        #: Authorization header values that identified a tenant. Only successes are kept, so unknown
        #: keys cannot grow it; a reload builds a new Directory, so a removed key stops working at once.
        #: A lookup compares the presented value with a stored one only on a full hash match, under
        #: the process's random hash seed: it reveals nothing an attacker can use.
        self._known: dict[str, TenantView] = {}
        self._by_key_digest: dict[str, TenantView] = {}
        self._by_user: dict[str, tuple[str, TenantView]] = {}
        #: certnames keys (subject or SAN) → the tenant whose client_cert_subjects list it
        self._by_certificate: dict[str, TenantView] = {}
        #: the names of a certificate already looked up → its tenant (None: names no tenant), bounded
        self._certificates: dict[tuple[str, ...], TenantView | None] = {}
        for name, spec in config.tenants.items():
            view = TenantView(
                name=name,
                plan_name=spec.plan,
                plan=config.plans[spec.plan],
                enforce=config.tenant_enforced(name),
                indices=tuple(spec.indices),
                index_grant=_grant_regex(tuple(spec.indices)),
                cluster_grant=_api_regex(tuple(config.plans[spec.plan].cluster_apis)),
                guarded=config.plans[spec.plan].guardrails.active,
                max_durations={resource: config.plans[spec.plan].bucket(resource).max_duration_s
                               for resource in ("search", "read", "write", "admin")},
                max_cost_factor=config.plans[spec.plan].max_cost_factor,
            )
            self.tenants[name] = view
            for digest in spec.api_keys:
                self._by_key_digest[digest[len("sha256:"):]] = view
            for user, digest in spec.users.items():
                self._by_user[user] = (digest[len("sha256:"):], view)
            for subject in spec.client_cert_subjects:
                self._by_certificate[certificate_name(subject)] = view

    def identify(self, authorization: str | None, path: str, certificate: tuple[str, ...] | None = None) -> TenantView:
        """The tenant behind a client certificate's names (mutual TLS) or else an Authorization header,
        or Unauthorized (401) naming no secret."""
        if certificate:
            view = self._certificates.get(certificate)
            if view is None and certificate not in self._certificates:
                view = self._certificate_tenant(certificate)
            if view is not None:
                return view
            if not authorization:
                raise Unauthorized(f"the client certificate is not mapped to a tenant and the request carries no "
                                   f"credentials [{_clip(path)}]")
        if not authorization:
            raise Unauthorized(f"missing authentication credentials for REST request [{_clip(path)}]")
        known = self._known
        view = known.get(authorization)
        if view is None:
            view = self._check(authorization)
            if len(authorization) <= KNOWN_CREDENTIAL_CHARS:
                if len(known) >= KNOWN_CREDENTIALS:
                    known.clear()  # many spellings of valid keys: start over, stay bounded
                known[authorization] = view
        return view

    def _certificate_tenant(self, names: tuple[str, ...]) -> TenantView | None:
        found = {self._by_certificate[name].name: self._by_certificate[name] for name in names if name in self._by_certificate}
        if len(found) > 1:
            raise Unauthorized(f"the client certificate names more than one tenant ({', '.join(sorted(found))})")
        view = next(iter(found.values()), None)
        if len(self._certificates) >= KNOWN_CREDENTIALS:
            self._certificates.clear()
        self._certificates[names] = view
        return view

    def _check(self, authorization: str) -> TenantView:
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
#
# Deny by default: a call passes when every index, alias and target it names lies inside the
# tenant's patterns, or when it is a cluster-level API the plan grants. Wildcards are checked,
# never narrowed: docs/SECURITY.md says why.

#: cluster-level reads every tenant may make (GET/HEAD, no index filter): clients call them to discover the cluster
_OPEN_KINDS = frozenset({"info", "cluster_health"})
#: cluster-level reads narrowed to the indices named in the path: those go through the index grant
_INDEX_FILTERED_CLUSTER = frozenset({"cat", "cluster_health"})
#: calls that carry a scroll, point-in-time or async-search id instead of indices: idbinding checks the id
_BOUND_ID_KINDS = frozenset({"scroll", "clear_scroll", "close_pit", "async_search_get", "async_search_delete"})
#: calls that may name their indices only in the body
_BODY_NAMED = frozenset({"msearch", "msearch_template", "bulk", "mget", "mtermvectors", "reindex", "aliases", "sql", "esql"})
#: index-less searches that are allowed when their body searches a point in time (bound to its tenant)
_PIT_SEARCH_APIS = frozenset({"search", "async_search.submit"})
#: calls whose body carries a query-language statement naming its indices
_STATEMENT_PARSERS = {"esql.query": querynames.esql_indices, "esql.async_query": querynames.esql_indices,
                      "plugins.ppl": querynames.ppl_indices}
#: characters no index or alias name may hold (ES refuses them too); '\u2063' marks a template hole
_BAD_NAME = re.compile('[\\\\/"|?#,\\s\\x00-\\x1f\u2063]')
_TEMPLATE_HOLE = "\u2063"


def authorize(tenant: TenantView, call: esapi.EsCall, body: esapi.Body | None) -> None:
    """Refuse (403) a call outside the tenant's grants.

    Called twice: with body=None on the path alone (before the body is read), and again once the
    body is decoded, with `esapi.NO_BODY` when the request had none. The second call checks what
    the body names: _msearch headers, _bulk actions, _mget docs, _reindex source and dest, alias
    actions, SQL/ES|QL/PPL statements, and document references inside queries.
    """
    if body is None:
        _authorize_path(tenant, call)
    else:
        _authorize_body(tenant, call, body)


def _authorize_path(tenant: TenantView, call: esapi.EsCall) -> None:
    if (call.kind in _OPEN_KINDS and call.method in ("GET", "HEAD") and not call.indices
            and call.params.get("level", "cluster") == "cluster"):
        return  # ?level=indices would list every tenant's index names
    if call.resource not in tenant.plan.resources:
        raise Forbidden(f"tenant '{tenant.name}' may not make {call.resource} requests (plan '{tenant.plan_name}')")
    if "index" in call.params:  # OpenSearch's asynchronous search takes its indices as ?index=
        _check_expression(tenant, call, _split(call.params["index"]))
    if call.cluster:
        if call.indices and call.kind in _INDEX_FILTERED_CLUSTER and call.method in ("GET", "HEAD"):
            _check_expression(tenant, call, call.indices)  # _cat/indices/acme-*, _cluster/health/acme-x
            return
        if not tenant.cluster_grant.match(call.api):
            raise Forbidden(
                f"tenant '{tenant.name}' may not call the cluster-level API [{call.api}] "
                f"(plan '{tenant.plan_name}' does not grant it)"
            )
        return
    if call.kind in _BOUND_ID_KINDS:
        return  # no index in the path: the id it carries must be bound to this tenant (idbinding)
    for name in call.targets:
        _check_name(tenant, call, name)
    if call.indices:
        _check_expression(tenant, call, call.indices)
    elif call.kind not in _BODY_NAMED and call.api not in _PIT_SEARCH_APIS:
        raise _must_name(tenant, call)


def _authorize_body(tenant: TenantView, call: esapi.EsCall, body: esapi.Body) -> None:
    kind, doc = call.kind, body.json
    if kind in ("msearch", "msearch_template"):
        _msearch(tenant, call, body.lines or ())
    elif kind == "bulk":
        _bulk(tenant, call, body.lines or ())
    elif kind in ("mget", "mtermvectors"):
        _docs(tenant, call, body)
    elif kind == "reindex":
        _reindex(tenant, call, body)
    elif kind == "aliases":
        _aliases(tenant, call, body)
    elif kind in ("index_create", "resize", "rollover") and isinstance(doc, dict) and "aliases" in doc:
        aliases = doc["aliases"]
        if not isinstance(aliases, dict):
            raise _undetermined(tenant, call, "[aliases] is not an object")
        for name in aliases:
            _check_name(tenant, call, name)
    elif kind in ("sql", "esql"):
        _statement(tenant, call, body)
    elif call.api in _PIT_SEARCH_APIS and not call.indices:
        pit = doc.get("pit") if isinstance(doc, dict) else None
        if not (isinstance(pit, dict) and isinstance(pit.get("id"), str)):
            raise _must_name(tenant, call)
    if kind == "search_template":
        _template(tenant, call, doc)
    if doc is not None and _doc_references(tenant, call, doc):
        esapi.check_unique_keys(body.data)  # a document reference decides access: read it as the cluster will


def _must_name(tenant: TenantView, call: esapi.EsCall) -> Forbidden:
    return Forbidden(
        f"tenant '{tenant.name}' must name its indices: [{call.api}] without an index would reach every "
        f"tenant's data (allowed: {', '.join(tenant.indices)})"
    )


def _undetermined(tenant: TenantView, call: esapi.EsCall, why: str) -> Forbidden:
    return Forbidden(
        f"the indices of tenant '{tenant.name}''s [{call.api}] request cannot be determined ({why}); "
        "refused by default"
    )


# ---- names --------------------------------------------------------------------------------


def _split(expression: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in expression.split(",") if name.strip())


def _names(tenant: TenantView, call: esapi.EsCall, value, what: str) -> tuple[str, ...]:
    """An index expression given in a body as "a,b" or ["a", "b"]; refused when it is anything else."""
    if isinstance(value, str):
        return _split(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(name for v in value for name in _split(v))
    raise _undetermined(tenant, call, f"{what} is not an index name or a list of them")


def _check_expression(tenant: TenantView, call: esapi.EsCall, names: tuple[str, ...]) -> None:
    """An index expression: every name inside the grant; '-' exclusions only after something they narrow."""
    included = False
    for name in names:
        name = name.strip()
        if name.startswith("-"):
            if included:
                continue  # an exclusion only narrows what the names before it select
            raise Forbidden(
                f"tenant '{tenant.name}' may not start an index expression with the exclusion [{_clip(name, 100)}]: "
                "older clusters read it as every index but that one"
            )
        _check_index(tenant, call, name)
        included = True
    if not included:
        raise _must_name(tenant, call)


def _check_name(tenant: TenantView, call: esapi.EsCall, name: str) -> None:
    """One name a call creates, writes or points at (an alias, a _bulk target, a clone): no exclusions."""
    if name.strip().startswith("-"):
        raise Forbidden(f"tenant '{tenant.name}' may not use [{_clip(name, 100)}] as a name with [{call.api}]")
    _check_index(tenant, call, name)


def _check_index(tenant: TenantView, call, index: str) -> None:
    name = index.strip()
    if name.startswith("-"):
        return  # an exclusion only narrows what the rest of the expression selects
    static = _date_math_pattern(name)
    if name in ("", "_all", "*") or _BAD_NAME.search(static) or not tenant.index_grant.match(static):
        raise Forbidden(
            f"tenant '{tenant.name}' may not access index [{_clip(name, 100)}] with [{call.api}] "
            f"(allowed: {', '.join(tenant.indices)})"
        )


def _date_math_pattern(name: str) -> str:
    """`<acme-{now/d}>` → `acme-*`: the static part is what decides the grant."""
    if name.startswith("<") and name.endswith(">"):
        return re.sub(r"\{.*?\}+", "*", name[1:-1])
    return name


# ---- what bodies name ---------------------------------------------------------------------


def _msearch(tenant: TenantView, call: esapi.EsCall, lines: tuple) -> None:
    """Even lines are headers naming the indices of the search after them (esapi keeps blank lines' places)."""
    if not lines and not call.indices:
        raise _must_name(tenant, call)
    for number, header in enumerate(lines[0::2]):
        if not isinstance(header, dict):
            raise _undetermined(tenant, call, f"header {number + 1} is not an object")
        named = False
        for key in ("index", "indices"):  # ES reads either
            if key in header:
                _check_expression(tenant, call, _names(tenant, call, header[key], f"the [{key}] of header {number + 1}"))
                named = True
        if not named and not call.indices:
            raise Forbidden(f"an _msearch header of tenant '{tenant.name}' names no index")
    for search in lines[1::2]:
        if isinstance(search, dict):
            if "pit" in search:
                raise Forbidden(f"tenant '{tenant.name}' may not search a point in time through [{call.api}]")
            if call.kind == "msearch_template":
                _template(tenant, call, search)
            if _doc_references(tenant, call, search):
                esapi.check_unique_keys(orjson.dumps(search))


def _bulk(tenant: TenantView, call: esapi.EsCall, actions: tuple) -> None:
    """Each action's `_index` (the path's index is the default); esapi has checked each is {op: {...}}."""
    if not actions and not call.indices:
        raise _must_name(tenant, call)
    for action in actions:
        for meta in action.values():
            index = meta.get("_index")
            if index is None:
                if not call.indices:
                    raise Forbidden(f"a _bulk action of tenant '{tenant.name}' names no index")
            elif isinstance(index, str):
                _check_name(tenant, call, index)
            else:
                raise _undetermined(tenant, call, "a _bulk [_index] is not a string")


def _docs(tenant: TenantView, call: esapi.EsCall, body: esapi.Body) -> None:
    """_mget / _mtermvectors: each doc's `_index`, or the path's index."""
    doc = body.json
    docs = doc.get("docs") if isinstance(doc, dict) else None
    if docs is None:
        if not call.indices:  # {"ids": [...]} or nothing: only the path can say where
            raise _must_name(tenant, call)
        return
    if not isinstance(docs, list):
        raise _undetermined(tenant, call, "[docs] is not a list")
    named = 0
    for entry in docs:
        index = entry.get("_index") if isinstance(entry, dict) else None
        if index is None:
            if not call.indices:
                raise Forbidden(f"a [{call.api}] doc of tenant '{tenant.name}' names no index")
        elif isinstance(index, str):
            _check_name(tenant, call, index)
            named += 1
        else:
            raise _undetermined(tenant, call, "a doc's [_index] is not a string")
    if named and (body.data.count(b"_index") != named or b"\\" in body.data):
        esapi.check_unique_keys(body.data)


def _reindex(tenant: TenantView, call: esapi.EsCall, body: esapi.Body) -> None:
    doc = body.json
    source = doc.get("source") if isinstance(doc, dict) else None
    dest = doc.get("dest") if isinstance(doc, dict) else None
    if not isinstance(source, dict) or not isinstance(dest, dict):
        raise _undetermined(tenant, call, "a _reindex body must hold [source] and [dest] objects")
    if "remote" in source:
        raise Forbidden(f"tenant '{tenant.name}' may not reindex from a remote cluster")
    if "script" in doc:
        raise Forbidden(f"tenant '{tenant.name}' may not use a _reindex script: it can change each document's _index")
    _check_expression(tenant, call, _names(tenant, call, source.get("index"), "[source.index]"))
    for name in _names(tenant, call, dest.get("index"), "[dest.index]") or ("",):
        _check_name(tenant, call, name)
    esapi.check_unique_keys(body.data)


_ALIAS_OPS = frozenset({"add", "remove", "remove_index"})


def _aliases(tenant: TenantView, call: esapi.EsCall, body: esapi.Body) -> None:
    """POST /_aliases actions, or the body of PUT /{index}/_alias/{name}: every index and alias named."""
    doc = body.json
    if isinstance(doc, dict) and "actions" in doc:
        actions = doc["actions"]
        if not isinstance(actions, list) or not actions:
            raise _undetermined(tenant, call, "[actions] is not a list of actions")
        for action in actions:
            if not isinstance(action, dict) or len(action) != 1:
                raise _undetermined(tenant, call, "an action is not {add|remove|remove_index: {...}}")
            (op, spec), = action.items()
            if op not in _ALIAS_OPS or not isinstance(spec, dict):
                raise _undetermined(tenant, call, f"unknown alias action [{_clip(str(op), 40)}]")
            _check_expression(tenant, call, _spec_names(tenant, call, spec, "index", "indices"))
            if op != "remove_index":
                for name in _spec_names(tenant, call, spec, "alias", "aliases") or ("",):
                    _check_name(tenant, call, name)
        esapi.check_unique_keys(body.data)
        return
    named_index = bool(call.indices)
    if isinstance(doc, dict):
        if "index" in doc or "indices" in doc:
            _check_expression(tenant, call, _spec_names(tenant, call, doc, "index", "indices"))
            named_index = True
        for name in _spec_names(tenant, call, doc, "alias", "aliases"):
            _check_name(tenant, call, name)
    if not named_index:
        raise _must_name(tenant, call)


def _spec_names(tenant: TenantView, call: esapi.EsCall, spec: dict, one: str, many: str) -> tuple[str, ...]:
    names: tuple[str, ...] = ()
    for key in (one, many):
        if key in spec:
            names += _names(tenant, call, spec[key], f"[{key}]")
    return names


def _statement(tenant: TenantView, call: esapi.EsCall, body: esapi.Body) -> None:
    """SQL, ES|QL and PPL name their indices in the statement: read its FROM, or refuse."""
    doc = body.json
    query = doc.get("query") if isinstance(doc, dict) else None
    if not isinstance(query, str):
        raise _undetermined(tenant, call, "no [query] to read: cursors and stored or async results are not supported")
    for key in ("cursor", "catalog"):
        if key in doc:
            raise _undetermined(tenant, call, f"[{key}] is not supported")
    parse = _STATEMENT_PARSERS.get(call.api, querynames.sql_indices)
    try:
        names = parse(query)
    except querynames.Undetermined as why:
        raise _undetermined(tenant, call, str(why)) from None
    _check_expression(tenant, call, tuple(n for name in names for n in _split(name)))
    esapi.check_unique_keys(body.data)


def _doc_references(tenant: TenantView, call: esapi.EsCall, doc) -> bool:
    """Check queries that read another index's documents: terms lookup, indexed shapes, percolate,
    more_like_this and pinned docs ({index|_index, id|_id}), and lookup runtime fields (target_index).
    Returns whether the body held any."""
    found = False
    stack = [doc]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        if type(node) is dict:
            if ("index" in node or "_index" in node) and ("id" in node or "_id" in node):
                for key in ("index", "_index"):
                    value = node.get(key)
                    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                        _check_name(tenant, call, str(value))
                        found = True
            target = node.get("target_index")
            if isinstance(target, (str, int, float)) and not isinstance(target, bool):
                _check_name(tenant, call, str(target))
                found = True
            for value in node.values():
                if type(value) is dict or type(value) is list:
                    push(value)
        elif type(node) is list:  # a scalar body ("false") holds nothing
            for value in node:
                if type(value) is dict or type(value) is list:
                    push(value)
    return found


_MUSTACHE_TAG = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
#: output that is not JSON-escaped, or a delimiter change that would hide the tags from this check
_MUSTACHE_RAW = re.compile(r"\{\{\s*(?:\{|&|=|#\s*toJson|#\s*join)")


def _template(tenant: TenantView, call: esapi.EsCall, doc) -> None:
    """An inline search template: its document references are checked with every {{tag}} as a hole.

    A stored template (`id`) is the operator's: tenants cannot call _scripts unless granted. An
    inline one is refused when a tag sits in a key, when raw output could carry a document
    reference from the params, or when the skeleton with holes for tags is not JSON.
    """
    source = doc.get("source") if isinstance(doc, dict) else None
    if source is None:
        return
    text = source if isinstance(source, str) else orjson.dumps(source).decode()
    if "{{" not in text:
        tree = source if not isinstance(source, str) else _template_skeleton(tenant, call, text)
        _doc_references(tenant, call, tree)
        return
    if _MUSTACHE_RAW.search(text) and "index" in orjson.dumps(doc.get("params")).decode().lower():
        raise _undetermined(tenant, call, "an inline template writes raw params that mention an index")
    if "{{=" in text.replace(" ", ""):
        raise _undetermined(tenant, call, "an inline template changes its delimiters")
    _doc_references(tenant, call, _template_skeleton(tenant, call, text))


def _template_skeleton(tenant: TenantView, call: esapi.EsCall, text: str):
    """The template as JSON, tags inside strings replaced by a hole no name may hold and others by 0."""
    def strings(m: re.Match[str]) -> str:
        literal = m.group(0)
        return _MUSTACHE_TAG.sub(_TEMPLATE_HOLE, literal) if "{{" in literal else literal

    filled = _MUSTACHE_TAG.sub("0", _JSON_STRING.sub(strings, text))
    for key in _JSON_STRING.finditer(filled):
        if _TEMPLATE_HOLE in key.group(0) and filled[key.end():].lstrip().startswith(":"):
            raise _undetermined(tenant, call, "an inline template has a {{tag}} in a key")
    try:
        return orjson.loads(filled)
    except orjson.JSONDecodeError:
        raise _undetermined(tenant, call, "an inline template that is not JSON once its tags are filled") from None
