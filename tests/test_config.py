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
