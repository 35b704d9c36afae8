"""Typed configuration: the YAML schema, its defaults, and validation errors that name the key path.

Every model is frozen. A reload builds a new `Config` and swaps one reference; a request keeps
the snapshot it started with. This module reads the file and nothing else.
"""
from __future__ import annotations

import hashlib
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .cost import Weights

RESOURCES = ("search", "read", "write", "admin")
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


class UpstreamAuth(_Frozen):
    """The proxy's own credentials to the cluster. The client's Authorization is never forwarded."""

    api_key: str | None = None
    username: str | None = None
    password: str | None = None

    def header(self) -> str | None:
        """The Authorization header value to send upstream, or None for an open cluster."""
        if self.api_key:
            return f"ApiKey {self.api_key}"
        if self.username is not None:
            import base64

            raw = f"{self.username}:{self.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None


class UpstreamConfig(_Frozen):
    nodes: list[str] = Field(min_length=1)
    auth: UpstreamAuth = UpstreamAuth()
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
                raise ValueError(f"node {node!r} must look like http://host:port")
            out.append(node.rstrip("/"))
        return out


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
    cluster_apis: list[str] = []

    def bucket(self, resource: str) -> Bucket:
        return getattr(self, resource)


class Tenant(_Frozen):
    plan: str
    api_keys: list[str] = []
    users: dict[str, str] = {}
    indices: list[str] = Field(min_length=1)
    enforce: bool | None = None  # None: follow the global `enforce`

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


class Config(_Frozen):
    listen: Address = Address(host="127.0.0.1", port=8080)
    admin_listen: Address = Address(host="127.0.0.1", port=9901)
    upstream: UpstreamConfig
    redis: RedisConfig | None = None
    limits: HardLimits = HardLimits()
    cost: CostConfig = CostConfig()
    admission: AdmissionConfig = AdmissionConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    shapes: ShapesConfig = ShapesConfig()
    security: SecurityConfig = SecurityConfig()
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


def _cross_checks(data: dict) -> list[tuple[str, str]]:
    """Rules that span several keys, with the path of the key at fault. They read the decoded
    document, not a validated `Config`, so that they are reported alongside type errors in one pass;
    a value of the wrong type is skipped here (the schema reports it)."""
    errors: list[tuple[str, str]] = []
    plans = data.get("plans")
    tenants = data.get("tenants")
    seen_keys: dict[str, str] = {}
    seen_users: dict[str, str] = {}
    for name, tenant in (tenants.items() if isinstance(tenants, dict) else ()):
        if not isinstance(tenant, dict):
            continue
        base = f"tenants.{name}"
        plan = tenant.get("plan")
        if isinstance(plans, dict) and plans and isinstance(plan, str) and plan not in plans:
            errors.append((f"{base}.plan", f"unknown plan {plan!r} (plans: {', '.join(sorted(map(str, plans)))})"))
        keys, users = tenant.get("api_keys") or [], tenant.get("users") or {}
        if not keys and not users:
            errors.append((base, "tenant has no api_keys and no users, so no request can ever identify it"))
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
    return errors


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
