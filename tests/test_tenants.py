"""Credentials → tenant, and index grants on the path."""
from __future__ import annotations

import base64

import pytest

from proxy.config import hash_secret, parse_config
from proxy.errors import Forbidden, Unauthorized
from proxy.tenants import Directory, _check_index


@pytest.fixture
def directory() -> Directory:
    return Directory(parse_config({
        "upstream": {"nodes": ["http://127.0.0.1:9200"]},
        "plans": {"p": {}},
        "tenants": {
            "acme": {"plan": "p", "api_keys": [hash_secret("acme-key")], "users": {"app": hash_secret("pw")},
                     "indices": ["acme-*", "shared-acme"]},
            "globex": {"plan": "p", "api_keys": [hash_secret("globex-key")], "indices": ["globex-*"]},
        },
    }))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_api_key_and_basic_identify_their_tenant(directory):
    assert directory.identify("ApiKey acme-key", "/").name == "acme"
    assert directory.identify("apikey globex-key", "/").name == "globex"  # scheme is case-insensitive
    assert directory.identify(basic("app", "pw"), "/").name == "acme"


@pytest.mark.parametrize("header", [
    None, "", "ApiKey", "ApiKey wrong", "Bearer acme-key", basic("app", "wrong"), basic("nobody", "pw"),
    "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(), "ApiKey \udcff",
])
def test_anything_else_is_401_without_naming_a_secret(directory, header):
    with pytest.raises(Unauthorized) as info:
        directory.identify(header, "/acme-x/_search")
    assert info.value.status == 401
    assert "acme-key" not in info.value.reason
    assert "WWW-Authenticate" in info.value.headers


@pytest.mark.parametrize("index,allowed", [
    ("acme-logs", True), ("acme-*", True), ("acme-logs-*", True), ("shared-acme", True),
    ("-globex-x", True),  # an exclusion only narrows
    ("<acme-{now/d}>", True), ("<globex-{now/d}>", False),
    ("globex-logs", False), ("acme", False), ("acm*", False), ("*", False), ("_all", False),
    ("shared-acme*", False), ("", False),
])
def test_index_grant(directory, index, allowed):
    view = directory.tenants["acme"]

    class Call:
        api = "search"

    if allowed:
        _check_index(view, Call, index)
    else:
        with pytest.raises(Forbidden):
            _check_index(view, Call, index)
