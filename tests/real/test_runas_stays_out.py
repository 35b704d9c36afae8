"""Headers the cluster trusts stay with the proxy (issue 17, item 9), on real Elasticsearch with security on.

A single-node Elasticsearch of its own (security on, HTTP plain on loopback): the proxy's user may
`run_as` a user who has no rights on the tenant's indices. Straight to the node, the header makes the
search run as that user (403); through the proxy it is not forwarded, and the search runs as the proxy."""
from __future__ import annotations

import base64
import crypt  # noqa: F401  (deprecated in 3.11, still the one stdlib way to a bcrypt hash; removed in 3.13)
import json

import pytest
import urllib3

from bench.realcluster import RealCluster
from tests.processes import make_config, tenant

pytestmark = pytest.mark.real_cluster

PROXY_USER, PROXY_PASSWORD = "sluicegate-proxy", "proxy-password-1"
VICTIM = "no-rights"
ROLES = """
anonymous_monitor:
  cluster: ["monitor"]
sluicegate_proxy:
  cluster: ["monitor"]
  indices:
    - names: ["*"]
      privileges: ["all"]
  run_as: ["no-rights"]
no_rights:
  cluster: []
"""


def _bcrypt(password: str) -> str:
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH)).replace("$2b$", "$2a$", 1)


@pytest.fixture(scope="module")
def secured_elasticsearch():
    users = f"{PROXY_USER}:{_bcrypt(PROXY_PASSWORD)}\n{VICTIM}:{_bcrypt('victim-password-1')}\n"
    cluster = RealCluster("elasticsearch", nodes=1, settings={
        "xpack.security.enabled": True,
        "xpack.security.http.ssl.enabled": False,
        "xpack.security.transport.ssl.enabled": False,
        # the harness's own health checks carry no credentials: anonymous may monitor, nothing else
        "xpack.security.authc.anonymous.username": "anonymous",
        "xpack.security.authc.anonymous.roles": "anonymous_monitor",
    }, config_files={
        "users": users.encode(),
        "users_roles": f"sluicegate_proxy:{PROXY_USER}\nno_rights:{VICTIM}\n".encode(),
        "roles.yml": ROLES.encode(),
    })
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_run_as_through_the_proxy_is_impossible(procs, secured_elasticsearch):
    url = secured_elasticsearch.url
    basic = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    http = urllib3.PoolManager(retries=False, timeout=30)
    as_proxy = {"Authorization": basic, "Content-Type": "application/json"}
    created = http.request("PUT", f"{url}/acme-logs", headers=as_proxy, body=b"{}")
    assert created.status == 200, created.data
    run_as = {"es-security-runas-user": VICTIM}
    # Straight to the node, the proxy's credentials with the header act as the victim: the header is real.
    direct = http.request("POST", f"{url}/acme-logs/_search", headers={**as_proxy, **run_as}, body=b"{}")
    assert direct.status == 403 and f"run as [{VICTIM}]".encode() in direct.data, direct.data

    proxy = procs.proxy(make_config([url], tenants={"acme": tenant("acme")},
                                    upstream={"auth": {"username": PROXY_USER, "password": PROXY_PASSWORD}}))
    tenant_headers = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json", **run_as}
    through = http.request("POST", f"{proxy.url}/acme-logs/_search", headers=tenant_headers, body=b"{}")
    assert through.status == 200, through.data  # run as the proxy: the header never reached the node
    assert json.loads(through.data)["hits"]["total"]["value"] == 0
