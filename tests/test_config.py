"""The config schema: defaults, key paths in errors, cross-key rules."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from proxy.config import ConfigError, hash_secret, load_config, parse_config, patterns_overlap

KEY = hash_secret("k")


def minimal(**extra) -> dict:
    doc = {"upstream": {"nodes": ["http://127.0.0.1:9200"]}, "plans": {"p": {}},
           "tenants": {"t": {"plan": "p", "api_keys": [KEY], "indices": ["t-*"]}}}
    doc.update(extra)
    return doc


def paths(doc) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return [p for p, _ in info.value.errors]


def test_minimal_config_gets_defaults():
    cfg = parse_config(minimal())
    assert str(cfg.listen) == "127.0.0.1:8080"
    assert cfg.plans["p"].search.rate == 500
    assert cfg.limits.max_body_bytes == 100 * 1024 * 1024
    assert cfg.tenant_enforced("t") is True


def test_listen_forms():
    assert str(parse_config(minimal(listen=":9000")).listen) == "0.0.0.0:9000"
    assert parse_config(minimal(listen="[::1]:9000")).listen.host == "::1"
    assert "listen" in paths(minimal(listen="nope"))


def test_every_error_has_its_key_path():
    doc = minimal(plans={"p": {"search": {"rate": 0, "burst": 1}, "max_queue": -1, "bogus": 1}})
    doc["tenants"]["t"]["indices"] = ["*"]
    found = paths(doc)
    assert "plans.p.search.rate" in found
    assert "plans.p.max_queue" in found
    assert "plans.p.bogus" in found  # typos are errors, not silently ignored
    assert "tenants.t.indices" in found


def test_cross_key_rules():
    doc = minimal()
    doc["tenants"]["u"] = {"plan": "missing", "api_keys": [KEY], "indices": ["u-*"]}
    doc["tenants"]["v"] = {"plan": "p", "indices": ["v-*"]}
    found = paths(doc)
    assert "tenants.u.plan" in found
    assert "tenants.u.api_keys.0" in found  # the same key cannot identify two tenants
    assert "tenants.v" in found  # no way to identify it


def test_shadow_mode_per_tenant_and_global():
    doc = minimal(enforce=False)
    assert parse_config(doc).tenant_enforced("t") is False
    doc["tenants"]["t"]["enforce"] = True
    assert parse_config(doc).tenant_enforced("t") is True


def test_config_is_frozen():
    cfg = parse_config(minimal())
    with pytest.raises(Exception):
        cfg.enforce = False  # type: ignore[misc]


def test_load_reports_unreadable_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize(("a", "b", "overlap"), [
    ("acme-*", "acme-logs", True),
    ("acme-*", "globex-*", False),
    ("acme-*", "*-logs", True),  # acme-logs
    ("logs-acme", "logs-globex", False),
    ("a*b", "*c*", True),  # acb
    ("a*b", "a*c", False),
    ("acme", "acme", True),
    ("acme", "acme*", True),
    ("acme-*-x", "acme-y-*", True),  # acme-y-x
])
def test_patterns_overlap(a, b, overlap):
    assert patterns_overlap(a, b) is overlap
    assert patterns_overlap(b, a) is overlap


def test_overlapping_grants_are_warned_about_by_check_config(tmp_path):
    path = tmp_path / "c.yaml"
    config = {
        "upstream": {"nodes": ["http://127.0.0.1:9200"]},
        "plans": {"p": {"search": {"rate": 1, "burst": 1}, "read": {"rate": 1, "burst": 1},
                        "write": {"rate": 1, "burst": 1}, "admin": {"rate": 1, "burst": 1}}},
        "tenants": {
            "acme": {"plan": "p", "api_keys": [hash_secret("a")], "indices": ["acme-*", "shared-*"]},
            "globex": {"plan": "p", "api_keys": [hash_secret("g")], "indices": ["globex-*", "shared-docs"]},
        },
    }
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "warning: tenants.acme.indices.1: 'shared-*' overlaps tenant 'globex''s 'shared-docs'" in result.stderr
    assert "acme-*" not in result.stderr


# ---- TLS and the proxy's own credentials (issue 18) -----------------------------------------


def test_https_nodes_and_their_tls_settings():
    cfg = parse_config(minimal(upstream={"nodes": ["https://es1:9200", "https://es2:9200/"],
                                         "tls": {"ca_file": "/etc/ca.pem", "server_name": "es.internal"}}))
    assert cfg.upstream.https and cfg.upstream.nodes == ["https://es1:9200", "https://es2:9200"]
    assert cfg.upstream.tls.verify is True and cfg.upstream.tls.min_version == "TLSv1.2"


def test_mixed_http_and_https_nodes_are_refused():
    assert paths(minimal(upstream={"nodes": ["http://es1:9200", "https://es2:9200"]})) == ["upstream.nodes"]


def test_tls_settings_for_http_nodes_are_refused():
    assert paths(minimal(upstream={"nodes": ["http://es1:9200"], "tls": {"ca_file": "/etc/ca.pem"}})) == ["upstream.tls"]


@pytest.mark.parametrize("tls", [
    {"client_cert": "/c.pem"},                               # without its key
    {"verify": False, "ca_file": "/ca.pem"},                 # a CA that would never be used
    {"min_version": "TLSv1.1"},                              # too old to offer
])
def test_inconsistent_upstream_tls_is_refused(tls):
    assert paths(minimal(upstream={"nodes": ["https://es1:9200"], "tls": tls}))[0].startswith("upstream.tls")


@pytest.mark.parametrize("auth", [
    {"username": "u"},                                       # no password
    {"password": "p"},                                       # no username
    {"username": "u", "password": "p", "password_env": "P"},  # two sources of one secret
    {"api_key": "k", "bearer": "t"},                         # two kinds of credentials
    {"username": "u", "password": "p", "api_key_file": "/k"},
    {"api_key": ""},
])
def test_upstream_auth_is_one_kind_with_one_source(auth):
    assert paths(minimal(upstream={"nodes": ["https://es1:9200"], "auth": auth}))[0].startswith("upstream.auth")


def test_upstream_auth_kinds():
    def scheme(auth):
        return parse_config(minimal(upstream={"nodes": ["https://es1:9200"], "auth": auth})).upstream.auth.scheme
    assert scheme({"username": "u", "password_file": "/run/secrets/es"}) == "basic"
    assert scheme({"api_key_env": "ES_API_KEY"}) == "api_key"
    assert scheme({"bearer_file": "/run/secrets/token"}) == "bearer"
    assert scheme({}) is None


@pytest.mark.parametrize("listen, admin, refused", [
    ("127.0.0.1:8080", "127.0.0.1:8080", True),
    ("0.0.0.0:8080", "127.0.0.1:8080", True),   # the wildcard already holds the port on every address
    ("127.0.0.1:8080", ":8080", True),
    ("127.0.0.1:8080", "127.0.0.2:8080", False),
    ("127.0.0.1:0", "127.0.0.1:0", False),       # two free ports
])
def test_listen_and_admin_listen_must_not_collide(listen, admin, refused):
    doc = minimal(listen=listen, admin_listen=admin)
    if refused:
        assert paths(doc) == ["admin_listen"]
    else:
        parse_config(doc)


def test_listen_tls_and_client_certificate_tenants():
    doc = minimal(listen_tls={"cert_file": "/c.pem", "key_file": "/k.pem", "client_ca_file": "/ca.pem"})
    doc["tenants"]["svc"] = {"plan": "p", "indices": ["svc-*"], "client_cert_subjects": ["CN=svc,O=Acme", "DNS:svc.internal"]}
    cfg = parse_config(doc)
    assert cfg.listen_tls.client_authentication == "required" and cfg.listen_tls.min_version == "TLSv1.2"
    assert cfg.tenants["svc"].client_cert_subjects == ["CN=svc,O=Acme", "DNS:svc.internal"]


def test_client_certificate_tenants_need_mutual_tls():
    doc = minimal(listen_tls={"cert_file": "/c.pem", "key_file": "/k.pem"})
    doc["tenants"]["svc"] = {"plan": "p", "indices": ["svc-*"], "client_cert_subjects": ["CN=svc"]}
    assert paths(doc) == ["tenants.svc.client_cert_subjects"]
    assert paths(minimal(listen_tls={"cert_file": "/c.pem", "key_file": "/k.pem", "client_authentication": "optional"})) \
        == ["listen_tls"]


def test_a_certificate_name_identifies_one_tenant_and_must_parse():
    tls = {"cert_file": "/c.pem", "key_file": "/k.pem", "client_ca_file": "/ca.pem"}
    doc = minimal(listen_tls=tls)
    doc["tenants"]["a"] = {"plan": "p", "indices": ["a-*"], "client_cert_subjects": ["CN=svc,O=Acme"]}
    doc["tenants"]["b"] = {"plan": "p", "indices": ["b-*"], "client_cert_subjects": ["O = Acme, CN = svc"]}
    assert paths(doc) == ["tenants.b.client_cert_subjects.0"]
    doc["tenants"]["b"]["client_cert_subjects"] = ["svc"]
    assert paths(doc) == ["tenants.b.client_cert_subjects"]


def test_verify_false_and_clear_text_credentials_are_warned_about():
    from proxy.config import config_warnings

    def warned(doc) -> list[str]:
        return [p for p, _ in config_warnings(parse_config(doc)) if p != "security.binding_secret"]

    assert warned(minimal(upstream={"nodes": ["https://es1:9200"], "tls": {"verify": False}})) == ["upstream.tls.verify"]
    assert warned(minimal(upstream={"nodes": ["http://es1:9200"], "auth": {"api_key": "k"}})) == ["upstream.auth"]
    assert warned(minimal(upstream={"nodes": ["https://es1:9200"], "auth": {"api_key": "k"}})) == []
