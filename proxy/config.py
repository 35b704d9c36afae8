"""Typed configuration: the YAML schema, its defaults, and validation errors that name the key path.

Every model is frozen. A reload builds a new `Config` and swaps one reference; a request keeps
the snapshot it started with. This module reads the file and nothing else.
"""
from __future__ import annotations

import hashlib
import re
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .certnames import certificate_name
from .cost import Weights

RESOURCES = ("search", "read", "write", "admin")
#: the oldest TLS version either side may negotiate ("TLSv1.2" or "TLSv1.3")
TlsVersion = Literal["TLSv1.2", "TLSv1.3"]
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ConfigError(Exception):
    """The file is not a valid config. `errors` holds (key path, message) pairs, one per problem."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in errors))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Address(_Frozen):
    host: str
    port: int = Field(ge=0, le=65535)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_address(value: Any) -> Any:
    """Accept "host:port", "[v6]:port" or ":port" (all interfaces)."""
    if not isinstance(value, str):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return {"host": host, "port": int(port)}


#: the secrets `upstream.auth` can hold, each of which may instead come from a file or an environment variable
SECRETS = ("password", "api_key", "bearer")


class UpstreamAuth(_Frozen):
    """The proxy's own credentials to the cluster: HTTP Basic (`username` and a password), an API key,
    or a bearer token (an Elasticsearch service-account or OAuth token). Each secret is given once:
    in the YAML (`password`), in a file (`password_file`: its content, one trailing newline dropped)
    or in an environment variable (`password_env`), so that the config itself can be committed.
    The client's Authorization header is never forwarded: the cluster sees only these credentials."""

    username: str | None = Field(None, min_length=1)
    password: str | None = Field(None, min_length=1)
    password_file: str | None = Field(None, min_length=1)
    password_env: str | None = Field(None, min_length=1)
    #: Elasticsearch's `encoded` form (base64 of "id:api_key"), or "id:api_key" itself
    api_key: str | None = Field(None, min_length=1)
    api_key_file: str | None = Field(None, min_length=1)
    api_key_env: str | None = Field(None, min_length=1)
    bearer: str | None = Field(None, min_length=1)
    bearer_file: str | None = Field(None, min_length=1)
    bearer_env: str | None = Field(None, min_length=1)

    def sources(self, secret: str) -> list[str]:
        """The keys that give `secret` ("password", "api_key" or "bearer"), e.g. ["password_file"]."""
        return [key for key in (secret, f"{secret}_file", f"{secret}_env") if getattr(self, key) is not None]

    @property
    def scheme(self) -> Literal["basic", "api_key", "bearer"] | None:
        """Which credentials these are; None for a cluster without security."""
        if self.username is not None:
            return "basic"
        if self.sources("api_key"):
            return "api_key"
        if self.sources("bearer"):
            return "bearer"
        return None

    @model_validator(mode="after")
    def _one_kind(self) -> UpstreamAuth:
        kinds = [name for name, given in (("username/password", self.username is not None or self.sources("password")),
                                          ("api_key", self.sources("api_key")), ("bearer", self.sources("bearer")))
                 if given]
        if len(kinds) > 1:
            raise ValueError(f"give one kind of credentials, not {' and '.join(kinds)}")
        for secret in SECRETS:
            given = self.sources(secret)
            if len(given) > 1:
                raise ValueError(f"{' and '.join(given)} both give the {secret}: keep one")
        if self.username is not None and not self.sources("password"):
            raise ValueError("username needs a password, password_file or password_env")
        if self.username is None and self.sources("password"):
            raise ValueError("a password needs a username")
        return self


class UpstreamTLS(_Frozen):
    """How the proxy checks https:// nodes and, when the cluster asks for one, the certificate it shows them."""

    #: check each node's certificate (chain and name); false is for throwaway clusters only, and is logged at every load
    verify: bool = True
    #: PEM bundle of the CA(s) that signed the nodes' certificates; unset: the system's CA store
    ca_file: str | None = Field(None, min_length=1)
    #: PEM certificate (and chain) and unencrypted key the proxy presents to nodes that require client certificates
    client_cert: str | None = Field(None, min_length=1)
    client_key: str | None = Field(None, min_length=1)
    #: the name sent as SNI and checked against each node's certificate; unset: each node's host from `nodes`
    server_name: str | None = Field(None, min_length=1)
    min_version: TlsVersion = "TLSv1.2"

    @model_validator(mode="after")
    def _consistent(self) -> UpstreamTLS:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        if not self.verify and self.ca_file is not None:
            raise ValueError("ca_file is set but verify is false, so it would never be used: drop one")
        return self


class ListenTLS(_Frozen):
    """TLS on the proxy listener (`listen`). Certificate and key are re-read on every reload (SIGHUP)."""

    #: PEM certificate, with its intermediates after it
    cert_file: str = Field(min_length=1)
    #: PEM private key, unencrypted (protect it with file permissions)
    key_file: str = Field(min_length=1)
    min_version: TlsVersion = "TLSv1.2"
    #: PEM bundle of the CA(s) whose client certificates are accepted: turns on mutual TLS
    client_ca_file: str | None = Field(None, min_length=1)
    #: with client_ca_file: "required" refuses a handshake without a valid client certificate; "optional"
    #: also lets clients without one in (they identify with an Authorization header)
    client_authentication: Literal["required", "optional"] = "required"

    @model_validator(mode="after")
    def _needs_ca(self) -> ListenTLS:
        if "client_authentication" in self.model_fields_set and self.client_ca_file is None:
            raise ValueError("client_authentication needs client_ca_file (the CA that issues client certificates)")
        return self


class UpstreamConfig(_Frozen):
    nodes: list[str] = Field(min_length=1)
    auth: UpstreamAuth = UpstreamAuth()
    tls: UpstreamTLS | None = None
    connect_timeout_s: float = Field(2.0, gt=0)
    request_timeout_s: float = Field(120.0, gt=0)
    pool_per_node: int = Field(256, ge=1)
    health_interval_s: float = Field(2.0, gt=0)
    node_cooldown_s: float = Field(5.0, gt=0)
    retry_reads: bool = True

    @field_validator("nodes")
    @classmethod
    def _urls(cls, nodes: list[str]) -> list[str]:
        out = []
        for node in nodes:
            if not re.match(r"^https?://[^/\s]+/?$", node):
                raise ValueError(f"node {node!r} must look like http://host:port or https://host:port")
            out.append(node.rstrip("/"))
        schemes = {node.partition(":")[0] for node in out}
        if len(schemes) > 1:
            raise ValueError("mixes http:// and https:// nodes: a cluster speaks one or the other on its HTTP port")
        return out

    @property
    def https(self) -> bool:
        return self.nodes[0].startswith("https:")


class RedisConfig(_Frozen):
    url: str
    timeout_ms: float = Field(50.0, gt=0)
    key_prefix: str = "sg"
    heartbeat_s: float = Field(1.0, gt=0)
    instance_ttl_s: float = Field(5.0, gt=0)
    reconnect_max_s: float = Field(5.0, gt=0)
    lease_fraction: float = Field(0.1, gt=0, le=1.0)
    lease_horizon_s: float = Field(0.1, gt=0)  # a lease holds at most this many seconds of the rate
    share_learned_costs: bool = True  # instances exchange learned costs through the stream {prefix}:costs
    learned_costs_interval_s: float = Field(0.25, gt=0)  # how often each instance publishes and reads them
    learned_costs_max_pending: int = Field(10_000, ge=1)  # (tenant, shape) pairs unpublished at most; oldest dropped
    share_gate: bool = True  # instances pool their gates: each sees what the others hold (channel {prefix}:gate)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if not re.match(r"^(redis|rediss|redis\+cluster|rediss\+cluster|unix)://", url):
            raise ValueError("expected redis://, rediss://, redis+cluster:// or unix:// URL")
        return url


class HardLimits(_Frozen):
    """Hard limits on what a client may send; each has its own ES-shaped 4xx."""

    max_body_bytes: int = Field(100 * 1024 * 1024, ge=1)
    max_inflated_bytes: int = Field(100 * 1024 * 1024, ge=1)
    max_inflate_ratio: float = Field(
        100.0, ge=1.0, description="a compressed body may inflate to at most this many times its size (and always to "
        "1 MiB): 413 beyond, before more is inflated. JSON compresses 5-20x; a gzip bomb 1000x")
    max_url_bytes: int = Field(4096, ge=64)
    max_header_bytes: int = Field(16384, ge=256)
    max_headers: int = Field(100, ge=4)
    max_ndjson_lines: int = Field(200_000, ge=1)
    max_json_depth: int = Field(100, ge=2)
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(75.0, gt=0)
    max_connections_per_client: int = Field(1024, ge=1)
    client_write_timeout_s: float = Field(
        30.0, gt=0, description="seconds a client may leave the proxy's writes to it unread (its socket full, no "
        "progress) before its connection is closed")
    client_buffer_bytes_per_tenant: int = Field(
        64 * 1024 * 1024, ge=0, description="bytes of node responses the proxy holds per tenant for clients that "
        "read slower than the node answers, so the node is done with them at once; beyond it the node is read only "
        "as fast as the client reads")
    max_buffered_bytes: int = Field(
        1024 * 1024 * 1024, ge=1, description="bytes of request bodies held at once, all tenants (a body is counted "
        "at its Content-Length, or max_body_bytes when chunked, from before it is read until its response): a "
        "request that would pass it gets a 429 before its body is read")
    buffered_tenant_share: float = Field(
        0.5, gt=0, le=1.0, description="the part of max_buffered_bytes one tenant's request bodies may hold at once "
        "(a tenant holding none may always send one body that fits the global room)")


class CostConfig(_Frozen):
    weights: Weights = Weights()
    learn: bool = True
    learn_lru_size: int = Field(100_000, ge=16)
    learn_alpha: float = Field(0.3, gt=0, le=1.0)
    learn_max_rise: float = Field(
        4.0, ge=1.0, description="multiplier: after its first observation, one observation raises a learned cost "
        "as if it were at most this many times the current value (observed costs include the cluster's queue time)")
    learn_service_time: bool = Field(
        True, description="learn a search's service time: take out of its observed cost the time its shard tasks "
        "waited in the nodes' search queues, as the cluster poller last measured it (the bill is still the full "
        "observed cost)")
    max_debt_ratio: float = Field(1.0, ge=0)
    index_sizes_poll_s: float = Field(
        30.0, ge=0, description="seconds between polls of every index's document count (GET _stats/docs, filtered), "
        "which scale the estimates of searches by the size of their indices; 0 disables")


class AdmissionConfig(_Frozen):
    """The global upstream gate in front of the cluster."""

    enabled: bool = True
    min_limit: int = Field(4, ge=1)
    max_limit: int = Field(512, ge=1)
    algorithm: Literal["gradient", "aimd"] = "gradient"
    target_latency_ms: float | None = Field(None, gt=0)
    health_poll_s: float = Field(2.0, gt=0)
    capacity_headroom: float = Field(0.8, gt=0, le=1.0)
    capacity_headroom_contended: float | None = Field(
        0.5, gt=0, le=1.0,
        description="the headroom while tenants under their share are waiting at the gate (and for a few seconds "
                    "after); None: always capacity_headroom",
    )
    max_queue: int = Field(10_000, ge=0, description="requests waiting at the gate, all tenants; 429 overload beyond")


class AccessLogConfig(_Frozen):
    path: str | None = "-"  # "-" is stdout, None/"off" disables
    sample: float = Field(1.0, ge=0, le=1.0)
    always_log_refusals: bool = True


class ShapesConfig(_Frozen):
    """The costliest query shapes per tenant, for `GET /tenants/{name}/shapes` and the status page."""

    window_s: float = Field(300.0, ge=10, le=86_400, description="seconds of the sliding window (in 10 slots)")
    top: int = Field(20, ge=1, le=1000, description="shapes kept per tenant and slot (up to twice as many between "
                     "prunings) and listed per report")
    publish_interval_s: float = Field(5.0, gt=0, description="with Redis: seconds between publishes of each "
                                      "instance's shapes for the others")


class Bucket(_Frozen):
    rate: float = Field(gt=0, description="cost units per second")
    burst: float = Field(gt=0, description="bucket size in cost units")
    max_duration_s: float | None = Field(
        None, gt=0, description="seconds a request of this class may run at the cluster before the proxy cancels it "
        "(runaway control); None: no limit")


GUARDRAIL_NAMES = ("max_size", "max_from", "max_terms_agg_size", "timeout", "terminate_after",
                   "allow_leading_wildcards", "allow_scripts", "allow_regexp")


class GuardrailsConfig(_Frozen):
    """What one search of the plan may ask of the cluster (proxy/guardrails.py). None / true: no bound."""

    mode: Literal["cap", "refuse"] = Field("cap", description="cap: rewrite the request within bounds (response "
                                           "header X-Sluicegate-Degraded); refuse: 400 naming the guardrail")
    modes: dict[str, Literal["cap", "refuse"]] = Field({}, description="the mode of single guardrails, by name")
    shadow: bool = Field(False, description="count what the guardrails would cap or refuse, change nothing")
    max_size: int | None = Field(None, ge=0)
    max_from: int | None = Field(None, ge=0)
    max_terms_agg_size: int | None = Field(None, ge=1)
    timeout: str | None = Field(None, pattern=r"^\s*\d+\s*(nanos|micros|ms|s|m|h|d)\s*$",
                                description="search timeout injected into every search, and the most one may ask")
    terminate_after: int | None = Field(None, ge=1)
    allow_leading_wildcards: bool = True
    allow_scripts: bool = True
    allow_regexp: bool = True

    @field_validator("modes")
    @classmethod
    def _known(cls, modes: dict[str, str]) -> dict[str, str]:
        for name in modes:
            if name not in GUARDRAIL_NAMES:
                raise ValueError(f"unknown guardrail {name!r} (guardrails: {', '.join(GUARDRAIL_NAMES)})")
        return modes

    @cached_property
    def active(self) -> bool:
        """Whether any guardrail is set (read on every search: computed once per config)."""
        return (self.max_size is not None or self.max_from is not None or self.max_terms_agg_size is not None
                or self.timeout is not None or self.terminate_after is not None or not self.allow_leading_wildcards
                or not self.allow_scripts or not self.allow_regexp)


class Plan(_Frozen):
    search: Bucket = Bucket(rate=500, burst=5000)
    read: Bucket = Bucket(rate=1000, burst=10000)
    write: Bucket = Bucket(rate=2000, burst=20000)
    admin: Bucket = Bucket(rate=10, burst=100)
    max_concurrent: int = Field(8, ge=1)
    max_queue: int = Field(64, ge=0)
    max_wait_ms: float = Field(2000, ge=0)
    weight: float = Field(1.0, gt=0, description="share of the global gate under contention")
    resources: list[Literal["search", "read", "write", "admin"]] = list(RESOURCES)
    guardrails: GuardrailsConfig = GuardrailsConfig()
    max_cost_factor: float | None = Field(
        None, gt=0, description="cancel a request whose time at the cluster (ms) exceeds this many times its charged "
        "cost (cost units are thread-ms; one thread assumed, so the longest deadline); None: no limit")
    cluster_apis: list[str] = []

    def bucket(self, resource: str) -> Bucket:
        return getattr(self, resource)


class Tenant(_Frozen):
    plan: str
    api_keys: list[str] = []
    users: dict[str, str] = {}
    #: client certificates (mutual TLS on the listener) that identify this tenant: a subject ("CN=app,O=Acme",
    #: attributes in any order) or a subject alternative name ("DNS:app.acme.internal", "URI:spiffe://...",
    #: "email:...", "IP:10.0.0.1")
    client_cert_subjects: list[str] = []
    indices: list[str] = Field(min_length=1)
    enforce: bool | None = None  # None: follow the global `enforce`

    @field_validator("client_cert_subjects")
    @classmethod
    def _certificate_names(cls, names: list[str]) -> list[str]:
        for name in names:
            certificate_name(name)  # ValueError says what is wrong with it
        return names

    @field_validator("api_keys")
    @classmethod
    def _key_digests(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not _DIGEST.match(key):
                raise ValueError("api keys are stored as 'sha256:<64 hex>'; make one with `sluicegate hash-key`")
        return keys

    @field_validator("users")
    @classmethod
    def _user_digests(cls, users: dict[str, str]) -> dict[str, str]:
        for name, digest in users.items():
            if not _DIGEST.match(digest):
                raise ValueError(f"password of {name!r} must be 'sha256:<64 hex>'")
        return users

    @field_validator("indices")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            if not p or p in ("*", "_all") or p.startswith("-") or "," in p:
                raise ValueError(f"index pattern {p!r} must name the tenant's own indices (no bare '*', '_all', ',' or '-')")
            if "?" in p:
                # grants are checked by literal matching, which is exact only for '*' (the only ES index wildcard)
                raise ValueError(f"index pattern {p!r} may use '*' as its only wildcard, not '?'")
        return patterns


class SecurityConfig(_Frozen):
    """How the proxy binds scroll, point-in-time and async-search ids to the tenant that opened them."""

    #: HMAC key for bound ids; None derives one from the tenants' key digests (weaker: see docs/SECURITY.md)
    binding_secret: str | None = Field(None, min_length=16)


class SheddingConfig(_Frozen):
    """Overload shedding (proxy/runaway.py): while the gate's health signals say the cluster is in distress,
    cancel the costliest requests in flight of tenants over their fair share, at a bounded rate."""

    enabled: bool = False
    max_per_s: float = Field(2.0, gt=0, description="requests shed per second at most (per worker)")
    min_age_s: float = Field(0.5, ge=0, description="a request is shed only once it has been at the cluster this long")
    cooldown_s: float = Field(
        5.0, gt=0, description="after one of its requests is shed, a tenant's requests beyond its fair share are "
        "refused (429 shed, Retry-After) this long, or until the distress is over; renewed at each shed")
    signals: list[Literal["data_nodes", "search_rejections", "search_queue", "upstream_errors", "latency"]] = Field(
        ["data_nodes", "search_rejections", "upstream_errors", "latency"],
        description="the gate's reasons (sluicegate_gate_reason) that count as distress")


class Config(_Frozen):
    listen: Address = Address(host="127.0.0.1", port=8080)
    #: TLS on `listen` (HTTPS only on that port); None: plain HTTP
    listen_tls: ListenTLS | None = None
    admin_listen: Address = Address(host="127.0.0.1", port=9901)
    upstream: UpstreamConfig
    redis: RedisConfig | None = None
    limits: HardLimits = HardLimits()
    cost: CostConfig = CostConfig()
    admission: AdmissionConfig = AdmissionConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    shapes: ShapesConfig = ShapesConfig()
    security: SecurityConfig = SecurityConfig()
    shedding: SheddingConfig = SheddingConfig()
    enforce: bool = True
    drain_timeout_s: float = Field(30.0, ge=0)
    plans: dict[str, Plan] = Field(min_length=1)
    tenants: dict[str, Tenant] = {}

    @field_validator("listen", "admin_listen", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        return _parse_address(value)

    def tenant_enforced(self, name: str) -> bool:
        flag = self.tenants[name].enforce
        return self.enforce if flag is None else flag


_TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


def _cross_checks(data: dict) -> list[tuple[str, str]]:
    """Rules that span several keys, with the path of the key at fault. They read the decoded
    document, not a validated `Config`, so that they are reported alongside type errors in one pass;
    a value of the wrong type is skipped here (the schema reports it)."""
    errors: list[tuple[str, str]] = []
    plans = data.get("plans")
    tenants = data.get("tenants")
    seen_keys: dict[str, str] = {}
    seen_users: dict[str, str] = {}
    seen_names: dict[str, str] = {}
    listen_tls = data.get("listen_tls")
    mutual_tls = isinstance(listen_tls, dict) and listen_tls.get("client_ca_file") is not None
    for name, tenant in (tenants.items() if isinstance(tenants, dict) else ()):
        if not isinstance(tenant, dict):
            continue
        base = f"tenants.{name}"
        if not _TENANT_NAME.fullmatch(str(name)):
            # the name leads the X-Opaque-Id forwarded to the cluster, up to the first ';' (proxy/opaque.py)
            errors.append((base, "tenant names are letters, digits, '.', '_' and '-' (they lead X-Opaque-Id)"))
        plan = tenant.get("plan")
        if isinstance(plans, dict) and plans and isinstance(plan, str) and plan not in plans:
            errors.append((f"{base}.plan", f"unknown plan {plan!r} (plans: {', '.join(sorted(map(str, plans)))})"))
        keys, users = tenant.get("api_keys") or [], tenant.get("users") or {}
        subjects = tenant.get("client_cert_subjects") or []
        if not keys and not users and not subjects:
            errors.append((base, "tenant has no api_keys, users or client_cert_subjects, so no request can ever identify it"))
        if subjects and not mutual_tls:
            errors.append((f"{base}.client_cert_subjects", "needs listen_tls.client_ca_file: without mutual TLS no "
                           "client presents a certificate"))
        for i, subject in enumerate(subjects if isinstance(subjects, list) else ()):
            try:
                key = certificate_name(subject) if isinstance(subject, str) else None
            except ValueError:
                continue  # the field's own validator says what is wrong with it
            if key is None:
                continue
            if key in seen_names:
                errors.append((f"{base}.client_cert_subjects.{i}", f"same certificate name as tenant {seen_names[key]!r}"))
            seen_names[key] = str(name)
        for i, key in enumerate(keys if isinstance(keys, list) else ()):
            if not isinstance(key, str):
                continue
            if key in seen_keys:
                errors.append((f"{base}.api_keys.{i}", f"same key as tenant {seen_keys[key]!r}"))
            seen_keys[key] = str(name)
        for user in (users if isinstance(users, dict) else ()):
            if user in seen_users:
                errors.append((f"{base}.users.{user}", f"user also belongs to tenant {seen_users[user]!r}"))
            seen_users[user] = str(name)
    admission = data.get("admission")
    if isinstance(admission, dict):
        fields = AdmissionConfig.model_fields
        low = admission.get("min_limit", fields["min_limit"].default)
        high = admission.get("max_limit", fields["max_limit"].default)
        if type(low) is int and type(high) is int and low > high:
            errors.append(("admission.min_limit", "must not exceed admission.max_limit"))
    try:
        listen = Address(**_parse_address(data.get("listen", "127.0.0.1:8080")))
        admin = Address(**_parse_address(data.get("admin_listen", "127.0.0.1:9901")))
    except (ValueError, TypeError):
        pass  # the schema reports an address it cannot read
    else:
        if _same_socket(listen, admin):
            errors.append(("admin_listen", f"{admin} is also the proxy's listen address: give each its own port"))
    upstream = data.get("upstream")
    if isinstance(upstream, dict) and upstream.get("tls") is not None:
        nodes = upstream.get("nodes")
        if isinstance(nodes, list) and nodes and all(isinstance(n, str) and n.startswith("http://") for n in nodes):
            errors.append(("upstream.tls", "the nodes are http://: TLS settings apply to https:// nodes only"))
    return errors


def _same_socket(a: Address, b: Address) -> bool:
    """Whether binding both would collide: the same port (not 0) on the same host or on a wildcard address."""
    wildcard = ("0.0.0.0", "::", "")
    return a.port == b.port != 0 and (a.host == b.host or a.host in wildcard or b.host in wildcard)


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some index name matches both patterns ('*' is the only wildcard grants allow)."""

    @cache
    def meet(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*" and (meet(i + 1, j) or (j < len(b) and meet(i, j + 1))):
            return True
        if j < len(b) and b[j] == "*" and (meet(i, j + 1) or (i < len(a) and meet(i + 1, j))):
            return True
        return i < len(a) and j < len(b) and a[i] == b[j] and meet(i + 1, j + 1)

    return meet(0, 0)


def config_warnings(cfg: Config) -> list[tuple[str, str]]:
    """Legal but probably unintended: each with the key path it concerns. `check-config` prints
    them and the proxy logs them at start and on reload."""
    warnings: list[tuple[str, str]] = []
    if not cfg.tenants:
        warnings.append(("tenants", "no tenants are configured, so every request will be refused with 401"))
    if cfg.security.binding_secret is None and cfg.tenants:
        warnings.append(("security.binding_secret", "not set, so scroll, point-in-time and async-search ids are "
                         "bound with a key derived from the tenants' key digests: anyone who reads this file can "
                         "compute it, and every open scroll breaks when a key changes (see docs/SECURITY.md); set "
                         "a random secret of 16 or more characters"))
    tls = cfg.upstream.tls
    if tls is not None and not tls.verify:
        warnings.append(("upstream.tls.verify", "false: the nodes' certificates are not checked, so anyone on the "
                         "network path can pose as the cluster and read the proxy's credentials and every query"))
    if cfg.upstream.auth.scheme is not None and not cfg.upstream.https:
        warnings.append(("upstream.auth", "credentials go to http:// nodes in clear text; use https:// nodes"))
    tenants = list(cfg.tenants.items())
    for n, (name, tenant) in enumerate(tenants):
        for other, theirs in tenants[n + 1:]:
            for i, mine in enumerate(tenant.indices):
                shared = [p for p in theirs.indices if patterns_overlap(mine, p)]
                if shared:
                    warnings.append((f"tenants.{name}.indices.{i}", f"{mine!r} overlaps tenant {other!r}'s "
                                     f"{', '.join(map(repr, shared))}: both tenants can read and write those indices"))
    return warnings


def parse_config(data: Any) -> Config:
    """Validate a decoded YAML document. Raises ConfigError listing every problem with its key path:
    the schema's and the cross-key rules' together, in one pass."""
    if not isinstance(data, dict):
        raise ConfigError([("", "the config must be a YAML mapping")])
    errors: list[tuple[str, str]] = []
    cfg = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        errors = [(".".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors(include_url=False)]
    known = set(errors)
    errors += [error for error in _cross_checks(data) if error not in known]
    if errors or cfg is None:
        raise ConfigError(errors)
    return cfg


def load_config(path: str | Path) -> tuple[Config, str]:
    """Read and validate the file. Returns the config and a short hash of the file's bytes.

    A key that appears twice in one mapping is an error (YAML would silently keep the last one)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror or exc}")]) from None
    loader = yaml.SafeLoader(raw)
    try:
        node = loader.get_single_node()
        duplicates = _duplicate_keys(node) if node is not None else []
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([("", f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}")]) from None
    finally:
        loader.dispose()
    try:
        config = parse_config(data)
    except ConfigError as exc:
        raise ConfigError(duplicates + exc.errors) from None
    if duplicates:
        raise ConfigError(duplicates)
    return config, hashlib.sha256(raw).hexdigest()[:12]


def _duplicate_keys(node: yaml.Node, path: str = "") -> list[tuple[str, str]]:
    """Every key that appears twice in one mapping of the YAML document, with its key path."""
    errors: list[tuple[str, str]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            here = path
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                here = f"{path}.{key.value}" if path else key.value
                line = key.start_mark.line + 1
                seen = first.get((key.tag, key.value))
                if seen is not None:
                    errors.append((here, f"duplicate key at line {line} (first at line {seen}); "
                                         "YAML would keep only the last one"))
                else:
                    first[(key.tag, key.value)] = line
            errors += _duplicate_keys(value, here)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            errors += _duplicate_keys(item, f"{path}.{i}" if path else str(i))
    return errors


def config_schema() -> dict:
    """The JSON Schema of the config file, generated from the models (`sluicegate schema`)."""
    schema = Config.model_json_schema()
    address = [
        {"type": "string", "pattern": r"^(\[[^\]\s]+\]|[^\s:\[\]]*):[0-9]{1,5}$",
         "description": "host:port, [IPv6]:port, or :port for all interfaces"},
        {"$ref": "#/$defs/Address"},
    ]
    for name in ("listen", "admin_listen"):  # a string in the file, parsed into an Address
        default = Config.model_fields[name].default
        schema["properties"][name] = {"anyOf": address, "default": str(default)}
    schema["title"] = "Sluicegate configuration"
    schema["description"] = "The sluicegate YAML config (config/sluicegate.example.yaml is the annotated reference)."
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def hash_secret(secret: str) -> str:
    """The `sha256:<hex>` form of an API key or password, as the config stores it."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
